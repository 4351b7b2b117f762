"""OTLP/gRPC Export served directly: the hot path of every gRPC exporter.

A unary Export is one length-prefixed message in, one out, and a status in the trailers, so it is
handled here on the wire, as OTLP/HTTP is in http_ingress: the body is read with a byte cap,
inflated with a bounded inflater, validated and counted by the wire walk, and handed to the
intake; nothing is copied or decoded on the way. connect-python still serves gRPC-web, Connect
and gRPC with the JSON codec (rpc_ingress), which are rare and not performance-critical.
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from urllib.parse import quote

from google.rpc import error_details_pb2, status_pb2
from starlette.types import Message, Receive, Scope, Send

from gateway.config import Limits
from gateway.errors import (
    GatewayError,
    GrpcCode,
    InvalidRequest,
    RequestTooLarge,
    UnsupportedMediaType,
    too_large_message,
)
from gateway.ingress import limits
from gateway.ingress.guard import EarlyAnswer, Header, LaneRequest
from gateway.ingress.intake import Intake, count_items, count_items_off_loop, text_headers
from gateway.ingress.lane import LANE_MAX_BYTES, Whole, text_header
from gateway.otlp import offload
from gateway.otlp.signals import Signal
from gateway.tenancy.tenants import Tenant

PROTO_TYPES = frozenset({b"application/grpc", b"application/grpc+proto"})
_ENCODINGS = {"identity": "", "gzip": "gzip", "deflate": "deflate", "zstd": "zstd"}
_ACCEPT = b"gzip,deflate,zstd,identity"
_PREFIX = 5  # compressed flag (1 byte) + message length (4 bytes, big-endian)
# gRPC: at most 8 ASCII digits and a unit; Connect: at most 10 digits (milliseconds).
_TIMEOUTS = {
    "grpc-timeout": (re.compile(r"[0-9]{1,8}[HMSmun]\Z"), "1 to 8 digits and a unit (H M S m u n)"),
    "connect-timeout-ms": (re.compile(r"[0-9]{1,10}\Z"), "1 to 10 digits (milliseconds)"),
}


def timeout_problem(headers: dict[str, str]) -> InvalidRequest | None:
    """The refusal for a malformed grpc-timeout or connect-timeout-ms header, if there is one."""
    for name, (pattern, form) in _TIMEOUTS.items():
        value = headers.get(name)
        if value is not None and not pattern.match(value):
            return InvalidRequest(f"{name} {value[:64]!r} is not a valid timeout: send {form}")
    return None


class Unimplemented(GatewayError):
    http_status = 415
    grpc_code = GrpcCode.UNIMPLEMENTED
    reason = "unsupported_media_type"


class _MethodNotAllowed(GatewayError):
    http_status = 405
    grpc_code = GrpcCode.UNIMPLEMENTED
    reason = "method_not_allowed"


class _ProtocolError(GatewayError):
    """gRPC's own rule: a compressed message without a grpc-encoding is INTERNAL."""

    http_status = 400
    grpc_code = GrpcCode.INTERNAL
    reason = "invalid"


def is_grpc_proto(scope: Scope) -> bool:
    """gRPC with the protobuf codec, on a server that can send trailers (HTTP/2)."""
    if "http.response.trailers" not in scope.get("extensions", {}):
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() in PROTO_TYPES
    return False


