"""Request size limits, enforced before anything is decoded: a cap on the bytes read off the wire
and a cap on the bytes produced while decompressing (so a small gzip bomb cannot inflate)."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable

import zstandard
from starlette.types import Message, Receive

from gateway.config import DEFAULT_BODY_TIMEOUT
from gateway.errors import GatewayError, GrpcCode, too_large_message
from gateway.otlp import gz

# The tenant a request's bytes are charged to: set by the intake's admission check, read when
# the request's Held is made, in the same request task (the front ends need not pass it on).
_CHARGED_TO: contextvars.ContextVar[str] = contextvars.ContextVar("charged_to", default="")


class InFlight:
    """Bytes of the requests being read and processed right now (wire and decompressed), in
    total and per tenant (each tenant may hold `share` of them), and how long a client may
    pause while sending a body (`body_timeout`, seconds between two reads)."""

    def __init__(
        self, cap: int, share: int | None = None, body_timeout: float = DEFAULT_BODY_TIMEOUT
    ) -> None:
        self.cap = cap
        self.share = cap if share is None else min(share, cap)
        self.body_timeout = body_timeout
        self.bytes = 0
        self.by_tenant: dict[str, int] = {}

    @property
    def full(self) -> bool:
        return self.bytes >= self.cap

    def busy_message(self) -> str:
        return (
            f"the gateway is holding {self.bytes} bytes of requests (limit {self.cap}); "
            "retry after 1s"
        )

    def over_share(self, tenant: str) -> bool:
        return self.by_tenant.get(tenant, 0) >= self.share

    def share_message(self, tenant: str) -> str:
        return (
            f"tenant {tenant} has {self.by_tenant.get(tenant, 0)} bytes of requests in flight, "
            f"its share of the gateway's budget is {self.share}; retry after 1s "
            "(or send fewer requests at once)"
        )

    def charge_to(self, tenant: str) -> None:
        """Charge the bytes of the request being admitted (in this task) to `tenant`."""
        _CHARGED_TO.set(tenant)

    def hold(self, content_length: str, tenant: str | None = None) -> Held:
        """Count one request in flight from now (its announced length is reserved before a byte
        is read) until the returned context ends; charged to `tenant` (by default, to the one
        charge_to named in this task)."""
        return Held(self, content_length, tenant)

    def _add(self, tenant: str, n: int) -> None:
        self.bytes += n
        if tenant:
            held = self.by_tenant.get(tenant, 0) + n
            if held:
                self.by_tenant[tenant] = held
            else:
                self.by_tenant.pop(tenant, None)


class BodyTimeout(GatewayError):
    """The client paused longer than limits.body_timeout while sending a body."""

    http_status = 408
    grpc_code = GrpcCode.DEADLINE_EXCEEDED
    reason = "timeout"


class Held:
    """One request's bytes counted in an InFlight budget; released when the context ends."""

    def __init__(self, inflight: InFlight, content_length: str, tenant: str | None = None) -> None:
        self._inflight = inflight
        self._length = content_length  # as the client announced it ("" when it did not)
        self._tenant = _CHARGED_TO.get() if tenant is None else tenant
        self.bytes = int(content_length) if content_length.isdigit() else 0
        inflight._add(self._tenant, self.bytes)

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def add(self, n: int) -> None:
        """Count `n` more bytes of this request (read or made from it)."""
        self.bytes += n
        self._inflight._add(self._tenant, n)

    def release(self) -> None:
        self._inflight._add(self._tenant, -self.bytes)
        self.bytes = 0

    async def read(self, receive: Receive, cap: int) -> bytes:
        """The whole body, refused (TooLarge) as soon as it is known to pass `cap`, or
        (BodyTimeout) when the client pauses longer than the budget's body_timeout. The body
        counts on top of the reservation, standing in for its decompressed copy."""
        timeout = self._inflight.body_timeout
        if self._length.isdigit() and int(self._length) > cap:
            await discard_unless_huge(receive, self._length, timeout)
            raise TooLarge(too_large_message("the request body", cap))
        raw = await read_body(receive, cap, timeout)
        self.add(len(raw))
        return raw


# How much of an oversized body is still read (and thrown away) before the refusal is sent. Over
# HTTP/2 a response sent while the client is still sending makes the server reset the stream, and
# gRPC clients then report INTERNAL instead of our RESOURCE_EXHAUSTED.
DISCARD_LIMIT = 64 * 1024 * 1024


class TooLarge(Exception):
    """A body or its decompressed content is over the configured cap."""


class BadEncoding(Exception):
    """The body could not be decompressed with the encoding the client named."""


class UnknownEncoding(Exception):
    """The client named a content encoding this gateway does not accept."""


