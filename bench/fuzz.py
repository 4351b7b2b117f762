"""Fuzz the gateway: mutated OTLP requests on every transport, against a real gateway.

Starts the gateway (tests/support/peers.run_gateway: a subprocess on free ports, 127.0.0.1 only)
with three tenants that have a key (acme: drop rules and RED metrics; beta: RED metrics; gamma:
neither), forwarding over http/protobuf to a counting sink in this process, with a live tail
of acme open (`otlp-gateway tail`) the whole time. Then `--concurrency` tasks send `--requests`
requests (or stop after `--max-seconds`), each a valid request (traces, metrics, logs; with
drop-matching spans, out-of-range HTTP statuses, AnyValues nested past upb's depth limit, a
client-sent tenant.id) that is usually mutated: bit flips, truncation, inserted / duplicated /
deleted bytes, corrupted length prefixes, spliced requests, wrong gRPC frame prefixes, wrong
content types and encodings, compressed garbage, garbage and non-UTF-8 headers, bad timeouts,
wrong keys, methods and paths. Transports: OTLP/HTTP protobuf and JSON, Connect (proto and
JSON), gRPC-web (httpx, HTTP/1.1) and gRPC (raw HTTP/2 with the h2 library).

Reported (a table, and one JSON line with --json): answers by transport and status, the number
of 5xx, whether the gateway and the tail are alive (a /healthz probe and a valid export after
the run), gateway RSS at start and end, and the accounting: items in acknowledged requests as
the client counts them = items the gateway accepted (after drop rules) + dropped by rules, and
every accepted item arrived at the sink.

  uv run --frozen python bench/fuzz.py --requests 100000 --max-seconds 3600
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import httpx  # noqa: E402
import zstandard  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status  # noqa: E402

from gateway.otlp import jsonpb as otlpjson  # noqa: E402
from gateway.otlp import wire  # noqa: E402
from gateway.otlp.signals import BY_NAME  # noqa: E402
from tests.support.peers import Gateway, run_gateway  # noqa: E402
from tests.support.sinks import CountingSink  # noqa: E402

KEYS = {"acme": "fuzz-key-acme", "beta": "fuzz-key-beta", "gamma": "fuzz-key-gamma"}
ADMIN_KEY = "fuzz-admin-key"
SERVICES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
}
TRANSPORTS = ("http/protobuf", "http/json", "connect", "grpc-web", "grpc")


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# The counting sink: counts items with the gateway's own wire walk, answers 200 to everything
# (a body it cannot count is counted apart, never retried forever).


# ---------------------------------------------------------------------------------------------
# Valid requests (the corpus the mutations start from)


def _varint(n: int) -> bytes:
    return wire.encode_varint(n)


def _deep_value(levels: int) -> bytes:
    """An AnyValue of `levels` nested arrays (2 messages a level): valid OTLP past upb's limit."""
    inner = b"\x0a\x01x"
    for _ in range(levels):
        array = b"\x0a" + _varint(len(inner)) + inner  # ArrayValue.values
        inner = b"\x2a" + _varint(len(array)) + array  # AnyValue.array_value
    return inner


