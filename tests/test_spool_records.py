"""The spool's record format and its recovery, in process: encode/decode of records and ack
groups, damage detection, and what recovery makes of hand-made segment files (no Spool, no
event loop except in the one writer test)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.delivery.spool.record import (
    HEADER_SIZE,
    QUARANTINE_DIR,
    ack_frame,
    parse_acks,
    parse_at,
    payload_of,
    record_header,
)
from gateway.delivery.spool.recovery import Recovered, recover
from gateway.delivery.spool.segment import Entry, Segment
from gateway.delivery.spool.writer import SpoolWriter

T0 = 1_700_000_000_123


def rec(rid: int, payload: bytes, time_ms: int = T0) -> bytes:
    return record_header(rid, len(payload), time_ms, payload) + payload


def parse(data: bytes, pos: int = 0, min_id: int = 0) -> tuple[int, int, int] | None:
    return parse_at(memoryview(data), pos, len(data), min_id)


def payload(rid: int) -> bytes:
    return f"payload {rid} ".encode() * (rid % 5 + 1)


# -- records -----------------------------------------------------------------------------------


def test_the_bytes_on_disk_are_pinned() -> None:
    """Written by the code before the spool became a package: the format must not move."""
    assert HEADER_SIZE == 28
    assert rec(7, b"hello").hex() == (
        "8a53504cad1e33aa0500000007000000000000007b68e5cf8b01000068656c6c6f"
    )
    assert ack_frame([7, 9, 2**40]).hex() == (
        "8a41434b50230f6f03000000070000000000000009000000000000000000000000010000"
    )


def test_records_round_trip() -> None:
    payloads = [b"", b"x", os.urandom(1000), bytes(70_000)]
    data = b"".join(rec(10 + i, p, T0 + i) for i, p in enumerate(payloads))
    pos = 0
    for i, p in enumerate(payloads):
        assert parse(data, pos, min_id=10 + i) == (10 + i, len(p), T0 + i)
        frame = data[pos : pos + HEADER_SIZE + len(p)]
        assert payload_of(frame, 10 + i, len(p)) == p
        pos += HEADER_SIZE + len(p)
    assert pos == len(data)
    assert parse(data, 0, min_id=11) is None  # an id below the one expected
    assert payload_of(rec(5, b"abc"), 6, 3) is None  # another record than the one asked for
    assert payload_of(rec(5, b"abc"), 5, 4) is None


def test_every_flipped_bit_is_detected() -> None:
    good = rec(3, b"0123456789" * 4)
    assert parse(good) is not None
    for bit in range(8 * len(good)):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert parse(bytes(bad)) is None, bit
        assert payload_of(bytes(bad), 3, 40) is None, bit


def test_a_truncated_record_is_detected() -> None:
    good = rec(3, b"0123456789" * 4)
    for n in range(len(good)):
        assert parse(good[:n]) is None, n
        assert payload_of(good[:n], 3, 40) is None, n
    # the same bytes followed by more: the record is found, and ends where it should
    assert parse(good + b"\0" * 10) == (3, 40, T0)


def test_ack_groups_round_trip_and_a_damaged_tail_stops_them() -> None:
    groups = [[1, 2, 3], [7], [2**63, 5]]
    frames = [ack_frame(g) for g in groups]
    data = b"".join(frames)
    assert parse_acks(data) == ([1, 2, 3, 7, 2**63, 5], len(data))
    assert parse_acks(b"") == ([], 0)
    ends = [sum(len(f) for f in frames[:k]) for k in range(len(frames) + 1)]
    for n in range(len(data)):  # torn: only whole groups count
        whole = max(k for k in range(len(ends)) if ends[k] <= n)
        assert parse_acks(data[:n]) == ([i for g in groups[:whole] for i in g], ends[whole])
    bad = bytearray(data)
    bad[ends[1] + 14] ^= 1  # inside the second group's ids
    assert parse_acks(bytes(bad)) == ([1, 2, 3], ends[1])


# -- recovery ----------------------------------------------------------------------------------


def write_segment(d: Path, rids: list[int]) -> tuple[Path, list[int]]:
    """A segment of records `rids` (first id = rids[0]); its path and each record's offset."""
    d.mkdir(exist_ok=True)
    path = d / f"{rids[0]:020d}.seg"
    offsets, data = [], b""
    for rid in rids:
        offsets.append(len(data))
        data += rec(rid, payload(rid))
    path.write_bytes(data)
    return path, offsets


@contextmanager
def recovered(d: Path) -> Iterator[Recovered]:
    r = recover(d)
    try:
        yield r
    finally:
        os.close(r.dir_fd)
        os.close(r.lock_fd)


def ids(r: Recovered) -> list[int]:
    return [e.id for e in r.entries]


