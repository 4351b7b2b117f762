"""gzip, deflate and CRC-32 through ISA-L (the `isal` package) where it can: the same formats
as zlib at 3-4x the speed for compression and CRC-32, 2x for decompression. Forwarding recompresses
every batch, so this is most of the per-span cost that remains (bench/README.md)."""

from __future__ import annotations

import zlib
from typing import Any

from isal import isal_zlib

ISAL_MAX_LEVEL = 3  # ISA-L has levels 0-3; higher levels fall back to zlib

error: tuple[type[Exception], ...] = (isal_zlib.error, zlib.error)  # type: ignore[assignment]
crc32 = isal_zlib.crc32
decompressobj = isal_zlib.decompressobj
MAX_WBITS = zlib.MAX_WBITS


def gzip_compress(data: bytes | bytearray | memoryview, level: int = 1) -> bytes:
    """One gzip member. Levels 1-3 (ISA-L 1-3) compress about as well as zlib's 1-4; 4-9 use
    zlib."""
    c: Any
    if level <= ISAL_MAX_LEVEL:
        c = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 16 + MAX_WBITS)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, 16 + MAX_WBITS)
    return bytes(c.compress(data) + c.flush())
