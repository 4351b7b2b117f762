"""Budgets that keep one client from starving the others: token buckets for stream churn per
connection and per peer address, a lockout for repeated failed attempts, and a throttle for
repeated log lines. Plain values with no knowledge of HTTP, tenants or asyncio's transports, so the
server layer (uvicorn_h2) and the app layers can both use them."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

Header = Callable[[bytes], "bytes | None"]  # a request header by its lower-case name


@dataclass(frozen=True, slots=True)
class EarlyAnswer:
    """A complete response the server sends itself. With `trailers_only` (gRPC) the headers end
    the stream; `trailers` end it after the body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers_only: bool = False
    trailers: list[tuple[bytes, bytes]] | None = None  # HTTP/2 only (a gRPC status)


# What the app hands the server: (local port, path, header) -> the answer to send instead of
# starting the app, or None to serve the request as usual.
RefuseEarly = Callable[[int | None, str, Header], EarlyAnswer | None]


class LaneRequest(Protocol):
    """A request the app takes from the server whole, without an ASGI task (see Lane)."""

    def limit(self, first: bytes) -> int:
        """The most bytes its body may have in the lane, given the body's first bytes (what the
        request announced); a body that grows past it goes to the app (HTTP/2). 0: at once."""
        ...

    def finish(self, body: bytes) -> EarlyAnswer | Awaitable[EarlyAnswer]:
        """The answer to the request with this body: at once when nothing had to wait (the
        common case), else an awaitable of it. Never raises for bad input: that is an answer."""
        ...

    def timed_out(self) -> EarlyAnswer:
        """The body paused longer than limits.body_timeout: the answer that ends the request."""
        ...

    def abandon(self) -> None:
        """The client went away before the body was complete."""
        ...


# What the app hands the server for the hot path, the small OTLP exports (ingress/lane.py):
# (local port, path, header, HTTP/2) -> a LaneRequest that takes the body, or None to serve the
# request as usual. Called for a POST once its head is complete, so the key is checked before a
# byte of the body is kept.
Lane = Callable[[int | None, str, Header, bool], "LaneRequest | None"]

# Stream churn (resets from either side, streams refused before they reach the app) one HTTP/2
# connection may cause: a burst, then a steady rate. nghttp2 and Go allow about 1000 resets; zttp
# ends a connection after about 500 by itself. Normal exporters reset a stream only on a timeout.
CONN_CHURN_BURST = 256
CONN_CHURN_RATE = 32.0  # per second
# The same across every connection of one peer address, and every new connection counts: this is
# what a client that reconnects after each GOAWAY runs into. Behind a proxy every client shares
# the proxy's address, so the budget is generous and counts only churn, never a served request.
PEER_CHURN_BURST = 5000
PEER_CHURN_RATE = 1000.0  # per second
MAX_PEERS = 4096  # peers tracked at once; the least recently seen is forgotten first


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; take() spends one if there is one."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, burst: float, rate: float, now: float | None = None) -> None:
        self._burst = burst
        self._rate = rate
        self._tokens = burst
        self._last = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        if now is None:
            now = time.monotonic()
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class PeerBudget:
    """A token bucket per peer address, in a table bounded to `max_peers` (least recently seen
    first out: a forgotten peer starts again with a full bucket, which is what it would have after
    a quiet spell anyway)."""

    def __init__(
        self,
        burst: float = PEER_CHURN_BURST,
        rate: float = PEER_CHURN_RATE,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self._burst = burst
        self._rate = rate
        self._max = max_peers
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, peer: str) -> bool:
        bucket = self._peers.get(peer)
        if bucket is None:
            bucket = self._peers[peer] = TokenBucket(self._burst, self._rate)
            if len(self._peers) > self._max:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return bucket.take()


# Failed attempts (a wrong admin key) a peer may make before it has to wait, and how long the
# wait grows to: 1 s after the 5th failure, doubling with each failure after a wait, up to 60 s.
FREE_FAILURES = 5
MAX_LOCKOUT = 60.0
FORGET_AFTER = 900.0  # a peer's failures are forgotten after this long without one


@dataclass(slots=True)
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class FailureLimiter:
    """Slows down repeated failures per peer: after `free` failures each further one locks the
    peer out for a time that doubles (capped); attempts during a lockout are refused without being
    checked, so they neither count nor extend it. A success forgets the peer's failures."""

    def __init__(
        self,
        free: int = FREE_FAILURES,
        max_lockout: float = MAX_LOCKOUT,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self._free = free
        self._max_lockout = max_lockout
        self._max_peers = max_peers
        self._peers: OrderedDict[str, _Failures] = OrderedDict()

    def wait(self, peer: str) -> float:
        """Seconds `peer` must still wait before its next attempt is checked (0: go ahead)."""
        entry = self._peers.get(peer)
        if entry is None:
            return 0.0
        now = time.monotonic()
        if now - entry.last > FORGET_AFTER:
            del self._peers[peer]
            return 0.0
        return max(0.0, entry.locked_until - now)

    def failed(self, peer: str) -> float:
        """Record a failure; the lockout it starts, in seconds (0 while failures are free)."""
        now = time.monotonic()
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._peers[peer] = _Failures()
            if len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        entry.count += 1
        entry.last = now
        over = entry.count - self._free
        if over < 0:
            return 0.0
        lockout = min(self._max_lockout, 2.0**over)
        entry.locked_until = now + lockout
        return lockout

    def succeeded(self, peer: str) -> None:
        self._peers.pop(peer, None)


def retry_after(seconds: float) -> int:
    """A Retry-After value (whole seconds, at least 1) for a wait of `seconds`."""
    return max(1, math.ceil(seconds))


LOG_INTERVAL = 10.0  # seconds
LOG_BURST = 5  # full lines per key and interval before they are only counted


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 1
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = None


class LogThrottle(Generic[K]):
    """At most `burst` full log lines per key and `interval`, then one summary line with the
    count of those left out (logged when the interval ends, through `summary`). Keys must come
    from a bounded set (each is kept until its interval ends)."""

    def __init__(
        self,
        summary: Callable[[K, int, float], None],
        interval: float = LOG_INTERVAL,
        burst: int = LOG_BURST,
    ) -> None:
        self._summary = summary
        self._interval = interval
        self._burst = burst
        self._windows: dict[K, _Window] = {}

    def admit(self, key: K) -> bool:
        """Whether to log this occurrence of `key` in full; if not, it is counted."""
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window.start >= self._interval:
            if window is not None:
                self._flush(key)
            self._windows[key] = _Window(now)
            return True
        if window.logged < self._burst:
            window.logged += 1
            return True
        window.suppressed += 1
        if window.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a unit test): summarised at the next full line
                return False
            window.timer = loop.call_at(
                loop.time() + window.start + self._interval - now, self._flush, key
            )
        return False

    def _flush(self, key: K) -> None:
        window = self._windows.pop(key, None)
        if window is None:
            return
        if window.timer is not None:
            window.timer.cancel()
        if window.suppressed:
            self._summary(key, window.suppressed, self._interval)
