"""The live tail: trace payloads of a tenant handed to whoever is watching it, as access-log
rows. Costs nothing while nobody watches (one dict lookup per request); a watcher that reads
too slowly skips payloads rather than holding memory or slowing intake."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from gateway.analysis import background
from gateway.otlp import spans
from gateway.telemetry import metrics

PENDING = 16  # payloads held per watcher; more are skipped and counted
PENDING_BYTES = 32 * 1024 * 1024  # and at most this many bytes of them
HEARTBEAT = 15.0  # seconds without rows after which an empty message is sent


def _rows_or_none(payload: bytes) -> list[spans.AccessRow]:
    """The rows of a payload, or none when it cannot be decoded (it was acknowledged already:
    a tail shows what it can and goes on)."""
    try:
        return spans.access_rows(payload)
    except spans.UndecodableError:
        metrics.SPANS_UNDECODABLE.labels("tail").inc()
        return []


class _Published:
    """One payload handed to a tenant's watchers; decoded once, by the first that reads it (on a
    worker thread when it is large)."""

    __slots__ = ("_analysis", "_decoding", "_rows", "items", "payload")

    def __init__(self, payload: bytes, items: int, analysis: background.Background) -> None:
        self.payload = payload
        self.items = items
        self._analysis = analysis
        self._rows: list[spans.AccessRow] | None = None
        self._decoding: asyncio.Future[list[spans.AccessRow] | None] | None = None

    async def rows(self, service: str) -> list[spans.AccessRow]:
        if self._rows is None:
            if len(self.payload) <= background.INLINE_BYTES:
                self._rows = _rows_or_none(self.payload)
            else:
                if self._decoding is None:
                    self._decoding = asyncio.ensure_future(
                        self._analysis.run(len(self.payload), _rows_or_none, self.payload)
                    )
                # shielded: a watcher that hangs up must not cancel the decode for the others
                rows = await asyncio.shield(self._decoding)
                self._rows = rows if rows is not None else []  # None: skipped, too much waiting
        return [r for r in self._rows if r.service == service] if service else self._rows

    @property
    def unshown(self) -> int:
        """Spans of the payload without a row (undecodable, past spans.MAX_ROWS, skipped)."""
        return max(0, self.items - len(self._rows)) if self._rows is not None else 0


class Watcher:
    def __init__(self, service: str) -> None:
        self.service = service
        self._pending: collections.deque[_Published] = collections.deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.skipped = 0  # spans left out since the last rows handed out
        self._pending_bytes = 0

    def offer(self, published: _Published, items: int) -> None:
        size = len(published.payload)
        if len(self._pending) >= PENDING or self._pending_bytes + size > PENDING_BYTES:
            self.skipped += items
            return
        self._pending.append(published)
        self._pending_bytes += size
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def rows(
        self, heartbeat: float = HEARTBEAT
    ) -> AsyncIterator[tuple[list[spans.AccessRow], int]]:
        """(rows, skipped) per payload as they arrive, and ([], 0) after `heartbeat` seconds of
        nothing (so a caller that hung up is noticed); ends when the hub closes."""
        while not self.closed:
            try:
                await asyncio.wait_for(self._ready.wait(), heartbeat)
            except TimeoutError:
                yield [], 0
                continue
            self._ready.clear()
            while self._pending and not self.closed:
                published = self._pending.popleft()
                self._pending_bytes -= len(published.payload)
                rows = await published.rows(self.service)
                if not self.service:
                    self.skipped += published.unshown
                skipped, self.skipped = self.skipped, 0
                if rows or skipped:
                    yield rows, skipped


class TailHub:
    def __init__(self, analysis: background.Background | None = None) -> None:
        # large payloads are decoded there, on the thread RED metrics use too
        self.analysis = analysis if analysis is not None else background.span_analysis()
        self._watchers: dict[str, set[Watcher]] = {}
        self._closed = False

    def watching(self, tenant: str) -> bool:
        return tenant in self._watchers

    def publish(self, tenant: str, payload: bytes, items: int) -> None:
        published = _Published(payload, items, self.analysis)
        for watcher in self._watchers.get(tenant, ()):
            watcher.offer(published, items)

    def close(self) -> None:
        """End every tail (the gateway is stopping: open streams must not hold it up)."""
        self._closed = True
        for group in self._watchers.values():
            for watcher in group:
                watcher.close()

    @contextmanager
    def watch(self, tenant: str, service: str = "") -> Iterator[Watcher]:
        watcher = Watcher(service)
        if self._closed:
            watcher.close()
        self._watchers.setdefault(tenant, set()).add(watcher)
        metrics.TAIL_SUBSCRIBERS.inc()
        try:
            yield watcher
        finally:
            metrics.TAIL_SUBSCRIBERS.dec()
            group = self._watchers.get(tenant)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del self._watchers[tenant]
