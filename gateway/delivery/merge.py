"""Merging queued requests into one export, and taking a merge apart again: concatenated export
requests of one signal are one valid request, so a run of queued requests of the same signal and
tenant is sent as one batch up to the backend's batch size; a batch the backend refuses is split
back into its requests, or a single request at the wire level. Pure: nothing here waits or does
I/O."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from gateway.delivery.batch import Batch
from gateway.delivery.queues import MemoryQueue, Queue
from gateway.otlp import split, wire


class Run:
    """Queued requests merged into one export: their queue tokens, the requests (`parts`) and
    their bytes. Takes requests of the first one's signal and tenant while they fit in
    `max_bytes`; the first one is taken whatever its size (it is split later)."""

    def __init__(self, token: int, batch: Batch, max_bytes: int) -> None:
        self.tokens = [token]
        self.parts = [batch]
        self.size = len(batch.payload)
        self.max_bytes = max_bytes

    def has_room(self) -> bool:
        return self.size < self.max_bytes

    def take(self, token: int, batch: Batch) -> bool:
        """Add `batch` if it merges with the run and fits; False: it starts the next run."""
        first = self.parts[0]
        if (
            batch.signal is first.signal
            and batch.tenant == first.tenant
            and self.size + len(batch.payload) <= self.max_bytes
        ):
            self.tokens.append(token)
            self.parts.append(batch)
            self.size += len(batch.payload)
            return True
        return False


def piece(batch: Batch, payload: bytes) -> Batch:
    """A part of `batch`'s request, its items counted."""
    return Batch(batch.signal, payload, wire.count_items(batch.signal, payload), batch.tenant)


def tally(parts: list[Batch]) -> Batch:
    """What the requests `parts` hold, to count them as dropped (the payload is left out)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return Batch(first.signal, b"", sum(p.items for p in parts), first.tenant)


def halves(parts: list[Batch]) -> tuple[list[Batch], list[Batch]] | None:
    """Two halves of a group of requests: the requests split in two by size, or a single
    request split at the wire level (gateway/otlp/split.py). None for a single item, or a request
    the splitter cannot read."""
    if len(parts) > 1:
        total = sum(len(p.payload) for p in parts)
        acc, cut = 0, 1
        for i, p in enumerate(parts[:-1], 1):
            acc += len(p.payload)
            cut = i
            if acc * 2 >= total:
                break
        return parts[:cut], parts[cut:]
    batch = parts[0]
    try:
        pair = split.halves(batch.signal, batch.payload)
        if pair is None:
            return None
        return [piece(batch, pair[0])], [piece(batch, pair[1])]
    except wire.WireError:
        return None


class MergeMemo:
    """The destinations of a fan-out take the same batch objects from their memory queues and, when
    they fall behind together, often merge the same run of them. The merged batch is then made
    once and shared, and with it the encodings its exporters make (Batch.encoded). Matched by
    identity, never by content: equal requests from two clients are two batches. Off unless
    more than one destination has a memory queue; holds the last few merges only."""

    SIZE = 4

    def __init__(self) -> None:
        self.active = False
        self._recent: deque[tuple[tuple[Batch, ...], Batch]] = deque(maxlen=self.SIZE)

    def merge(self, parts: list[Batch]) -> Batch:
        for held, merged in self._recent:
            if len(held) == len(parts) and all(a is b for a, b in zip(held, parts, strict=True)):
                return merged
        first = parts[0]
        merged = Batch(
            first.signal,
            b"".join(p.payload for p in parts),
            sum(p.items for p in parts),
            first.tenant,
        )
        if self.active:
            self._recent.append((tuple(parts), merged))
        return merged

    def update(self, queues: Iterable[Queue]) -> None:
        """Take the queues of every destination: on when more than one is in memory."""
        self.active = sum(isinstance(q, MemoryQueue) for q in queues) > 1
        if not self.active:
            self._recent.clear()
