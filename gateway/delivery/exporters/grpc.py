"""OTLP/gRPC exporter: connect-python's generated clients over HTTP/2 (pyqwest), sending the
request bytes as they came in (no re-encode).

Chosen over grpcio by measurement (bench/README.md): the same CPU per export at equal gzip level,
and connect-python lets us set the gzip level, which is most of the cost (level 1 vs grpcio's
fixed level: about 40% less CPU per 245 KB export).
"""

from __future__ import annotations

from typing import Any

import pyqwest
from connectrpc.code import Code
from connectrpc.compression import Compression
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.rpc import error_details_pb2

from gateway._gen.opentelemetry.proto.collector.logs.v1.logs_service_connect import (
    LogsServiceClient,
)
from gateway._gen.opentelemetry.proto.collector.metrics.v1.metrics_service_connect import (
    MetricsServiceClient,
)
from gateway._gen.opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_connect as profiles_connect,
)
from gateway._gen.opentelemetry.proto.collector.trace.v1.trace_service_connect import (
    TraceServiceClient,
)
from gateway.config import BackendConfig
from gateway.delivery.batch import Batch
from gateway.delivery.exporters.base import (
    ExportError,
    gzip_encoding,
    log_partial_success_message,
    render_headers,
)
from gateway.otlp import gz

_CLIENTS: dict[str, Any] = {
    "traces": TraceServiceClient,
    "metrics": MetricsServiceClient,
    "logs": LogsServiceClient,
    "profiles": profiles_connect.ProfilesServiceClient,
}

# OTLP/gRPC: retryable codes. RESOURCE_EXHAUSTED only when the server attached RetryInfo.
_RETRYABLE = frozenset(
    {
        Code.CANCELED,
        Code.DEADLINE_EXCEEDED,
        Code.ABORTED,
        Code.OUT_OF_RANGE,
        Code.UNAVAILABLE,
        Code.DATA_LOSS,
    }
)
# Refusals of the request's content: INVALID_ARGUMENT is OTLP's "bad data"; grpc-go servers (the
# Collector) answer INTERNAL for a request they cannot unmarshal, Python ones UNKNOWN. The
# pipeline splits such a batch and sends the parts.
_INVALID = frozenset({Code.INVALID_ARGUMENT, Code.INTERNAL, Code.UNKNOWN})


class _Gzip(Compression):
    """gzip for connect-python's client through ISA-L (gateway/otlp/gz.py): the same bytes on the
    wire, a quarter of the CPU of the standard library's gzip at level 1. The message it is
    given is the payload of a batch being exported (_RawRequest), so the gzipped bytes are the
    batch's (Batch.encoded), shared with other destinations and retries."""

    def __init__(self, level: int) -> None:
        self._level = level
        self._key = gzip_encoding(level)
        self.exporting: dict[int, Batch] = {}  # id(payload) -> batch, while its export runs

    def name(self) -> str:
        return "gzip"

    def _gzip(self, data: bytes | bytearray | memoryview) -> bytes:
        return gz.gzip_compress(data, self._level)  # no copy: ISA-L reads the buffer

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        batch = self.exporting.get(id(data))
        if batch is not None and batch.payload is data:
            return batch.encoded(self._key, self._gzip)
        return self._gzip(data)

    def decompress(self, data: bytes | bytearray | memoryview) -> bytes:
        d = gz.decompressobj(16 + gz.MAX_WBITS)
        return bytes(d.decompress(bytes(data)) + d.flush())


class _RawRequest:
    """Stands in for Export*ServiceRequest on the way out: serializing returns the bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def _retry_delay(error: ConnectError) -> float | None:
    for detail in error.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


class GRPCExporter:
    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        ca = None
        if config.tls.ca_file:
            with open(config.tls.ca_file, "rb") as f:
                ca = f.read()
        transport = pyqwest.HTTPTransport(
            # http:// is h2c with prior knowledge, https:// is TLS with ALPN h2
            http_version=pyqwest.HTTPVersion.HTTP2,
            tls_ca_cert=ca,
            tls_include_system_certs=ca is None,
            timeout=config.timeout,
            enable_otel=False,
        )
        self._http = pyqwest.Client(transport)
        compression = _Gzip(config.compression_level) if config.compression == "gzip" else None
        self._gzip = compression
        self._clients = {
            name: client_type(
                config.endpoint.rstrip("/"),
                protocol=ProtocolType.GRPC,
                http_client=self._http,
                send_compression=compression,
                timeout_ms=int(config.timeout * 1000),
            )
            for name, client_type in _CLIENTS.items()
        }

    async def export(self, batch: Batch) -> None:
        headers = render_headers(self._config.headers, batch.tenant)
        client = self._clients[batch.signal.name]
        if self._gzip is not None:
            self._gzip.exporting[id(batch.payload)] = batch
        try:
            response = await client.export(_RawRequest(batch.payload), headers=headers)
        except ConnectError as exc:
            code = exc.code
            message = f"{self._config.endpoint} answered {code.name}: {exc.message}"
            delay = _retry_delay(exc)
            retryable = code in _RETRYABLE or (
                code == Code.RESOURCE_EXHAUSTED and delay is not None
            )
            too_large = code == Code.RESOURCE_EXHAUSTED and delay is None
            raise ExportError(
                message,
                retryable=retryable,
                retry_after=delay,
                too_large=too_large,
                invalid=code in _INVALID,
            ) from exc
        except (OSError, pyqwest.ReadError, pyqwest.WriteError, pyqwest.ConnectTimeout) as exc:
            raise ExportError(
                f"could not reach {self._config.endpoint}: {exc!r}", retryable=True
            ) from exc
        finally:
            if self._gzip is not None:
                self._gzip.exporting.pop(id(batch.payload), None)
        log_partial_success_message(self._config.name, batch, response)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