def test_recovery_replays_what_is_not_acknowledged(tmp_path: Path) -> None:
    write_segment(tmp_path, [1, 2, 3])
    done, _ = write_segment(tmp_path, [4, 5])
    write_segment(tmp_path, [6, 7])
    (tmp_path / f"{1:020d}.ack").write_bytes(ack_frame([2]))
    done.with_suffix(".ack").write_bytes(ack_frame([5, 4]))  # all of it: deleted
    lone = tmp_path / f"{99:020d}.ack"  # its segment is gone
    lone.write_bytes(ack_frame([99]))
    (tmp_path / "notes.txt").write_text("not the spool's")
    with recovered(tmp_path) as r:
        assert ids(r) == [1, 3, 6, 7]
        assert [(e.offset, e.length, e.time_ms, e.payload) for e in r.entries[:2]] == [
            (0, len(payload(1)), T0, None),
            (2 * HEADER_SIZE + len(payload(1)) + len(payload(2)), len(payload(3)), T0, None),
        ]
        rep = r.report
        assert rep.clean, rep.summary()
        assert (rep.segments, rep.segments_deleted) == (3, 1)
        assert (rep.records_recovered, rep.records_acked) == (4, 3)
        assert r.next_id == 8
        assert [s.first_id for s in r.segments] == [1, 6]
        assert all(s.sealed for s in r.segments) and [s.live for s in r.segments] == [2, 2]
        assert r.disk_bytes == sum(s.path.stat().st_size for s in r.segments) + len(ack_frame([2]))
    assert not done.exists() and not done.with_suffix(".ack").exists() and not lone.exists()
    assert (tmp_path / "notes.txt").exists()


def test_recovery_cuts_a_torn_tail(tmp_path: Path) -> None:
    path, _ = write_segment(tmp_path, [1, 2, 3])
    whole = path.stat().st_size
    torn = rec(4, payload(4))[: HEADER_SIZE + 3]
    with open(path, "ab") as f:
        f.write(torn)
    with recovered(tmp_path) as r:
        assert ids(r) == [1, 2, 3]
        assert r.report.bytes_truncated == len(torn) and not r.report.clean
        assert "torn tail" in r.report.summary()
        assert r.next_id == 4  # the torn record's id is given out again: it never was durable
    assert path.stat().st_size == whole
    with recovered(tmp_path) as r:  # the repair is on disk
        assert ids(r) == [1, 2, 3] and r.report.clean


def test_recovery_skips_a_corrupt_record_to_the_next_one(tmp_path: Path) -> None:
    path, offsets = write_segment(tmp_path, [1, 2, 3, 4])
    data = bytearray(path.read_bytes())
    data[offsets[1] + HEADER_SIZE + 2] ^= 0x10  # a payload bit of record 2
    path.write_bytes(bytes(data))
    with recovered(tmp_path) as r:
        assert ids(r) == [1, 3, 4]
        rep = r.report
        assert (rep.corrupt_regions, rep.records_skipped) == (1, 1)
        assert rep.bytes_skipped == offsets[2] - offsets[1]
        assert rep.bytes_truncated == 0 and "ids 2..2" in rep.summary()


def test_recovery_drops_the_corrupt_end_of_an_older_segment(tmp_path: Path) -> None:
    old, offsets = write_segment(tmp_path, [1, 2])
    write_segment(tmp_path, [3, 4])
    data = bytearray(old.read_bytes())
    data[-1] ^= 0xFF  # the last byte of record 2
    old.write_bytes(bytes(data))
    with recovered(tmp_path) as r:
        assert ids(r) == [1, 3, 4]
        rep = r.report
        assert rep.corrupt_regions == 1 and rep.bytes_truncated == 0
        assert rep.bytes_skipped == len(data) - offsets[1]
        assert "corrupt rest of segment" in rep.summary()
    assert old.stat().st_size == offsets[1]


def test_recovery_cuts_a_damaged_ack_tail(tmp_path: Path) -> None:
    write_segment(tmp_path, [1, 2, 3])
    ack = tmp_path / f"{1:020d}.ack"
    ack.write_bytes(ack_frame([1]) + ack_frame([3])[:-1])
    with recovered(tmp_path) as r:
        assert ids(r) == [2, 3]  # the torn ack only brings record 3 back
        assert r.report.ack_bytes_truncated == len(ack_frame([3])) - 1
        assert r.segments[0].ack_size == len(ack_frame([1]))
    assert ack.read_bytes() == ack_frame([1])


def test_recovery_counts_the_quarantine_and_never_replays_it(tmp_path: Path) -> None:
    write_segment(tmp_path, [1])
    qdir = tmp_path / QUARANTINE_DIR
    qdir.mkdir()
    for rid in (7, 8):
        (qdir / f"{rid:020d}.rec").write_bytes(rec(rid, payload(rid)))
    (qdir / f"{9:020d}.tmp").write_bytes(b"half written")
    with recovered(tmp_path) as r:
        assert ids(r) == [1] and r.report.quarantined == 2
        assert r.report.clean and "2 records kept in" in r.report.summary()


def test_the_writer_writes_segments_and_quarantine_files_in_the_record_format(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        writer, found = await SpoolWriter.start(tmp_path)
        assert found.entries == [] and found.next_id == 1
        seg = Segment(tmp_path, 1)
        entries, pos = [], 0
        for rid in (1, 2, 3):
            entries.append(Entry(rid, seg, pos, len(payload(rid)), T0, payload(rid)))
            pos += HEADER_SIZE + len(payload(rid))
        await writer.write_group(entries)
        path = await writer.quarantine(entries[1], None)  # read back from the segment
        assert writer.fsyncs >= 2
        await writer.close()
        assert seg.path.read_bytes() == b"".join(rec(r, payload(r)) for r in (1, 2, 3))
        assert path == tmp_path / QUARANTINE_DIR / f"{2:020d}.rec"
        assert path.read_bytes() == rec(2, payload(2))

    asyncio.run(go())
    with recovered(tmp_path) as r:  # the writer released the LOCK
        assert ids(r) == [1, 2, 3] and r.report.quarantined == 1
