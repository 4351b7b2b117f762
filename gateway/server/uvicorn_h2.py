"""uvicorn's HTTP/1.1 and HTTP/2 (zttp) with a graceful end to long connections and budgets that
keep one client from starving the others.

zttp counts every stream a connection ever opens and, at 4096, ends the connection with
GOAWAY(ENHANCE_YOUR_CALM), which fails the calls in flight: a long-lived OTLP/gRPC exporter
loses a few exports every 4096 calls (bench/README.md). This protocol sends GOAWAY(NO_ERROR) with
the last stream it will serve a little before that, finishes the streams in flight, refuses any
later one with REFUSED_STREAM (clients retry those transparently, on a new connection) and
leaves closing to the client, with a cap.

Against hostile clients (notes: Rapid Reset, MadeYouReset, slowloris, PING floods):
- a stream the app would refuse from its headers alone (no or a wrong key) is answered here,
  without an ASGI task (`ConnectionGuard.refuse_early`, handed in by the app);
- stream churn (resets from either side, early refusals) spends a per-connection token bucket and
  a per-peer-address one; when either is empty the connection ends with
  GOAWAY(ENHANCE_YOUR_CALM), and new connections of a peer without budget are dropped at once;
- a connection whose unsent bytes pass WRITE_BACKLOG_CAP (a client that sends PINGs but does not
  read the answers) is aborted;
- HTTP/1.1: a request head must arrive within `header_timeout`, and after a response the rest of
  an unread request body within `body_timeout`, or the connection is closed.
It depends on uvicorn 0.54 / zttp 0.0.35 internals; tests/test_soak.py and
tests/test_hostile_conn.py guard it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import zttp
from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol
from uvicorn.protocols.http.zttp_impl import ZttpProtocol

from gateway.ingress.guard import (
    CONN_CHURN_BURST,
    CONN_CHURN_RATE,
    EarlyAnswer,
    Lane,
    LaneRequest,
    LogThrottle,
    PeerBudget,
    RefuseEarly,
    TokenBucket,
)
from gateway.telemetry import metrics

_LANE_TICK = 0.25  # how late a stalled lane body is answered (timeouts are seconds: 30 s)
STREAM_BUDGET = 3840  # below zttp's 4096, with room for the streams in flight at the GOAWAY
CLOSE_AFTER = 5.0  # seconds the connection stays open after its last stream, for the client
_NO_ERROR, _REFUSED_STREAM, _ENHANCE_YOUR_CALM = 0x0, 0x7, 0xB
# Bytes queued for a client that does not read (PING and SETTINGS acks, responses) before its
# connection is aborted. Export responses are small; only a stalled reader gets near this.
WRITE_BACKLOG_CAP = 1024 * 1024

log = logging.getLogger("otlp_gateway.connections")


def _log_summary(reason: str, count: int, interval: float) -> None:
    log.warning(
        "ended or refused %d more connections (%s) in the last %.0fs",
        count,
        reason,
        interval,
        extra={"fields": {"event": "connection_ended", "reason": reason, "suppressed": count}},
    )


_MESSAGES = {
    "stream_churn": "a connection reset or opened refused streams faster than its budget; "
    "ended it with GOAWAY(ENHANCE_YOUR_CALM)",
    "peer_churn": "a peer address caused stream churn or opened connections faster than its "
    "budget; ended or refused its connection",
    "write_backlog": "a client did not read what it was sent; aborted its connection",
    "header_timeout": "a client did not send a whole request head within limits.header_timeout; "
    "closed its connection",
    "body_timeout": "a client did not send the rest of a request body after its answer within "
    "limits.body_timeout; closed its connection",
    "tls_on_plaintext": "a client started TLS on a plaintext listener (an endpoint given as "
    "https://, or a gRPC exporter without insecure); closed its connection. Point the client at "
    "http://HOST:PORT (gRPC: OTEL_EXPORTER_OTLP_INSECURE=true), or give the gateway `tls:` "
    "(serve --tls-cert/--tls-key) to take TLS",
}
# A TLS record of type handshake (22), major version 3: how every ClientHello begins.
_TLS_HANDSHAKE = b"\x16\x03"


@dataclass
class ConnectionGuard:
    """What every connection of one server shares: the app's early refusal, the timeouts, the
    per-peer budget and the throttle of the lines logged for connections it ended."""

    refuse_early: RefuseEarly | None = None
    lane: Lane | None = None  # the small OTLP exports, served without an ASGI task
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    peers: PeerBudget = field(default_factory=PeerBudget)
    log_throttle: LogThrottle[str] = field(default_factory=lambda: LogThrottle(_log_summary))

    def ended(self, reason: str, peer: str) -> None:
        """Count (and log, throttled) a connection ended or refused for `reason`."""
        metrics.CONNECTIONS_ENDED.labels(reason).inc()
        if self.log_throttle.admit(reason):
            log.warning(
                "%s (peer %s)",
                _MESSAGES[reason],
                peer,
                extra={"fields": {"event": "connection_ended", "reason": reason, "peer": peer}},
            )


class _LaneBody:
    """The body of a request the lane took, as it arrives."""

    __slots__ = ("chunks", "event", "last", "limit", "pending", "request", "size")

    def __init__(self, request: LaneRequest, now: float, event: zttp.Request | None = None):
        self.request = request
        self.chunks: list[bytes] = []
        self.size = 0
        self.last = now  # when bytes last came: the body timeout counts from here
        self.pending = False  # the request waits on something (a durable queue, a thread)
        self.event = event  # HTTP/2: the head, for handing the stream to the app after all
        self.limit = -1  # HTTP/2: the most bytes the lane takes of it (known from its first)

    def add(self, data: bytes, now: float) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self.last = now

    def body(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _lane_failed(exc: BaseException) -> EarlyAnswer:
    """A bug in the lane must not end the connection silently: logged, answered as the app's
    server would (500)."""
    log.error("a lane request failed", exc_info=exc)
    body = b"Internal Server Error"
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    return EarlyAnswer(500, [*headers, (b"content-length", str(len(body)).encode())], body)


def _peer(transport: asyncio.BaseTransport) -> str:
    address = transport.get_extra_info("peername")
    return str(address[0]) if isinstance(address, tuple) and address else ""


class GracefulH2Protocol(ZttpH2Protocol):
    guard: ClassVar[ConnectionGuard] = ConnectionGuard()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._last_stream: int | None = None  # set once the GOAWAY is sent
        self._close_timer: asyncio.TimerHandle | None = None
        self._churn = TokenBucket(CONN_CHURN_BURST, CONN_CHURN_RATE)
        self._refused: dict[int, EarlyAnswer] = {}  # answered once the client ends its body
        self._lanes: dict[int, _LaneBody] = {}  # streams the lane is taking
        self._lane_timer: asyncio.TimerHandle | None = None
        self._peer = ""
        self._port: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # a gRPC answer is three frames (headers, data, trailers): one send, not three
        super().connection_made(_CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
        self._peer = _peer(transport)
        self._port = self.server[1] if self.server else None

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # ended by a budget: nothing more is worth parsing
            return
        super().data_received(data)
        if self.transport.get_write_buffer_size() > WRITE_BACKLOG_CAP:
            self.guard.ended("write_backlog", self._peer)
            self.transport.abort()  # close() would wait for the client to read the backlog

    def handle_request(self, event: zttp.Request) -> None:
        if self.transport.is_closing():  # the rest of a read after a budget ended the connection
            return
        if self._last_stream is not None and event.stream_id > self._last_stream:
            self._reset(event.stream_id, _REFUSED_STREAM)
            return
        lane, refuse = self.guard.lane, self.guard.refuse_early
        if lane is not None or refuse is not None:
            headers = event.headers
            header = headers.get if isinstance(headers, zttp.HeaderBlock) else dict(headers).get
            path = event.path.decode("latin-1")
            if lane is not None and event.method == b"POST" and not self.shutdown_requested:
                request = lane(self._port, path, header, True)
                if request is not None:
                    self._lane_start(event, request)
                    self._count(event.stream_id)
                    return
            answer = None if refuse is None else refuse(self._port, path, header)
            if answer is not None:
                if event.end_stream:
                    self._answer(event.stream_id, answer)
                else:  # answering while the client still sends would make gRPC see INTERNAL
                    self._refused[event.stream_id] = answer
                self._spend()
                return
        self._to_app(event)
        self._count(event.stream_id)

    def _to_app(self, event: zttp.Request) -> None:
        super().handle_request(event)
        # uvicorn 0.54's HTTP/2 adapter ignores zttp's `Request.end_stream` (its HTTP/1.1 adapter
        # honours it): a request whose HEADERS frame ends the stream (an empty POST) would wait
        # for a body forever. Complete it as the HTTP/1.1 adapter does.
        cycle = self.cycles.get(event.stream_id)
        if event.end_stream and cycle is not None:
            cycle.more_body = False
            cycle.message_event.set()

    def _count(self, stream_id: int) -> None:
        """One more stream served: a graceful GOAWAY at the budget."""
        self._served += 1
        if self._served >= STREAM_BUDGET and self._last_stream is None:
            self._last_stream = stream_id
            self.conn.close(_NO_ERROR, stream_id)

    # -- the lane: small exports taken whole, without an ASGI task (ingress/lane.py) ----------

    def _lane_start(self, event: zttp.Request, request: LaneRequest) -> None:
        body = self._lanes[event.stream_id] = _LaneBody(request, self.loop.time(), event)
        self._unset_keepalive_if_required()
        if event.end_stream:
            self._lane_finish(event.stream_id, body)
        elif self._lane_timer is None:
            self._lane_timer = self.loop.call_later(_LANE_TICK, self._lane_sweep)

    def _lane_data(self, stream_id: int, body: _LaneBody, data: bytes) -> None:
        if body.limit < 0:  # the first bytes: what the request announces
            body.limit = body.request.limit(data)
        body.add(data, self.loop.time())
        if body.size > body.limit:  # larger than the lane takes: the app streams it
            self._lane_to_app(stream_id, body)

    def _lane_finish(self, stream_id: int, body: _LaneBody) -> None:
        try:
            result = body.request.finish(body.body())
        except Exception as exc:
            result = _lane_failed(exc)
        if isinstance(result, EarlyAnswer):
            del self._lanes[stream_id]
            self._lane_answer(stream_id, result)
            return
        body.pending = True
        task = self.loop.create_task(self._lane_later(stream_id, result))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _lane_later(self, stream_id: int, result: Awaitable[EarlyAnswer]) -> None:
        try:
            answer = await result
        except Exception as exc:
            answer = _lane_failed(exc)
        if self._lanes.pop(stream_id, None) is not None:  # else: reset by the client meanwhile
            self._lane_answer(stream_id, answer)
            self.flush()

    def _lane_answer(self, stream_id: int, answer: EarlyAnswer) -> None:
        if self.transport.is_closing():
            return
        stream = self.conn.stream(stream_id)
        headers = self.server_state.default_headers + answer.headers
        if answer.trailers_only:
            stream.send_response(answer.status, headers, end_stream=True)
        else:
            stream.send_response(answer.status, headers)
            if answer.body:
                stream.send_data(answer.body)
            stream.end_message(answer.trailers)
        self.server_state.total_requests += 1
        self.on_stream_closed()

    def _lane_to_app(self, stream_id: int, body: _LaneBody) -> None:
        """Hand a stream the lane took to the app after all, with what came of its body."""
        del self._lanes[stream_id]
        body.request.abandon()
        assert body.event is not None
        self._to_app(body.event)
        cycle = self.cycles.get(stream_id)
        if cycle is not None:
            cycle.body += body.body()
            cycle.message_event.set()

    def _lane_sweep(self) -> None:
        """A body that pauses longer than limits.body_timeout is answered with the refusal
        that says so (DEADLINE_EXCEEDED, 408), as the app's read would."""
        self._lane_timer = None
        if self.transport.is_closing():
            return
        deadline = self.loop.time() - self.guard.body_timeout
        stalled = [(i, b) for i, b in self._lanes.items() if not b.pending and b.last <= deadline]
        for stream_id, body in stalled:
            del self._lanes[stream_id]
            self._lane_answer(stream_id, body.request.timed_out())
        if stalled:
            self.flush()
        if any(not b.pending for b in self._lanes.values()):
            self._lane_timer = self.loop.call_later(_LANE_TICK, self._lane_sweep)

    def events(self) -> Iterator[zttp.Event]:  # type: ignore[override]
        for event in super().events():
            if self._lanes and isinstance(event, (zttp.Data, zttp.EndOfMessage)):
                body = self._lanes.get(event.stream_id)
                if body is not None and not body.pending:
                    if isinstance(event, zttp.Data):
                        self._lane_data(event.stream_id, body, event.data)
                    else:
                        self._lane_finish(event.stream_id, body)
                    continue
            if self._refused and isinstance(event, zttp.EndOfMessage):
                answer = self._refused.pop(event.stream_id, None)
                if answer is not None:
                    self._answer(event.stream_id, answer)
                    continue
            yield event

    def handle_rst_stream(self, event: zttp.RstStream) -> None:
        # Resets from the client, and the ones zttp sends for streams it rejects: both churn.
        self._refused.pop(event.stream_id, None)
        lane = self._lanes.pop(event.stream_id, None)
        if lane is not None and not lane.pending:  # a pending one releases its budget itself
            lane.request.abandon()
        super().handle_rst_stream(event)
        self._spend()

    def _answer(self, stream_id: int, answer: EarlyAnswer) -> None:
        if self.transport.is_closing():
            return
        stream = self.conn.stream(stream_id)
        if answer.trailers_only:
            stream.send_response(answer.status, answer.headers, end_stream=True)
        else:
            stream.send_response(answer.status, answer.headers)
            stream.send_data(answer.body)
            stream.end_message()

    def _reset(self, stream_id: int, code: int) -> None:
        self.conn.stream(stream_id).reset(code)
        self._spend()

    def _spend(self) -> None:
        """One unit of stream churn against this connection's and this peer's budgets."""
        if self.transport.is_closing():
            return
        if not self._churn.take():
            self._calm("stream_churn")
        elif not self.guard.peers.take(self._peer):
            self._calm("peer_churn")

    def _calm(self, reason: str) -> None:
        self.guard.ended(reason, self._peer)
        self.conn.close(_ENHANCE_YOUR_CALM)
        self.flush()
        self.transport.close()

    def on_stream_closed(self) -> None:
        if self._lanes:  # streams still open in the lane: the connection is not idle
            self._unset_keepalive_if_required()
            return
        super().on_stream_closed()
        if self._last_stream is not None and not self.cycles and self._close_timer is None:
            self._unset_keepalive_if_required()
            self._close_timer = self.loop.call_later(CLOSE_AFTER, self._close_connection)

    def shutdown(self) -> None:
        if self._lanes:  # new streams go to the app (which refuses them); these finish first
            self.shutdown_requested = True
            return
        super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        if not self._lanes:  # a lane stream waiting on a durable queue is not idleness
            super().timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._close_timer, self._lane_timer):
            if timer is not None:
                timer.cancel()
        self._refused.clear()
        lanes, self._lanes = self._lanes, {}
        for lane in lanes.values():
            if not lane.pending:  # a pending one releases its budget itself
                lane.request.abandon()
        super().connection_lost(exc)


