"""The spool's writer: one thread that owns every descriptor of the spool directory and, once
the spool is open, is the only code that writes, syncs or deletes its files (recovery runs on
the same thread before it; reads of records for get() open the file by name anywhere).

Durability: a group of records is written with one `pwritev` per segment (up to IOV_MAX
buffers) and synced with one fdatasync per segment (group commit: the appends queued while the
previous group was being synced share it); a new segment file's directory entry is fsync'd
before the group counts as written. A segment's file is created with its first record and stays
open until a group goes to a later segment (only the newest segment gets more records). Acks
are written as they come and fdatasync'd when asked (the facade asks every `ack_sync_interval`
and on close). A segment is deleted segment file first, then its ack file: a lone ack file is
harmless.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
from pathlib import Path
from typing import Any

from gateway.delivery.spool.record import QUARANTINE_DIR, QUARANTINE_SUFFIX, record_header
from gateway.delivery.spool.recovery import Recovered, recover
from gateway.delivery.spool.segment import Entry, Segment, read_record

IOV_MAX = 1024


class WriteFailed(Exception):
    """A group could not be written; `undone`: its segments were cut back to where it began."""

    def __init__(self, cause: OSError, undone: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.undone = undone


def pwrite_all(fd: int, bufs: list[Any], offset: int) -> None:
    """Write all of `bufs` at `offset`, going on after short writes."""
    i = 0
    while i < len(bufs):
        chunk = bufs[i : i + IOV_MAX]
        want = sum(len(b) for b in chunk)
        n = os.pwritev(fd, chunk, offset)
        if n <= 0 and want > 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += n
        for b in chunk:
            if n >= len(b):
                n -= len(b)
                i += 1
            else:  # short write: continue inside this buffer
                bufs[i] = memoryview(b)[n:]
                break


class SpoolWriter:
    """The writer thread and all it owns. The async methods are called on the event loop and
    only hand work to the thread; the others run on the thread alone, so the descriptors and
    the sync state need no lock."""

    def __init__(
        self,
        directory: Path,
        executor: concurrent.futures.ThreadPoolExecutor,
        *,
        lock_fd: int,
        dir_fd: int,
    ) -> None:
        self.directory = directory
        self._executor = executor
        self._lock_fd = lock_fd  # flock'd: closed last, which releases the directory
        self._dir_fd = dir_fd
        self._data_fds: dict[int, int] = {}  # first id -> open segment file
        self._ack_fds: dict[int, int] = {}  # first id -> open ack file
        self._ack_unsynced: dict[int, int] = {}  # ack files written since their last sync
        self._dir_dirty = False  # entries created or removed since the last directory fsync
        self.fsyncs = 0  # read by the loop for stats only

    @classmethod
    async def start(cls, directory: Path) -> tuple[SpoolWriter, Recovered]:
        """Start the thread and recover `directory` on it; the writer takes over the
        descriptors recovery opened."""
        loop = asyncio.get_running_loop()
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool-writer")
        try:
            recovered = await loop.run_in_executor(executor, recover, directory)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        writer = cls(directory, executor, lock_fd=recovered.lock_fd, dir_fd=recovered.dir_fd)
        return writer, recovered

    # -- called on the event loop ---------------------------------------------------------

    async def write_group(self, entries: list[Entry]) -> None:
        """Write and sync `entries` (consecutive ids, payloads in memory). Raises WriteFailed."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._write_group, entries)

    async def maintain(
        self, writes: list[tuple[Segment, bytes]], deletes: list[Segment], sync: bool
    ) -> None:
        """Append ack frames, delete finished segments; with `sync`, fdatasync the ack files
        written since the last sync and the directory if it changed."""
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._maintain, writes, deletes, sync
        )

    async def quarantine(self, entry: Entry, record: bytes | None) -> Path:
        """Write `entry` (its bytes `record`, or read back) to quarantine/, durably."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._quarantine, entry, record
        )

    async def close(self) -> None:
        """Close every descriptor (the LOCK last) and stop the thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    # -- on the writer thread -------------------------------------------------------------

    def _write_group(self, entries: list[Entry]) -> None:
        touched: list[tuple[Segment, int]] = []
        new_file = False
        try:
            i = 0
            while i < len(entries):
                seg = entries[i].seg
                j = i
                bufs: list[Any] = []
                while j < len(entries) and entries[j].seg is seg:
                    e = entries[j]
                    assert e.payload is not None
                    bufs += (record_header(e.id, e.length, e.time_ms, e.payload), e.payload)
                    j += 1
                fd = self._data_fds.get(seg.first_id, -1)
                if fd < 0:
                    fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    self._data_fds[seg.first_id] = fd
                    new_file = True
                touched.append((seg, entries[i].offset))
                pwrite_all(fd, bufs, entries[i].offset)
                i = j
            for seg, _ in touched:
                os.fdatasync(self._data_fds[seg.first_id])
                self.fsyncs += 1
            if new_file:
                os.fsync(self._dir_fd)
                self.fsyncs += 1
        except OSError as exc:
            raise WriteFailed(exc, self._undo(touched)) from exc
        # only the segment written last can get more records: close the others (all synced)
        last = touched[-1][0].first_id
        for first_id in list(self._data_fds):
            if first_id != last:
                self._close_data(first_id)

    def _close_data(self, first_id: int) -> None:
        fd = self._data_fds.pop(first_id, -1)
        if fd >= 0:
            os.close(fd)

    def _undo(self, touched: list[tuple[Segment, int]]) -> bool:
        """Cut the segments back to where this group started; True if that worked."""
        ok = True
        for seg, start in touched:
            try:
                fd = self._data_fds.get(seg.first_id, -1)
                if fd >= 0:
                    os.ftruncate(fd, start)
                    os.fdatasync(fd)
            except OSError:
                ok = False
            with contextlib.suppress(OSError):
                self._close_data(seg.first_id)
        return ok

    def _maintain(
        self, writes: list[tuple[Segment, bytes]], deletes: list[Segment], sync: bool
    ) -> None:
        for seg, frame in writes:
            if seg.deleted:
                continue
            fd = self._ack_fds.get(seg.first_id, -1)
            if fd < 0:
                fd = os.open(
                    seg.ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
                self._ack_fds[seg.first_id] = fd
                self._dir_dirty = True
            os.write(fd, frame)
            self._ack_unsynced[seg.first_id] = fd
        for seg in deletes:
            seg.deleted = True
            self._close_data(seg.first_id)
            self._ack_unsynced.pop(seg.first_id, None)
            fd = self._ack_fds.pop(seg.first_id, -1)
            if fd >= 0:
                os.close(fd)
            seg.path.unlink(missing_ok=True)  # segment first: a lone ack file is harmless
            seg.ack_path.unlink(missing_ok=True)
            self._dir_dirty = True
        if sync:
            for first_id, fd in list(self._ack_unsynced.items()):
                os.fdatasync(fd)
                self.fsyncs += 1
                del self._ack_unsynced[first_id]
            if self._dir_dirty:
                os.fsync(self._dir_fd)  # new ack files, deleted segments
                self.fsyncs += 1
                self._dir_dirty = False

    def _quarantine(self, entry: Entry, record: bytes | None) -> Path:
        if record is None:
            record = read_record(entry)
        frame = record_header(entry.id, entry.length, entry.time_ms, record) + record
        qdir = self.directory / QUARANTINE_DIR
        created = not qdir.is_dir()
        qdir.mkdir(mode=0o700, exist_ok=True)
        path = qdir / f"{entry.id:020d}{QUARANTINE_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pwrite_all(fd, [frame], 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # a second quarantine of the same record (a replay) overwrites it
        qfd = os.open(qdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(qfd)
        finally:
            os.close(qfd)
        if created:
            os.fsync(self._dir_fd)
        return path

    def _close(self) -> None:
        for first_id in list(self._data_fds):
            self._close_data(first_id)
        for first_id in list(self._ack_fds):
            os.close(self._ack_fds.pop(first_id))
        os.close(self._dir_fd)
        os.close(self._lock_fd)  # releases the flock
