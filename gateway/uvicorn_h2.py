"""uvicorn's HTTP/2 (zttp) with a graceful end to long connections.

zttp counts every stream a connection ever opens and, at 4096, ends the connection with
GOAWAY(ENHANCE_YOUR_CALM), which fails the calls in flight: a long-lived OTLP/gRPC exporter
loses a few exports every 4096 calls (bench/README.md). This protocol sends GOAWAY(NO_ERROR) with
the last stream it will serve a little before that, finishes the streams in flight, refuses any
later one with REFUSED_STREAM (clients retry those transparently, on a new connection) and
leaves closing to the client, with a cap. It depends on uvicorn 0.54 / zttp 0.0.35 internals;
tests/test_soak.py guards it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zttp
from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol
from uvicorn.protocols.http.zttp_impl import ZttpProtocol

STREAM_BUDGET = 3840  # below zttp's 4096, with room for the streams in flight at the GOAWAY
CLOSE_AFTER = 5.0  # seconds the connection stays open after its last stream, for the client
_NO_ERROR, _REFUSED_STREAM = 0x0, 0x7


class GracefulH2Protocol(ZttpH2Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._last_stream: int | None = None  # set once the GOAWAY is sent
        self._close_timer: asyncio.TimerHandle | None = None

    def handle_request(self, event: zttp.Request) -> None:
        if self._last_stream is not None and event.stream_id > self._last_stream:
            self.conn.stream(event.stream_id).reset(_REFUSED_STREAM)
            return
        super().handle_request(event)
        self._served += 1
        if self._served >= STREAM_BUDGET and self._last_stream is None:
            self._last_stream = event.stream_id
            self.conn.close(_NO_ERROR, event.stream_id)

    def on_stream_closed(self) -> None:
        super().on_stream_closed()
        if self._last_stream is not None and not self.cycles and self._close_timer is None:
            self._unset_keepalive_if_required()
            self._close_timer = self.loop.call_later(CLOSE_AFTER, self._close_connection)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        super().connection_lost(exc)


class GracefulAutoProtocol(AutoZttpProtocol):
    """uvicorn's h1 / h2 dispatch (ALPN, or the h2c preface), with GracefulH2Protocol for h2."""

    def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
        protocol_class: type[asyncio.Protocol] = GracefulH2Protocol if http2 else ZttpProtocol
        protocol = protocol_class(  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if initial_data:
            protocol.data_received(initial_data)