class _CorkedTransport:
    """A transport whose writes made in one turn of the event loop go out in one send: uvicorn
    writes a response's head and body separately (and an HTTP/2 one its trailers too), and a
    send is a system call (18% of the CPU of a 1-span OTLP/HTTP request went to them, 27% of a
    gRPC one). Everything else is the transport's own."""

    __slots__ = ("_flush_handle", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():  # a reset peer: nothing to send to
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedH1Protocol(ZttpProtocol):
    """uvicorn's HTTP/1.1 with a request-head timeout and a limit on the time the rest of an
    unread body may take after the response (uvicorn reads it away to keep the connection).
    The head timeout is one timer per connection that checks when the head in progress began
    (a timer made and cancelled per request cost ~2% of a small request)."""

    guard: ClassVar[ConnectionGuard] = ConnectionGuard()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started: float | None = None  # when the head being received began
        self._idle_since: float | None = None  # when the last response ended, if nothing came
        self._drain_timer: asyncio.TimerHandle | None = None
        self._lane: _LaneBody | None = None  # the request the lane is taking
        self._close_after_lane = False  # a shutdown came while it was
        self._port: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = _CorkedTransport(transport, self.loop)
        super().connection_made(corked)  # type: ignore[arg-type]
        self._port = self.server[1] if self.server else None
        self._head_timer = self.loop.call_later(self._tick(), self._check_timers)

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        cycle = self.cycle
        if (
            self._head_started is None
            and self._lane is None
            and (cycle is None or (cycle.response_complete and not cycle.more_body))
        ):
            # The first bytes of a request head: the whole head is due within header_timeout.
            self._head_started = self.loop.time()
        super().data_received(data)
        if self._head_started is not None and self.cycle is not cycle:
            self._head_started = None  # the head is complete: a request cycle began
        if self._drain_timer is not None and not (cycle is not None and cycle.more_body):
            self._drain_timer.cancel()
            self._drain_timer = None

    def handle_events(self, event: zttp.Event) -> None:
        lane = self.guard.lane
        if lane is None:
            super().handle_events(event)
            return
        while event is not zttp.NEED_DATA:
            body = self._lane
            if body is not None:
                if isinstance(event, zttp.Data):
                    body.add(event.data, self.loop.time())
                elif isinstance(event, zttp.EndOfMessage) and (
                    not self._lane_finish(body) or self.transport.is_closing()
                ):
                    return  # answered once what it waits on is done, or closed
            elif (
                isinstance(event, zttp.Request)
                and event.method == b"POST"
                and not event.expect_continue
                and self._lane_start(lane, event)
            ):
                body = self._lane
                if (  # no body, and so no EndOfMessage
                    event.end_stream
                    and body is not None
                    and (not self._lane_finish(body) or self.transport.is_closing())
                ):
                    return
            else:
                super().handle_events(event)  # uvicorn's: an ASGI cycle and task
                return
            event = self.conn.next_event()

    def _lane_start(self, lane: Lane, event: zttp.Request) -> bool:
        headers = event.headers
        assert isinstance(headers, zttp.HeaderBlock)  # zttp's HTTP/1.1 heads always are
        request = lane(self._port, event.path.decode("latin-1"), headers.get, False)
        if request is None:
            return False
        self.cycle = None  # type: ignore[assignment]  # the last app cycle is complete
        self._head_started = None  # the head is complete
        now = self.loop.time()
        self._lane = _LaneBody(request, now)
        # the connection's timer must come round by the body's timeout
        due, timer = now + self.guard.body_timeout, self._head_timer
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._head_timer = self.loop.call_at(due, self._check_timers)
        return True

    def _lane_finish(self, body: _LaneBody) -> bool:
        """Finish the lane's request; whether it was answered at once."""
        try:
            result = body.request.finish(body.body())
        except Exception as exc:
            result = _lane_failed(exc)
        if isinstance(result, EarlyAnswer):
            self._lane = None
            self._lane_answer(result)
            return True
        body.pending = True
        self.flow.pause_reading()  # pipelined requests wait in the kernel meanwhile
        task = self.loop.create_task(self._lane_later(result))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        return False

    async def _lane_later(self, result: Awaitable[EarlyAnswer]) -> None:
        try:
            answer = await result
        except Exception as exc:
            answer = _lane_failed(exc)
        self._lane = None
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        self._lane_answer(answer)
        if not self.transport.is_closing():
            try:
                self.handle_events(self.conn.next_event())
            except zttp.RemoteProtocolError:
                self.handle_remote_protocol_error()

    def _lane_answer(self, answer: EarlyAnswer) -> None:
        conn = self.conn
        conn.send_response(answer.status, self.server_state.default_headers + answer.headers)
        if answer.body:
            conn.send_data(answer.body)
        conn.end_message()
        self.transport.write(conn.data_to_send())
        self.server_state.total_requests += 1
        if self._close_after_lane or conn.should_close():
            self.transport.close()
            return
        self._idle_since = self.loop.time()
        conn.start_next_cycle()

    def shutdown(self) -> None:
        if self._lane is not None:  # answer the request in progress first, then close
            self._close_after_lane = True
            return
        super().shutdown()

    def _tick(self) -> float:
        return min(self.guard.header_timeout, float(self.timeout_keep_alive))

    def _check_timers(self) -> None:
        """The connection's one timer: the head timeout, and uvicorn's keep-alive timeout."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        started, idle = self._head_started, self._idle_since
        if started is not None and now - started >= self.guard.header_timeout:
            self._timed_out("header_timeout")
            return
        if idle is not None and now - idle >= self.timeout_keep_alive:
            self.timeout_keep_alive_handler()
            return
        due = now + self._tick()
        lane = self._lane
        if lane is not None and not lane.pending:
            if now - lane.last >= self.guard.body_timeout:
                # answered, and closed: the rest of the body would read as a request
                self._lane = None
                self._close_after_lane = True
                self._lane_answer(lane.request.timed_out())
                return
            else:
                due = min(due, lane.last + self.guard.body_timeout)
        if started is not None:
            due = min(due, started + self.guard.header_timeout)
        if idle is not None:
            due = min(due, idle + self.timeout_keep_alive)
        self._head_timer = self.loop.call_at(due, self._check_timers)

    def on_response_complete(self) -> None:
        # uvicorn's (zttp_impl 0.54), without its keep-alive timer made per response:
        # _check_timers closes a connection idle for timeout_keep_alive
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self._idle_since = self.loop.time()
        self.flow.resume_reading()
        if self.cycle is not None and not self.cycle.more_body:
            self.conn.start_next_cycle()
            try:
                self.handle_events(self.conn.next_event())
            except zttp.RemoteProtocolError:  # pragma: no cover
                self.handle_remote_protocol_error()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self._drain_timer = self.loop.call_later(
                self.guard.body_timeout, self._timed_out, "body_timeout"
            )

    def _timed_out(self, reason: str) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        self._head_timer = self._drain_timer = None
        if not self.transport.is_closing():
            self.guard.ended(reason, _peer(self.transport))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._drain_timer = None
        lane = self._lane
        if lane is not None and not lane.pending:  # a pending one releases its budget itself
            self._lane = None
            lane.request.abandon()
        super().connection_lost(exc)


class GracefulAutoProtocol(AutoZttpProtocol):
    """uvicorn's h1 / h2 dispatch (ALPN, or the h2c preface), with GracefulH2Protocol for h2 and
    GuardedH1Protocol for h1; a new connection from a peer without budget is dropped at once."""

    guard: ClassVar[ConnectionGuard] = ConnectionGuard()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.guard.peers.take(_peer(transport)):
            self.transport = transport
            self.guard.ended("peer_churn", _peer(transport))
            transport.abort()
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.buffer and data.startswith(_TLS_HANDSHAKE):
            # Left open, the client waits for a ServerHello until its own timeout (an SDK: 10-20
            # s, then DEADLINE_EXCEEDED); closed now, its handshake fails at once.
            self.guard.ended("tls_on_plaintext", _peer(self.transport))
            self.connections.discard(self)
            self.transport.close()
            return
        super().data_received(data)

    def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
        protocol_class: type[asyncio.Protocol] = GracefulH2Protocol if http2 else GuardedH1Protocol
        protocol = protocol_class(  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        protocol.guard = self.guard  # type: ignore[attr-defined]
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if initial_data:
            protocol.data_received(initial_data)


def guarded(guard: ConnectionGuard) -> type[GracefulAutoProtocol]:
    """The protocol class for uvicorn's `http=` setting, its connections sharing `guard`."""
    return type("GuardedAutoProtocol", (GracefulAutoProtocol,), {"guard": guard})
