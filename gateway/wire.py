"""A protobuf wire-format walk: validates the structure of an OTLP export request down to its
items and counts them, without decoding the items themselves.

Protobuf bodies are forwarded as the bytes that arrived; this walk is the only look inside them
on the hot path. It checks every tag, wire type and length on the levels it walks (request,
resource, scope, and for metrics the metric), so garbage and truncated bodies are refused; the
items themselves are skipped by length.
"""

from __future__ import annotations

from .signals import Signal

_LEN = 2


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at buf[pos:end] and the position after it."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise WireError("varint longer than 10 bytes")


def skip_scalar(buf: bytes, pos: int, end: int, wtype: int) -> int:
    """Skip the value of a non-length-delimited field of wire type `wtype` starting at pos."""
    if wtype == 0:
        return read_varint(buf, pos, end)[1]
    if wtype == 1:
        pos += 8
    elif wtype == 5:
        pos += 4
    else:  # groups (3, 4) do not occur in OTLP; 6 and 7 are invalid
        raise WireError(f"unsupported wire type {wtype}")
    if pos > end:
        raise WireError("field runs past the end of the message")
    return pos


def _walk(buf: bytes, pos: int, end: int, path: tuple[frozenset[int], ...], depth: int) -> int:
    """Walk the message in buf[pos:end]; count fields path[depth] (descending further if needed)."""
    wanted = path[depth]
    last = depth == len(path) - 1
    count = 0
    while pos < end:
        b = buf[pos]
        if b < 0x80:  # one-byte tag, the common case
            tag = b
            pos += 1
        else:
            tag, pos = read_varint(buf, pos, end)
        field = tag >> 3
        wtype = tag & 7
        if field == 0:
            raise WireError("field number 0")
        if wtype == _LEN:
            b = buf[pos] if pos < end else 0x80
            if b < 0x80 and pos < end:
                size = b
                pos += 1
            else:
                size, pos = read_varint(buf, pos, end)
            stop = pos + size
            if stop > end:
                raise WireError("length runs past the end of the message")
            if field in wanted:
                count += 1 if last else _walk(buf, pos, stop, path, depth + 1)
            pos = stop
        elif field in wanted:
            raise WireError(f"field {field} has wire type {wtype}, expected a message")
        else:
            pos = skip_scalar(buf, pos, end, wtype)
    if pos != end:
        raise WireError("field runs past the end of the message")
    return count


def count_items(signal: Signal, data: bytes) -> int:
    """Validate `data` as an export request of `signal` and return how many items it holds."""
    return _walk(data, 0, len(data), signal.item_path, 0)
