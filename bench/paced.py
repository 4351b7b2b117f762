"""Paced, open-loop clients (this process, asyncio, on the load core): the half-load latency runs
and the exact smoke runs over OTLP/HTTP.

Request i is due at start + i / rate and goes out then on a connection that can take it, without
waiting for earlier answers (open loop); latency = end of the answer - the time it was due (no
coordinated omission). One scheduler wakes when the next request is due and writes every request
due by then; the connections are asyncio Protocols that parse just what they must, so that one
core shared with the sink keeps the schedule at the request rates of small requests (tens of
thousands per second: a task and a stream reader per request, as before, fell behind at a few
thousand). How late the client itself wrote each request (`Load.late_p99_ms`) is reported: the
latencies include it.

* `run_paced_http`: HTTP/1.1 keep-alive, one request in flight per connection; a request due
  while every connection is busy gets a new connection (up to MAX_HTTP_CONNECTIONS, then it
  waits for the first one free).
* `run_paced_grpc`: gRPC over HTTP/2 without TLS (prior knowledge), `connections` connections
  taking requests in turn, like that many SDK exporters. A minimal client: the request headers
  HPACK-encoded once (literals, no dynamic table), DATA frames within the server's flow-control
  windows and frame size, responses' header blocks decoded with `hpack`, SETTINGS and PING
  acknowledged. It honours the server's MAX_CONCURRENT_STREAMS, and after a GOAWAY it opens a
  new connection and sends the streams the server did not take (and any refused with
  REFUSED_STREAM) again, as gRPC clients do (the gateway sends GOAWAY after 3840 streams).
  A call is OK when it ends with :status 200 and grpc-status 0.

wrk cannot pace (wrk2 is not packaged by Debian), h2load's HTTP/1.1 parser refuses hypercorn's
status line `HTTP/1.1 200 ` (an empty reason phrase, which is valid HTTP), and h2load --rps starts
every client's timer at once (and ticks at most every 100 ms), so its clients send in bursts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import struct
import time
from collections.abc import Callable
from typing import Any

from bench.contenders import API_KEY
from bench.loadgen import Load, percentile
from bench.payload import GRPC_PATH, HTTP_PATH, grpc_frame
from bench.records import PacedRaw

MAX_HTTP_CONNECTIONS = 512
TIMEOUT_S = 120.0  # after the last request is due, answers still missing then are failures


class _Tally:
    """What the clients record: per request answered, (due, ok, latency s); per request written,
    (due, seconds late); and connection errors."""

    def __init__(self, requests: int) -> None:
        self.requests = requests
        self.answers: list[tuple[float, bool, float]] = []
        self.late: list[tuple[float, float]] = []
        self.failed = 0  # no answer: the connection failed or ended first
        self.connection_errors = 0
        self.all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def written(self, due: float) -> None:
        self.late.append((due, time.perf_counter() - due))

    def answered(self, due: float, ok: bool) -> None:
        self.answers.append((due, ok, time.perf_counter() - due))
        self._check()

    def lost(self, due: float) -> None:
        self.failed += 1
        self._check()

    def _check(self) -> None:
        if len(self.answers) + self.failed >= self.requests and not self.all_done.done():
            self.all_done.set_result(None)

    def load(self, wall: float, cpu: float, skip_first_s: float, http: bool) -> Load:
        """A Load; the first `skip_first_s` seconds of the schedule are not counted in the
        percentiles."""
        start = min((due for due, _ in self.late), default=0.0)
        counted = start + skip_first_s
        ok = sum(1 for _, good, _ in self.answers if good)
        lat = sorted(round(s * 1e6) for due, good, s in self.answers if good and due >= counted)
        late = sorted(round(s * 1e6) for due, s in self.late if due >= counted)
        raw: PacedRaw = {"latency_samples": len(lat)}
        if http:
            raw["connection_errors"] = self.connection_errors
        return Load(
            sent=self.requests,
            ok=ok,
            failed=self.requests - ok,
            wall_s=wall,
            p50_ms=percentile(lat, 50) / 1000 if lat else None,
            p99_ms=percentile(lat, 99) / 1000 if lat else None,
            cpu_s=cpu,
            latency_samples=len(lat),
            raw=raw,
            late_p99_ms=percentile(late, 99) / 1000 if late else None,
        )


async def _on_schedule(rate: float, tally: _Tally, send: Callable[[float], None]) -> float:
    """Call `send(due)` for each request at its due time, start + i / rate (every request due
    by the time the loop wakes, in order), then wait for every answer (or TIMEOUT_S); the
    seconds from start until then."""
    start = time.perf_counter() + 0.05
    i, n = 0, tally.requests
    while i < n:
        now = time.perf_counter()
        while i < n and start + i / rate <= now:
            send(start + i / rate)
            i += 1
        if i < n:
            await asyncio.sleep(start + i / rate - time.perf_counter())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(tally.all_done), TIMEOUT_S)
    return time.perf_counter() - start


def _run(main: Callable[[], Any], tally_box: list[_Tally], skip_first_s: float, http: bool) -> Load:
    # no cyclic GC during the run: its full collections walk the growing lists of answers and
    # would stall the schedule (what the run allocates is freed by reference counting)
    cpu0 = time.process_time()
    gc.disable()
    try:
        wall = asyncio.run(main())
    finally:
        gc.enable()
    return tally_box[0].load(wall, time.process_time() - cpu0, skip_first_s, http)


# ---------------------------------------------------------------------------------------------
# OTLP/HTTP (HTTP/1.1)


class _H1Conn(asyncio.Protocol):
    """One keep-alive connection, one request in flight (`due`)."""

    def __init__(self, client: _H1Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.due: float | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(self.client.request)
        self.client.tally.written(due)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.due is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            try:
                status = int(lines[0].split(b" ", 2)[1])
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
            except (IndexError, ValueError):
                self._broken()
                return
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            due, self.due = self.due, None
            self.client.tally.answered(due, status == 200)
            self.client.free(self)

    def _broken(self) -> None:
        self.client.tally.connection_errors += 1
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class _H1Client:
    def __init__(self, port: int, body: bytes, tally: _Tally) -> None:
        self.port = port
        self.request = (
            f"POST {HTTP_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/x-protobuf\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.tally = tally
        self.idle: list[_H1Conn] = []
        self.waiting: collections.deque[float] = collections.deque()  # dues without a connection
        self.conns: set[_H1Conn] = set()
        self.connecting = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, due: float) -> None:
        if self.idle:
            self.idle.pop().send(due)
            return
        self.waiting.append(due)
        if len(self.conns) + self.connecting < MAX_HTTP_CONNECTIONS:
            self.connecting += 1
            task = asyncio.get_running_loop().create_task(self._connect())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _H1Conn(self), "127.0.0.1", self.port)
        except OSError:
            self.connecting -= 1
            self.tally.connection_errors += 1
            if self.waiting:  # the request this connection was opened for
                self.tally.lost(self.waiting.pop())
            return
        self.connecting -= 1
        self.conns.add(conn)
        self.free(conn)

    def free(self, conn: _H1Conn) -> None:
        if self.waiting:
            conn.send(self.waiting.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _H1Conn) -> None:
        self.conns.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.due is not None:
            self.tally.connection_errors += 1
            self.tally.lost(conn.due)
            conn.due = None

    def close(self) -> None:
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()


def run_paced_http(
    port: int, body: bytes, *, rate: float, requests: int, skip_first_s: float = 0.0
) -> Load:
    """`requests` OTLP/HTTP requests of `body` at `rate` per second, open loop (module doc)."""
    box: list[_Tally] = []

    async def main() -> float:
        tally = _Tally(requests)
        box.append(tally)
        client = _H1Client(port, body, tally)
        wall = await _on_schedule(rate, tally, client.send)
        client.close()
        return wall

    return _run(main, box, skip_first_s, http=True)


# ---------------------------------------------------------------------------------------------
# OTLP/gRPC (HTTP/2 without TLS)

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_REFUSED_STREAM = 0x7
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1), the flag bits of its first byte 0."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = [limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _hpack_literals(headers: list[tuple[str, str]]) -> bytes:
    """A header block of literals without indexing, new names, no Huffman (RFC 7541 6.2.2):
    the same bytes on every request, no state shared with the server's decoder."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00"
        for s in (name.encode(), value.encode()):
            out += _hpack_int(len(s), 7) + s
    return bytes(out)


