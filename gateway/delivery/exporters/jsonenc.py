"""OTLP/JSON for the `http/json` and `file` backends, made off the event loop, piece by piece.

A batch may be 16 MiB of protobuf; converting it with `json_format` takes seconds (8.9 s for a
16 MiB batch of spans measured on the event loop, 585 MiB peak RSS), during which no request was
answered. The conversion runs in a small thread pool shared by every backend, so at most
`THREADS` batches are converted at once. It works on pieces of at most `PIECE_BYTES` (split at
the wire level, gateway/otlp/split.py): a C call (protobuf parse, `json.dumps`) holds the GIL for a
piece at a time, so the event loop gets its turn at every GIL switch, and only one piece is held
as Python objects at once. The pieces' entries are joined into one request again.

A batch that cannot be converted (an item that does not decode, invalid UTF-8, nesting deeper
than protobuf parses) raises `ExportError` with `invalid=True`, like a backend answering 400:
the pipeline splits the batch and delivers the parts that convert.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.delivery.batch import Batch
from gateway.delivery.exporters.base import ExportError
from gateway.otlp import gz, split
from gateway.otlp import jsonpb as otlpjson
from gateway.otlp.signals import Signal

THREADS = 1
PIECE_BYTES = 128 * 1024
_POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="otlp-json")


class _NotJoinable(Exception):
    """A piece's document is not one list of entries (profiles carry a dictionary too)."""


def _entries(doc: dict[str, Any]) -> tuple[str, bytes] | None:
    """(key, the JSON of its entries without brackets) of a request document; None if empty."""
    if not doc:
        return None
    if len(doc) != 1:
        raise _NotJoinable
    ((key, value),) = doc.items()
    if not isinstance(value, list):
        raise _NotJoinable
    return key, json.dumps(value, separators=(",", ":"))[1:-1].encode()


def to_json(signal: Signal, payload: bytes) -> bytes:
    """The OTLP/JSON of the export request `payload` (blocking: run it in the pool)."""
    if len(payload) <= PIECE_BYTES:
        return otlpjson.proto_to_json(signal, payload)
    key = ""
    chunks: list[bytes] = []
    try:
        for piece in split.split(signal, payload, PIECE_BYTES):
            got = _entries(otlpjson.message_to_json_dict(signal, piece))
            if got is not None:
                key = got[0]
                if got[1]:
                    chunks.append(got[1])
    except _NotJoinable:
        return otlpjson.proto_to_json(signal, payload)
    if not key:
        return b"{}"
    # one pass over the bytes: joining str and then encoding held the GIL twice as long
    return b"".join((b'{"', key.encode(), b'":[', b",".join(chunks), b"]}"))


def _encode(signal: Signal, payload: bytes, gzip_level: int | None) -> bytes:
    try:
        body = to_json(signal, payload)
    except Exception as exc:  # any failure: the data is not valid OTLP
        raise ExportError(
            f"cannot convert the batch to OTLP/JSON, it holds data that is not valid OTLP "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            retryable=False,
            invalid=True,
        ) from exc
    return body if gzip_level is None else gz.gzip_compress(body, gzip_level)


async def encoded(batch: Batch, gzip_level: int | None) -> bytes:
    """The batch as OTLP/JSON (gzipped at `gzip_level`), made once per batch (Batch.encoded)
    in the conversion pool."""
    key = ("json", gzip_level)
    got = batch.encodings.get(key)
    if got is None:
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(_POOL, _encode, batch.signal, batch.payload, gzip_level)
        got = batch.encodings.setdefault(key, got)
    return got