# Compressed input is fed to the inflater in pieces that start at _PIECE bytes and double within a
# member up to _MAX_PIECE, so what is left over when a gzip member ends (`unused_data`, a copy) is
# at most about what the member used: slicing the whole rest of the body per member made many
# small members quadratic (1.6 MB of empty members took 3 s).
_PIECE = 16 * 1024
_MAX_PIECE = 4 * 1024 * 1024
# Members of one gzip body. Clients send one; a few arise from concatenated streams. Each costs a
# new inflater, so a body of thousands of empty members is refused instead of inflated.
MAX_GZIP_MEMBERS = 1000
# zstd frames may not need a larger window than this: RFC 9659 limits the "zstd" content coding to
# 8 MiB, and the decoder would otherwise allocate what a frame header asks for (up to 128 MiB).
ZSTD_MAX_WINDOW = 8 * 1024 * 1024
# Output is taken from the zstd reader in pieces of this size (a bomb stops at the cap either way).
_ZSTD_READ = 1024 * 1024


def _too_large(cap: int) -> TooLarge:
    return TooLarge(too_large_message("the decompressed request", cap))


def _inflate(data: bytes, cap: int, wbits: int) -> bytes:
    """Inflate zlib/gzip/raw-deflate data (several gzip members in a row included), refusing
    output beyond `cap` as it is produced rather than after. Linear in the input: each piece of
    it is fed once."""
    out: list[bytes] = []
    produced = 0
    pos = 0
    end = len(data)
    members = 0
    with memoryview(data) as view:
        while pos < end:
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise BadEncoding(
                    f"the body holds more than {MAX_GZIP_MEMBERS} gzip members; "
                    "compress the request as one gzip stream"
                )
            d = gz.decompressobj(wbits)
            size = _PIECE
            while not d.eof:
                if pos >= end:
                    raise BadEncoding("compressed data is truncated")
                piece = view[pos : pos + size]
                size = min(2 * size, _MAX_PIECE)
                try:
                    chunk = d.decompress(piece, cap + 1 - produced)
                except gz.error as exc:
                    raise BadEncoding(str(exc)) from None
                produced += len(chunk)
                out.append(chunk)
                if produced > cap or d.unconsumed_tail:
                    # Drop the output first: a traceback kept in a reference cycle (connect-python
                    # keeps one) would otherwise pin up to `cap` bytes per refused request until
                    # the next GC.
                    del out, chunk
                    raise _too_large(cap)
                pos += len(piece) - (len(d.unused_data) if d.eof else 0)
            if wbits <= 16:
                break  # zlib and raw deflate hold one stream
            # Trailing zero padding after a gzip member is tolerated, as gzip(1) does (a member
            # never starts with a zero byte, so the rest is checked once).
            if pos < end and data[pos] == 0:
                if data.count(0, pos) != end - pos:
                    raise BadEncoding("data after the zero padding that follows a gzip member")
                break
    return b"".join(out)


def _gunzip(data: bytes, cap: int) -> bytes:
    return _inflate(data, cap, 16 + gz.MAX_WBITS)


def _inflate_deflate(data: bytes, cap: int) -> bytes:
    # HTTP "deflate" is zlib-wrapped; some clients send raw deflate.
    try:
        return _inflate(data, cap, gz.MAX_WBITS)
    except BadEncoding:
        return _inflate(data, cap, -gz.MAX_WBITS)


def _unzstd(data: bytes, cap: int) -> bytes:
    """Every zstd frame of the body (a body may hold several, as gzip may hold several members),
    all against the one output cap, with the decoder's window bounded by ZSTD_MAX_WINDOW."""
    out: list[bytes] = []
    produced = 0
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    try:
        with dctx.stream_reader(data, read_across_frames=True) as reader:
            while True:
                chunk = reader.read(min(_ZSTD_READ, cap + 1 - produced))
                if not chunk:
                    break
                produced += len(chunk)
                out.append(chunk)
                if produced > cap:
                    del out, chunk  # as in _inflate: no traceback may pin the output
                    raise _too_large(cap)
    except zstandard.ZstdError as exc:
        message = str(exc)
        if "too much memory" in message or "window" in message.lower():
            message += f" (frames may need at most a {ZSTD_MAX_WINDOW >> 20} MiB window)"
        raise BadEncoding(message) from None
    return b"".join(out)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _inflate_deflate,
    "zstd": _unzstd,
}


def slow_to_decompress(encoding: str) -> bool:
    """Whether decompressing `encoding` belongs off the event loop (gateway/otlp/offload.py): zstd's
    cost follows what it produces, up to the cap, whatever the input's size (a 6 KB bomb takes
    ~20-170 ms to reach 16 MiB, a body of a million empty frames ~200-400 ms). gzip and deflate
    stay under ~20 ms at the 16 MiB cap (ISA-L, MAX_GZIP_MEMBERS)."""
    return encoding.strip().lower() == "zstd"


