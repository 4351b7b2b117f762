"""OTLP/HTTP: POST /v1/{traces,metrics,logs} with protobuf or JSON bodies, plain or compressed.

A pure ASGI app per signal. The body is read with a byte cap, decompressed with a cap on what it
inflates to, validated by a wire walk (protobuf) or parsed (JSON), and handed to the intake as
protobuf bytes. Errors are google.rpc.Status bodies in the request's content type.
"""

from __future__ import annotations

import json

from google.rpc import status_pb2
from starlette.types import Receive, Scope, Send

from gateway.config import Limits
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RequestTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from gateway.ingress import limits
from gateway.ingress.intake import Intake, count_items, count_items_off_loop, text_headers
from gateway.otlp import jsonpb as otlpjson
from gateway.otlp import offload
from gateway.otlp.signals import Signal
from gateway.tenancy.tenants import Tenant

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = frozenset({PROTOBUF, "application/protobuf"})


class _MethodNotAllowed(GatewayError):
    http_status = 405
    reason = "method_not_allowed"


def _status_body(error: GatewayError, as_json: bool) -> bytes:
    if as_json:
        return json.dumps({"code": int(error.grpc_code), "message": error.message}).encode()
    status = status_pb2.Status(code=int(error.grpc_code), message=error.message)
    return bytes(status.SerializeToString())


class OTLPHTTPEndpoint:
    def __init__(
        self, signal: Signal, intake: Intake, limits_: Limits, inflight: limits.InFlight
    ) -> None:
        self.signal = signal
        self._intake = intake
        self._limits = limits_
        self._inflight = inflight
        self._empty = signal.response_type().SerializeToString()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = text_headers(scope["headers"])
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        as_json = media_type == JSON
        try:
            body = await self._handle(scope, headers, media_type, receive)
        except GatewayError as error:
            self._intake.refused(self.signal, "http/json" if as_json else "http/protobuf", error)
            await self._respond(
                send, error.http_status, as_json, _status_body(error, as_json), error
            )
            return
        await self._respond(send, 200, as_json, body, None)

    async def _handle(
        self, scope: Scope, headers: dict[str, str], media_type: str, receive: Receive
    ) -> bytes:
        if scope["method"] != "POST":
            raise _MethodNotAllowed(
                f"{scope['method']} is not allowed on {self.signal.http_path}; use POST"
            )
        if media_type not in _PROTOBUF_TYPES and media_type != JSON:
            raise UnsupportedMediaType(
                f"content-type {media_type or '(none)'!r} is not supported; "
                f"send {PROTOBUF} or {JSON}"
            )
        tenant = self._intake.admit(self.signal, headers, self._inflight)
        try:
            return await self._read_and_accept(headers, media_type, receive, tenant)
        except GatewayError as error:
            if error.tenant is None:
                error.tenant = tenant.name
            raise

    async def _read_and_accept(
        self, headers: dict[str, str], media_type: str, receive: Receive, tenant: Tenant
    ) -> bytes:
        length = headers.get("content-length", "")
        with self._inflight.hold(length) as held:
            try:
                raw = await held.read(receive, self._limits.max_body_bytes)
            except limits.TooLarge as exc:
                raise RequestTooLarge(str(exc)) from None
            except limits.ClientGone as exc:
                raise InvalidRequest(str(exc)) from None
            return await self._decode_and_accept(headers, media_type, raw, tenant)

    async def _decode_and_accept(
        self, headers: dict[str, str], media_type: str, raw: bytes, tenant: Tenant
    ) -> bytes:
        encoding = headers.get("content-encoding", "")
        cap = self._limits.max_request_bytes
        try:
            if limits.slow_to_decompress(encoding):
                data = await offload.run(limits.decompress, encoding, raw, cap)
            else:
                data = limits.decompress(encoding, raw, cap)
        except limits.TooLarge as exc:
            raise RequestTooLarge(str(exc)) from None
        except limits.UnknownEncoding:
            raise UnsupportedMediaType(
                f"content-encoding {encoding!r} is not supported; use one of "
                f"{', '.join(limits.accepted_encodings())} or none"
            ) from None
        except limits.BadEncoding as exc:
            raise InvalidRequest(f"the body is not valid {encoding}: {exc}") from None
        # From ~10 ms of work up, JSON conversion and counting are kept off the event loop
        # (gateway/otlp/offload.py).
        counted: int | None = None
        try:
            if media_type == JSON:
                data, counted = await offload.json_to_counted_proto(self.signal, data)
            elif len(data) >= offload.PROCESS_MIN_BYTES:
                counted = await count_items_off_loop(self.signal, data)
        except otlpjson.OTLPJSONError as exc:
            raise InvalidRequest(str(exc)) from None
        except offload.WorkerLost as exc:
            raise Unavailable(f"{exc}; retry", retry_after=1.0) from None
        items = count_items(self.signal, data) if counted is None else counted
        transport = "http/json" if media_type == JSON else "http/protobuf"
        await self._intake.accept(self.signal, data, items, tenant, transport)
        return b"{}" if media_type == JSON else self._empty

    async def _respond(
        self, send: Send, status: int, as_json: bool, body: bytes, error: GatewayError | None
    ) -> None:
        headers = [
            (b"content-type", (JSON if as_json else PROTOBUF).encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        if error is not None:
            if isinstance(error, _MethodNotAllowed):
                headers.append((b"allow", b"POST"))
            if error.retry_after is not None:
                headers.append((b"retry-after", str(max(1, round(error.retry_after))).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
