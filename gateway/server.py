"""Runs the app on every configured listener with the chosen server implementation."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from starlette.types import ASGIApp

from .config import GatewayConfig

log = logging.getLogger("otlp_gateway")


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: GatewayConfig, *, log_level: str = "info") -> None:
    from .app import create_app

    app = create_app(config)
    sockets = [_bind(address) for address in config.listen]
    if config.server == "hypercorn":
        _serve_hypercorn(app, config, sockets, log_level)
    else:
        _serve_uvicorn(app, config, sockets, log_level)


def _serve_uvicorn(
    app: ASGIApp, config: GatewayConfig, sockets: list[socket.socket], log_level: str
) -> None:
    import uvicorn

    kwargs: dict[str, object] = {}
    if config.tls is not None:
        kwargs["ssl_certfile"] = config.tls.cert
        kwargs["ssl_keyfile"] = config.tls.key or config.tls.cert
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http="zttp",
            http2=True,  # h2c prior knowledge (gRPC without TLS) and ALPN h2 over TLS
            lifespan="on",
            timeout_keep_alive=int(config.timeout_keep_alive),
            timeout_graceful_shutdown=int(config.shutdown_timeout) + 5,
            log_level=log_level,
            access_log=False,
            server_header=False,
            **kwargs,  # type: ignore[arg-type]
        )
    )
    server.run(sockets=sockets)


def _serve_hypercorn(
    app: ASGIApp, config: GatewayConfig, sockets: list[socket.socket], log_level: str
) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config, Sockets

    hc = Config()
    hc.keep_alive_timeout = config.timeout_keep_alive
    hc.keep_alive_max_requests = 2**31  # its default (1000) ends long-lived gRPC connections
    hc.graceful_timeout = config.shutdown_timeout + 5
    hc.loglevel = log_level.upper()
    hc.accesslog = None
    if config.tls is not None:
        hc.certfile = config.tls.cert
        hc.keyfile = config.tls.key or config.tls.cert
        hc.alpn_protocols = ["h2", "http/1.1"]
        secure, insecure = sockets, []
    else:
        secure, insecure = [], sockets
    hc._sockets = Sockets(secure_sockets=secure, insecure_sockets=insecure, quic_sockets=[])  # type: ignore[attr-defined]
    asyncio.run(hypercorn_serve(app, hc, mode="asgi"))  # type: ignore[arg-type]


def tls_context_ok(cert: str, key: str | None) -> None:
    """Fail early with a clear message when the certificate or key cannot be loaded."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