class _Stream:
    __slots__ = ("data", "due", "grpc_status", "sent", "status", "window")

    def __init__(self, due: float, data: bytes, window: int) -> None:
        self.due = due
        self.data = data
        self.sent = 0  # bytes of `data` sent
        self.window = window  # the server's window for this stream
        self.status: int | None = None
        self.grpc_status: bytes | None = None


class _H2Conn(asyncio.Protocol):
    def __init__(self, client: _H2Client) -> None:
        from hpack import Decoder

        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.decoder = Decoder()
        self.next_id = 1
        self.streams: dict[int, _Stream] = {}
        self.blocked: collections.deque[int] = collections.deque()  # streams with data to send
        self.window = _DEFAULT_WINDOW  # the server's window for the connection
        self.initial_window = _DEFAULT_WINDOW  # ... for each new stream (its SETTINGS)
        self.max_frame = 16_384
        self.max_streams = 2**31
        self.draining = False  # GOAWAY received: no new streams
        self.header_block: tuple[int, int, bytearray] | None = None  # (stream, flags, block)
        self.received = 0  # DATA bytes received since our last WINDOW_UPDATE

    # -- writing

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        settings = struct.pack(">HIHI", 0x2, 0, 0x4, _MAX_WINDOW)  # no push; large windows
        transport.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _MAX_WINDOW - _DEFAULT_WINDOW))
        )

    def can_start(self) -> bool:
        return (
            self.transport is not None
            and not self.draining
            and len(self.streams) < self.max_streams
        )

    def start(self, due: float) -> None:
        assert self.transport is not None
        sid, self.next_id = self.next_id, self.next_id + 2
        stream = _Stream(due, self.client.message, self.initial_window)
        self.streams[sid] = stream
        out = [_frame(_HEADERS, _END_HEADERS, sid, self.client.header_block)]
        self._send_data(sid, stream, out)
        if stream.sent < len(stream.data):
            self.blocked.append(sid)
        self.transport.write(b"".join(out))
        self.client.tally.written(due)

    def _send_data(self, sid: int, stream: _Stream, out: list[bytes]) -> None:
        """As much of the stream's data as the windows allow, in frames of at most max_frame."""
        total = len(stream.data)
        while stream.sent < total:
            n = min(total - stream.sent, self.max_frame, self.window, stream.window)
            if n <= 0:
                return
            chunk = stream.data[stream.sent : stream.sent + n]
            stream.sent += n
            self.window -= n
            stream.window -= n
            out.append(_frame(_DATA, _END_STREAM if stream.sent == total else 0, sid, chunk))

    def _flush(self) -> None:
        if not self.blocked or self.transport is None:
            return
        out: list[bytes] = []
        for _ in range(len(self.blocked)):
            sid = self.blocked.popleft()
            stream = self.streams.get(sid)
            if stream is None:
                continue
            self._send_data(sid, stream, out)
            if stream.sent < len(stream.data):
                self.blocked.append(sid)
            if self.window <= 0:
                break
        if out:
            self.transport.write(b"".join(out))

    # -- reading

    def data_received(self, data: bytes) -> None:
        self.buf += data
        buf = self.buf
        pos = 0
        try:
            while len(buf) - pos >= 9:
                length = int.from_bytes(buf[pos : pos + 3], "big")
                if len(buf) - pos < 9 + length:
                    break
                kind, flags = buf[pos + 3], buf[pos + 4]
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame_received(kind, flags, sid, payload)
        except Exception:  # a frame we cannot make sense of: the connection is lost
            self.client.tally.connection_errors += 1
            del buf[:pos]
            if self.transport is not None:
                self.transport.abort()
            return
        del buf[:pos]
        self._flush()

    def _frame_received(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind in (_HEADERS, _CONTINUATION):
            if kind == _HEADERS:
                start = 0
                if flags & _PADDED:
                    start = 1
                    payload = payload[: len(payload) - payload[0]]
                if flags & _PRIORITY:
                    start += 5
                self.header_block = (sid, flags, bytearray(payload[start:]))
            elif self.header_block is not None:
                self.header_block[2].extend(payload)
            if flags & _END_HEADERS and self.header_block is not None:
                hsid, hflags, block = self.header_block
                self.header_block = None
                self._headers(hsid, hflags, bytes(block))
        elif kind == _DATA:
            self.received += len(payload)
            if self.received > 2**30:  # keep our connection window open (never near, in practice)
                assert self.transport is not None
                self.transport.write(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
                self.received = 0
            if flags & _END_STREAM:
                self._end(sid)
        elif kind == _RST_STREAM:
            (code,) = struct.unpack(">I", payload[:4])
            self._reset(sid, retry=code == _REFUSED_STREAM)
        elif kind == _SETTINGS:
            if not flags & _ACK:
                self._settings(payload)
        elif kind == _PING:
            if not flags & _ACK and self.transport is not None:
                self.transport.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _GOAWAY:
            (last,) = struct.unpack(">I", payload[:4])
            self._goaway(last & 0x7FFF_FFFF)
        elif kind == _WINDOW_UPDATE:
            (inc,) = struct.unpack(">I", payload[:4])
            if sid == 0:
                self.window += inc & 0x7FFF_FFFF
            elif sid in self.streams:
                self.streams[sid].window += inc & 0x7FFF_FFFF

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack(">HI", payload[i : i + 6])
            if key == 0x3:
                self.max_streams = value
            elif key == 0x4:
                delta = value - self.initial_window
                self.initial_window = value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == 0x5:
                self.max_frame = value
        if self.transport is not None:
            self.transport.write(_frame(_SETTINGS, _ACK, 0))

    def _headers(self, sid: int, flags: int, block: bytes) -> None:
        # always decoded: the decoder's table follows every block
        headers = self.decoder.decode(block, raw=True)
        stream = self.streams.get(sid)
        if stream is None:
            return
        for name, value in headers:
            if name == b":status":
                stream.status = int(value)
            elif name == b"grpc-status":
                stream.grpc_status = value
        if flags & _END_STREAM:
            self._end(sid)

    def _end(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        ok = stream.status == 200 and stream.grpc_status == b"0"
        self.client.tally.answered(stream.due, ok)
        self.client.freed(self)

    def _reset(self, sid: int, *, retry: bool) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        if retry:  # refused before any processing: send it again, as gRPC clients do
            self.client.retry(stream.due)
        else:
            self.client.tally.answered(stream.due, False)
        self.client.freed(self)

    def _goaway(self, last: int) -> None:
        self.draining = True
        for sid in [s for s in self.streams if s > last]:
            self._reset(sid, retry=True)
        self.client.replace(self)
        if not self.streams and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        lost = list(self.streams.values())
        self.streams.clear()
        for stream in lost:
            self.client.tally.connection_errors += 1
            self.client.tally.lost(stream.due)
        self.client.gone(self)


class _H2Client:
    def __init__(self, port: int, body: bytes, connections: int, tally: _Tally) -> None:
        self.port = port
        self.message = grpc_frame(body)
        self.header_block = _hpack_literals(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", GRPC_PATH),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("authorization", f"Bearer {API_KEY}"),
            ]
        )
        self.size = connections
        self.tally = tally
        self.conns: list[_H2Conn] = []  # the connections taking new streams, in turn
        self.others: set[_H2Conn] = set()  # draining after a GOAWAY
        self.turn = 0
        self.waiting: collections.deque[float] = collections.deque()
        self.opening: set[asyncio.Task[None]] = set()  # new connections after a GOAWAY

    async def connect(self) -> None:
        for _ in range(self.size):
            self.conns.append(await self._open())

    async def _open(self) -> _H2Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _H2Conn(self), "127.0.0.1", self.port)
        return conn

    def send(self, due: float) -> None:
        for _ in range(len(self.conns)):
            conn = self.conns[self.turn % len(self.conns)]
            self.turn += 1
            if conn.can_start():
                conn.start(due)
                return
        self.waiting.append(due)

    def retry(self, due: float) -> None:
        self.waiting.appendleft(due)

    def freed(self, conn: _H2Conn) -> None:
        while self.waiting:
            target = (
                conn if conn.can_start() else next((c for c in self.conns if c.can_start()), None)
            )
            if target is None:
                return
            target.start(self.waiting.popleft())
        if conn.draining and not conn.streams and conn.transport is not None:
            conn.transport.close()

    def replace(self, conn: _H2Conn) -> None:
        """`conn` takes no new streams (GOAWAY): a new connection in its place."""
        if conn in self.conns:
            self.conns.remove(conn)
            self.others.add(conn)
            task = asyncio.get_running_loop().create_task(self._reopen())
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    async def _reopen(self) -> None:
        try:
            conn = await self._open()
        except OSError:
            self.tally.connection_errors += 1
            return
        self.conns.append(conn)
        self.freed(conn)

    def gone(self, conn: _H2Conn) -> None:
        self.others.discard(conn)
        if conn in self.conns:  # lost without a GOAWAY
            self.conns.remove(conn)
        if not self.conns and not self.opening:
            while self.waiting:
                self.tally.lost(self.waiting.popleft())

    def close(self) -> None:
        for conn in [*self.conns, *self.others]:
            if conn.transport is not None:
                conn.transport.close()


def run_paced_grpc(
    port: int,
    body: bytes,
    *,
    rate: float,
    requests: int,
    channels: int = 4,
    skip_first_s: float = 0.0,
) -> Load:
    """`requests` OTLP/gRPC calls of `body` at `rate` per second over `channels` HTTP/2
    connections, open loop (module doc). One call per connection before the clock starts."""
    box: list[_Tally] = []

    async def main() -> float:
        warm = _Tally(channels)
        client = _H2Client(port, body, channels, warm)
        await client.connect()
        for _ in range(channels):
            client.send(time.perf_counter())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(warm.all_done), 30)
        tally = _Tally(requests)
        box.append(tally)
        client.tally = tally
        wall = await _on_schedule(rate, tally, client.send)
        client.close()
        return wall

    return _run(main, box, skip_first_s, http=False)
