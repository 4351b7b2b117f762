"""A TLS listener that tells a plaintext client what is wrong instead of closing on it in silence.

When the event loop does TLS on a listener (`create_server(ssl=...)`), a client that sends
cleartext HTTP (an `http://` endpoint, a gRPC exporter with `insecure`) fails the handshake and
is closed with nothing in the log. Here the listener has no TLS of its own: the first protocol of
each connection reads its first bytes. A TLS record (0x16, a ClientHello) is handed with those
bytes to `loop.start_tls` (asyncio's and uvloop's), and the HTTP protocol runs over the TLS
transport it returns. Cleartext HTTP is counted (`connections_ended_total{reason=
"plaintext_on_tls"}`), logged with a hint once per peer address and 10 s, and an HTTP/1.1 request
is answered `400 Bad Request` with the same hint; an h2c (gRPC) preface is closed. The first
bytes and the handshake are due within `limits.header_timeout`.

The bytes read before the decision are handed to start_tls's TLS protocol (a buffered protocol,
in both loops) before it reads from the transport itself; tests/test_newcomer_leftovers.py runs
this on both loops, with a ClientHello that arrives in two pieces.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from typing import Any, ClassVar, cast

from gateway.telemetry import metrics

log = logging.getLogger("otlp_gateway.connections")

ALPN = ["h2", "http/1.1"]
_TLS_RECORD_HANDSHAKE = 0x16  # the first byte of every ClientHello
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_START = _H2_PREFACE[:14]  # "PRI * HTTP/2.0": enough to tell it from a request line
# An HTTP/1.x request line begins with a method token and a space ("POST ", "GET ").
_METHOD = re.compile(rb"[A-Z]{1,20}( |\Z)")
_DECIDED_BY = 24  # bytes that always tell (the longest method is 20 letters)
HINT_INTERVAL = 10.0  # seconds between two hints for one peer address
_HINT_PEERS = 1024  # peer addresses remembered at once (a bound against address churn)
LINGER = 2.0  # seconds a refused HTTP/1.1 client has to read the 400 before the close


def server_context(cert: str, key: str | None) -> ssl.SSLContext:
    """The listeners' TLS: the certificate chain and key, ALPN h2 and http/1.1 (as uvicorn makes
    it from ssl_certfile/ssl_keyfile)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(ALPN)
    return context


def hint(listener: str) -> str:
    return (
        f"a client sent plaintext HTTP to the TLS listener {listener}; point it at https:// "
        f"(OTEL_EXPORTER_OTLP_ENDPOINT=https://{listener}) or drop tls"
    )


