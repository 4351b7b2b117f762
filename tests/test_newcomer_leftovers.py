"""What a newcomer meets in the first hour of `serve`: a plaintext client sent to a TLS listener is
told what to change; a worker that cannot start is started again less and less often; `serve
--admin` survives a config reload; config warnings come through the configured log format."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)

from tests.support.peers import Gateway, Sink, run_gateway, send_spans, wait_until

pytestmark = pytest.mark.timeout(90)

# ---------------------------------------------------------------------------------------------
# (1) plaintext sent to a TLS listener

HINT = "a client sent plaintext HTTP to the TLS listener"
H2C_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(server PEM with key and chain, CA file)."""
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    pem, ca_file = tmp / "server.pem", tmp / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_file))
    return pem, ca_file


@pytest.fixture(params=["uvloop", "asyncio"])
def tls_gateway(
    request: pytest.FixtureRequest, tmp_path: Path, pki: tuple[Path, Path], sink: Sink
) -> Iterator[Gateway]:
    config = {
        "tls": {"cert": str(pki[0])},
        "event_loop": request.param,
        "limits": {"header_timeout": "1s"},
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["sink"],
    }
    with run_gateway(tmp_path, config) as gw:
        assert f"event loop: {request.param}" in gw.log()
        yield gw


def ended(gw: Gateway, reason: str) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    m = re.search(rf'connections_ended_total\{{reason="{reason}"\}} (\S+)', text)
    return 0.0 if m is None else float(m.group(1))


def export(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(
        url + "/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"}
    )


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the gateway closes `sock` (reading and discarding what it sends)."""
    began = time.monotonic()
    sock.settimeout(seconds)
    while sock.recv(4096):
        pass
    return time.monotonic() - began


def tls_by_hand(port: int, ca_file: Path) -> bytes:
    """An HTTP/1.1 export over TLS whose ClientHello arrives in two pieces (its first byte, then
    the rest): the gateway decides on the first byte and must hand both to the TLS layer."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        sock.sendall(hello[:1])
        time.sleep(0.2)
        sock.sendall(hello[1:])
        while True:
            incoming.write(sock.recv(65536))
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
        tls.write(
            b"POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: "
            b"application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        sock.sendall(outgoing.read())
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                continue
    return answer


def test_plaintext_to_a_tls_listener_gets_a_hint(
    tls_gateway: Gateway, pki: tuple[Path, Path], sink: Sink
) -> None:
    gw, ca_file = tls_gateway, pki[1]
    trust = ssl.create_default_context(cafile=str(ca_file))
    https = [f"https://127.0.0.1:{p}" for p in (gw.grpc_port, gw.http_port)]
    http = [u.replace("https://", "http://") for u in https]

    # TLS clients are served as before: h2 and http/1.1 by ALPN, the SDK's gRPC exporter
    for h2 in (True, False):
        with httpx.Client(http2=h2, verify=trust) as client:
            r = export(client, https[0])
            assert (r.status_code, r.http_version) == (200, "HTTP/2" if h2 else "HTTP/1.1")
    exporter = GRPCSpanExporter(
        endpoint=https[1], credentials=_grpc_credentials(ca_file), timeout=10
    )
    send_spans(exporter, "tls-grpc", 3)
    assert sink.wait_items("traces", 3) == 3
    assert sorted(sink.span_names("tls-grpc")) == [f"tls-grpc-{i}" for i in range(3)]
    assert ended(gw, "plaintext_on_tls") == 0

    # plaintext HTTP/1.1: a 400 that says what to change, on both listeners
    for url in http:
        r = export(httpx.Client(), url)
        listener = url.removeprefix("http://")
        assert r.status_code == 400, r.text
        assert f"{HINT} {listener}; point it at https://" in r.text
        assert f"OTEL_EXPORTER_OTLP_ENDPOINT=https://{listener}" in r.text
    # an h2c (gRPC) preface: closed at once
    with socket.create_connection(("127.0.0.1", gw.grpc_port), timeout=5) as sock:
        sock.sendall(H2C_PREFACE)
        assert closed_within(sock, 3) < 2
    assert wait_until(lambda: ended(gw, "plaintext_on_tls") == 3)
    assert gw.log().count(HINT) == 1  # once per peer address and 10 s

    # a ClientHello in pieces, the first byte alone, still makes a TLS connection
    answer = tls_by_hand(gw.http_port, ca_file)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    # a client that connects and sends nothing is closed after limits.header_timeout (1 s)
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=5) as sock:
        assert 0.5 < closed_within(sock, 5) < 4
    assert ended(gw, "plaintext_on_tls") == 3
    with httpx.Client(http2=True, verify=trust) as client:
        assert export(client, https[1]).status_code == 200


