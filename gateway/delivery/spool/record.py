"""The spool's on-disk format: file names, the record frame and the ack frame. Pure functions on
bytes; reading and writing files is the caller's.

* `<first id>.seg` (20 digits): records, each `[28-byte header][payload]`; header = magic
  `\\x8aSPL`, u32 crc32 (zlib) of the rest of the header and the payload, u32 payload length,
  u64 record id, u64 append time in ms since the epoch (little-endian). Ids are consecutive
  within a segment and increase across segments.
* `<first id>.ack`: acknowledgements of that segment's records, groups of
  `[magic \\x8aACK][u32 crc32][u32 count][count x u64 id]`; the crc covers count and ids.
* `quarantine/<id>.rec`: one record as `[header][payload]`, the segment format.
"""

from __future__ import annotations

import struct

from gateway.otlp import gz

RECORD_MAGIC = b"\x8aSPL"
ACK_MAGIC = b"\x8aACK"
# magic, crc32, payload length, id, append time (ms)
HEADER = struct.Struct("<4sIIQQ")
HEADER_SIZE = HEADER.size  # 28
CRC_START = 8  # the crc covers the header from here on, then the payload
ACK_HEADER = struct.Struct("<4sII")  # magic, crc32, count
SEG_SUFFIX = ".seg"
ACK_SUFFIX = ".ack"
QUARANTINE_DIR = "quarantine"
QUARANTINE_SUFFIX = ".rec"


def record_header(rid: int, length: int, time_ms: int, payload: bytes) -> bytes:
    """The header of record `rid`. `length` is the stored length: a quarantined record keeps
    the header of the record it was, even when the caller hands in other bytes."""
    rest = HEADER.pack(RECORD_MAGIC, 0, length, rid, time_ms)[CRC_START:]
    crc = gz.crc32(payload, gz.crc32(rest))
    return HEADER.pack(RECORD_MAGIC, crc, length, rid, time_ms)


def parse_at(view: memoryview, pos: int, size: int, min_id: int) -> tuple[int, int, int] | None:
    """(id, length, time_ms) of a valid record whose header is at `pos` of the first `size`
    bytes of `view`, else None (a bad magic, length or crc, or an id below `min_id`)."""
    if size - pos < HEADER_SIZE:
        return None
    magic, crc, length, rid, time_ms = HEADER.unpack_from(view, pos)
    if magic != RECORD_MAGIC or length > size - pos - HEADER_SIZE or rid < min_id:
        return None
    if gz.crc32(view[pos + CRC_START : pos + HEADER_SIZE + length]) != crc:
        return None
    return rid, length, time_ms


def payload_of(frame: bytes, rid: int, length: int) -> bytes | None:
    """The payload of `frame` (header + payload as read back) if it is record `rid` of
    `length` bytes, intact; else None."""
    payload = frame[HEADER_SIZE:]
    if len(frame) == HEADER_SIZE + length:
        magic, crc, stored_length, stored_id, _ = HEADER.unpack_from(frame)
        if (
            magic == RECORD_MAGIC
            and stored_length == length
            and stored_id == rid
            and gz.crc32(payload, gz.crc32(frame[CRC_START:HEADER_SIZE])) == crc
        ):
            return payload
    return None


def ack_frame(ids: list[int]) -> bytes:
    """One group of acknowledgements."""
    body = struct.pack(f"<I{len(ids)}Q", len(ids), *ids)
    return ACK_MAGIC + struct.pack("<I", gz.crc32(body)) + body


def parse_acks(data: bytes) -> tuple[list[int], int]:
    """The ids in the valid groups at the start of an ack file, and where they end (the
    length of `data` unless its tail is torn or corrupt)."""
    ids: list[int] = []
    pos = 0
    while pos + ACK_HEADER.size <= len(data):
        magic, crc, count = ACK_HEADER.unpack_from(data, pos)
        end = pos + ACK_HEADER.size + 8 * count
        if magic != ACK_MAGIC or end > len(data) or gz.crc32(data[pos + 8 : end]) != crc:
            break
        ids.extend(struct.unpack_from(f"<{count}Q", data, pos + ACK_HEADER.size))
        pos = end
    return ids, pos
