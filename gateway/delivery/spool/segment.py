"""What the spool knows of its segment files and records in memory, shared by recovery (which
builds it), the facade (which keeps the books on the event loop) and the writer (which writes
what it describes)."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.delivery.spool.record import ACK_SUFFIX, HEADER_SIZE, SEG_SUFFIX, payload_of


class Segment:
    """A segment file and its ack file. The counters belong to the event loop; the writer
    owns the descriptors (SpoolWriter) and sets only `deleted`."""

    __slots__ = (
        "ack_buf",
        "ack_path",
        "ack_size",
        "deleted",
        "first_id",
        "live",
        "path",
        "sealed",
        "size",
    )

    def __init__(self, directory: Path, first_id: int) -> None:
        self.first_id = first_id
        self.path = directory / f"{first_id:020d}{SEG_SUFFIX}"
        self.ack_path = directory / f"{first_id:020d}{ACK_SUFFIX}"
        self.size = 0  # bytes assigned (written or queued)
        self.ack_size = 0
        self.live = 0  # records not acknowledged (queued, pending or handed out)
        self.sealed = False  # no more records will be added
        self.ack_buf: list[int] = []  # acks not yet handed to the writer thread
        # set by the writer thread once it unlinked the files: a late ack must not recreate one
        self.deleted = False


class Entry:
    """One record: where it is, and its bytes while the memory budget allows."""

    __slots__ = ("id", "length", "offset", "payload", "seg", "time_ms")

    def __init__(
        self,
        rid: int,
        seg: Segment,
        offset: int,
        length: int,
        time_ms: int,
        payload: bytes | None,
    ) -> None:
        self.id = rid
        self.seg = seg
        self.offset = offset  # of the header in the segment file
        self.length = length
        self.time_ms = time_ms
        self.payload = payload  # kept in memory while the budget allows


class CorruptRead(Exception):
    """A record cannot be read back intact."""


def read_record(entry: Entry) -> bytes:
    """The payload of `entry`, read from its segment file and checked (blocking). Opens the file
    by name, so it runs on any thread without the writer's descriptors."""
    try:
        fd = os.open(entry.seg.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            frame = os.pread(fd, HEADER_SIZE + entry.length, entry.offset)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CorruptRead(f"{entry.seg.path.name}: cannot read record {entry.id}: {exc}") from exc
    payload = payload_of(frame, entry.id, entry.length)
    if payload is None:
        raise CorruptRead(
            f"{entry.seg.path.name}: record {entry.id} at offset {entry.offset} is corrupt on disk"
        )
    return payload
