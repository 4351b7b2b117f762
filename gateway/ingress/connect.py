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

import json
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from connectrpc.code import Code
from connectrpc.compression import Compression
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from gateway._gen.opentelemetry.proto.collector.logs.v1.logs_service_connect import (
    LogsServiceASGIApplication,
)
from gateway._gen.opentelemetry.proto.collector.metrics.v1.metrics_service_connect import (
    MetricsServiceASGIApplication,
)
from gateway._gen.opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_connect as profiles_connect,
)
from gateway._gen.opentelemetry.proto.collector.trace.v1.trace_service_connect import (
    TraceServiceASGIApplication,
)
from gateway.config import Limits
from gateway.errors import (
    GatewayError,
    GrpcCode,
    InvalidRequest,
    RequestTooLarge,
    Unavailable,
    UnsupportedMediaType,
    too_large_message,
)
from gateway.ingress import limits
from gateway.ingress.grpc import (
    GrpcExport,
    Unimplemented,
    is_grpc_proto,
    retry_info,
    timeout_problem,
)
from gateway.ingress.intake import Intake, count_items, count_items_off_loop, text_headers
from gateway.otlp import gz, offload
from gateway.otlp import jsonpb as otlpjson
from gateway.otlp.signals import LOGS, METRICS, PROFILES, TRACES, Signal
from gateway.tenancy.tenants import Tenant

_APPLICATIONS: dict[str, Callable[..., Any]] = {
    TRACES.name: TraceServiceASGIApplication,
    METRICS.name: MetricsServiceASGIApplication,
    LOGS.name: LogsServiceASGIApplication,
    PROFILES.name: profiles_connect.ProfilesServiceASGIApplication,
}

_CODES = {
    GrpcCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    GrpcCode.RESOURCE_EXHAUSTED: Code.RESOURCE_EXHAUSTED,
    GrpcCode.UNAUTHENTICATED: Code.UNAUTHENTICATED,
    GrpcCode.PERMISSION_DENIED: Code.PERMISSION_DENIED,
    GrpcCode.UNAVAILABLE: Code.UNAVAILABLE,
    GrpcCode.INTERNAL: Code.INTERNAL,
    GrpcCode.UNIMPLEMENTED: Code.UNIMPLEMENTED,
    GrpcCode.DEADLINE_EXCEEDED: Code.DEADLINE_EXCEEDED,
}


class _Call:
    """What RPCService knows about the request being served, shared with the code connect-python
    calls (export(), the codecs) through a ContextVar."""

    __slots__ = ("answered", "raised", "refusal", "tenant", "transport")

    def __init__(self, transport: str) -> None:
        # The errors raised inside connect-python. It keeps a caught error in a local of the
        # frame its traceback points back to: a reference cycle that pins every frame in between
        # (with the request's buffers, up to the body cap) until a full GC. RPCService drops
        # their tracebacks once the request is answered.
        self.raised: list[BaseException] = []
        self.refusal: GatewayError | None = None  # the first one, counted and logged
        self.tenant: Tenant | None = None
        self.transport = transport
        # (reason, HTTP status, gRPC code) of a refusal seen in the response
        self.answered: tuple[str, int, int] | None = None


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


class _MethodNotAllowed(GatewayError):
    http_status = 405
    grpc_code = GrpcCode.UNIMPLEMENTED
    reason = "method_not_allowed"


class _Answered(GatewayError):
    """A refusal connect-python made itself (an unknown method path, content type or encoding),
    seen in its response, so that it is counted and logged like ours."""

    def __init__(self, transport: str, reason: str, http_status: int, grpc_code: int) -> None:
        super().__init__(f"refused by the {transport} protocol layer", reason=reason)
        self.http_status = http_status
        self.grpc_code = GrpcCode(grpc_code) if grpc_code in _GRPC_CODES else GrpcCode.UNKNOWN


_REASONS = {
    400: "invalid",
    404: "invalid",
    405: "method_not_allowed",
    408: "invalid",
    413: "too_large",
    415: "unsupported_media_type",
    501: "unsupported_media_type",  # Connect's mapping of UNIMPLEMENTED (an unknown encoding)
}
_GRPC_REASONS = {3: "invalid", 8: "too_large", 12: "unsupported_media_type"}
_GRPC_CODES = frozenset(int(c) for c in GrpcCode)