def _grpc_credentials(ca_file: Path) -> Any:
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())


def test_plaintext_hint_is_json_with_fields(tmp_path: Path, pki: tuple[Path, Path]) -> None:
    config = {
        "tls": {"cert": str(pki[0])},
        "log": {"format": "json"},
        "backends": {"files": {"protocol": "file", "path": "./otlp-data"}},
        "service_backends": ["files"],
    }
    with run_gateway(tmp_path, config) as gw:
        assert export(httpx.Client(), gw.http_endpoint).status_code == 400
        assert wait_until(lambda: HINT in gw.log())
        line = next(line for line in gw.log().splitlines() if HINT in line)
        entry = json.loads(line)
        assert (entry["reason"], entry["peer"], entry["level"]) == (
            "plaintext_on_tls",
            "127.0.0.1",
            "warning",
        )


# ---------------------------------------------------------------------------------------------
# (2) a worker that cannot start is restarted later and later, its reason logged once per change

SUPERVISED = """
import logging, sys, time
from gateway.errors import CannotListen
from gateway.server import workers

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
starts, healthy_after, fail_with = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(",")
workers.HEALTHY_AFTER = healthy_after

def target(index):
    with open(starts, "a") as f:
        f.write(f"{time.monotonic()}\\n")
    with open(starts) as f:
        n = len(f.readlines())
    time.sleep(healthy_after + 0.2 if healthy_after < 1 else 0)
    if fail_with[min(n, len(fail_with)) - 1] == "listen":
        raise CannotListen("127.0.0.1:9", "OTLP", "address already in use")
    raise RuntimeError("boom")

began = time.process_time()
workers.supervise(1, target)
print(f"parent cpu {time.process_time() - began:.3f}", file=sys.stderr)
"""


def supervise_for(tmp_path: Path, seconds: float, healthy_after: float, fail_with: str) -> Any:
    """Run workers.supervise(1, target) in a process, SIGTERM it `seconds` after the first start;
    target fails as `fail_with` says start by start ("listen,listen,boom"). (start times,
    stderr, seconds the SIGTERM took)."""
    import signal
    import subprocess
    import sys

    starts = tmp_path / "starts"
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISED, str(starts), str(healthy_after), fail_with],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert wait_until(starts.exists, 20)
        time.sleep(seconds)
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        _, stderr = proc.communicate(timeout=10)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    times = [float(t) for t in starts.read_text().split()]
    return times, stderr, took


def test_a_failing_worker_is_restarted_later_each_time(tmp_path: Path) -> None:
    times, stderr, took = supervise_for(tmp_path, 4.5, 60.0, "listen,listen,boom")
    # started at 0, 1 and 3 s (1 s, then 2 s apart); the next would be at 7 s. Every second,
    # as before, would be 5 starts.
    assert len(times) == 3, stderr
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.9 < gaps[0] < 1.6 and 1.9 < gaps[1] < 2.6, gaps
    # each reason once, though the first came twice
    assert stderr.count("cannot listen on 127.0.0.1:9 (OTLP): address already in use") == 1
    assert stderr.count("died (cannot listen on") == 1
    assert "starting it again in 1s" in stderr
    assert stderr.count("died (RuntimeError: boom); starting it again in 4s") == 1
    assert stderr.count("Traceback") == 1
    assert took < 2  # a SIGTERM does not wait for the pending restart
    cpu = float(stderr.rpartition("parent cpu ")[2])
    assert cpu < 0.5, stderr  # waiting for a restart is no busy loop