def traces_request(rng: random.Random) -> bytes:
    req = ExportTraceServiceRequest()
    for _ in range(rng.randint(1, 3)):
        rs = req.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", rng.choice(["shop", "cart", "pay\n\x1b[2J"])
        if rng.random() < 0.2:
            kv = rs.resource.attributes.add()
            kv.key, kv.value.string_value = "tenant.id", "spoofed"
        ss = rs.scope_spans.add()
        for _ in range(rng.randint(1, 12)):
            span = ss.spans.add()
            span.trace_id = rng.randbytes(16)
            span.span_id = rng.randbytes(8)
            span.name = rng.choice(["GET /a", "GET /healthz", "POST /pay", "x" * 200, "évé\r\n"])
            span.kind = Span.SpanKind.ValueType(rng.randint(0, 5))
            span.start_time_unix_nano = 1_700_000_000_000_000_000 + rng.randint(0, 10**9)
            span.end_time_unix_nano = span.start_time_unix_nano + rng.randint(0, 10**9)
            if rng.random() < 0.2:
                span.status.code = Status.STATUS_CODE_ERROR
                span.status.message = "boom"
            a = span.attributes.add()
            a.key = "http.response.status_code"
            a.value.int_value = rng.choice([200, 404, 503, -1, 2**63 - 1, 99999])
            a = span.attributes.add()
            a.key = "user_agent.original"
            a.value.string_value = rng.choice(["kube-probe/1.29", "curl/8", "Go-http-client"])
            if rng.random() < 0.3:
                a = span.attributes.add()
                a.key = "nested"
                a.value.kvlist_value.values.add(key="k").value.array_value.values.add(int_value=1)
    data = req.SerializeToString()
    if rng.random() < 0.1:  # one span with an attribute nested 120 levels deep
        deep = _deep_value(120)
        deep_kv = b"\x0a\x01d\x12" + _varint(len(deep)) + deep
        deep_span = (
            b"\x0a\x10"
            + rng.randbytes(16)
            + b"\x12\x08"
            + rng.randbytes(8)
            + b"\x2a\x04deep"
            + b"\x4a"
            + _varint(len(deep_kv))
            + deep_kv
        )
        ss_bytes = b"\x12" + _varint(len(deep_span)) + deep_span
        rs_bytes = b"\x12" + _varint(len(ss_bytes)) + ss_bytes
        data += b"\x0a" + _varint(len(rs_bytes)) + rs_bytes
    return data


def logs_request(rng: random.Random) -> bytes:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "shop"
    sl = rl.scope_logs.add()
    for _ in range(rng.randint(1, 10)):
        rec = sl.log_records.add()
        rec.time_unix_nano = 1_700_000_000_000_000_000
        rec.body.string_value = rng.choice(["hello", "line\nforged", "\x1b[31mred"])
        rec.attributes.add(key="log.iostream").value.string_value = rng.choice(["stdout", "stderr"])
    return req.SerializeToString()


def metrics_request(rng: random.Random) -> bytes:
    req = ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    for i in range(rng.randint(1, 4)):
        m = sm.metrics.add(name=f"m{i}")
        for _ in range(rng.randint(1, 5)):
            m.gauge.data_points.add(as_int=rng.randint(-5, 5), time_unix_nano=1)
    return req.SerializeToString()


MAKERS: dict[str, Callable[[random.Random], bytes]] = {
    "traces": traces_request,
    "logs": logs_request,
    "metrics": metrics_request,
}


# ---------------------------------------------------------------------------------------------
# Mutations


def _flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _insert(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]


def _duplicate(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 64))
    return data[:j] + data[i:j] + data[j:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 16) :]


def _bad_length(rng: random.Random, data: bytes) -> bytes:
    """Rewrite the length after a length-delimited tag (0x0a, 0x12, ...)."""
    spots = [i for i in range(len(data) - 1) if data[i] in (0x0A, 0x12, 0x1A, 0x22, 0x2A, 0x4A)]
    if not spots:
        return _flip(rng, data)
    i = rng.choice(spots) + 1
    value = rng.choice([0, 1, 0x7F, 0xFF, rng.randrange(256)])
    tail = rng.choice(
        [b"", b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]
    )
    return data[:i] + bytes([value]) + tail + data[i + 1 :]


def _splice(rng: random.Random, data: bytes) -> bytes:
    other = MAKERS[rng.choice(list(MAKERS))](rng)
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


def _garbage(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.randint(0, 512))


BYTE_MUTATIONS = (_flip, _truncate, _insert, _duplicate, _delete, _bad_length, _splice, _garbage)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        data = rng.choice(BYTE_MUTATIONS)(rng, data)
    return data


def mutate_json(rng: random.Random, text: bytes) -> bytes:
    choice = rng.random()
    if choice < 0.15:
        return b"[" * rng.choice([100, 1000, 100_000]) + b"]" * rng.choice([0, 1])
    if choice < 0.3:  # a hex id that is not hex, a number where a string goes, ...
        swaps = [
            (rb'"traceId":"[0-9a-f]*"', b'"traceId":"zz"'),
            (rb'"spanId":"[0-9a-f]*"', b'"spanId":12'),
            (rb'"intValue":"[-0-9]*"', b'"intValue":"1e400"'),
            (rb'"stringValue":"[^"]*"', b'"stringValue":"\xff\xfe"'),
            (rb'"kind":[0-9]+', b'"kind":99999999999'),
            (rb'"timeUnixNano":"[0-9]*"', b'"timeUnixNano":-1'),
        ]
        pattern, replacement = rng.choice(swaps)
        return re.sub(pattern, replacement, text, count=1)
    return mutate_bytes(rng, text)


