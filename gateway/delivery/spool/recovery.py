"""Recovery: what `Spool.open` finds in its directory, repaired. Runs on the writer's thread
before the spool is handed out; it takes the directory's LOCK, and the writer then owns the
descriptors it opened.

After a crash every record not acknowledged is pending again, in id order. Recovery never raises
on damaged data: a torn or corrupt tail is truncated; a corrupt region inside a segment is
skipped up to the next valid record header (found by its magic, confirmed by its crc); an ack
file with a bad tail is cut back to its last valid group (acks lost that way only mean
duplicates). All of it is counted in a RecoveryReport. Only an unusable directory (cannot be
created, not writable, locked by another process) raises `SpoolUnavailable`, naming the path and
what to do. Records in quarantine/ are counted, never replayed.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.delivery.spool.errors import SpoolUnavailable
from gateway.delivery.spool.record import (
    ACK_SUFFIX,
    HEADER_SIZE,
    QUARANTINE_DIR,
    QUARANTINE_SUFFIX,
    RECORD_MAGIC,
    SEG_SUFFIX,
    parse_acks,
    parse_at,
)
from gateway.delivery.spool.segment import Entry, Segment


@dataclass
class RecoveryReport:
    """What `Spool.open` found. `clean` is False when anything was damaged."""

    directory: Path
    segments: int = 0  # segment files found
    records_recovered: int = 0  # not acknowledged: pending again
    records_acked: int = 0  # found acknowledged (not replayed)
    segments_deleted: int = 0  # fully acknowledged or empty segments removed
    bytes_truncated: int = 0  # torn tail cut off the last segment
    corrupt_regions: int = 0  # damaged places before the tail (each skipped or dropped)
    bytes_skipped: int = 0  # bytes in those places
    records_skipped: int = 0  # records known lost in them (from the gap in ids)
    ack_bytes_truncated: int = 0  # damaged ack-file tails (only causes duplicates)
    quarantined: int = 0  # records kept in quarantine/ (from earlier runs)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.bytes_truncated
            or self.corrupt_regions
            or self.ack_bytes_truncated
            or self.problems
        )

    def summary(self) -> str:
        text = (
            f"spool {self.directory}: {self.records_recovered} records pending from "
            f"{self.segments} segments ({self.records_acked} already acknowledged, "
            f"{self.segments_deleted} segments removed) in {self.seconds:.2f}s"
        )
        if not self.clean:
            text += (
                f"; REPAIRED: {self.bytes_truncated} bytes of torn tail truncated, "
                f"{self.corrupt_regions} corrupt regions ({self.bytes_skipped} bytes, "
                f"{self.records_skipped} records known lost) skipped, "
                f"{self.ack_bytes_truncated} bytes of ack log dropped: " + "; ".join(self.problems)
            )
        if self.quarantined:
            text += (
                f"; {self.quarantined} records kept in {self.directory / QUARANTINE_DIR} "
                f"(they could not be delivered: look at them, then delete them)"
            )
        return text


@dataclass
class Recovered:
    segments: list[Segment]  # those with records pending, in order, all sealed
    entries: list[Entry]  # pending, in id order
    next_id: int
    disk_bytes: int
    lock_fd: int  # flock'd; the writer closes it last
    dir_fd: int
    report: RecoveryReport


def unusable(directory: Path, what: str, exc: BaseException | None = None) -> SpoolUnavailable:
    detail = f": {exc}" if exc is not None else ""
    return SpoolUnavailable(
        f"cannot use spool directory {directory}: {what}{detail}; make it a writable directory "
        f"for the gateway's user on a local filesystem, or configure another path"
    )


def read_acks(seg: Segment, report: RecoveryReport) -> set[int]:
    """The ids acknowledged in `seg`'s ack file; a damaged tail is cut off and reported."""
    try:
        data = seg.ack_path.read_bytes()
    except FileNotFoundError:
        return set()
    ids, pos = parse_acks(data)
    if pos < len(data):
        report.ack_bytes_truncated += len(data) - pos
        report.problems.append(
            f"{seg.ack_path.name}: {len(data) - pos} bytes of damaged ack log after offset "
            f"{pos} dropped (those acks may be delivered again)"
        )
        with open(seg.ack_path, "r+b") as f:
            f.truncate(pos)
            os.fsync(f.fileno())
    seg.ack_size = pos
    return set(ids)


