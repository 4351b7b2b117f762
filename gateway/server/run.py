"""Runs the app on every configured listener with the chosen server implementation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Literal, Protocol

from starlette.types import Receive, Scope, Send

from gateway.config import GatewayConfig, Runtime
from gateway.errors import CannotListen
from gateway.ingress.guard import Lane, RefuseEarly
from gateway.server.workers import supervise


class ServedApp(Protocol):
    """What a server needs of the app it runs (the app is made by the caller: this layer does not
    know how the gateway is wired)."""

    refuse_early: RefuseEarly | None
    lane: Lane | None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    def stopping(self) -> None: ...


AppFactory = Callable[[GatewayConfig, Runtime], ServedApp]

log = logging.getLogger("otlp_gateway")


def _bind(
    address: str,
    role: str,
    port_offset: int = 0,
    reuse_port: bool = False,
    listen: bool = True,
) -> socket.socket:
    """A socket bound to `address` (its port + `port_offset`) and listening; CannotListen, naming
    the address and its role ("OTLP", "admin"), when the address cannot be bound."""
    host, _, port = address.rpartition(":")
    port = str(int(port) + port_offset)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then; without it
    # every gRPC call waits ~40 ms for a delayed ACK (headers, data, trailers are separate writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # several worker processes on one port: the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, int(port)))
        if listen:
            sock.listen(2048)
    except OSError as exc:  # in use, not this host's address, a privileged port, no such host
        sock.close()
        reason = exc.strerror or str(exc)
        shown = f"{address.rpartition(':')[0]}:{port}"
        raise CannotListen(shown, role, reason[:1].lower() + reason[1:]) from exc
    sock.set_inheritable(True)
    return sock


def _bind_all(
    config: GatewayConfig, worker: int | None, *, listen: bool = True
) -> tuple[list[socket.socket], socket.socket | None]:
    """The OTLP sockets and the admin one (None when off) of worker `worker` (None: the only
    process); when one cannot be bound, those already bound are closed and CannotListen raised."""
    with contextlib.ExitStack() as bound:
        sockets = [
            bound.enter_context(_bind(a, "OTLP", reuse_port=worker is not None, listen=listen))
            for a in config.listen
        ]
        admin = None
        if config.admin.listen is not None:  # worker i: the admin port + i
            admin = bound.enter_context(
                _bind(config.admin.listen, "admin", port_offset=worker or 0, listen=listen)
            )
        bound.pop_all()
    return sockets, admin


def _check_bindable(config: GatewayConfig) -> None:
    """With workers the parent keeps no socket (each worker binds its own SO_REUSEPORT ones), but
    it binds each address once and lets it go, so an address in use fails the start before
    anything says it listens. Not listening, the probe never takes a connection."""
    for worker in range(config.workers):
        sockets, admin = _bind_all(config, worker, listen=False)
        for sock in [*sockets, *([admin] if admin is not None else [])]:
            sock.close()


def serve(
    config: GatewayConfig,
    make_app: AppFactory,
    runtime: Runtime,
    *,
    log_level: str = "info",
    listening: Callable[[], None] | None = None,
) -> None:
    """Serve the app `make_app` builds for `config` until SIGTERM/SIGINT; with `workers: N`, fork
    N processes that each do so, each with its index as `runtime.worker` (server/workers.py).

    Every listener is bound first: an address that cannot be bound raises CannotListen before
    anything else happens, and `listening` (the banner) is called once they are bound."""
    if config.workers > 1 and runtime.worker is None:
        _check_bindable(config)
        if listening is not None:
            listening()

        def worker(index: int) -> None:
            serve(config, make_app, replace(runtime, worker=index), log_level=log_level)

        supervise(config.workers, worker)
        return
    sockets, admin = _bind_all(config, runtime.worker)
    if listening is not None:
        listening()
    app = make_app(config, runtime)
    if config.server == "hypercorn":
        _serve_hypercorn(app, config, sockets, admin, log_level)
    else:
        _serve_uvicorn(app, config, sockets, admin, log_level)


def _serve_uvicorn(
    app: ServedApp,
    config: GatewayConfig,
    sockets: list[socket.socket],
    admin: socket.socket | None,
    log_level: str,
) -> None:
    import uvicorn

    from gateway.server.tls_peek import server_context, tls_first
    from gateway.server.uvicorn_h2 import ConnectionGuard, guarded

    servers: list[uvicorn.Server] = []
    # Shared by every connection of the process: the per-peer budget, the early refusal.
    protocol = guarded(
        ConnectionGuard(
            refuse_early=app.refuse_early,
            lane=app.lane,
            header_timeout=config.limits.header_timeout,
            body_timeout=config.limits.body_timeout,
        )
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # One signal stops every server of the process (the admin one too), and is not
            # raised again after the graceful shutdown (uvicorn's default): the exit code is 0.
            app.stopping()
            for server in servers:
                if server.should_exit and sig == signal.SIGINT:
                    server.force_exit = True
                server.should_exit = True

    def make(tls: bool, lifespan: Literal["on", "off"]) -> Server:
        http: type[asyncio.Protocol] = protocol
        if tls and config.tls is not None:
            # TLS by a first protocol of ours rather than the loop's ssl= on the listener: it
            # sees a plaintext client's first bytes and tells it what to change
            # (gateway/server/tls_peek.py)
            context = server_context(config.tls.cert, config.tls.key)
            http = tls_first(protocol, context, config.limits.header_timeout)
        return Server(
            uvicorn.Config(
                app,
                # zttp's h1 and h2 (h2c prior knowledge, ALPN h2 over TLS), with a graceful
                # GOAWAY before zttp's per-connection stream cap and the budgets against
                # hostile clients (gateway/server/uvicorn_h2.py)
                http=http,
                http2=False,
                lifespan=lifespan,
                timeout_keep_alive=int(config.timeout_keep_alive),
                timeout_graceful_shutdown=int(config.shutdown_timeout) + 5,
                log_level=log_level,
                access_log=False,
                log_config=None,  # keep the gateway's log format (text or JSON)
                server_header=False,
            )
        )

    runs: list[tuple[uvicorn.Server, list[socket.socket]]] = []
    main_sockets = list(sockets)
    if admin is not None and config.tls is None:
        main_sockets.append(admin)
    servers.append(make(tls=True, lifespan="on"))
    runs.append((servers[0], main_sockets))
    if admin is not None and config.tls is not None:
        # The admin listener stays plaintext: uvicorn has one TLS setting per server.
        servers.append(make(tls=False, lifespan="off"))
        runs.append((servers[1], [admin]))

    async def serve_all() -> None:
        await asyncio.gather(*(server.serve(sockets=socks) for server, socks in runs))

    run_loop(serve_all(), config.event_loop)


def _cheap_data_frame_repr() -> None:
    """h2 4.4 formats `repr(frame)` for a trace log call on every frame it receives, logged or
    not, and a DATA frame's repr hex-encodes its whole payload: 7% of hypercorn's CPU on gRPC.
    Describe DATA frames by their size instead."""
    from hyperframe.frame import DataFrame

    def body_repr(self: DataFrame) -> str:
        return f"<{len(self.data)} bytes>"

    DataFrame._body_repr = body_repr  # type: ignore[method-assign,assignment]


def _serve_hypercorn(
    app: ServedApp,
    config: GatewayConfig,
    sockets: list[socket.socket],
    admin: socket.socket | None,
    log_level: str,
) -> None:
    from hypercorn.config import Config

    _cheap_data_frame_repr()

    hc = Config()
    # Hand hypercorn the sockets we bound, as `fd://N` binds (its documented way to serve
    # pre-bound sockets). detach(): hypercorn's own socket objects own the descriptors from here
    # on, so nothing closes them twice. With TLS configured, `bind` are the TLS sockets; without,
    # they are plaintext (h1 and h2c prior knowledge).
    hc.bind = [f"fd://{sock.detach()}" for sock in sockets]
    if admin is not None:
        # The admin listener is plaintext even when the OTLP listeners use TLS: probes and
        # Prometheus scrape it from inside the cluster or the host.
        admin_bind = f"fd://{admin.detach()}"
        if config.tls is not None:
            hc.insecure_bind = [admin_bind]
        else:
            hc.bind.append(admin_bind)
    hc.backlog = 2048  # asyncio.start_server re-listens with this (hypercorn's default is 100)
    hc.keep_alive_timeout = config.timeout_keep_alive
    hc.keep_alive_max_requests = 2**31  # its default (1000) ends long-lived gRPC connections
    hc.graceful_timeout = config.shutdown_timeout + 5
    hc.loglevel = log_level.upper()
    hc.errorlog = logging.getLogger("hypercorn.error")  # through our logging setup, printed once
    hc.accesslog = None
    hc.include_server_header = False
    if config.tls is not None:
        hc.certfile = config.tls.cert
        hc.keyfile = config.tls.key or config.tls.cert
        hc.alpn_protocols = ["h2", "http/1.1"]
    run_loop(_run_hypercorn(app, hc), config.event_loop)


async def _run_hypercorn(app: ServedApp, hc: Any) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve

    # Our own signal handling (hypercorn's does the same without the hook): end the live tails
    # first, so open streams do not hold the graceful shutdown up.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        app.stopping()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await hypercorn_serve(app, hc, mode="asgi", shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def run_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run `main` on the configured event loop: uvloop (libuv; its transports read and write
    in C), or asyncio's own where uvloop is not installed (it does not build on Windows)."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("event_loop: uvloop is not installed; running on asyncio's loop")
        else:
            log.info("event loop: uvloop")
            uvloop.run(main)
            return
    log.info("event loop: asyncio")
    asyncio.run(main)


def tls_context_ok(cert: str, key: str | None) -> None:
    """Fail early with a clear message when the certificate or key cannot be loaded."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