class GrpcExport:
    """The Export method of one signal's service, over gRPC with the protobuf codec."""

    def __init__(
        self, signal: Signal, intake: Intake, limits_: Limits, inflight: limits.InFlight
    ) -> None:
        self.signal = signal
        self._intake = intake
        self._limits = limits_
        self._inflight = inflight
        self._ok = frame(signal.response_type().SerializeToString())
        self._ok_answer = EarlyAnswer(200, _OK_HEADERS, self._ok, trailers=_OK_TRAILERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._handle(scope, text_headers(scope["headers"]), receive)
        except GatewayError as error:
            self._intake.refused(self.signal, "grpc", error)
            await _respond(send, b"", error)
            return
        await _respond(send, self._ok, None)

    def lane(self, header: Header, http2: bool) -> LaneRequest | None:
        """The call whole, from the server (ingress/lane.py), when its head allows: gRPC with
        the protobuf codec over HTTP/2, a known grpc-encoding, a valid timeout, a tenant with
        room. A gRPC body announces its length in its first bytes (limit()); one over
        LANE_MAX_BYTES goes to the app. Anything else, refusals included, the app serves as
        usual."""
        if not http2:
            return None
        kind = header(b"content-type")
        if kind is None or kind.split(b";", 1)[0].strip().lower() not in PROTO_TYPES:
            return None
        headers = text_header(header, _LANE_HEADERS)
        encoding = _ENCODINGS.get(headers.get("grpc-encoding", "identity").strip().lower())
        if encoding is None or timeout_problem(headers) is not None:
            return None
        try:
            tenant = self._intake.admit(self.signal, headers, self._inflight, charge=False)
        except GatewayError:
            return None
        charged = "" if self._intake.registry.open else tenant.name
        held = self._inflight.hold(headers.get("content-length", ""), charged)
        return _WholeCall(self, encoding, tenant, held)

    async def _handle(self, scope: Scope, headers: dict[str, str], receive: Receive) -> None:
        length = headers.get("content-length", "")
        try:
            if scope["method"] != "POST":  # gRPC is POST only
                raise _MethodNotAllowed(
                    f"{scope['method'][:32]!r} is not allowed; gRPC calls are POST"
                )
            if not scope["path"].endswith("/Export"):
                raise Unimplemented(f"{scope['path']} is not a method of {self.signal.service}")
            encoding = _ENCODINGS.get(headers.get("grpc-encoding", "identity").strip().lower())
            if encoding is None:
                raise Unimplemented(
                    f"grpc-encoding {headers['grpc-encoding']!r} is not "
                    f"supported; use gzip, deflate, zstd or identity"
                )
            tenant = self._intake.admit(self.signal, headers, self._inflight)
            bad_timeout = timeout_problem(headers)
            if bad_timeout is not None:
                bad_timeout.tenant = tenant.name
                raise bad_timeout
        except GatewayError:
            # Read the body away first: answering while the client still sends resets the
            # stream, and gRPC clients then see INTERNAL instead of our status.
            await limits.discard_unless_huge(receive, length)
            raise
        try:
            await self._accept(receive, length, encoding, tenant)
        except GatewayError as error:
            if error.tenant is None:
                error.tenant = tenant.name
            raise

    async def _accept(self, receive: Receive, length: str, encoding: str, tenant: Tenant) -> None:
        with self._inflight.hold(length) as held:
            try:
                body = await held.read(receive, self._limits.max_body_bytes)
            except limits.TooLarge as exc:
                raise RequestTooLarge(str(exc)) from None
            except limits.ClientGone as exc:
                raise InvalidRequest(str(exc)) from None
            await self._take(body, encoding, tenant)

    async def _take(self, body: bytes, encoding: str, tenant: Tenant) -> None:
        """Unframe, inflate, count and hand a whole request body to the intake."""
        data = await self._message(body, encoding)
        if len(data) < offload.PROCESS_MIN_BYTES:
            items = count_items(self.signal, data, "message")
        else:
            items = await count_items_off_loop(self.signal, data, "message")
        await self._intake.accept(self.signal, data, items, tenant, "grpc")

    async def _message(self, body: bytes, encoding: str) -> bytes:
        try:
            flag, data = unframe(body)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        if flag == 0:
            if len(data) > self._limits.max_request_bytes:
                raise RequestTooLarge(
                    too_large_message("the request", self._limits.max_request_bytes)
                )
            return data
        if flag != 1 or not encoding:
            raise _ProtocolError("the message is flagged compressed but grpc-encoding is not set")
        cap = self._limits.max_request_bytes
        try:
            if limits.slow_to_decompress(encoding):
                return await offload.run(limits.decompress, encoding, data, cap)
            return limits.decompress(encoding, data, cap)
        except limits.TooLarge as exc:
            raise RequestTooLarge(str(exc)) from None
        except limits.BadEncoding as exc:
            raise InvalidRequest(f"the message is not valid {encoding}: {exc}") from None
        except limits.UnknownEncoding:  # pragma: no cover - filtered by _ENCODINGS
            raise UnsupportedMediaType(f"unknown grpc-encoding {encoding!r}") from None


def frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(body: bytes) -> tuple[int, bytes]:
    """(compressed flag, message) of a body holding exactly one gRPC message; ValueError when it
    does not."""
    if len(body) < _PREFIX:
        raise ValueError("the body is not a gRPC message (shorter than its 5-byte prefix)")
    size = int.from_bytes(body[1:5], "big")
    if size != len(body) - _PREFIX:
        raise ValueError(
            "the body must be exactly one gRPC message: its prefix says "
            f"{size} bytes, the body holds {len(body) - _PREFIX}"
        )
    return body[0], body[_PREFIX:] if size else b""


def retry_info(error: GatewayError) -> error_details_pb2.RetryInfo | None:
    """OTLP's retry delay for a retryable refusal (RESOURCE_EXHAUSTED, UNAVAILABLE)."""
    if error.retry_after is None:
        return None
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromTimedelta(timedelta(seconds=error.retry_after))
    return info


def _status_details(error: GatewayError) -> bytes | None:
    info = retry_info(error)
    if info is None:
        return None
    status = status_pb2.Status(code=int(error.grpc_code), message=error.message)
    status.details.add().Pack(info)
    return base64.b64encode(status.SerializeToString()).rstrip(b"=")


async def _respond(send: Send, message: bytes, error: GatewayError | None) -> None:
    if error is None:
        await send_grpc(send, message)
        return
    trailers = []
    headers = []
    details = _status_details(error)
    if details is not None:
        trailers.append((b"grpc-status-details-bin", details))
        headers.append((b"retry-after", str(max(1, round(error.retry_after or 1))).encode()))
    await send_grpc(send, message, int(error.grpc_code), error.message, headers, trailers)


async def send_grpc(
    send: Send,
    message: bytes = b"",
    code: int = 0,
    text: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    trailers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A gRPC response: headers, the (framed) message, and the status in trailers (sent as
    trailers even without a message: an ASGI server ends a body-less response with an empty DATA
    frame, which gRPC clients refuse after trailers-only headers)."""
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/grpc"),
            (b"grpc-accept-encoding", _ACCEPT),
            *(headers or ()),
        ],
        "trailers": True,
    }
    status = [(b"grpc-status", str(code).encode())]
    if code:
        status.append((b"grpc-message", quote(text, safe=" ").encode()))
    await send(start)
    await send({"type": "http.response.body", "body": message, "more_body": False})
    await send(
        {
            "type": "http.response.trailers",
            "headers": status + (trailers or []),
            "more_trailers": False,
        }
    )


_OK_HEADERS = [(b"content-type", b"application/grpc"), (b"grpc-accept-encoding", _ACCEPT)]
_OK_TRAILERS = [(b"grpc-status", b"0")]
# what the intake and the call's checks read of its head
_LANE_HEADERS = (
    b"authorization",
    b"x-api-key",
    b"content-length",
    b"grpc-encoding",
    b"grpc-timeout",
    b"connect-timeout-ms",
)


def _refusal_answer(error: GatewayError) -> EarlyAnswer:
    """What _respond sends for a refusal, as one answer for the server to send."""
    headers = list(_OK_HEADERS)
    trailers = [
        (b"grpc-status", str(int(error.grpc_code)).encode()),
        (b"grpc-message", quote(error.message, safe=" ").encode()),
    ]
    details = _status_details(error)
    if details is not None:
        trailers.append((b"grpc-status-details-bin", details))
        headers.append((b"retry-after", str(max(1, round(error.retry_after or 1))).encode()))
    return EarlyAnswer(200, headers, trailers=trailers)


class _WholeCall(Whole):
    """A call taken whole through the lane: the message counts in the in-flight budget from when
    its length prefix announces it."""

    __slots__ = ("_encoding", "_export")

    def __init__(
        self, export: GrpcExport, encoding: str, tenant: Tenant, held: limits.Held
    ) -> None:
        limits_ = export._limits
        super().__init__(tenant, held, limits_.max_body_bytes, limits_.body_timeout)
        self._export = export
        self._encoding = encoding

    def limit(self, first: bytes) -> int:
        """The message's length prefix announces the body: reserved now, as a content-length
        is; too large for the lane (or no prefix yet), the app takes the call."""
        if len(first) < _PREFIX:
            return 0
        size = _PREFIX + int.from_bytes(first[1:5], "big")
        if size > min(LANE_MAX_BYTES, self._cap):
            return 0
        self._held.add(size)
        return size

    async def _take(self, body: bytes) -> None:
        await self._export._take(body, self._encoding, self._tenant)

    def _refuse(self, error: GatewayError) -> EarlyAnswer:
        export = self._export
        export._intake.refused(export.signal, "grpc", error)
        return _refusal_answer(error)

    def _accepted(self) -> EarlyAnswer:
        return self._export._ok_answer
