"""Request size limits, enforced before anything is decoded: a cap on the bytes read off the wire
and a cap on the bytes produced while decompressing (so a small gzip bomb cannot inflate)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import zstandard
from starlette.types import Message, Receive

from . import gz

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # after decompression
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # on the wire, before decompression
DEFAULT_MAX_INFLIGHT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # request bytes being read and processed at once, all transports together; above it new
    # requests get 429 / RESOURCE_EXHAUSTED before their body is read
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES


class InFlight:
    """Bytes of the requests being read and processed right now (wire and decompressed)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.bytes = 0

    @property
    def full(self) -> bool:
        return self.bytes >= self.cap

    def busy_message(self) -> str:
        return (
            f"the gateway is holding {self.bytes} bytes of requests (limit {self.cap}); "
            "retry after 1s"
        )

    def hold(self, content_length: str) -> Held:
        """Count one request in flight from now (its announced length is reserved before a byte
        is read) until the returned context ends."""
        return Held(self, content_length)


class Held:
    """One request's bytes counted in an InFlight budget; released when the context ends."""

    def __init__(self, inflight: InFlight, content_length: str) -> None:
        self._inflight = inflight
        self._length = content_length  # as the client announced it ("" when it did not)
        self.bytes = int(content_length) if content_length.isdigit() else 0
        inflight.bytes += self.bytes

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inflight.bytes -= self.bytes
        self.bytes = 0

    async def read(self, receive: Receive, cap: int) -> bytes:
        """The whole body, refused (TooLarge) as soon as it is known to pass `cap`. The body counts
        on top of the reservation, standing in for its decompressed copy."""
        if self._length.isdigit() and int(self._length) > cap:
            await discard_unless_huge(receive, self._length)
            raise TooLarge(too_large_message("the request body", cap))
        raw = await read_body(receive, cap)
        self.bytes += len(raw)
        self._inflight.bytes += len(raw)
        return raw


# How much of an oversized body is still read (and thrown away) before the refusal is sent. Over
# HTTP/2 a response sent while the client is still sending makes the server reset the stream, and
# gRPC clients then report INTERNAL instead of our RESOURCE_EXHAUSTED.
DISCARD_LIMIT = 64 * 1024 * 1024


class TooLarge(Exception):
    """A body or its decompressed content is over the configured cap."""


class BadEncoding(Exception):
    """The body could not be decompressed with the encoding the client named."""


class UnknownEncoding(Exception):
    """The client named a content encoding this gateway does not accept."""


def too_large_message(what: str, cap: int) -> str:
    return (
        f"{what} is larger than the limit of {cap} bytes; send smaller batches "
        f"(for example lower the SDK's max export batch size)"
    )


def _inflate(data: bytes, cap: int, wbits: int) -> bytes:
    """Inflate zlib/gzip/raw-deflate data (several gzip members in a row included), refusing
    output beyond `cap` as it is produced rather than after."""
    out: list[bytes] = []
    produced = 0
    rest = data
    while rest:
        d = gz.decompressobj(wbits)
        try:
            chunk = d.decompress(rest, cap + 1 - produced)
        except gz.error as exc:
            raise BadEncoding(str(exc)) from None
        produced += len(chunk)
        out.append(chunk)
        if produced > cap or d.unconsumed_tail:
            # Drop the output first: a traceback kept in a reference cycle (connect-python keeps
            # one) would otherwise pin up to `cap` bytes per refused request until the next GC.
            del out, chunk
            raise TooLarge(too_large_message("the decompressed request", cap))
        if not d.eof:
            raise BadEncoding("compressed data is truncated")
        rest = d.unused_data if wbits > 16 else b""
        # Trailing zero padding after a gzip member is tolerated, as gzip(1) does.
        if rest and not rest.strip(b"\x00"):
            break
    return b"".join(out)


def _gunzip(data: bytes, cap: int) -> bytes:
    return _inflate(data, cap, 16 + gz.MAX_WBITS)


def _inflate_deflate(data: bytes, cap: int) -> bytes:
    # HTTP "deflate" is zlib-wrapped; some clients send raw deflate.
    try:
        return _inflate(data, cap, gz.MAX_WBITS)
    except BadEncoding:
        return _inflate(data, cap, -gz.MAX_WBITS)


def _unzstd(data: bytes, cap: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(data)
    try:
        out = reader.read(cap + 1)
    except zstandard.ZstdError as exc:
        raise BadEncoding(str(exc)) from None
    if len(out) > cap:
        del out  # as in _inflate: no traceback may pin the output
        raise TooLarge(too_large_message("the decompressed request", cap))
    return bytes(out)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _inflate_deflate,
    "zstd": _unzstd,
}


def decompress(encoding: str, data: bytes, cap: int) -> bytes:
    """Decompress `data` sent with Content-Encoding `encoding`, producing at most `cap` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(data) > cap:
            raise TooLarge(too_large_message("the request", cap))
        return data
    decoder = _DECODERS.get(encoding)
    if decoder is None:
        raise UnknownEncoding(encoding)
    if not data:
        return b""
    return decoder(data, cap)


def accepted_encodings() -> list[str]:
    return ["gzip", "deflate", "zstd"]


class ClientGone(Exception):
    """The client disconnected before sending the whole body."""


async def read_body(receive: Receive, cap: int) -> bytes:
    """Read an ASGI request body, refusing it as soon as it passes `cap` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            del chunks
            await discard_body(receive, message)
            raise TooLarge(too_large_message("the request body", cap))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def worth_draining(content_length: str) -> bool:
    """Whether a refused body should be read away first: yes, unless it announces more than
    DISCARD_LIMIT bytes."""
    return not content_length.isdigit() or int(content_length) <= DISCARD_LIMIT


async def discard_unless_huge(receive: Receive, content_length: str) -> None:
    if worth_draining(content_length):
        await discard_body(receive)


async def discard_body(receive: Receive, last: Message | None = None) -> None:
    """Read and drop the rest of a body (up to DISCARD_LIMIT), so that a refusal is answered to a
    client that has finished sending. `last` is the latest message already received, if any."""
    seen = 0
    more = last is None or bool(last.get("more_body", False))
    while more and seen <= DISCARD_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        more = bool(message.get("more_body", False))
