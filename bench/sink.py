"""A counting OTLP/HTTP sink for bench/run.py: cheap enough to keep up with the contenders.

One process, one asyncio loop, a hand-written HTTP/1.1 server (keep-alive, Content-Length and
chunked bodies) on every port given. Each `POST /v1/traces` body is gunzipped (when
`Content-Encoding: gzip`, with ISA-L), its spans are counted from one upb decode (with the spans
whose resource lacks the tenant), and it is answered 200 with an empty
`ExportTraceServiceResponse`. Bodies repeat (the load generator sends one request again and again),
so counts are cached by (length, crc32) of the decompressed body; merged exports are new bodies.

`GET /stats` on any port answers JSON: per port, requests, spans, wire and decompressed bytes,
spans without the tenant attribute, and errors. Only 127.0.0.1. Example:

  python bench/sink.py --ports 4600,4601 --tenant acme
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from isal import igzip, isal_zlib

RESPONSE_200 = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
)


@dataclass
class PortStats:
    requests: int = 0
    spans: int = 0
    wire_bytes: int = 0
    body_bytes: int = 0
    untagged_spans: int = 0  # spans whose resource lacks tenant.id = the expected value
    errors: int = 0
    last_error: str = ""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field; other wire types skipped."""
    while pos < end:
        key, pos = _varint(buf, pos)
        wtype = key & 7
        if wtype == 2:
            n, pos = _varint(buf, pos)
            yield key >> 3, pos, pos + n
            pos += n
        elif wtype == 0:
            _, pos = _varint(buf, pos)
        elif wtype == 1:
            pos += 8
        elif wtype == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wtype}")
    if pos != end:
        raise ValueError("field runs past the end of its message")


def count_spans(body: bytes) -> int:
    spans = 0
    for f1, s1, e1 in _fields(body, 0, len(body)):  # resource_spans = 1
        if f1 != 1:
            continue
        for f2, s2, e2 in _fields(body, s1, e1):  # scope_spans = 2
            if f2 != 2:
                continue
            for f3, _, _ in _fields(body, s2, e2):  # spans = 2
                spans += f3 == 2
    return spans


def untagged_spans(body: bytes, tenant: str) -> int:
    """Spans in ResourceSpans whose resource lacks tenant.id == tenant (or has it twice)."""
    return span_counts(body, tenant)[1]


def span_counts(body: bytes, tenant: str) -> tuple[int, int]:
    """(spans, spans whose resource lacks tenant.id == tenant), from one decode (upb): a new body
    is every merged export, and walking its wire format in Python as well cost as much again."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    msg = ExportTraceServiceRequest.FromString(body)
    spans = untagged = 0
    for rs in msg.resource_spans:
        n = sum(len(ss.spans) for ss in rs.scope_spans)
        spans += n
        values = [a.value.string_value for a in rs.resource.attributes if a.key == "tenant.id"]
        if values != [tenant]:
            untagged += n
    return spans, untagged


class Sink:
    def __init__(self, tenant: str, dump_dir: str | None = None) -> None:
        self.tenant = tenant
        self.dump_dir = dump_dir  # bodies that fail the tenant check are written here (first 5)
        self.dumped = 0
        self.stats: dict[int, PortStats] = {}
        self._known: dict[tuple[int, int], tuple[int, int]] = {}

    def record(self, port: int, encoding: str, wire: bytes) -> None:
        st = self.stats[port]
        st.requests += 1
        st.wire_bytes += len(wire)
        # ISA-L: ~3x zlib's speed, so the sink keeps up with the fastest contender
        body = igzip.decompress(wire) if encoding == "gzip" else wire  # type: ignore[no-untyped-call]
        st.body_bytes += len(body)
        key = (len(body), isal_zlib.crc32(body))
        known = self._known.get(key)
        if known is None:
            known = span_counts(body, self.tenant)
            if known[1] and self.dump_dir and self.dumped < 5:
                self.dumped += 1
                with open(f"{self.dump_dir}/bad-tenant-{port}-{self.dumped}.pb", "wb") as f:
                    f.write(body)
            if len(self._known) < 4096:
                self._known[key] = known
        spans, untagged = known
        st.spans += spans
        st.untagged_spans += untagged

    def stats_json(self) -> bytes:
        return json.dumps({str(p): asdict(s) for p, s in self.stats.items()}).encode()


class Http1(asyncio.Protocol):
    """HTTP/1.1 keep-alive server side: just enough for OTLP/HTTP exporters."""

    def __init__(self, sink: Sink, port: int) -> None:
        self.sink, self.port = sink, port
        self.buf = bytearray()
        self.head: tuple[str, str, dict[str, str]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            while self._step():
                pass
        except Exception as exc:  # a malformed request: count it and drop the connection
            st = self.sink.stats[self.port]
            st.errors += 1
            st.last_error = repr(exc)[:200]
            assert self.transport is not None
            self.transport.close()

    def _step(self) -> bool:
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.head = (method, path, headers)
        method, path, headers = self.head
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
            if body is None:
                return False
        else:
            n = int(headers.get("content-length", "0"))
            if len(self.buf) < n:
                return False
            body = bytes(self.buf[:n])
            del self.buf[:n]
        self.head = None
        self._respond(method, path, headers, body)
        return True

    def _chunked(self) -> bytes | None:
        pos = 0
        parts: list[bytes] = []
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
            start = eol + 2
            if size == 0:
                end = self.buf.find(b"\r\n\r\n", eol)  # optional trailers, then the blank line
                if end < 0:
                    return None
                del self.buf[: end + 4]
                return b"".join(parts)
            if len(self.buf) < start + size + 2:
                return None
            parts.append(bytes(self.buf[start : start + size]))
            pos = start + size + 2

    def _respond(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        if method == "GET" and path == "/stats":
            out = self.sink.stats_json()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % len(out)
                + out
            )
            return
        if method == "POST" and path == "/v1/traces":
            self.sink.record(self.port, headers.get("content-encoding", ""), body)
            self.transport.write(RESPONSE_200)
            return
        self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


async def serve(ports: list[int], tenant: str, dump_dir: str | None) -> None:
    sink = Sink(tenant, dump_dir)
    loop = asyncio.get_running_loop()
    servers = []
    for port in ports:
        sink.stats[port] = PortStats()
        servers.append(
            await loop.create_server(
                functools.partial(Http1, sink, port), "127.0.0.1", port, backlog=1024
            )
        )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("sink ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", required=True, help="comma-separated ports on 127.0.0.1")
    parser.add_argument("--tenant", default="acme", help="expected tenant.id on every resource")
    parser.add_argument("--dump-dir", help="write bodies failing the tenant check here")
    args = parser.parse_args()
    asyncio.run(serve([int(p) for p in args.ports.split(",")], args.tenant, args.dump_dir))


if __name__ == "__main__":
    main()