GARBAGE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-junk", b"\xff\xfe\x80"),
    (b"x-junk", b"\x1b[2J"),
    (b"user-agent", b"\xc3\x28"),
    (b"grpc-timeout", b"xyz"),
    (b"grpc-timeout", b"999999999S"),
    (b"grpc-timeout", b"1"),
    (b"connect-timeout-ms", b"abc"),
    (b"connect-timeout-ms", b"99999999999"),
    (b"content-length-x", b"-1"),
    (b"connect-protocol-version", b"7"),
    (b"grpc-encoding", b"br"),
    (b"grpc-accept-encoding", b"\xff"),
    (b"accept-encoding", b"\xff\xfe"),
    (b"x-api-key", b"\xff\xfe"),
    (b"authorization", b"Bearer \xff"),
    (b"authorization", b"Basic !!!notbase64"),
    (b"authorization", b"Basic " + b"YWNtZTp3cm9uZw=="),  # acme:wrong
]


# ---------------------------------------------------------------------------------------------
# One request


@dataclass
class Request:
    transport: str
    signal: str
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    expected: int | None  # items if it is acknowledged, as the client can tell; None: unknown


def _compress(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, 1)
    if encoding == "deflate":
        return zlib.compress(data, 1)
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


def _items(signal: str, message: bytes) -> int | None:
    try:
        return wire.count_items(BY_NAME[signal], message)
    except wire.WireError:
        return None


