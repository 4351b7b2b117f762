"""OTLP/gRPC, gRPC-web and Connect (unary, proto and JSON), served by connect-python.

Binary bodies are never decoded: the endpoints' input type is a small class whose
`ParseFromString` keeps the bytes and runs the wire walk (validation + item count). Connect and
gRPC with the JSON codec (canonical protobuf JSON, base64 ids) are decoded by our JSON codec, which
turns the JSON into protobuf bytes and refuses bad JSON with INVALID_ARGUMENT (connect-python's own
lets a parse error surface as UNKNOWN, an HTTP 500).

Limits: the bytes read off the wire are counted as they arrive, and the only decompressor offered
to connect-python is a bounded one (its own gzip inflates without a limit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from connectrpc.code import Code
from connectrpc.compression import Compression
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from . import gz, limits
from ._gen.opentelemetry.proto.collector.logs.v1.logs_service_connect import (
    LogsServiceASGIApplication,
)
from ._gen.opentelemetry.proto.collector.metrics.v1.metrics_service_connect import (
    MetricsServiceASGIApplication,
)
from ._gen.opentelemetry.proto.collector.profiles.v1development.profiles_service_connect import (
    ProfilesServiceASGIApplication,
)
from ._gen.opentelemetry.proto.collector.trace.v1.trace_service_connect import (
    TraceServiceASGIApplication,
)
from .errors import GatewayError, GrpcCode, InvalidRequest, RequestTooLarge
from .grpc_ingress import GrpcExport, is_grpc_proto, retry_info
from .intake import Intake, count_items, text_headers
from .signals import LOGS, METRICS, PROFILES, TRACES, Signal
from .tenants import Tenant

_APPLICATIONS: dict[str, Callable[..., Any]] = {
    TRACES.name: TraceServiceASGIApplication,
    METRICS.name: MetricsServiceASGIApplication,
    LOGS.name: LogsServiceASGIApplication,
    PROFILES.name: ProfilesServiceASGIApplication,
}

_CODES = {
    GrpcCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    GrpcCode.RESOURCE_EXHAUSTED: Code.RESOURCE_EXHAUSTED,
    GrpcCode.UNAUTHENTICATED: Code.UNAUTHENTICATED,
    GrpcCode.PERMISSION_DENIED: Code.PERMISSION_DENIED,
    GrpcCode.UNAVAILABLE: Code.UNAVAILABLE,
    GrpcCode.INTERNAL: Code.INTERNAL,
}


class _Call:
    """What RPCService knows about the request being served, shared with the code connect-python
    calls (export(), the codecs) through a ContextVar."""

    __slots__ = ("raised", "refusal", "tenant", "transport")

    def __init__(self, transport: str) -> None:
        # The errors raised inside connect-python. It keeps a caught error in a local of the
        # frame its traceback points back to: a reference cycle that pins every frame in between
        # (with the request's buffers, up to the body cap) until a full GC. RPCService drops
        # their tracebacks once the request is answered.
        self.raised: list[BaseException] = []
        self.refusal: GatewayError | None = None  # the first one, counted and logged
        self.tenant: Tenant | None = None
        self.transport = transport


_CALL: ContextVar[_Call | None] = ContextVar("_CALL", default=None)


def _refuse(error: GatewayError) -> ConnectError:
    """The ConnectError that answers `error`, noted for accounting and cleanup."""
    # `error` is kept until the call ends; if it was raised, its traceback (and the exception it
    # was raised from) hold the frames that hold the request's bytes
    error.__traceback__ = error.__context__ = None
    connect_error = to_connect_error(error)
    call = _CALL.get()
    if call is not None:
        call.raised.append(connect_error)
        if call.refusal is None:
            call.refusal = error
    return connect_error


def _transport(content_type: str) -> str:
    if content_type.startswith("application/grpc-web"):
        return "grpc-web"
    if content_type.startswith("application/grpc"):
        return "grpc"
    return "connect"


class RawRequest:
    """Stands in for Export*ServiceRequest: keeps the bytes, validates and counts on parse."""

    __slots__ = ("data", "items")
    signal: Signal

    def ParseFromString(self, data: bytes | bytearray | memoryview) -> int:
        raw = bytes(data)
        try:
            self.items = count_items(self.signal, raw)
        except InvalidRequest as refusal:
            raise _refuse(refusal) from None
        self.data = raw
        return len(raw)


def _raw_request_type(signal: Signal) -> type[RawRequest]:
    return type(
        f"Raw{signal.request_type.DESCRIPTOR.name}",
        (RawRequest,),
        {"__slots__": (), "signal": signal},
    )


def to_connect_error(error: GatewayError) -> ConnectError:
    info = retry_info(error)
    details: list[Message] = [] if info is None else [info]
    return ConnectError(_CODES.get(error.grpc_code, Code.INTERNAL), error.message, details)


class _ExportService:
    """The `export` method of one signal's service."""

    def __init__(self, signal: Signal, intake: Intake) -> None:
        self._signal = signal
        self._intake = intake
        self._response = signal.response_type()

    async def export(self, request: RawRequest, ctx: RequestContext[Any, Any]) -> Message:
        call = _CALL.get()
        assert call is not None and call.tenant is not None  # refused requests never get here
        try:
            await self._intake.accept(
                self._signal, request.data, request.items, call.tenant, call.transport
            )
        except GatewayError as error:
            if error.retry_after is not None:
                ctx.response_headers()["retry-after"] = str(max(1, round(error.retry_after)))
            raise _refuse(error) from None
        return self._response


