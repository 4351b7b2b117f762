"""OTLP/gRPC exporter over grpcio: the request bytes go out as they came in (no re-encode)."""

from __future__ import annotations

from urllib.parse import urlsplit

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from ..batch import Batch
from ..config import BackendConfig
from .base import ExportError, render_headers

# OTLP/gRPC: retryable codes. RESOURCE_EXHAUSTED only when the server attached RetryInfo.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _identity(data: bytes) -> bytes:
    return data


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


class GRPCExporter:
    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        url = urlsplit(config.endpoint)
        target = url.netloc
        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 4 << 20),
        ]
        if url.scheme == "https":
            root = None
            if config.tls.ca_file:
                with open(config.tls.ca_file, "rb") as f:
                    root = f.read()
            self._channel = grpc.aio.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=root), options=options
            )
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else None
        self._calls = {}
        from ..signals import SIGNALS

        for signal in SIGNALS:
            self._calls[signal.name] = self._channel.unary_unary(
                signal.rpc_path, request_serializer=_identity, response_deserializer=_identity
            )

    async def export(self, batch: Batch) -> None:
        metadata = tuple(
            (k.lower(), v) for k, v in render_headers(self._config.headers, batch.tenant).items()
        )
        call = self._calls[batch.signal.name]
        try:
            await call(
                batch.payload,
                timeout=self._config.timeout,
                metadata=metadata,
                compression=self._compression,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            message = f"{self._config.endpoint} answered {code.name}: {exc.details()}"
            delay = _retry_delay(exc)
            retryable = code in _RETRYABLE or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None
            )
            raise ExportError(message, retryable=retryable, retry_after=delay) from exc

    async def aclose(self) -> None:
        await self._channel.close()
