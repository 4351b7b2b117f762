"""A client that speaks TLS to a plaintext listener (an endpoint given as https://, a gRPC
exporter without insecure) is told at once: its connection is closed as soon as its ClientHello
arrives, and the gateway logs what to change, instead of leaving it to time out."""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.support.peers import Sink, run_gateway

pytestmark = pytest.mark.timeout(60)


def test_tls_to_a_plaintext_listener_fails_at_once_with_a_hint(tmp_path: Path, sink: Sink) -> None:
    config = {
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["sink"],
    }
    with run_gateway(tmp_path, config) as gw:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        began = time.monotonic()
        with (
            socket.create_connection(("127.0.0.1", gw.grpc_port), timeout=10) as raw,
            pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        ):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
        assert time.monotonic() - began < 2  # not the client's own timeout
        deadline = time.monotonic() + 5
        while "started TLS on a plaintext listener" not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        assert "http://HOST:PORT" in gw.log()
        metrics = httpx.get(gw.admin_url + "/metrics", timeout=5).text
        m = re.search(r'connections_ended_total\{reason="tls_on_plaintext"\} (\S+)', metrics)
        assert m is not None and float(m.group(1)) == 1.0
        # and the listener still serves plaintext
        r = httpx.post(
            gw.http_endpoint + "/v1/traces",
            content=b"",
            headers={"content-type": "application/x-protobuf"},
            timeout=10,
        )
        assert r.status_code == 200