class BoundedGzip(Compression):
    """gzip for connect-python that refuses to inflate past the request cap."""

    def __init__(self, cap: int) -> None:
        self._cap = cap

    def name(self) -> str:
        return "gzip"

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        return gz.gzip_compress(data, 1)

    def decompress(self, data: bytes | bytearray | memoryview) -> bytes:
        try:
            return limits.decompress("gzip", bytes(data), self._cap)
        except limits.TooLarge as exc:
            raise _refuse(RequestTooLarge(str(exc))) from None
        except limits.BadEncoding as exc:
            raise _refuse(InvalidRequest(f"the message is not valid gzip: {exc}")) from None


class _JSONCodec:
    """connect-python's JSON codec, but lenient on unknown fields (as OTLP requires), strict about
    errors (INVALID_ARGUMENT, never UNKNOWN), and able to fill a RawRequest."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return str(json_format.MessageToJson(message, indent=None)).encode()

    def decode(self, data: bytes | bytearray, message: Any) -> Any:
        target = message.signal.request_type() if isinstance(message, RawRequest) else message
        try:
            json_format.Parse(bytes(data), target, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError) as exc:
            raise _refuse(
                InvalidRequest(f"the body is not valid JSON for {target.DESCRIPTOR.name}: {exc}")
            ) from None
        if isinstance(message, RawRequest):
            message.ParseFromString(target.SerializeToString())
        return message


def _install_json_codec() -> None:
    # connect-python 0.9 has no per-app codec option; its registry is looked up per request.
    from connectrpc import _codec

    codec = _JSONCodec()
    for name in (_codec.CODEC_NAME_JSON, _codec.CODEC_NAME_JSON_CHARSET_UTF8):
        _codec._codecs[name] = codec


_install_json_codec()


class RPCService:
    """One OTLP service on all RPC protocols, as an ASGI app mounted at its service path."""

    def __init__(
        self, signal: Signal, intake: Intake, limits_: limits.Limits, inflight: limits.InFlight
    ) -> None:
        self.signal = signal
        self._intake = intake
        self._limits = limits_
        self._inflight = inflight
        self._grpc = GrpcExport(signal, intake, limits_, inflight)
        service = _ExportService(signal, intake)
        app_type = _APPLICATIONS[signal.name]
        self.app = app_type(
            service,
            read_max_bytes=limits_.max_request_bytes,
            compressions=[BoundedGzip(limits_.max_request_bytes)],
        )
        # connect-python builds its endpoints lazily from this callable; give them the
        # bytes-keeping input type instead of the generated message class.
        make_endpoints = self.app._endpoints
        raw_type = _raw_request_type(signal)

        def raw_endpoints(svc: Any) -> Mapping[str, Any]:
            return {
                path: replace(ep, method=replace(ep.method, input=raw_type))
                for path, ep in make_endpoints(svc).items()
            }

        self.app._endpoints = raw_endpoints
        self.path: str = self.app.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if is_grpc_proto(scope):  # the hot path: served on the wire, without connect-python
            await self._grpc(scope, receive, send)
            return
        headers = text_headers(scope["headers"])
        length = headers.get("content-length", "")
        drain = limits.worth_draining(length)
        cap = self._limits.max_body_bytes
        capped: _CappedReceive | None = None
        call = _Call(_transport(headers.get("content-type", "")))
        token = _CALL.set(call)
        try:
            # Who is asking is settled from the headers, before the body is read.
            call.tenant = self._intake.admit(self.signal, headers, self._inflight)
        except GatewayError as refusal:
            receive = _refuse_body(receive, _refuse(refusal), drain=drain)
        else:
            if length.isdigit() and int(length) > cap:
                receive = _refuse_body(receive, _too_large(cap), drain=drain)
            else:
                capped = _CappedReceive(receive, cap, self._inflight)
                receive = capped
        try:
            await self.app(scope, receive, send)
        finally:
            _CALL.reset(token)
            if capped is not None:
                capped.release()
            if call.refusal is not None:
                if call.refusal.tenant is None and call.tenant is not None:
                    call.refusal.tenant = call.tenant.name
                self._intake.refused(self.signal, call.transport, call.refusal)
            for error in call.raised:
                # Breaks the cycles: frees the request's buffers now. The context (the error we
                # translated) has a traceback too, pointing at frames that hold the body.
                error.__traceback__ = None
                if error.__context__ is not None:
                    error.__context__.__traceback__ = None


def _too_large(cap: int) -> ConnectError:
    return _refuse(RequestTooLarge(limits.too_large_message("the request body", cap)))


def _refuse_body(receive: Receive, error: ConnectError, *, drain: bool) -> Receive:
    """A receive() that answers the request with `error` (after reading the body away)."""

    async def refuse() -> ASGIMessage:
        if drain:
            await limits.discard_body(receive)
        raise error

    return refuse


class _CappedReceive:
    """A receive() that refuses the body past `cap` bytes and counts what it read as in flight
    until release() (called once the request has been answered)."""

    def __init__(self, receive: Receive, cap: int, inflight: limits.InFlight) -> None:
        self._receive = receive
        self._cap = cap
        self._inflight = inflight
        self._seen = 0

    async def __call__(self) -> ASGIMessage:
        message = await self._receive()
        n = len(message.get("body", b""))
        self._seen += n
        self._inflight.bytes += n
        if self._seen > self._cap:
            await limits.discard_body(self._receive, message)
            raise _too_large(self._cap)
        return message

    def release(self) -> None:
        self._inflight.bytes -= self._seen
        self._seen = 0
