"""Per-tenant rate limits: token buckets for items per second and bytes per second."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

Clock = Callable[[], float]


class Admits(Protocol):
    """A tenant's quota: this process's buckets (Quota) or the fleet's (cluster/quota.py)."""

    def admit(self, items: int, size: int) -> float: ...


class TokenBucket:
    def __init__(self, rate: float, burst_seconds: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(rate * burst_seconds, 1.0)
        self.tokens = self.capacity
        self._last = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` can be taken (0 if now). A cost above the capacity needs a full
        bucket, so one large request is never refused forever."""
        self._refill(now)
        need = min(cost, self.capacity)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    def take(self, cost: float) -> None:
        self.tokens -= cost


class Quota:
    """Items/s and bytes/s buckets of one tenant; a request must fit both."""

    def __init__(
        self,
        items_per_second: float | None,
        bytes_per_second: float | None,
        burst_seconds: float,
        clock: Clock = time.monotonic,  # a fake one in unit tests
    ) -> None:
        self._clock = clock
        now = clock()
        self.items = TokenBucket(items_per_second, burst_seconds, now) if items_per_second else None
        self.bytes = TokenBucket(bytes_per_second, burst_seconds, now) if bytes_per_second else None

    def admit(self, items: int, size: int) -> float:
        """Take the request's cost and return 0, or take nothing and return the seconds to wait."""
        now = self._clock()
        wait = 0.0
        if self.items is not None:
            wait = max(wait, self.items.wait_for(items, now))
        if self.bytes is not None:
            wait = max(wait, self.bytes.wait_for(size, now))
        if wait > 0:
            return wait
        if self.items is not None:
            self.items.take(items)
        if self.bytes is not None:
            self.bytes.take(size)
        return 0.0
