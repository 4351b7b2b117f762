"""Raw protobuf encoding for tests that build requests by hand (optionally with non-minimal
varints, which decoders must accept)."""

from __future__ import annotations


def varint(n: int, pad: int = 0) -> bytes:
    """n as a varint, padded with `pad` redundant continuation bytes (non-minimal encoding)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    if not pad:
        return bytes([*out, n])
    return bytes([*out, n | 0x80, *[0x80] * (pad - 1), 0x00])


def ld(field: int, payload: bytes, pad: int = 0) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload), pad) + payload
