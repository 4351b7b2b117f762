"""Durable queue storage: append-only segment files vs SQLite WAL, both with group commit.

Every append returns only once its record is durable (fsync'd). Concurrent appenders share one
fsync (group commit): appenders queue their record and await a future; one flusher takes
everything queued, writes it and fsyncs once in a dedicated writer thread, then resolves the
futures; what arrived meanwhile is the next group.

Stores:
  segments  append-only files, record = [u32 length][u32 crc32][payload] (zlib.crc32),
            os.writev + os.fdatasync per group, a new file every 16 MiB (+ directory fsync).
            Read-back: pread from the file; ack: 8-byte ids appended to an ack file, fsync'd
            every 1000 acks; a file is unlinked once all its records are acked.
  sqlite    SQLite in WAL mode, synchronous=FULL, table q(id INTEGER PRIMARY KEY, payload BLOB);
            one transaction (executemany INSERT + COMMIT) per group. Read-back: SELECT in id
            order; ack: DELETE by id, one transaction per 1000 acks (WAL fsync per commit).
  spool     gateway/delivery/spool/ (the chosen implementation, segments as above plus a 28-byte
            header with id and timestamp; acks via per-segment ack files, fsync'd lazily).

Each run is bounded (--seconds per configuration and --max-mib written), in a fresh temporary
directory that is removed afterwards. Prints one JSON line per run and a Markdown table.

  python bench/spool_bench.py                       # all stores, 1/50/250 KB, 1/8/32 appenders
  python bench/spool_bench.py --stores spool --sizes 51200 --appenders 8 --seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = struct.Struct("<II")  # length, crc32
SEGMENT_BYTES = 16 * 1024 * 1024
ACK_SYNC_EVERY = 1000
SPOOL_MEMORY = 0


class Store(Protocol):
    fsyncs: int

    async def append(self, payload: bytes) -> int: ...
    async def drain(self, count: int) -> int: ...
    async def close(self) -> None: ...


class GroupCommit:
    """Queue + one flusher task + one writer thread: the group commit both stores share."""

    def __init__(self, write_group: Callable[[list[bytes]], None]) -> None:
        self._write_group = write_group
        self._queued: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-writer")
        self.groups = 0

    async def submit(self, payload: bytes) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((payload, fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                group, self._queued = self._queued, []
                try:
                    await loop.run_in_executor(
                        self.executor, self._write_group, [p for p, _ in group]
                    )
                except BaseException as exc:
                    for _, fut in group:
                        fut.set_exception(exc)
                    raise
                self.groups += 1
                for _, fut in group:
                    fut.set_result(None)
        finally:
            self._flusher = None


class SegmentStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.commit = GroupCommit(self._write_group)
        self.next_id = 1
        self.fd = -1
        self.seg_size = 0
        self.segments: list[tuple[int, Path]] = []  # (first id, path)
        self.index: list[tuple[Path, int, int]] = []  # id-1 -> (path, offset, length)
        self.dir_fd = os.open(directory, os.O_RDONLY)
        self.ack_fd = os.open(directory / "acks", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.fsyncs = 0

    def _roll(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        path = self.dir / f"{self.next_id:020d}.seg"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.seg_size = 0
        self.segments.append((self.next_id, path))
        self.new_file = True

    def _write_group(self, payloads: list[bytes]) -> None:
        self.new_file = False
        iov: list[bytes] = []
        for p in payloads:
            if self.fd < 0 or (self.seg_size > 0 and self.seg_size + 8 + len(p) > SEGMENT_BYTES):
                if iov:
                    os.writev(self.fd, iov)
                    iov = []
                    os.fdatasync(self.fd)
                    self.fsyncs += 1
                self._roll()
            iov += [HEADER.pack(len(p), zlib.crc32(p)), p]
            self.index.append((self.segments[-1][1], self.seg_size + 8, len(p)))
            self.seg_size += 8 + len(p)
            self.next_id += 1
            if len(iov) >= 1000:
                os.writev(self.fd, iov)
                iov = []
        if iov:
            os.writev(self.fd, iov)
        os.fdatasync(self.fd)
        self.fsyncs += 1
        if self.new_file:
            os.fsync(self.dir_fd)
            self.fsyncs += 1

    async def append(self, payload: bytes) -> int:
        await self.commit.submit(payload)
        return 0

    def _drain_sync(self, count: int) -> int:
        """Read back `count` records in order (pread, crc check), ack each, unlink acked files."""
        read = 0
        acked_since_sync = 0
        seg_i = 0
        fds: dict[Path, int] = {}
        for rid in range(1, min(count, len(self.index)) + 1):
            path, offset, length = self.index[rid - 1]
            fd = fds.get(path)
            if fd is None:
                fd = fds[path] = os.open(path, os.O_RDONLY)
            frame = os.pread(fd, 8 + length, offset - 8)
            ln, crc = HEADER.unpack_from(frame)
            payload = frame[8:]
            if ln != length or zlib.crc32(payload) != crc:
                raise RuntimeError("corrupt read-back")
            read += len(payload)
            os.write(self.ack_fd, struct.pack("<Q", rid))
            acked_since_sync += 1
            if acked_since_sync >= ACK_SYNC_EVERY:
                os.fdatasync(self.ack_fd)
                self.fsyncs += 1
                acked_since_sync = 0
            # the file is done when the next record is in another file
            nxt = self.segments[seg_i + 1][0] if seg_i + 1 < len(self.segments) else None
            if nxt is not None and rid + 1 == nxt:
                os.close(fds.pop(self.segments[seg_i][1]))
                os.unlink(self.segments[seg_i][1])
                seg_i += 1
        os.fdatasync(self.ack_fd)
        for fd in fds.values():
            os.close(fd)
        return read

    async def drain(self, count: int) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.commit.executor, self._drain_sync, count)

    async def close(self) -> None:
        for fd in (self.fd, self.ack_fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.commit.executor.shutdown()


class SqliteStore:
    def __init__(self, directory: Path) -> None:
        self.commit = GroupCommit(self._write_group)
        self.fsyncs = 0

        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(directory / "queue.db", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, payload BLOB)")
            return db

        # the connection lives on the writer thread
        self.db: sqlite3.Connection = self.commit.executor.submit(connect).result()

    def _write_group(self, payloads: list[bytes]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO q (payload) VALUES (?)", [(p,) for p in payloads])
        self.db.execute("COMMIT")
        self.fsyncs += 1

    async def append(self, payload: bytes) -> int:
        await self.commit.submit(payload)
        return 0

    def _drain_sync(self, count: int) -> int:
        read = 0
        last = 0
        done = 0
        while done < count:
            rows = self.db.execute(
                "SELECT id, payload FROM q WHERE id > ? ORDER BY id LIMIT 100", (last,)
            ).fetchall()
            if not rows:
                break
            for rid, payload in rows:
                read += len(payload)
                last = rid
                done += 1
                if done % ACK_SYNC_EVERY == 1:
                    self.db.execute("BEGIN")
                self.db.execute("DELETE FROM q WHERE id = ?", (rid,))
                if done % ACK_SYNC_EVERY == 0:
                    self.db.execute("COMMIT")
                    self.fsyncs += 1
                if done >= count:
                    break
        if self.db.in_transaction:
            self.db.execute("COMMIT")
            self.fsyncs += 1
        return read

    async def drain(self, count: int) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.commit.executor, self._drain_sync, count)

    async def close(self) -> None:
        self.commit.executor.submit(self.db.close).result()
        self.commit.executor.shutdown()


class SpoolStore:
    def __init__(self, spool: Any) -> None:
        self.spool = spool
        self.fsyncs = 0

    @classmethod
    async def create(cls, directory: Path) -> SpoolStore:
        from gateway.delivery.spool import Spool

        # memory_bytes=0: get() reads every record back from its file, like the other stores
        # (the default 32 MiB keeps recent records in memory: read+ack then skips the pread)
        return cls(await Spool.open(directory, max_bytes=64 * 1024**3, memory_bytes=SPOOL_MEMORY))

    async def append(self, payload: bytes) -> int:
        rid: int = await self.spool.append(payload)
        return rid

    async def drain(self, count: int) -> int:
        read = 0
        for _ in range(count):
            got = self.spool.get_nowait()
            if got is None:
                break
            rid, payload = got
            read += len(payload)
            self.spool.ack(rid)
        await self.spool.checkpoint()
        return read

    async def close(self) -> None:
        self.fsyncs = self.spool.stats()["fsyncs"]
        await self.spool.close()


async def make_store(kind: str, directory: Path) -> Store:
    if kind == "segments":
        return SegmentStore(directory)
    if kind == "sqlite":
        return SqliteStore(directory)
    if kind == "spool":
        return await SpoolStore.create(directory)
    raise ValueError(kind)


async def run(
    kind: str, size: int, appenders: int, seconds: float, max_bytes: int
) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"spool-bench-{kind}-"))
    try:
        store = await make_store(kind, base)
        payload = os.urandom(size)
        count = 0
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        limit = max_bytes // size

        async def appender() -> None:
            nonlocal count
            while time.perf_counter() < deadline and count < limit:
                count += 1
                t = time.perf_counter()
                await store.append(payload)
                latencies.append(time.perf_counter() - t)

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(appender() for _ in range(appenders)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if isinstance(store, SpoolStore):
            fsyncs_append = store.spool.stats()["fsyncs"]
        else:
            fsyncs_append = store.fsyncs
        disk = sum(p.stat().st_size for p in base.iterdir() if p.is_file())
        # read back + ack everything that was appended
        fs_before = fsyncs_append
        t1 = time.perf_counter()
        read = await store.drain(count)
        drain_wall = time.perf_counter() - t1
        await store.close()
        fs_drain = store.fsyncs - fs_before
        latencies.sort()
        return {
            "store": kind,
            "size": size,
            "appenders": appenders,
            "appends": count,
            "seconds": round(wall, 2),
            "appends_per_s": round(count / wall),
            "mb_per_s": round(count * size / wall / 1e6, 1),
            "fsyncs_per_s": round(fsyncs_append / wall),
            "records_per_fsync": round(count / max(fsyncs_append, 1), 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "cpu_ms_per_mb": round(cpu * 1000 / (count * size / 1e6), 1),
            "disk_mib": round(disk / 2**20, 1),
            "readback_ack_per_s": round(count / drain_wall) if drain_wall else None,
            "readback_mb_per_s": round(read / drain_wall / 1e6, 1) if drain_wall else None,
            "readback_fsyncs": fs_drain,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stores", default="segments,sqlite,spool")
    ap.add_argument("--sizes", default="1024,51200,256000")
    ap.add_argument("--appenders", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=3.0, help="per configuration")
    ap.add_argument("--max-mib", type=int, default=1024, help="written per configuration")
    ap.add_argument("--spool-memory-mib", type=int, default=0, help="Spool(memory_bytes=)")
    args = ap.parse_args()
    global SPOOL_MEMORY
    SPOOL_MEMORY = args.spool_memory_mib * 2**20
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for n in (int(a) for a in args.appenders.split(",")):
            for kind in args.stores.split(","):
                r = asyncio.run(run(kind, size, n, args.seconds, args.max_mib * 2**20))
                print(json.dumps(r), flush=True)
                rows.append(r)
    print()
    print(
        "| store | size | appenders | appends/s | MB/s | fsyncs/s | records/fsync | p50 / p99 ms "
        "| read+ack/s | read+ack MB/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['store']} | {r['size'] // 1024} KB | {r['appenders']} | {r['appends_per_s']} "
            f"| {r['mb_per_s']} | {r['fsyncs_per_s']} | {r['records_per_fsync']} "
            f"| {r['p50_ms']} / {r['p99_ms']} | {r['readback_ack_per_s']} "
            f"| {r['readback_mb_per_s']} |"
        )


if __name__ == "__main__":
    main()
