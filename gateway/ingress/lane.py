"""The lane: small OTLP exports served by the server's protocol itself, without an ASGI task.

Most exports are small (a BatchSpanProcessor's few spans, one span per serverless invocation),
and for them the ASGI machinery was most of the cost: a task, a scope, receive and send
awaitables, an Event per body (~25 us of the ~62 us of a 1-span OTLP/HTTP request). The lane
takes a request whose head names an OTLP export path: the key and the budget are checked from
the head (before a byte of the body is kept), the server collects the body, and the request is
finished in the same turn of the event loop when nothing has to wait, which is the common case
(memory queues, no offloaded decompression). What does wait (a durable queue's fsync, zstd on a
thread) finishes as a task, as before.

Everything else goes to the app as usual: other paths, a head the lane would refuse (no key,
no budget: the app refuses it as it always did), bodies over LANE_MAX_BYTES (or of unknown size
over LANE_UNKNOWN_BYTES), chunked bodies over HTTP/1.1, `Expect: 100-continue`, and every
request when a middleware (CORS) has to see it. The server layer knows nothing of this module:
app.py hands it an OTLPLane as a plain callable (gateway.ingress.guard.Lane).
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator, Mapping
from typing import Any, Protocol, TypeVar

from gateway.errors import GatewayError, RequestTooLarge, too_large_message
from gateway.ingress.guard import EarlyAnswer, Header, LaneRequest
from gateway.ingress.limits import Held, body_timeout_error
from gateway.tenancy.tenants import Tenant

T = TypeVar("T")

# A body whose size is announced (content-length, a gRPC message's length prefix) takes the lane
# up to LANE_MAX_BYTES: that size is reserved in the in-flight budget before it is read, as the
# app does (a 512-span request is ~245 KB). One of unknown size (HTTP/2 without content-length)
# up to LANE_UNKNOWN_BYTES; the server hands one that grows past it to the app, which streams it.
LANE_MAX_BYTES = 1024 * 1024
LANE_UNKNOWN_BYTES = 64 * 1024


def eager(coro: Coroutine[Any, Any, T]) -> T | Awaitable[T]:
    """Run `coro` at once until it first waits: its result when it never does, else an
    awaitable that finishes it (an eager task, as asyncio has them from Python 3.12). Exceptions
    of the first step propagate here."""
    try:
        waiting = coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    return _Resumed(coro, waiting)


class _Resumed(Awaitable[T]):
    """A coroutine that waits on `waiting` (what its first step yielded): awaiting this passes
    that and everything after it to the awaiting task, as `await coro` would have."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, T]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, thrown in where the coroutine waits
                try:
                    waiting = coro.throw(exc)
                except StopIteration as done:
                    result: T = done.value
                    return result
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration as done:
                    result = done.value
                    return result


class Whole:
    """What a request taken whole shares, OTLP/HTTP or gRPC: its tenant admitted from the head
    on, its bytes held in the in-flight budget, the body's cap and the eager finish. A subclass
    takes the body (_take), says a refusal (_refuse) and the answer once accepted (_accepted)."""

    __slots__ = ("_cap", "_held", "_tenant", "_timeout")

    def __init__(self, tenant: Tenant, held: Held, cap: int, timeout: float) -> None:
        self._tenant = tenant
        self._held = held
        self._cap = cap  # limits.max_body_bytes: the lane's own cap may be larger
        self._timeout = timeout  # limits.body_timeout, for the refusal of a stalled body

    def finish(self, body: bytes) -> EarlyAnswer | Awaitable[EarlyAnswer]:
        return eager(self._finish(body))

    async def _finish(self, body: bytes) -> EarlyAnswer:
        try:
            self._held.add(len(body))
            if len(body) > self._cap:
                raise RequestTooLarge(too_large_message("the request body", self._cap))
            await self._take(body)
        except GatewayError as error:
            if error.tenant is None:
                error.tenant = self._tenant.name
            return self._refuse(error)
        finally:
            self._held.release()
        return self._accepted()

    def timed_out(self) -> EarlyAnswer:
        self._held.release()
        error = body_timeout_error(self._timeout)
        error.tenant = self._tenant.name
        return self._refuse(error)

    def abandon(self) -> None:
        self._held.release()

    async def _take(self, body: bytes) -> None:
        raise NotImplementedError

    def _refuse(self, error: GatewayError) -> EarlyAnswer:
        raise NotImplementedError

    def _accepted(self) -> EarlyAnswer:
        raise NotImplementedError


class _Takes(Protocol):
    def lane(self, header: Header, http2: bool) -> LaneRequest | None: ...


class OTLPLane:
    """The gateway's Lane: OTLP/HTTP exports (HTTP/1.1 and HTTP/2) and OTLP/gRPC Export calls
    (HTTP/2), by exact path, on every listener but the admin one."""

    def __init__(
        self, http: Mapping[str, _Takes], grpc: Mapping[str, _Takes], admin_port: int | None
    ) -> None:
        self._http = http
        self._grpc = grpc
        self._admin_port = admin_port

    def __call__(
        self, port: int | None, path: str, header: Header, http2: bool
    ) -> LaneRequest | None:
        if port is not None and port == self._admin_port:
            return None
        endpoint = self._http.get(path)
        if endpoint is None and http2:
            endpoint = self._grpc.get(path)
        return None if endpoint is None else endpoint.lane(header, http2)


def media_type(value: bytes | None) -> str:
    """A content-type header's media type, lower case, without parameters."""
    if not value:
        return ""
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def text_header(header: Header, names: tuple[bytes, ...]) -> dict[str, str]:
    """The named request headers that are present, as text (what the intake reads)."""
    out: dict[str, str] = {}
    for name in names:
        value = header(name)
        if value is not None:
            out[name.decode()] = value.decode("latin-1")
    return out


__all__ = [
    "LANE_MAX_BYTES",
    "LANE_UNKNOWN_BYTES",
    "EarlyAnswer",
    "OTLPLane",
    "eager",
    "media_type",
    "text_header",
]