def test_a_worker_that_lived_a_while_starts_the_count_again(tmp_path: Path) -> None:
    # HEALTHY_AFTER 0.3 s and each start lives 0.5 s: every death is after a healthy run, so the
    # delay stays 1 s (starts at 0, 1.5 and 3 s; without the reset: 0, 1.5 and 4 s) and each
    # death is logged
    times, stderr, _ = supervise_for(tmp_path, 3.8, 0.3, "listen")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 3 and all(1.4 < g < 2.0 for g in gaps), (gaps, stderr)
    assert stderr.count("died (cannot listen on") == len(times)


# ---------------------------------------------------------------------------------------------
# (3) `serve --listen/--admin` kept across a reload; (4) config warnings in the log's format


def serve_file(
    tmp_path: Path, config: dict[str, Any], *args: str
) -> contextlib.AbstractContextManager[Gateway]:
    """`serve --config gateway.yaml ARGS --listen P1 --listen P2` (free ports), its output in a
    log file; a context manager of the Gateway."""
    import yaml

    from tests.support.cli import serve_flags

    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    return serve_flags(tmp_path, "--config", "gateway.yaml", *args, admin=None)


def rewrite(tmp_path: Path, config: dict[str, Any]) -> None:
    import os

    import yaml

    path = tmp_path / "gateway.yaml"
    (tmp_path / "gateway.yaml.tmp").write_text(yaml.safe_dump(config))
    os.replace(tmp_path / "gateway.yaml.tmp", path)


def reloaded(gw: Gateway, n: int) -> bool:
    return bool(wait_until(lambda: gw.log().count("config reloaded (file changed)") >= n, 10))


def test_listen_and_admin_flags_are_kept_across_a_reload(tmp_path: Path) -> None:
    from tests.support.peers import free_port

    file_admin, flag_admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config: dict[str, Any] = {
        "listen": [f"127.0.0.1:{free_port()}"],
        "admin": {"listen": file_admin},
        "reload_interval": "200ms",
        "backends": {"archive": {"protocol": "file", "path": "./data"}},
        "service_backends": ["archive"],
    }
    with serve_file(tmp_path, config, "--admin", flag_admin) as gw:
        assert httpx.get(f"http://{flag_admin}/readyz", timeout=5).status_code == 200
        rewrite(tmp_path, {**config, "shutdown_timeout": "3s"})  # something else changes
        assert reloaded(gw, 1), gw.log()
        assert "takes effect at restart" not in gw.log(), gw.log()
        assert httpx.get(f"http://{flag_admin}/readyz", timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{file_admin}/readyz", timeout=2)
        # a change of what the flags set is no news either: the flags win
        other = {**config, "listen": [f"127.0.0.1:{free_port()}"], "admin": {"listen": "off"}}
        rewrite(tmp_path, other)
        assert reloaded(gw, 2), gw.log()
        assert "takes effect at restart" not in gw.log(), gw.log()
        r = httpx.post(
            gw.http_endpoint + "/v1/traces",
            content=b"",
            headers={"content-type": "application/x-protobuf"},
            timeout=5,
        )
        assert r.status_code == 200
        assert httpx.get(f"http://{flag_admin}/readyz", timeout=5).status_code == 200


def test_config_warnings_come_in_the_log_format(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "log": {"format": "json"},
        "reload_interval": "200ms",
        "backends": {
            "archive": {"protocol": "file", "path": "./data"},
            "spare": {"protocol": "file", "path": "./spare"},
        },
        "service_backends": ["archive"],
    }
    with serve_file(tmp_path, config, "--admin", "off") as gw:
        assert wait_until(lambda: "config warning" in gw.log())
        rewrite(tmp_path, {**config, "shutdown_timeout": "3s"})
        assert reloaded(gw, 1), gw.log()
        lines = gw.log().splitlines()
    warned = [line for line in lines if "config warning" in line]
    assert len(warned) == 2, warned  # at start and at the reload, each one JSON line
    for line in warned:
        entry = json.loads(line)
        assert entry["level"] == "warning" and entry["event"] == "config_warning"
        assert entry["message"].startswith("config warning: gateway.yaml:")
        assert "backends.spare: nothing routes to this backend" in entry["message"]
    for line in lines:  # the banner and everything else too
        json.loads(line)
