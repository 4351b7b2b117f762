"""A destination's queue: in memory, or durable on disk (a Spool). Both hand out (token, Batch)
pairs and take acknowledgements; a durable queue keeps what was not acknowledged across restarts,
with the tenant (and so the tenant's headers) framed into every record."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Awaitable
from pathlib import Path

from gateway.delivery.batch import Batch
from gateway.delivery.spool import QUARANTINE_DIR, Spool, count_quarantined
from gateway.otlp.signals import SIGNALS

_RECORD = struct.Struct(">BBIH")  # version, signal index, items, tenant length
_VERSION = 1
_SIGNAL_INDEX = {s.name: i for i, s in enumerate(SIGNALS)}


def encode(batch: Batch) -> bytes:
    tenant = batch.tenant.encode()
    head = _RECORD.pack(_VERSION, _SIGNAL_INDEX[batch.signal.name], batch.items, len(tenant))
    return head + tenant + batch.payload


class UndecodableRecord(ValueError):
    """A queue record that passed the spool's crc but is not a batch this gateway can read."""


def decode(record: bytes) -> Batch:
    """The batch in a queue record; raises UndecodableRecord saying what is wrong with it."""
    try:
        version, signal, items, tenant_len = _RECORD.unpack_from(record)
        if version != _VERSION:
            raise UndecodableRecord(f"unknown queue record version {version}")
        if signal >= len(SIGNALS):
            raise UndecodableRecord(f"unknown signal index {signal}")
        start = _RECORD.size
        if start + tenant_len > len(record):
            raise UndecodableRecord(f"the tenant length {tenant_len} runs past the record")
        tenant = record[start : start + tenant_len].decode()
    except (struct.error, UnicodeDecodeError) as exc:
        raise UndecodableRecord(f"not a queue record: {exc}") from exc
    return Batch(SIGNALS[signal], record[start + tenant_len :], items, tenant)


class MemoryQueue:
    durable = False

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._queue: asyncio.Queue[tuple[int, Batch]] = asyncio.Queue()
        self._unacked: dict[int, int] = {}  # token -> bytes, handed out and not acknowledged
        self._since: dict[int, float] = {}  # token -> when queued, in order, until acknowledged
        self._next = 0
        self.queued_bytes = 0  # queued and in delivery

    async def open(self) -> None:
        pass

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def has_room(self, size: int) -> bool:
        # An empty queue takes any batch, so one batch larger than max_bytes is not refused forever.
        return self.queued_bytes == 0 or self.queued_bytes + size <= self.max_bytes

    def submit(self, batch: Batch) -> Awaitable[int] | None:
        self._next += 1
        self.queued_bytes += len(batch.payload)
        self._since[self._next] = time.time()
        self._queue.put_nowait((self._next, batch))
        return None

    async def get(self) -> tuple[int, Batch]:
        token, batch = await self._queue.get()
        self._unacked[token] = len(batch.payload)
        return token, batch

    def get_nowait(self) -> tuple[int, Batch] | None:
        try:
            token, batch = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        self._unacked[token] = len(batch.payload)
        return token, batch

    def ack(self, token: int) -> None:
        self.queued_bytes -= self._unacked.pop(token, 0)
        self._since.pop(token, None)

    def oldest_age(self) -> float:
        """Seconds since the oldest batch not yet acknowledged was queued (0 when none)."""
        for queued in self._since.values():
            return max(0.0, time.time() - queued)
        return 0.0

    def problem(self) -> str | None:
        return None

    quarantined = 0  # a memory queue keeps nothing aside

    def warning(self) -> str | None:
        return None

    def quarantine(self, token: int, reason: str, batch: Batch) -> None:
        """A batch that cannot be delivered: a memory queue cannot keep it, so it is gone
        (the caller counts it as dropped)."""
        self.ack(token)

    def pending_items(self) -> int:
        """Items queued or handed out and not acknowledged: lost if the process stops now."""
        return sum(b.items for _, b in self._queue._queue)  # type: ignore[attr-defined]

    async def close(self) -> None:
        pass


class DurableQueue:
    durable = True

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._spool: Spool | None = None

    @property
    def spool(self) -> Spool:
        assert self._spool is not None, "open() the queue first"
        return self._spool

    async def open(self) -> None:
        if self._spool is None:
            self._spool = await Spool.open(self.directory, max_bytes=self.max_bytes)

    @property
    def depth(self) -> int:
        return self.spool.pending_records

    @property
    def queued_bytes(self) -> int:
        return self.spool.unacked_bytes

    def has_room(self, size: int) -> bool:
        return self.spool.has_room(size + _RECORD.size + 64)

    def submit(self, batch: Batch) -> Awaitable[int] | None:
        return self.spool.submit(encode(batch))

    async def get(self) -> tuple[int, Batch]:
        while True:
            rid, record = await self.spool.get()
            batch = self._decode(rid, record)
            if batch is not None:
                return rid, batch

    def get_nowait(self) -> tuple[int, Batch] | None:
        while (got := self.spool.get_nowait()) is not None:
            batch = self._decode(*got)
            if batch is not None:
                return got[0], batch
        return None

    def _decode(self, rid: int, record: bytes) -> Batch | None:
        """The record's batch; None (the record goes to quarantine) when it does not decode:
        one bad record must not stop the queue behind it."""
        try:
            return decode(record)
        except UndecodableRecord as exc:
            self.spool.quarantine(rid, f"the queue record does not decode ({exc})", record)
            return None

    def quarantine(self, token: int, reason: str, batch: Batch) -> None:
        """Move a batch that cannot be delivered to the spool's quarantine (kept on disk)."""
        self.spool.quarantine(token, reason, encode(batch))

    @property
    def quarantined(self) -> int:
        return self.spool.quarantined if self._spool is not None else 0

    def warning(self) -> str | None:
        """Records kept in quarantine (blocking: counts the files): the queue works, but they
        are data the operator must look at."""
        if self._spool is None:
            return None
        n = self._spool.quarantined = count_quarantined(self.directory)
        if not n:
            return None
        return (
            f"the queue {self.directory} has {n} record{'s' if n != 1 else ''} in quarantine "
            f"({self.directory / QUARANTINE_DIR}): data that could not be delivered; see the "
            f"log, look at the files, then delete them"
        )

    def ack(self, token: int) -> None:
        self.spool.ack(token)

    def oldest_age(self) -> float:
        return self.spool.oldest_unacked_age() if self._spool is not None else 0.0

    def problem(self) -> str | None:
        """Why the queue cannot store batches now (None when it can). Writes, syncs and removes
        a small file, so a disk that went read-only, full or away is seen before a client is."""
        if self._spool is None:
            return f"the queue {self.directory} is not open"
        if self._spool.broken is not None:
            return self._spool.broken
        probe = self.directory / ".ready-probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return f"the queue directory {self.directory} is not writable: {exc.strerror or exc}"
        return None

    def pending_items(self) -> int:
        return 0  # what is not acknowledged stays on disk for the next start

    async def close(self) -> None:
        if self._spool is not None:
            await self._spool.close()


Queue = MemoryQueue | DurableQueue
