"""The spool's facade: a durable FIFO of opaque records for one destination, on the event loop.

`Spool` keeps the books (ids, segments and their sizes, what is pending, handed out and
acknowledged, the memory and disk budgets) on the event loop and hands all file work to its
SpoolWriter's thread. See the package's docstring for the files and what survives a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.delivery.spool.errors import RecordTooLarge, SpoolClosed, SpoolError, SpoolFull
from gateway.delivery.spool.record import HEADER_SIZE, ack_frame
from gateway.delivery.spool.recovery import Recovered
from gateway.delivery.spool.segment import CorruptRead, Entry, Segment, read_record
from gateway.delivery.spool.writer import SpoolWriter, WriteFailed

log = logging.getLogger("otlp_gateway.spool")

MiB = 1024 * 1024
_MAX_GROUP_BYTES = 64 * MiB


class Spool:
    """A durable FIFO of opaque records for one destination. Use from one event loop.

    `await append(record)` -> id once durable; `await get()` -> (id, record), FIFO; `ack(id)`
    after delivery (any order). A record handed out by get() and not acknowledged is handed out
    again only after a restart (the caller retries it in memory until it acks it).
    """

    def __init__(
        self,
        directory: Path,
        recovered: Recovered,
        writer: SpoolWriter,
        *,
        max_bytes: int,
        segment_bytes: int,
        memory_bytes: int,
        ack_sync_interval: float,
    ) -> None:
        self.directory = directory
        self.recovery = recovered.report
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._memory_bytes = memory_bytes
        self._ack_sync_interval = ack_sync_interval
        self._writer = writer  # every file operation goes through it, on its thread
        self._segments: dict[int, Segment] = {s.first_id: s for s in recovered.segments}
        self._active: Segment | None = None
        self._next_id = recovered.next_id
        self._disk_bytes = recovered.disk_bytes
        self._pending: collections.deque[Entry] = collections.deque(recovered.entries)
        self._inflight: dict[int, Entry] = {}
        self._unacked_bytes = sum(e.length for e in recovered.entries)
        self._cached_bytes = 0
        self._queued: list[tuple[Entry, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._nonempty = asyncio.Event()
        if self._pending:
            self._nonempty.set()
        self._ack_dirty: dict[int, Segment] = {}
        self._to_delete: list[Segment] = []
        self._wake = asyncio.Event()
        self._ack_seq = 0  # ack batches handed to the writer
        self._ack_synced_seq = 0
        self._last_ack_sync = time.monotonic()
        self._closed = False
        self._broken: str | None = None
        self._maintenance: asyncio.Task[None] | None = None
        # counters
        self.appended = 0
        self.acked = 0
        self.groups = 0
        self.records_lost_on_read = 0
        self.quarantined = recovered.report.quarantined  # records in quarantine/, last count
        self._quarantining: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        directory: Path | str,
        *,
        max_bytes: int,
        segment_bytes: int = 16 * MiB,
        memory_bytes: int = 32 * MiB,
        ack_sync_interval: float = 1.0,
    ) -> Spool:
        """Open (create) the spool in `directory` and replay it: every record not acknowledged is
        pending again, in order. Damage is repaired and reported in `.recovery`, never raised;
        an unusable directory raises SpoolUnavailable."""
        if max_bytes <= HEADER_SIZE or segment_bytes <= HEADER_SIZE:
            raise ValueError("max_bytes and segment_bytes must be larger than a record header")
        path = Path(directory)
        writer, recovered = await SpoolWriter.start(path)
        spool = cls(
            path,
            recovered,
            writer,
            max_bytes=max_bytes,
            segment_bytes=segment_bytes,
            memory_bytes=memory_bytes,
            ack_sync_interval=ack_sync_interval,
        )
        loop = asyncio.get_running_loop()
        spool._maintenance = loop.create_task(spool._maintenance_loop(), name=f"spool-{path}")
        if not recovered.report.clean or recovered.report.quarantined:
            log.warning("%s", recovered.report.summary())
        elif recovered.report.records_recovered:
            log.info("%s", recovered.report.summary())
        return spool

    async def close(self) -> None:
        """Finish the appends in progress, persist and sync the acks, release the directory.
        Records not acknowledged stay on disk for the next open."""
        if self._closed:
            return
        if self._quarantining:  # a record moving to quarantine is acked once it is there
            await asyncio.gather(*list(self._quarantining), return_exceptions=True)
        self._closed = True
        self._nonempty.set()  # getters raise SpoolClosed
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._maintenance is not None:
            self._wake.set()
            await self._maintenance
        with contextlib.suppress(OSError):
            await self._maintain(sync=True)
        await self._writer.close()

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- appending ------------------------------------------------------------------------

    def has_room(self, size: int) -> bool:
        """Whether a record of `size` bytes would be taken now. Check every destination's spool,
        then submit() to each without awaiting in between, so none of them refuses."""
        return self._broken is None and self._disk_bytes + HEADER_SIZE + size <= self._max_bytes

    def submit(self, record: bytes) -> asyncio.Future[int]:
        """Queue `record` for the next group commit; the future gives its id once it is durable.
        Raises SpoolFull (nothing written) at once when there is no room."""
        if self._closed:
            raise SpoolClosed(f"the spool {self.directory} is closed")
        if self._broken is not None:
            raise SpoolError(self._broken)
        n = len(record)
        frame = HEADER_SIZE + n
        if frame > self._max_bytes:
            raise RecordTooLarge(
                f"a record of {n} bytes cannot fit in the spool {self.directory} "
                f"(max_bytes {self._max_bytes})"
            )
        if self._disk_bytes + frame > self._max_bytes:
            seg = self._active
            if seg is not None and seg.live == 0 and seg.size:
                self._seal(seg)  # fully acknowledged: free it for the retry
            raise SpoolFull(
                f"the spool {self.directory} holds {self._disk_bytes} of {self._max_bytes} bytes "
                f"not yet delivered; retry later"
            )
        seg = self._active
        if seg is None or (seg.size and seg.size + frame > self._segment_bytes):
            if seg is not None:
                self._seal(seg)
            seg = Segment(self.directory, self._next_id)
            self._segments[seg.first_id] = seg
            self._active = seg
        entry = Entry(self._next_id, seg, seg.size, n, time.time_ns() // 1_000_000, record)
        self._next_id += 1
        seg.size += frame
        seg.live += 1
        self._disk_bytes += frame
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued.append((entry, fut))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return fut

    async def append(self, record: bytes) -> int:
        """Store `record`; returns its id once it is durable (fsync'd). Raises SpoolFull when
        the spool holds max_bytes, SpoolError when the disk failed (both retryable)."""
        return await self.submit(record)

    async def _flush(self) -> None:
        try:
            while self._queued:
                total = 0
                k = 0
                while k < len(self._queued) and (k == 0 or total < _MAX_GROUP_BYTES):
                    total += self._queued[k][0].length
                    k += 1
                group, self._queued = self._queued[:k], self._queued[k:]
                entries = [e for e, _ in group]
                try:
                    await self._writer.write_group(entries)
                except WriteFailed as exc:
                    self._write_failed(group, exc)
                    continue
                self.groups += 1
                self.appended += len(group)
                for entry, fut in group:
                    self._unacked_bytes += entry.length
                    if self._cached_bytes + entry.length <= self._memory_bytes:
                        self._cached_bytes += entry.length
                    else:
                        entry.payload = None
                    self._pending.append(entry)
                    if not fut.done():
                        fut.set_result(entry.id)
                self._nonempty.set()
        finally:
            self._flusher = None

    def _write_failed(
        self, group: list[tuple[Entry, asyncio.Future[int]]], exc: WriteFailed
    ) -> None:
        # Fail this group and everything queued behind it (their offsets assumed this group's
        # bytes), seal the segments involved; the writer truncated them back.
        failed = group + self._queued
        self._queued = []
        cause = exc.cause
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            error: SpoolError = SpoolFull(f"the disk holding {self.directory} is full: {cause}")
        else:
            error = SpoolError(f"writing to the spool {self.directory} failed: {cause}")
        if not exc.undone:
            self._broken = (
                f"the spool {self.directory} failed ({cause}) and could not be repaired; "
                f"restart the gateway (it recovers what was stored)"
            )
            log.error("%s", self._broken)
        else:
            log.error(
                "spool %s: write failed, %d records refused: %s", self.directory, len(failed), cause
            )
        segs: dict[int, Segment] = {}
        for entry, fut in failed:
            seg = entry.seg
            seg.live -= 1
            seg.size -= HEADER_SIZE + entry.length
            self._disk_bytes -= HEADER_SIZE + entry.length
            segs[seg.first_id] = seg
            if not fut.done():
                fut.set_exception(error)
        for seg in segs.values():
            if not seg.sealed:
                self._seal(seg)
            elif seg.live == 0:
                self._retire(seg)

    def _seal(self, seg: Segment) -> None:
        seg.sealed = True
        if self._active is seg:
            self._active = None
        if seg.live == 0:
            self._retire(seg)

    # -- consuming ------------------------------------------------------------------------

    async def get(self) -> tuple[int, bytes]:
        """The next pending record (id, bytes), FIFO; waits until there is one. Raises
        SpoolClosed once the spool is closed."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closed:
                    raise SpoolClosed(f"the spool {self.directory} is closed")
                self._nonempty.clear()
                await self._nonempty.wait()
            if self._closed:
                raise SpoolClosed(f"the spool {self.directory} is closed")
            entry = self._pending.popleft()
            self._inflight[entry.id] = entry
            if entry.payload is not None:
                return entry.id, self._take_cached(entry)
            try:
                payload = await loop.run_in_executor(None, read_record, entry)
            except CorruptRead as exc:
                self._lost_on_read(entry, str(exc))
                continue
            except BaseException:  # cancelled: hand it out again
                if self._inflight.pop(entry.id, None) is not None:
                    self._pending.appendleft(entry)
                    self._nonempty.set()
                raise
            return entry.id, payload

    def get_nowait(self) -> tuple[int, bytes] | None:
        """Like get() without waiting (None when nothing is pending); a record not in memory is
        read synchronously."""
        while self._pending and not self._closed:
            entry = self._pending.popleft()
            self._inflight[entry.id] = entry
            if entry.payload is not None:
                return entry.id, self._take_cached(entry)
            try:
                return entry.id, read_record(entry)
            except CorruptRead as exc:
                self._lost_on_read(entry, str(exc))
        return None

    def _take_cached(self, entry: Entry) -> bytes:
        payload = entry.payload
        assert payload is not None
        entry.payload = None
        self._cached_bytes -= entry.length
        return payload

    def _lost_on_read(self, entry: Entry, reason: str) -> None:
        self.records_lost_on_read += 1
        log.error("spool %s: %s; the record is lost", self.directory, reason)
        self.ack(entry.id)

    def quarantine(self, rid: int, reason: str, record: bytes | None = None) -> None:
        """Move a record handed out by get() that cannot be delivered (`record`: its bytes, if
        the caller still has them) to quarantine/<id>.rec, then acknowledge it: it never
        blocks the queue again, and stays on disk for the operator. Done in the background
        (the file is written and fsync'd before the ack); logged once. If the file cannot be
        written the record stays in the segment, handed out again after a restart."""
        entry = self._inflight.get(rid)
        if entry is None or self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._quarantine(entry, reason, record))
        self._quarantining.add(task)
        task.add_done_callback(self._quarantining.discard)

    async def _quarantine(self, entry: Entry, reason: str, record: bytes | None) -> None:
        try:
            path = await self._writer.quarantine(entry, record)
        except (OSError, CorruptRead) as exc:
            log.error(
                "spool %s: record %d cannot be delivered (%s) and could not be moved to "
                "quarantine: %s; it stays in the queue until the next start",
                self.directory,
                entry.id,
                reason,
                exc,
            )
            return
        self.quarantined += 1
        log.error(
            "spool %s: record %d (%d bytes) cannot be delivered: %s; moved it to quarantine "
            "as %s, the queue goes on. Look at it (same format as a segment record), then "
            "delete it",
            self.directory,
            entry.id,
            entry.length,
            reason,
            path,
        )
        self.ack(entry.id)

    def ack(self, rid: int) -> bool:
        """Mark a record handed out by get() as delivered (any order). Persisted in the
        background (written at once, fsync'd every ack_sync_interval). False if `rid` was not
        handed out (unknown, already acknowledged, or the spool is closed)."""
        if self._closed:
            return False
        entry = self._inflight.pop(rid, None)
        if entry is None:
            return False
        self.acked += 1
        self._unacked_bytes -= entry.length
        seg = entry.seg
        seg.live -= 1
        if seg.live == 0 and (
            seg.sealed
            or seg.size >= self._segment_bytes // 4
            or self._disk_bytes > self._max_bytes // 2
        ):
            self._seal(seg)  # retires it; its acks need not be written
        else:
            seg.ack_buf.append(rid)
            self._ack_dirty[seg.first_id] = seg
        self._wake.set()
        return True

    def _retire(self, seg: Segment) -> None:
        if self._segments.pop(seg.first_id, None) is None:
            return
        seg.ack_buf.clear()
        self._ack_dirty.pop(seg.first_id, None)
        self._to_delete.append(seg)
        self._wake.set()

    # -- background: ack log, deletions ---------------------------------------------------

    async def checkpoint(self) -> None:
        """Write and fsync the acknowledgements so far, delete finished segments."""
        await self._maintain(sync=True)

    async def _maintenance_loop(self) -> None:
        while not self._closed:
            timeout = None
            if self._ack_seq > self._ack_synced_seq:
                timeout = max(0.0, self._last_ack_sync + self._ack_sync_interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._closed:
                break
            due = time.monotonic() >= self._last_ack_sync + self._ack_sync_interval
            try:
                await self._maintain(sync=due)
            except OSError as exc:  # acks not persisted only mean duplicates after a crash
                log.error("spool %s: ack log / cleanup failed: %s", self.directory, exc)
                await asyncio.sleep(1.0)

    async def _maintain(self, *, sync: bool) -> None:
        writes: list[tuple[Segment, bytes]] = []
        for seg in self._ack_dirty.values():
            if seg.ack_buf:
                frame = ack_frame(seg.ack_buf)
                seg.ack_buf = []
                seg.ack_size += len(frame)
                self._disk_bytes += len(frame)
                writes.append((seg, frame))
        self._ack_dirty.clear()
        deletes, self._to_delete = self._to_delete, []
        if writes:
            self._ack_seq += 1
        seq = self._ack_seq
        do_sync = sync and seq > self._ack_synced_seq
        if not writes and not deletes and not do_sync:
            return
        try:
            await self._writer.maintain(writes, deletes, do_sync)
        except OSError:
            self._to_delete[:0] = deletes  # try again next time (unlink is idempotent)
            raise
        for seg in deletes:
            self._disk_bytes -= seg.size + seg.ack_size
        if do_sync:
            self._ack_synced_seq = max(self._ack_synced_seq, seq)
            self._last_ack_sync = time.monotonic()

    # -- counters -------------------------------------------------------------------------

    @property
    def fsyncs(self) -> int:
        """fdatasync and fsync calls so far (the writer's count)."""
        return self._writer.fsyncs

    @property
    def pending_records(self) -> int:
        """Records waiting to be handed out by get()."""
        return len(self._pending)

    @property
    def unacked_records(self) -> int:
        """Durable records not acknowledged (pending + handed out)."""
        return len(self._pending) + len(self._inflight)

    @property
    def unacked_bytes(self) -> int:
        return self._unacked_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes the spool holds on disk (segments not deleted, including acknowledged records
        in them and appends in progress, plus ack files); compared with max_bytes."""
        return self._disk_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def broken(self) -> str | None:
        """Why the spool stopped taking records after a failed write (None while it works)."""
        return self._broken

    def oldest_unacked_age(self) -> float:
        """Seconds since the oldest unacknowledged record was appended (0 when none)."""
        times = [e.time_ms for e in self._inflight.values()]
        if self._pending:
            times.append(self._pending[0].time_ms)
        if not times:
            return 0.0
        return max(0.0, time.time() - min(times) / 1000)

    def stats(self) -> dict[str, Any]:
        return {
            "pending_records": self.pending_records,
            "unacked_records": self.unacked_records,
            "unacked_bytes": self._unacked_bytes,
            "disk_bytes": self._disk_bytes,
            "max_bytes": self._max_bytes,
            "segments": len(self._segments),
            "oldest_unacked_age_s": self.oldest_unacked_age(),
            "appended": self.appended,
            "acked": self.acked,
            "fsyncs": self.fsyncs,
            "groups": self.groups,
            "records_lost_on_read": self.records_lost_on_read,
            "quarantined": self.quarantined,
        }
