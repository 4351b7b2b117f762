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
from gateway.ingress.guard import EarlyAnswer, Header, LaneRequest
from gateway.ingress.intake import Intake, count_items, count_items_off_loop, text_headers
from gateway.ingress.lane import LANE_MAX_BYTES, LANE_UNKNOWN_BYTES, Whole, text_header
from gateway.ingress.lane import media_type as type_of
from gateway.otlp import jsonpb as otlpjson
from gateway.otlp import offload
from gateway.otlp.signals import Signal
from gateway.tenancy.tenants import Tenant

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = frozenset({PROTOBUF, "application/protobuf"})
_PROTOBUF_TYPE, _JSON_TYPE = PROTOBUF.encode(), JSON.encode()
# what the intake and the decoder read of a request's head
_LANE_HEADERS = (b"authorization", b"x-api-key", b"content-encoding", b"content-length")


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
        self._ok_json = _answer(200, True, b"{}")
        self._ok_proto = _answer(200, False, signal.response_type().SerializeToString())
        self._lane_max = min(LANE_MAX_BYTES, limits_.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = text_headers(scope["headers"])
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        try:
            await self._handle(scope, headers, media_type, receive)
        except GatewayError as error:
            answer = self._refusal(error, media_type)
        else:
            answer = self._ok(media_type == JSON)
        start = {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        await send(start)
        await send({"type": "http.response.body", "body": answer.body})

    def lane(self, header: Header, http2: bool) -> LaneRequest | None:
        """The request whole, from the server (ingress/lane.py), when its head allows: a POST
        (the server's check) of protobuf or JSON of a known length up to LANE_MAX_BYTES (over
        HTTP/2 the length may be unknown: the server hands a body that grows past it to the app),
        from a tenant with room. Anything else, refusals included, the app serves as usual."""
        length = header(b"content-length")
        if length is None:
            if not http2:
                return None
            length = b""
        elif not length.isdigit() or int(length) > self._lane_max:
            return None
        kind = type_of(header(b"content-type"))
        if kind not in _PROTOBUF_TYPES and kind != JSON:
            return None
        headers = text_header(header, _LANE_HEADERS)
        try:
            tenant = self._intake.admit(self.signal, headers, self._inflight, charge=False)
        except GatewayError:
            return None
        charged = "" if self._intake.registry.open else tenant.name
        held = self._inflight.hold(length.decode(), charged)
        return _Whole(self, headers, kind, tenant, held)

    def _refusal(self, error: GatewayError, media_type: str) -> EarlyAnswer:
        """Count and log a refusal; the answer that says it, in the request's format (protobuf
        or JSON google.rpc.Status), or as text when the client sent neither."""
        as_json = media_type == JSON
        self._intake.refused(self.signal, "http/json" if as_json else "http/protobuf", error)
        extra: list[tuple[bytes, bytes]] = []
        if isinstance(error, _MethodNotAllowed):
            extra.append((b"allow", b"POST"))
        if error.retry_after is not None:
            extra.append((b"retry-after", str(max(1, round(error.retry_after))).encode()))
        if as_json or media_type in _PROTOBUF_TYPES:
            body = _status_body(error, as_json)
            return _answer(error.http_status, as_json, body, extra)
        text = f"{error.http_status} {error.message}\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        headers += [(b"content-length", str(len(text)).encode()), *extra]
        return EarlyAnswer(error.http_status, headers, text)

    def _ok(self, as_json: bool) -> EarlyAnswer:
        return self._ok_json if as_json else self._ok_proto

    async def _handle(
        self, scope: Scope, headers: dict[str, str], media_type: str, receive: Receive
    ) -> None:
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
            await self._read_and_accept(headers, media_type, receive, tenant)
        except GatewayError as error:
            if error.tenant is None:
                error.tenant = tenant.name
            raise

    async def _read_and_accept(
        self, headers: dict[str, str], media_type: str, receive: Receive, tenant: Tenant
    ) -> None:
        length = headers.get("content-length", "")
        with self._inflight.hold(length) as held:
            try:
                raw = await held.read(receive, self._limits.max_body_bytes)
            except limits.TooLarge as exc:
                raise RequestTooLarge(str(exc)) from None
            except limits.ClientGone as exc:
                raise InvalidRequest(str(exc)) from None
            await self._decode_and_accept(headers, media_type, raw, tenant)

    async def _decode_and_accept(
        self, headers: dict[str, str], media_type: str, raw: bytes, tenant: Tenant
    ) -> None:
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


def _answer(
    status: int, as_json: bool, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> EarlyAnswer:
    headers = [
        (b"content-type", _JSON_TYPE if as_json else _PROTOBUF_TYPE),
        (b"content-length", str(len(body)).encode()),
    ]
    if extra:
        headers += extra
    return EarlyAnswer(status, headers, body)


class _Whole(Whole):
    """An export taken whole through the lane: its announced length held in the in-flight budget
    from the head on; the body counts from when it is complete."""

    __slots__ = ("_endpoint", "_headers", "_kind")

    def __init__(
        self,
        endpoint: OTLPHTTPEndpoint,
        headers: dict[str, str],
        kind: str,
        tenant: Tenant,
        held: limits.Held,
    ) -> None:
        limits_ = endpoint._limits
        super().__init__(tenant, held, limits_.max_body_bytes, limits_.body_timeout)
        self._endpoint = endpoint
        self._headers = headers
        self._kind = kind

    def limit(self, first: bytes) -> int:
        length = self._headers.get("content-length", "")
        if length:
            return int(length)  # reserved from the head on
        # Of unknown size (HTTP/2): the most the lane keeps is reserved now, so the budget
        # bounds what streams of unknown size hold while they arrive.
        self._held.add(LANE_UNKNOWN_BYTES)
        return LANE_UNKNOWN_BYTES

    async def _take(self, body: bytes) -> None:
        await self._endpoint._decode_and_accept(self._headers, self._kind, body, self._tenant)

    def _refuse(self, error: GatewayError) -> EarlyAnswer:
        return self._endpoint._refusal(error, self._kind)

    def _accepted(self) -> EarlyAnswer:
        return self._endpoint._ok(self._kind == JSON)
