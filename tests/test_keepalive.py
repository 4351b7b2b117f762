"""HTTP/1.1 keep-alive on the OTLP port: a connection stays open between requests and is closed
once idle for `timeout_keep_alive` (the gateway checks it with the connection's one timer, not
uvicorn's timer per response), and one response is written whole (head and body in one send)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.peers import Sink, run_gateway

pytestmark = pytest.mark.timeout(60)

REQUEST = (
    b"POST /v1/traces HTTP/1.1\r\nhost: gw\r\ncontent-type: application/x-protobuf\r\n"
    b"content-length: 0\r\n\r\n"
)


def answer(sock: socket.socket) -> bytes:
    """One whole response (an empty body has content-length: 0 or a short protobuf)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock`, or None if it stayed open that long."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        if sock.recv(1) == b"":
            return time.monotonic() - start
    except TimeoutError:
        return None
    raise AssertionError("unexpected data on an idle connection")


def test_idle_connections_close_after_timeout_keep_alive(tmp_path: Path) -> None:
    with (
        Sink().running() as sink,
        run_gateway(
            tmp_path,
            {
                "timeout_keep_alive": "1s",
                "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
                "service_backends": ["sink"],
            },
        ) as gw,
    ):
        with socket.create_connection(("127.0.0.1", gw.http_port)) as sock:
            for _ in range(3):  # requests 0.5 s apart keep the connection
                sock.sendall(REQUEST)
                assert answer(sock).startswith(b"HTTP/1.1 200")
                assert closed_within(sock, 0.5) is None
            sock.sendall(REQUEST)
            assert answer(sock).startswith(b"HTTP/1.1 200")
            idle = closed_within(sock, 5.0)
        assert idle is not None and 0.9 <= idle <= 2.5, idle
        # a connection that never sends a request is closed by the same timer, too
        with socket.create_connection(("127.0.0.1", gw.http_port)) as quiet:
            assert closed_within(quiet, 5.0) is not None