def scan_segment(
    seg: Segment, is_last: bool, acked: set[int], report: RecoveryReport
) -> tuple[list[Entry], int]:
    """Unacknowledged records of one segment in order, and the highest id seen."""
    entries: list[Entry] = []
    last_id = seg.first_id - 1
    with open(seg.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            seg.size = 0
            return entries, last_id
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cut: int | None = None
    try:
        with memoryview(mm) as view:
            pos = 0
            expected = seg.first_id
            while pos < size:
                rec = parse_at(view, pos, size, expected)
                if rec is None:
                    # damage: find the next valid record
                    nxt: tuple[int, tuple[int, int, int]] | None = None
                    i = mm.find(RECORD_MAGIC, pos + 1)
                    while i != -1:
                        found = parse_at(view, i, size, expected)
                        if found is not None:
                            nxt = (i, found)
                            break
                        i = mm.find(RECORD_MAGIC, i + 1)
                    if nxt is None:
                        cut = pos
                        break
                    npos, found = nxt
                    report.corrupt_regions += 1
                    report.bytes_skipped += npos - pos
                    report.records_skipped += found[0] - expected
                    report.problems.append(
                        f"{seg.path.name}: corrupt bytes {pos}..{npos} skipped "
                        f"({found[0] - expected} records lost, ids {expected}..{found[0] - 1})"
                    )
                    pos = npos
                    rec = found
                rid, length, time_ms = rec
                if rid not in acked:
                    entries.append(Entry(rid, seg, pos, length, time_ms, None))
                else:
                    report.records_acked += 1
                last_id = rid
                expected = rid + 1
                pos += HEADER_SIZE + length
    finally:
        mm.close()
    if cut is not None:
        dropped = size - cut
        if is_last:
            report.bytes_truncated += dropped
            report.problems.append(
                f"{seg.path.name}: torn tail of {dropped} bytes after offset {cut} truncated"
            )
        else:
            report.corrupt_regions += 1
            report.bytes_skipped += dropped
            report.problems.append(
                f"{seg.path.name}: corrupt rest of segment ({dropped} bytes after offset {cut}, "
                f"records from id {last_id + 1} on) dropped"
            )
        with open(seg.path, "r+b") as f:
            f.truncate(cut)
            os.fsync(f.fileno())
        size = cut
    seg.size = size
    return entries, last_id


def recover(directory: Path) -> Recovered:
    """Lock `directory` (created if missing), repair it and list what is pending (blocking).
    The caller owns the returned descriptors; on an exception none stays open."""
    started = time.monotonic()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise unusable(directory, "it cannot be created", exc) from exc
    if not directory.is_dir():
        raise unusable(directory, "it is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise unusable(directory, "it is not writable")
    try:
        lock_fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise unusable(directory, "its LOCK file cannot be opened", exc) from exc
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(lock_fd)
        raise unusable(
            directory, "another process has it open (each gateway needs its own spool directory)"
        ) from exc
    dir_fd = -1
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        report = RecoveryReport(directory)
        segs: dict[int, Segment] = {}
        ack_only: list[Path] = []
        for p in directory.iterdir():
            stem, suffix = p.stem, p.suffix
            if not stem.isdigit() or len(stem) != 20 or not p.is_file():
                continue
            if suffix == SEG_SUFFIX:
                segs[int(stem)] = Segment(directory, int(stem))
            elif suffix == ACK_SUFFIX:
                ack_only.append(p)
        for p in ack_only:  # a segment deleted before its ack file
            if int(p.stem) not in segs:
                p.unlink(missing_ok=True)
        report.segments = len(segs)
        kept: list[Segment] = []
        entries: list[Entry] = []
        next_id = 1
        order = sorted(segs)
        for k, first in enumerate(order):
            seg = segs[first]
            acked = read_acks(seg, report)
            found, last_id = scan_segment(seg, k == len(order) - 1, acked, report)
            next_id = max(next_id, first + 1, last_id + 1)
            if found:
                seg.live = len(found)
                seg.sealed = True
                entries.extend(found)
                kept.append(seg)
            else:
                seg.path.unlink(missing_ok=True)
                seg.ack_path.unlink(missing_ok=True)
                report.segments_deleted += 1
        if report.segments_deleted:
            os.fsync(dir_fd)
        report.records_recovered = len(entries)
        report.quarantined = count_quarantined(directory)
        report.seconds = time.monotonic() - started
        disk = sum(s.size + s.ack_size for s in kept)
        return Recovered(kept, entries, next_id, disk, lock_fd, dir_fd, report)
    except BaseException:
        os.close(lock_fd)
        if dir_fd >= 0:
            os.close(dir_fd)
        raise


def count_quarantined(directory: Path) -> int:
    """Records kept in the spool's quarantine/ (0 when there is none; blocking)."""
    try:
        names = os.listdir(directory / QUARANTINE_DIR)
    except OSError:
        return 0
    return sum(name.endswith(QUARANTINE_SUFFIX) for name in names)