def _frame(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


def make_request(rng: random.Random, transport: str) -> Request:
    signal = rng.choice(("traces", "traces", "traces", "logs", "metrics"))
    valid = MAKERS[signal](rng)
    tenant = rng.choice(list(KEYS))
    auth = rng.random()
    headers: list[tuple[bytes, bytes]] = []
    if auth < 0.85:
        headers.append((b"authorization", f"Bearer {KEYS[tenant]}".encode()))
    elif auth < 0.9:
        headers.append((b"x-api-key", KEYS[tenant].encode()))
    elif auth < 0.95:
        headers.append((b"authorization", b"Bearer wrong-key"))
    mutated = rng.random() < 0.8
    as_json = transport == "http/json" or (transport == "connect" and rng.random() < 0.3)
    message = valid
    # OTLP/JSON (hex ids) over OTLP/HTTP; canonical protobuf JSON (base64 ids) over Connect.
    connect_json = as_json and transport == "connect"
    if as_json:
        if b"deep" in valid:  # past the protobuf decoder's depth limit: no JSON of it
            text = b"{}"
        elif connect_json:
            request_type = BY_NAME[signal].request_type
            text = json_format.MessageToJson(request_type.FromString(valid), indent=None).encode()
        else:
            text = otlpjson.proto_to_json(BY_NAME[signal], valid)
        body_message = mutate_json(rng, text) if mutated else text
    else:
        body_message = mutate_bytes(rng, valid) if mutated else valid
    # The client's count of what an acknowledgement means (pre-drop-rules): the message as the
    # gateway will see it.
    if as_json:
        try:
            if connect_json:  # as the gateway's Connect JSON codec reads it
                message = otlpjson.canonical_json_to_proto(BY_NAME[signal], body_message)
            else:
                message = otlpjson.json_to_proto(BY_NAME[signal], body_message)
        except Exception:
            message = b"\xff"  # not countable: refused if the gateway agrees
    else:
        message = body_message
    expected = _items(signal, message)

    encoding = ""
    if rng.random() < 0.25:
        encoding = rng.choice(["gzip", "deflate", "zstd", "br", "gzip-lie", "gzip-garbage"])
    if transport in ("http/protobuf", "http/json"):
        content_type = b"application/json" if as_json else b"application/x-protobuf"
        path = f"/v1/{signal}"
        body = body_message
    else:
        service = SERVICES[signal]
        path = f"/{service}/Export"
        if transport == "connect":
            content_type = b"application/json" if as_json else b"application/proto"
            headers.append((b"connect-protocol-version", b"1"))
            body = body_message
        else:
            content_type = (
                b"application/grpc-web+proto" if transport == "grpc-web" else b"application/grpc"
            )
            flag = 0
            inner = body_message
            if encoding in ("gzip", "gzip-garbage"):
                inner = gzip.compress(inner if encoding == "gzip" else rng.randbytes(64), 1)
                flag = 1
            body = _frame(inner, flag)
            if mutated and rng.random() < 0.3:  # the frame prefix itself
                body = rng.choice(
                    [
                        body[: rng.randrange(6)],
                        bytes([rng.choice([1, 2, 0x80, 0xFF])]) + body[1:],
                        body[:1] + rng.randbytes(4) + body[5:],
                        body + body,
                    ]
                )
                if body[1:5] != _frame(inner, flag)[1:5] or (body[0] & 1) != flag:
                    expected = None  # the length or the compressed bit changed
            if encoding:
                headers.append(
                    (
                        b"grpc-encoding",
                        b"gzip" if encoding.startswith("gzip") else encoding.encode(),
                    )
                )
            encoding = ""  # framing carries it
    if encoding and transport != "grpc" and transport != "grpc-web":
        if encoding == "gzip-lie":
            headers.append((b"content-encoding", b"gzip"))
        elif encoding == "gzip-garbage":
            headers.append((b"content-encoding", b"gzip"))
            garbage = rng.randbytes(rng.randint(0, 256))
            body = gzip.compress(garbage, 1)
            # b"" is a valid (empty) request in either encoding
            expected = 0 if not garbage else None if as_json else _items(signal, garbage)
        else:
            headers.append((b"content-encoding", encoding.encode()))
            body = _compress(encoding, body)
    if mutated and rng.random() < 0.15:
        content_type = rng.choice(
            [
                b"",
                b"text/plain",
                b"application/x-protobuf; charset=\xff",
                b"APPLICATION/JSON",
                b"application/grpc+json",
                b"application/grpc+proto",
                b"application/grpc-web-text",
                b"application/connect+proto",
                b"multipart/form-data; boundary=x",
            ]
        )
    if content_type:
        headers.append((b"content-type", content_type))
    if mutated and rng.random() < 0.15:
        headers.append(rng.choice(GARBAGE_HEADERS))
    method = "POST"
    if mutated and rng.random() < 0.03:
        method = rng.choice(["GET", "PUT", "DELETE", "OPTIONS", "PATCH"])
    if mutated and rng.random() < 0.03:
        path = rng.choice(
            [path + "/", path + "?x=\xff", path.upper(), f"/v1/{signal}x", "/v1/", path + "/../x"]
        )
    return Request(transport, signal, method, path, headers, body, expected)


# ---------------------------------------------------------------------------------------------
# Clients


@dataclass
class Outcome:
    status: str  # "200", "415", "grpc=3" ...
    http_status: int | None
    ok: bool  # acknowledged


def _grpc_web_status(resp: httpx.Response) -> str | None:
    status: str | None = resp.headers.get("grpc-status")
    if status is None:
        body = resp.content
        i = body.rfind(b"grpc-status:")
        if i >= 0:
            status = body[i + 12 : i + 16].split(b"\r")[0].strip().decode("latin-1")
    return status


async def send_http(client: httpx.AsyncClient, base: str, req: Request) -> Outcome:
    resp = await client.request(req.method, base + req.path, content=req.body, headers=req.headers)
    if req.transport == "grpc-web" and resp.status_code == 200:
        grpc_status = _grpc_web_status(resp)
        return Outcome(f"200 grpc={grpc_status}", 200, grpc_status == "0")
    return Outcome(str(resp.status_code), resp.status_code, resp.status_code == 200)


class H2Client:
    """One HTTP/2 connection (h2c, prior knowledge), one stream at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn: h2.connection.H2Connection | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        self._conn.initiate_connection()
        self._writer.write(self._conn.data_to_send())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = self._conn = None

    async def call(self, req: Request) -> Outcome:
        if self._conn is None:
            await self._connect()
        conn, reader, writer = self._conn, self._reader, self._writer
        assert conn is not None and reader is not None and writer is not None
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (b":method", req.method.encode()),
                (b":scheme", b"http"),
                (b":path", req.path.encode("utf-8", "surrogateescape")),
                (b":authority", f"127.0.0.1:{self.port}".encode()),
                (b"te", b"trailers"),
                *req.headers,
            ],
            end_stream=not req.body,
        )
        pending = memoryview(req.body)
        headers: dict[bytes, bytes] = {}
        trailers: dict[bytes, bytes] = {}
        reset = False
        done = False
        while not done:
            while pending:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk, pending = pending[:window], pending[window:]
                conn.send_data(sid, chunk.tobytes(), end_stream=not pending)
            writer.write(conn.data_to_send())
            await writer.drain()
            raw = await reader.read(65536)
            if not raw:
                self.close()
                return Outcome("closed", None, False)
            for event in conn.receive_data(raw):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    done = True
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                    reset = done = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.close()
                    return Outcome("goaway", None, False)
            if done:
                pending = memoryview(b"")
        writer.write(conn.data_to_send())
        if reset:
            return Outcome("reset", None, False)
        http_status = int(headers.get(b":status", b"0"))
        grpc_status = trailers.get(b"grpc-status", headers.get(b"grpc-status"))
        shown = grpc_status.decode() if grpc_status is not None else "none"
        if http_status != 200:
            return Outcome(f"{http_status} grpc={shown}", http_status, False)
        return Outcome(f"200 grpc={shown}", 200, shown == "0")


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Tally:
    by_status: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    sent: int = 0
    five_xx: int = 0
    acked: int = 0
    acked_items: int = 0
    acked_uncounted: int = 0  # acknowledged although the client could not count it
    uncounted_examples: list[str] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _worker(
    gw: Gateway, tally: Tally, budget: Iterator[int], seed: int, deadline: float
) -> None:
    rng = random.Random(seed)
    h2c = H2Client(gw.http_port)
    base = gw.http_endpoint
    async with httpx.AsyncClient(timeout=30.0) as client:
        for _ in budget:
            if time.monotonic() > deadline:
                break
            transport = rng.choice(TRANSPORTS)
            req = make_request(rng, transport)
            tally.sent += 1
            try:
                if transport == "grpc":
                    outcome = await asyncio.wait_for(h2c.call(req), 30.0)
                else:
                    outcome = await send_http(client, base, req)
            except Exception as exc:  # connection closed, protocol error, timeout
                h2c.close() if transport == "grpc" else None
                tally.errors[type(exc).__name__] += 1
                tally.by_status[(transport, f"error {type(exc).__name__}")] += 1
                continue
            tally.by_status[(transport, outcome.status)] += 1
            if outcome.http_status is not None and outcome.http_status >= 500:
                tally.five_xx += 1
            if outcome.ok:
                tally.acked += 1
                if req.expected is None:
                    tally.acked_uncounted += 1
                    tally.uncounted_examples.append(
                        f"{transport} {req.path} {dict(req.headers).get(b'content-type')!r} "
                        f"{req.body[:24].hex()}"
                    )
                else:
                    tally.acked_items += req.expected
    h2c.close()


async def _load(gw: Gateway, requests: int, concurrency: int, seed: int, deadline: float) -> Tally:
    tally = Tally()
    budget = iter(range(requests))  # shared: each worker takes the next request number
    await asyncio.gather(
        *(_worker(gw, tally, budget, seed * 1000 + i, deadline) for i in range(concurrency))
    )
    return tally


def gateway_config(sink: CountingSink) -> dict[str, Any]:
    return {
        "log": {"format": "text"},
        "limits": {"max_request_bytes": "4MiB", "max_body_bytes": "4MiB"},
        "admin": {"api_key": ADMIN_KEY},
        "backends": {
            "sink": {
                "protocol": "http/protobuf",
                "endpoint": sink.endpoint,
                "compression": "none",
                "client": "httpx",
            }
        },
        "service_backends": ["sink"],
        "tenants": {
            "acme": {
                "api_keys": [_digest(KEYS["acme"])],
                "red_metrics": True,
                "drop": [
                    {"span_name": "GET /healthz"},
                    {"attribute": "user_agent.original", "starts_with": "kube-probe/"},
                    {"signal": "logs", "attribute": "log.iostream", "equals": "stderr"},
                ],
            },
            "beta": {"api_keys": [_digest(KEYS["beta"])], "red_metrics": {"max_series": 50}},
            "gamma": {"api_keys": [_digest(KEYS["gamma"])], "attributes": {"team": "g"}},
        },
    }


def run(
    requests: int, concurrency: int, max_seconds: float, seed: int, tmp: Path
) -> dict[str, Any]:
    started = time.monotonic()
    with CountingSink().running() as sink, run_gateway(tmp, gateway_config(sink)) as gw:
        tail_out = tmp / "tail.out"
        with open(tail_out, "wb") as out:
            tail = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "tail",
                    "--tenant",
                    "acme",
                    "--admin",
                    gw.admin_url,
                    "--key",
                    ADMIN_KEY,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        try:
            time.sleep(1.0)
            rss_start = _rss_kib(gw.proc.pid)
            deadline = time.monotonic() + max_seconds
            tally = asyncio.run(_load(gw, requests, concurrency, seed, deadline))
            load_seconds = time.monotonic() - started
            rss_end = _rss_kib(gw.proc.pid)
            # alive: a probe, and one valid export that arrives
            final_request = traces_request(random.Random(seed))
            healthz = httpx.get(gw.admin_url + "/healthz", timeout=10).status_code
            final = httpx.post(
                gw.http_endpoint + "/v1/traces",
                content=final_request,
                headers={
                    "content-type": "application/x-protobuf",
                    "authorization": f"Bearer {KEYS['gamma']}",
                },
                timeout=10,
            ).status_code
            scrape = ""
            # wait for the queues to drain: accepted items (after drop rules) all at the sink
            until = time.monotonic() + 60
            while time.monotonic() < until:
                scrape = httpx.get(gw.admin_url + "/metrics", timeout=10).text
                if sink.total() >= _metric_sum(scrape, "otlp_gateway_accepted_items_total"):
                    break
                time.sleep(0.5)
            time.sleep(1.0)
            scrape = httpx.get(gw.admin_url + "/metrics", timeout=10).text
            tail_alive = tail.poll() is None
        finally:
            tail.terminate()
            try:
                tail.wait(10)
            except subprocess.TimeoutExpired:
                tail.kill()
                tail.wait(5)
        log = gw.log()
        accepted_items = _metric_sum(scrape, "otlp_gateway_accepted_items_total")
        dropped_by_rule = _metric_sum(
            scrape, "otlp_gateway_dropped_items_total", reason="drop_rule"
        )
        requests_total = _metric_sum(scrape, "otlp_gateway_requests_total")
        tail_lines = tail_out.read_text(errors="replace").splitlines()
        result: dict[str, Any] = {
            "requests_sent": tally.sent,
            "seconds": round(load_seconds, 1),
            "truncated": tally.sent < requests,
            "by_transport_status": {f"{t} {s}": n for (t, s), n in sorted(tally.by_status.items())},
            "five_xx": tally.five_xx,
            "client_errors": dict(tally.errors),
            "gateway_alive": gw.proc.poll() is None and healthz == 200 and final == 200,
            "tail_alive": tail_alive,
            "tail_rows": sum(1 for line in tail_lines if not line.startswith("...")),
            "rss_start_mib": round(rss_start / 1024, 1),
            "rss_end_mib": round(rss_end / 1024, 1),
            "acked_requests": tally.acked + 1,
            "acked_uncounted": tally.acked_uncounted,
            "acked_uncounted_examples": tally.uncounted_examples[:5],
            "acked_items_client": tally.acked_items
            + wire.count_items(BY_NAME["traces"], final_request),
            "accepted_items_gateway": int(accepted_items),
            "dropped_by_rule": int(dropped_by_rule),
            "sink_items": sink.total(),
            "sink_uncountable": sink.uncountable,
            "requests_total_metric": int(requests_total),
            "tracebacks_in_log": log.count("Traceback"),
            "log_lines": len(log.splitlines()),
        }
        return result


def print_table(result: dict[str, Any]) -> None:
    rows: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for key, n in result["by_transport_status"].items():
        transport, _, status = key.partition(" ")
        rows[status][transport] = n
    header = f"{'status':<26}" + "".join(f"{t:>15}" for t in TRANSPORTS)
    print(header)
    for status in sorted(rows):
        print(f"{status:<26}" + "".join(f"{rows[status].get(t, 0):>15}" for t in TRANSPORTS))
    for key, value in result.items():
        if key != "by_transport_status":
            print(f"{key}: {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otlp-fuzz-") as tmp:
        result = run(args.requests, args.concurrency, args.max_seconds, args.seed, Path(tmp))
        if result["tracebacks_in_log"]:
            sys.stderr.write(
                Path(tmp, next(p for p in os.listdir(tmp) if p.endswith(".log"))).read_text()[
                    -20000:
                ]
            )
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    ok = result["five_xx"] == 0 and result["gateway_alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