class PeerHints:
    """Whether to log the hint for a peer address: once per address and `interval`, with at most
    `size` addresses remembered (when that many are recent, the rest are not logged)."""

    def __init__(self, interval: float = HINT_INTERVAL, size: int = _HINT_PEERS) -> None:
        self._interval = interval
        self._size = size
        self._last: dict[str, float] = {}

    def admit(self, peer: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        last = self._last.get(peer)
        if last is not None and now - last < self._interval:
            return False
        if last is None and len(self._last) >= self._size:
            self._last = {p: t for p, t in self._last.items() if now - t < self._interval}
            if len(self._last) >= self._size:
                return False
        self._last[peer] = now
        return True


def classify(first: bytes) -> str | None:
    """What the first bytes of a connection are: "tls", "h2" (the h2c preface), "http1" (a
    request line), "other"; None while too few have come to tell."""
    if not first:
        return None
    if first[0] == _TLS_RECORD_HANDSHAKE:
        return "tls"
    if first.startswith(_H2_START):
        return "h2"
    if len(first) < len(_H2_START) and _H2_START.startswith(first):
        return None
    m = _METHOD.match(first)
    if m is None:
        return "other"
    return "http1" if m.group(1) else None


def _address(sockname: Any) -> str:
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return "HOST:PORT"
    host = str(sockname[0])
    return f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"


def _peer(transport: asyncio.BaseTransport) -> str:
    address = transport.get_extra_info("peername")
    return str(address[0]) if isinstance(address, tuple) and address else ""


class TlsFirstProtocol(asyncio.Protocol):
    """The first protocol of a connection on a TLS listener (see the module's docstring). Made
    as uvicorn makes its `http=` protocol; `tls_first` sets the class attributes."""

    inner: ClassVar[type[asyncio.Protocol]]  # the HTTP protocol, run over TLS
    ssl_context: ClassVar[ssl.SSLContext]
    timeout: ClassVar[float] = 30.0  # the first bytes and the handshake are due within this
    hints: ClassVar[PeerHints] = PeerHints()

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._made = (config, server_state, app_state)
        self.loop = _loop or asyncio.get_event_loop()
        self.connections: set[Any] = server_state.connections
        self.transport: asyncio.Transport | None = None
        self._first = bytearray()  # what came before the first bytes could be told apart
        self._early: list[bytes] = []  # decrypted before the HTTP protocol took over
        self._state = "first"  # -> "handshake" -> "served"; or -> "refused"
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, not isinstance
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)  # a shutdown closes it
        self._timer = self.loop.call_at(self.loop.time() + self.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._state == "handshake":  # decrypted, before the HTTP protocol took over
            self._early.append(data)
            return
        if self._state != "first":  # "refused": what the client still sends is discarded
            return
        self._first += data
        kind = classify(bytes(self._first[:_DECIDED_BY]))
        if kind is None:
            return
        if kind == "tls":
            self._start_tls()
        elif kind == "other":  # neither TLS nor HTTP: closed, as the TLS layer would
            self._close()
        else:
            self._refuse_plaintext(http1=kind == "http1")

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._close()

    def shutdown(self) -> None:  # uvicorn's, at the server's shutdown
        self._close()

    def _timed_out(self) -> None:
        self._timer = None
        self._close()

    def _close(self) -> None:
        self.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- TLS --------------------------------------------------------------------------------

    def _start_tls(self) -> None:
        assert self.transport is not None
        self._state = "handshake"
        self.transport.pause_reading()  # the rest waits in the kernel for the TLS layer
        # kept: the loop holds its tasks weakly
        self._handshake = self.loop.create_task(self._tls(bytes(self._first)))
        self._first.clear()

    async def _tls(self, first: bytes) -> None:
        raw = self.transport
        assert raw is not None
        # The bytes read so far go to the TLS layer before it reads anything itself: start_tls
        # sets its protocol on the transport before its first await and only schedules its
        # connection_made and resume_reading, so this runs between the two.
        self.loop.call_soon(self._feed, raw, first)
        try:
            tls = await self.loop.start_tls(
                raw,
                self,
                self.ssl_context,
                server_side=True,
                ssl_handshake_timeout=self.timeout,
            )
        except (TimeoutError, OSError) as exc:  # SSLError, reset, timed out: closed
            log.debug("TLS handshake failed (peer %s): %s", _peer(raw), exc)
            self._close()
            return
        if tls is None:  # typeshed allows it; neither loop returns None
            self._close()
            return
        self.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lost or tls.is_closing():
            return
        self._state = "served"
        config, server_state, app_state = self._made
        inner = self.inner(  # type: ignore[call-arg]
            config=config, server_state=server_state, app_state=app_state, _loop=self.loop
        )
        tls.set_protocol(inner)
        inner.connection_made(tls)
        early, self._early = self._early, []
        for data in early:  # to the protocol now serving (uvicorn's h1 or h2 after ALPN)
            if tls.is_closing():
                break
            cast(asyncio.Protocol, tls.get_protocol()).data_received(data)

    def _feed(self, raw: asyncio.Transport, first: bytes) -> None:
        """Hand `first` to the TLS layer through its protocol's own interface (a buffered
        protocol's get_buffer/buffer_updated, as a transport does)."""
        if raw.is_closing():  # the handshake failed or timed out meanwhile
            return
        tls_layer = raw.get_protocol()
        if tls_layer is self:  # start_tls has not taken the transport yet (it reads nothing
            self.loop.call_soon(self._feed, raw, first)  # before it has)
            return
        tls_layer = cast(asyncio.BufferedProtocol, tls_layer)  # both loops' SSLProtocol
        view = memoryview(first)
        while view:
            buffer = memoryview(tls_layer.get_buffer(len(view)))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            tls_layer.buffer_updated(n)
            view = view[n:]

    # -- plaintext ----------------------------------------------------------------------------

    def _refuse_plaintext(self, *, http1: bool) -> None:
        transport = self.transport
        assert transport is not None
        self._state = "refused"
        listener = _address(transport.get_extra_info("sockname"))
        peer = _peer(transport)
        metrics.CONNECTIONS_ENDED.labels("plaintext_on_tls").inc()
        text = hint(listener)
        if self.hints.admit(peer):
            log.warning(
                "%s (peer %s)",
                text,
                peer,
                extra={
                    "fields": {
                        "event": "connection_ended",
                        "reason": "plaintext_on_tls",
                        "peer": peer,
                    }
                },
            )
        if not http1:  # an h2c client (gRPC): an HTTP/1.1 answer would mean nothing to it
            self._close()
            return
        body = (text + "\n").encode()
        transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        # Half-close and read on: closing with unread request bytes would send a reset that can
        # destroy the answer before the client reads it. The client closes, or LINGER does.
        transport.write_eof()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(self.loop.time() + LINGER, self._timed_out)


def tls_first(
    inner: type[asyncio.Protocol], context: ssl.SSLContext, timeout: float
) -> type[TlsFirstProtocol]:
    """The protocol class for uvicorn's `http=` setting on a listener without ssl: TLS with
    `context` (ALPN included) before `inner`, the hint to plaintext clients, the first bytes and
    the handshake due within `timeout` seconds."""
    attributes = {"inner": inner, "ssl_context": context, "timeout": timeout, "hints": PeerHints()}
    return type("TlsFirst", (TlsFirstProtocol,), attributes)