def _sanitized_headers(
    raw: list[tuple[bytes, bytes]], headers: dict[str, str]
) -> tuple[list[tuple[bytes, bytes]], InvalidRequest | None]:
    """The request headers as connect-python can take them, and the refusal to answer with.
    connect-python decodes every header value as UTF-8 and parses the timeout headers before it
    reads the body, and answers either with a 500 (UNKNOWN) when they are malformed: such
    headers are left out (connect-python then runs normally) and the request is refused."""
    problem = timeout_problem(headers)
    kept: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        try:
            name.decode()
            value.decode()
        except UnicodeDecodeError:
            if problem is None:
                shown = name.decode("latin-1")[:64]
                problem = InvalidRequest(
                    f"the value of header {shown!r} is not UTF-8; send it as ASCII "
                    "(or base64 in a -bin header)"
                )
            continue
        if problem is not None and name in (b"grpc-timeout", b"connect-timeout-ms"):
            continue
        kept.append((name, value))
    return (kept if problem is not None else raw), problem


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
        if len(raw) >= offload.PROCESS_MIN_BYTES:  # counted by export(), off the event loop
            self.data, self.items = raw, _COUNT_PENDING
            return len(raw)
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
        if request.items == _JSON_PENDING:
            await _convert_pending_json(request)  # a large result is left to count
        if request.items == _COUNT_PENDING:
            try:
                request.items = await count_items_off_loop(self._signal, request.data)
            except GatewayError as error:
                raise _refuse(error) from None
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
        if isinstance(message, RawRequest):
            if len(data) >= offload.MIN_BYTES:
                # converted by export(), off the event loop (~10 ms and more of json_format;
                # 15 MB held every other request for 4.4 s)
                message.data, message.items = bytes(data), _JSON_PENDING
                return message
            try:
                proto = otlpjson.canonical_json_to_proto(message.signal, data)
            except otlpjson.OTLPJSONError as exc:
                raise _refuse(InvalidRequest(str(exc))) from None
            message.ParseFromString(proto)
            return message
        try:
            # nesting bounded before json_format recurses (otlpjson.MAX_JSON_DEPTH)
            json_format.ParseDict(otlpjson.loads(data), message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
            raise _refuse(
                InvalidRequest(f"the body is not valid JSON for {message.DESCRIPTOR.name}: {exc}")
            ) from None
        return message


# RawRequest.items of a JSON body _JSONCodec left to convert, and of a large protobuf body left
# to count (both in export, off the event loop)
_JSON_PENDING = -1
_COUNT_PENDING = -2


async def _convert_pending_json(request: RawRequest) -> None:
    """Turn the JSON a RawRequest holds (see _JSONCodec) into validated, counted protobuf."""
    try:
        proto, items = await offload.json_to_counted_proto(
            request.signal, request.data, canonical=True
        )
    except otlpjson.OTLPJSONError as exc:
        raise _refuse(InvalidRequest(str(exc))) from None
    except offload.WorkerLost as exc:
        raise _refuse(Unavailable(f"{exc}; retry", retry_after=1.0)) from None
    if items is None:
        request.ParseFromString(proto)  # validates and counts
    else:
        request.data, request.items = proto, items


def _install_json_codec() -> None:
    """Make connect-python use _JSONCodec for Connect-JSON and gRPC+json. connect-python 0.9 has
    no per-app codec option, only a process-wide registry looked up per request: so this is done
    when an RPCService is made (not when the module is imported), and done once."""
    from connectrpc import _codec

    names = (_codec.CODEC_NAME_JSON, _codec.CODEC_NAME_JSON_CHARSET_UTF8)
    if all(isinstance(_codec._codecs.get(name), _JSONCodec) for name in names):
        return
    codec = _JSONCodec()
    for name in names:
        _codec._codecs[name] = codec


class RPCService:
    """One OTLP service on all RPC protocols, as an ASGI app mounted at its service path."""

    def __init__(
        self, signal: Signal, intake: Intake, limits_: Limits, inflight: limits.InFlight
    ) -> None:
        self.signal = signal
        _install_json_codec()
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
        self.grpc = self._grpc  # OTLP/gRPC Export alone, for the app's direct dispatch

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
        content_type = headers.get("content-type", "").lower()
        call = _Call(_transport(content_type))
        early = _early_refusal(scope, content_type, call.transport, headers)
        if early is not None:  # connect-python would answer these with a 500
            if drain:
                await limits.discard_body(receive)
            self._intake.refused(self.signal, call.transport, early)
            await _answer(send, call.transport, early)
            return
        raw_headers, bad_headers = _sanitized_headers(scope["headers"], headers)
        if bad_headers is not None:
            scope = {**scope, "headers": raw_headers}
        send = _watch_response(send, call)
        token = _CALL.set(call)
        try:
            # Who is asking is settled from the headers, before the body is read.
            call.tenant = self._intake.admit(self.signal, headers, self._inflight)
            if bad_headers is not None:
                raise bad_headers
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
            if call.refusal is None and call.answered is not None:
                call.refusal = _Answered(call.transport, *call.answered)
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


def _early_refusal(
    scope: Scope, content_type: str, transport: str, headers: Mapping[str, str]
) -> GatewayError | None:
    """What must be refused before connect-python sees the request (it raises, and answers 500,
    on these): a method other than POST, and gRPC without trailers (HTTP/1.1); and a Connect
    body in an encoding it does not take (it answers 501: a 5xx for bad input)."""
    if scope["method"] != "POST":
        return _MethodNotAllowed(f"{scope['method'][:32]!r} is not allowed here; use POST")
    if transport == "connect":
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip"):
            # 415 with Connect's code for it, which Connect clients read from the body
            return Unimplemented(
                f"content-encoding {encoding[:32]!r} is not supported; use gzip or none"
            )
    if (
        content_type.startswith("application/grpc")
        and not content_type.startswith("application/grpc-web")
        and "http.response.trailers" not in scope.get("extensions", {})
    ):
        return UnsupportedMediaType(
            f"{content_type.split(';', 1)[0]} needs HTTP/2 (its status travels in trailers); "
            "send gRPC over HTTP/2, or use gRPC-web, Connect or OTLP/HTTP over HTTP/1.1"
        )
    return None


async def _answer(send: Send, transport: str, error: GatewayError) -> None:
    """A refusal answered here, in the transport's shape: gRPC-web in headers (trailers-only),
    Connect (and gRPC over HTTP/1.1, which has no trailers) as a Connect error."""
    code = _CODES.get(error.grpc_code, Code.INTERNAL)
    grpc_status = [
        (b"grpc-status", str(int(error.grpc_code)).encode()),
        (b"grpc-message", quote(error.message, safe=" ").encode()),
    ]
    if transport == "grpc-web" and error.http_status != 405:
        status = 200
        headers = [(b"content-type", b"application/grpc-web+proto"), *grpc_status]
        body = b""
    else:
        status = error.http_status
        body = json.dumps({"code": code.value, "message": error.message}).encode()
        headers = [(b"content-type", b"application/json"), *grpc_status]
    if isinstance(error, _MethodNotAllowed):
        headers.append((b"allow", b"POST"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _watch_response(send: Send, call: _Call) -> Send:
    """send(), noting in `call` a refusal connect-python answered by itself: an HTTP error
    status, or a gRPC(-web) status other than OK."""

    async def watched(message: ASGIMessage) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            status = message.get("status", 200)
            if status == 504 and isinstance(call.refusal, limits.BodyTimeout):
                # Connect's deadline_exceeded is a 504; a body that stalled is the client's
                # doing, answered 408 as on OTLP/HTTP (the code in the body stays)
                status = 408
                message = {**message, "status": status}
            if status >= 400:
                call.answered = (_REASONS.get(status, "invalid"), status, 2)
            else:
                _note_grpc_status(call, message.get("headers", ()))
        elif kind == "http.response.trailers":
            _note_grpc_status(call, message.get("headers", ()))
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body[:1] == b"\x80":  # a gRPC-web trailers frame
                lines = (line.partition(b":") for line in bytes(body[5:]).split(b"\r\n"))
                _note_grpc_status(call, [(k.strip().lower(), v) for k, _, v in lines])
        await send(message)

    return watched


def _note_grpc_status(call: _Call, headers: Any) -> None:
    for name, value in headers:
        if name == b"grpc-status":
            text = value.strip()
            code = int(text) if text.isdigit() and len(text) < 4 else 2
            if code:
                call.answered = (_GRPC_REASONS.get(code, "invalid"), 200, code)


def _too_large(cap: int) -> ConnectError:
    return _refuse(RequestTooLarge(too_large_message("the request body", cap)))


def _refuse_body(receive: Receive, error: ConnectError, *, drain: bool) -> Receive:
    """A receive() that answers the request with `error` (after reading the body away)."""

    async def refuse() -> ASGIMessage:
        if drain:
            await limits.discard_body(receive)
        raise error

    return refuse


class _CappedReceive:
    """A receive() that refuses the body past `cap` bytes or after a pause longer than the
    budget's body_timeout, and counts what it read as in flight (charged to the admitted tenant)
    until release() (called once the request has been answered)."""

    def __init__(self, receive: Receive, cap: int, inflight: limits.InFlight) -> None:
        self._receive = receive
        self._cap = cap
        self._timeout = inflight.body_timeout
        self._held = inflight.hold("")
        self._seen = 0

    async def __call__(self) -> ASGIMessage:
        try:
            message = await limits.receive_within(self._receive, self._timeout)
        except limits.BodyTimeout as exc:
            raise _refuse(exc) from None
        n = len(message.get("body", b""))
        self._seen += n
        self._held.add(n)
        if self._seen > self._cap:
            await limits.discard_body(self._receive, message, self._timeout)
            raise _too_large(self._cap)
        return message

    def release(self) -> None:
        self._held.release()
