"""The lane (gateway/ingress/lane.py): small and announced-size exports taken whole by the
server's protocol. What goes through it arrives exactly as through the app; what it does not
take (too large, unknown size past its cap, Expect: 100-continue) still goes to the app; a client
that leaves or stalls mid-body gives back what it held of the in-flight budget."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.tenancy import keys
from tests.support.grpcwire import TRACE_RPC, grpc_frame, h2_grpc_call, trace_request
from tests.support.peers import Gateway, Sink, run_gateway

pytestmark = pytest.mark.timeout(120)

KEY = keys.new_key()
PROTOBUF = "application/x-protobuf"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sink]]:
    tmp = tmp_path_factory.mktemp("lane")
    with Sink().running() as sink:
        config = {
            "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["sink"],
            "tenants": {"acme": {"api_keys": [keys.config_entry(KEY)]}},
            "limits": {"body_timeout": "1s"},
        }
        with run_gateway(tmp, config) as gw:
            yield gw, sink


def _inflight(gw: Gateway) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    m = re.search(r"^otlp_gateway_inflight_bytes (\S+)$", text, re.M)
    assert m is not None
    return float(m.group(1))


def _spans(sink: Sink, prefix: str) -> list[str]:
    return sorted(n for n in sink.span_names(prefix))


def _wait_spans(sink: Sink, prefix: str, n: int) -> list[str]:
    deadline = time.monotonic() + 20
    while len(_spans(sink, prefix)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and nothing more
    return _spans(sink, prefix)


def _head(port: int, length: int, extra: str = "") -> bytes:
    return (
        f"POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: {PROTOBUF}\r\nauthorization: Bearer {KEY}\r\n"
        f"content-length: {length}\r\n{extra}\r\n"
    ).encode()


def test_pipelined_requests_each_answered_and_counted(setup: tuple[Gateway, Sink]) -> None:
    gw, sink = setup
    bodies = [trace_request(i + 1, f"pipe{i}") for i in range(3)]
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as sock:
        sock.sendall(b"".join(_head(gw.http_port, len(b)) + b for b in bodies))
        got = b""
        deadline = time.monotonic() + 10
        while got.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
            got += sock.recv(65536)
    assert got.count(b"HTTP/1.1 200") == 3, got
    for i in range(3):
        assert _wait_spans(sink, f"pipe{i}-", i + 1) == [f"pipe{i}-{j}" for j in range(i + 1)]


def test_a_client_that_leaves_mid_body_gives_its_budget_back(
    setup: tuple[Gateway, Sink],
) -> None:
    gw, _ = setup
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as sock:
        sock.sendall(_head(gw.http_port, 50_000) + b"\x0a" * 1000)
        deadline = time.monotonic() + 5
        while _inflight(gw) < 50_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _inflight(gw) >= 50_000  # the announced length is held from the head on
    deadline = time.monotonic() + 5
    while _inflight(gw) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _inflight(gw) == 0


def test_a_stalled_body_is_answered_408_and_gives_its_budget_back(
    setup: tuple[Gateway, Sink],
) -> None:
    gw, _ = setup
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as sock:
        sock.sendall(_head(gw.http_port, 2000) + b"\x0a" * 100)
        began = time.monotonic()
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert time.monotonic() - began < 3  # limits.body_timeout is 1 s
    assert _inflight(gw) == 0


def test_expect_100_continue_goes_to_the_app(setup: tuple[Gateway, Sink]) -> None:
    gw, sink = setup
    body = trace_request(2, "expect")
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as sock:
        sock.sendall(_head(gw.http_port, len(body), "expect: 100-continue\r\n"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert _wait_spans(sink, "expect-", 2) == ["expect-0", "expect-1"]


# 4: a few hundred bytes; 3000: ~150 KB, the lane too; 25,000: ~1.3 MB, past it: the app
@pytest.mark.parametrize("spans", [4, 3000, 25_000])
def test_grpc_by_announced_size_lane_or_app(setup: tuple[Gateway, Sink], spans: int) -> None:
    gw, sink = setup
    body = trace_request(spans, f"grpc{spans}")
    headers = [("content-type", "application/grpc"), ("authorization", f"Bearer {KEY}")]
    result = h2_grpc_call(gw.grpc_port, TRACE_RPC, grpc_frame(body), headers)
    assert result.grpc_status == "0", result
    assert len(_wait_spans(sink, f"grpc{spans}-", spans)) == spans
    assert _inflight(gw) == 0


def test_http2_body_of_unknown_size_past_the_lane_cap(setup: tuple[Gateway, Sink]) -> None:
    """No content-length over HTTP/2: the lane takes 64 KiB of it, then hands it to the app."""
    gw, sink = setup
    body = trace_request(2000, "h2big")  # ~70 KB
    assert len(body) > 64 * 1024
    headers = [("content-type", PROTOBUF), ("authorization", f"Bearer {KEY}")]
    result = h2_grpc_call(gw.http_port, "/v1/traces", body, headers)
    assert result.headers.get(":status") == "200", result
    assert len(_wait_spans(sink, "h2big-", 2000)) == 2000


def test_a_refused_key_is_answered_by_the_app(setup: tuple[Gateway, Sink]) -> None:
    gw, _ = setup
    r = httpx.post(
        gw.http_endpoint + "/v1/traces",
        content=trace_request(1),
        headers={"content-type": PROTOBUF, "authorization": "Bearer nope"},
        timeout=10,
    )
    assert r.status_code == 401