def decompress(encoding: str, data: bytes, cap: int) -> bytes:
    """Decompress `data` sent with Content-Encoding `encoding`, producing at most `cap` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(data) > cap:
            raise TooLarge(too_large_message("the request", cap))
        return data
    decoder = _DECODERS.get(encoding)
    if decoder is None:
        raise UnknownEncoding(encoding)
    if not data:
        return b""
    return decoder(data, cap)


def accepted_encodings() -> list[str]:
    return ["gzip", "deflate", "zstd"]


class ClientGone(Exception):
    """The client disconnected before sending the whole body."""


def body_timeout_error(timeout: float) -> BodyTimeout:
    """The refusal of a body that paused longer than `timeout` seconds."""
    return BodyTimeout(
        f"the client sent nothing for {timeout:g}s while sending the request body "
        "(limits.body_timeout); send the whole body without pausing"
    )


async def receive_within(receive: Receive, timeout: float) -> Message:
    """The next ASGI message; BodyTimeout when none comes within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return await receive()
    except TimeoutError:
        raise body_timeout_error(timeout) from None


class _Sweeper:
    """One timer per event loop for every body being read: each read registers a _Watchdog, and
    a sweep every TICK seconds (only while reads are in progress) cancels the reads that made no
    progress within their timeout. A timer per request (call_at + cancel) was ~5% of the CPU of a
    1-span request; a timer per message (asyncio.timeout) ~10% on gRPC."""

    TICK = 0.25  # how late a timeout may fire (timeouts are seconds: 30 s by default)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reads: set[_Watchdog] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, watchdog: _Watchdog) -> None:
        self._reads.add(watchdog)
        if self._handle is None:
            self._handle = self._loop.call_later(self.TICK, self._sweep)

    def remove(self, watchdog: _Watchdog) -> None:
        self._reads.discard(watchdog)

    def _sweep(self) -> None:
        self._handle = None
        now = self._loop.time()
        for watchdog in [w for w in self._reads if now >= w.last + w.timeout]:
            self._reads.discard(watchdog)
            watchdog.fire()
        if self._reads:
            self._handle = self._loop.call_later(self.TICK, self._sweep)


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)


def _sweeper(loop: asyncio.AbstractEventLoop) -> _Sweeper:
    sweeper = _SWEEPERS.get(loop)
    if sweeper is None:
        sweeper = _SWEEPERS[loop] = _Sweeper(loop)
    return sweeper


class _Watchdog:
    """The body timeout of one read loop: a message only notes the time; the loop's _Sweeper
    cancels the reading task once `timeout` seconds passed without one."""

    __slots__ = ("_sweeper", "_task", "fired", "last", "timeout")

    def __init__(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.timeout = timeout
        self.last = loop.time()
        self.fired = False
        self._sweeper = _sweeper(loop)
        self._sweeper.add(self)

    def fire(self) -> None:
        if self._task is not None:
            self.fired = True
            self._task.cancel()

    def progress(self) -> None:
        self.last = self._sweeper._loop.time()

    def close(self) -> None:
        self._sweeper.remove(self)

    def timed_out(self) -> bool:
        """After a CancelledError: whether this watchdog caused it (then it is taken back)."""
        return self.fired and self._task is not None and self._task.uncancel() == 0


async def read_body(receive: Receive, cap: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    """Read an ASGI request body, refusing it as soon as it passes `cap` bytes, or when the client
    pauses for more than `timeout` seconds (BodyTimeout: what frees the budget held by a client
    that announced a large body and stopped sending)."""
    chunks: list[bytes] = []
    size = 0
    watchdog = _Watchdog(timeout)
    try:
        while True:
            message = await receive()
            watchdog.progress()
            if message["type"] == "http.disconnect":
                raise ClientGone("the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                del chunks
                watchdog.close()
                await discard_body(receive, message, timeout)
                raise TooLarge(too_large_message("the request body", cap))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    except asyncio.CancelledError:
        if watchdog.timed_out():
            raise body_timeout_error(timeout) from None
        raise
    finally:
        watchdog.close()


def worth_draining(content_length: str) -> bool:
    """Whether a refused body should be read away first: yes, unless it announces more than
    DISCARD_LIMIT bytes."""
    return not content_length.isdigit() or int(content_length) <= DISCARD_LIMIT


async def discard_unless_huge(
    receive: Receive, content_length: str, timeout: float = DEFAULT_BODY_TIMEOUT
) -> None:
    if worth_draining(content_length):
        await discard_body(receive, timeout=timeout)


async def discard_body(
    receive: Receive, last: Message | None = None, timeout: float = DEFAULT_BODY_TIMEOUT
) -> None:
    """Read and drop the rest of a body (up to DISCARD_LIMIT), so that a refusal is answered to a
    client that has finished sending. `last` is the latest message already received, if any. A
    client that pauses for more than `timeout` seconds is answered without waiting further."""
    seen = 0
    more = last is None or bool(last.get("more_body", False))
    if not more:
        return
    watchdog = _Watchdog(timeout)
    try:
        while more and seen <= DISCARD_LIMIT:
            message = await receive()
            watchdog.progress()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
    except asyncio.CancelledError:
        if not watchdog.timed_out():
            raise
    finally:
        watchdog.close()
