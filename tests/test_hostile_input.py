"""Hostile input that used to end in a 500, a stalled event loop or a forged log line.

One gateway (tenants with keys: acme has drop rules and RED metrics, beta RED metrics only,
gamma neither, delta is left for the log test) forwarding over http/protobuf to a counting sink
that keeps what it receives; real clients: httpx (OTLP/HTTP, Connect, gRPC-web over HTTP/1.1),
grpcio and the h2 library (gRPC over HTTP/2), and `otlp-gateway tail`.

A: undecodable items, invalid UTF-8 and AnyValues nested past upb's depth limit, a malformed
   resource holding `tenant.id`, non-UTF-8 headers, bad timeouts and gRPC over HTTP/1.1 get their
   4xx / gRPC code, each counted once in otlp_gateway_requests_total; RED metrics never fail a
   request that was queued. B: a tenant with RED metrics and drop rules sending ~15 MiB
   requests does not hold up a normal client. C: a refusal echoing control characters is one
   text log line; a live tail skips what it cannot show and goes on.
Plus property tests of the pure functions hardened here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.otlp import spans, wire
from gateway.telemetry import logs
from tests.support.grpcwire import grpc_frame, h2_grpc_call
from tests.support.peers import Gateway, run_gateway, wait_until
from tests.support.sinks import CountingSink

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
KEYS = {t: f"hostile-key-{t}" for t in ("acme", "beta", "gamma", "delta")}
ADMIN_KEY = "hostile-admin"
TRACE_RPC = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = "application/x-protobuf"


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Requests, built at the wire level where the SDK classes would refuse to build them


def _ld(field: int, payload: bytes) -> bytes:
    return wire.encode_varint(field << 3 | 2) + wire.encode_varint(len(payload)) + payload


def _request(*span_bodies: bytes, resource: bytes = b"") -> bytes:
    scope = b"".join(_ld(2, s) for s in span_bodies)
    entry = (_ld(1, resource) if resource else b"") + _ld(2, scope)
    return _ld(1, entry)


def _span(name: bytes, *attributes: bytes) -> bytes:
    return (
        _ld(1, b"\x01" * 16)
        + _ld(2, b"\x02" * 8)
        + _ld(5, name)
        + b"".join(_ld(9, a) for a in attributes)
    )


def deep_value(levels: int) -> bytes:
    """An AnyValue of `levels` nested arrays: 2 messages a level, so 50 levels pass upb's 100."""
    inner = _ld(1, b"x")  # string_value
    for _ in range(levels):
        inner = _ld(5, _ld(1, inner))  # array_value { values { inner } }
    return inner


def deep_request(levels: int = 150) -> bytes:
    return _request(
        _span(b"deep", _ld(1, b"nested") + _ld(2, deep_value(levels))), _span(b"GET /healthz")
    )


BAD_UTF8 = _request(_span(b"\xff\xfename"))
BAD_SPAN = _request(_ld(1, b"\x01" * 16) + b"\x12\x30" + b"\x02" * 8)  # span_id runs past the span
# A resource with a KeyValue whose key is `tenant.id` and whose next field is cut short.
BAD_RESOURCE = _request(_span(b"ok"), resource=_ld(1, _ld(1, b"tenant.id") + b"\xff"))


def sdk_request(*names: str, status_code: int | None = None, service: str = "svc") -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    scope = rs.scope_spans.add()
    for i, name in enumerate(names):
        span = scope.spans.add(name=name, trace_id=b"\x01" * 16, span_id=i.to_bytes(8, "big"))
        span.kind = Span.SPAN_KIND_SERVER
        span.start_time_unix_nano, span.end_time_unix_nano = (
            1_700_000_000_000_000_000,
            1_700_000_000_010_000_000,
        )
        if status_code is not None:
            span.attributes.add(key="http.response.status_code").value.int_value = status_code
    return req.SerializeToString()


# ---------------------------------------------------------------------------------------------
# The gateway


@dataclass
class Setup:
    gw: Gateway
    sink: CountingSink
    http: httpx.Client

    def post(self, tenant: str, body: bytes, content_type: str = PROTOBUF) -> httpx.Response:
        return self.http.post(
            self.gw.http_endpoint + "/v1/traces",
            content=body,
            headers={"content-type": content_type, "authorization": f"Bearer {KEYS[tenant]}"},
        )

    def metric(self, name: str, **labels: str) -> float:
        text = self.http.get(self.gw.admin_url + "/metrics").text
        total = 0.0
        for line in text.splitlines():
            if not (line.startswith(name + "{") or line.startswith(name + " ")):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def refusals(self, tenant: str, transport: str, outcome: str) -> float:
        return self.metric(
            "otlp_gateway_requests_total", tenant=tenant, transport=transport, outcome=outcome
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("hostile-input")
    with CountingSink(keep=True).running() as sink:
        config = {
            "log": {"format": "text"},
            "limits": {"max_request_bytes": "17MiB", "max_body_bytes": "17MiB"},
            "admin": {"api_key": ADMIN_KEY},
            "backends": {
                "sink": {
                    "protocol": "http/protobuf",
                    "endpoint": sink.endpoint,
                    "compression": "none",
                    "client": "httpx",
                }
            },
            "service_backends": ["sink"],
            "tenants": {
                "acme": {
                    "api_keys": [_digest(KEYS["acme"])],
                    "red_metrics": True,
                    "drop": [{"span_name": "GET /healthz"}],
                },
                "beta": {"api_keys": [_digest(KEYS["beta"])], "red_metrics": True},
                "gamma": {"api_keys": [_digest(KEYS["gamma"])]},
                "delta": {"api_keys": [_digest(KEYS["delta"])]},
            },
        }
        with run_gateway(tmp, config) as gw, httpx.Client(timeout=60) as http:
            yield Setup(gw, sink, http)


def _grpc_export(gw: Gateway, tenant: str, body: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
        call = channel.unary_unary(TRACE_RPC, request_serializer=None, response_deserializer=None)
        try:
            call(body, metadata=[("authorization", f"Bearer {KEYS[tenant]}")], timeout=30)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    return grpc.StatusCode.OK


def _grpc_web_status(resp: httpx.Response) -> str | None:
    status: str | None = resp.headers.get("grpc-status")
    if status is None:
        i = resp.content.rfind(b"grpc-status:")
        if i >= 0:
            status = resp.content[i + 12 :].split(b"\r\n", 1)[0].strip().decode()
    return status


# ---------------------------------------------------------------------------------------------
# A: each bad request gets its status, and is counted once


@pytest.mark.parametrize("body", [BAD_SPAN, BAD_UTF8], ids=["undecodable_span", "invalid_utf8"])
def test_drop_rules_refuse_undecodable_items_on_every_transport(setup: Setup, body: bytes) -> None:
    before = {
        t: setup.refusals("acme", t, "invalid")
        for t in ("http/protobuf", "grpc", "connect", "grpc-web")
    }
    arrived = setup.sink.total()

    resp = setup.post("acme", body)
    assert resp.status_code == 400
    assert b"drop rules" in resp.content
    assert _grpc_export(setup.gw, "acme", body) == grpc.StatusCode.INVALID_ARGUMENT
    auth = {"authorization": f"Bearer {KEYS['acme']}"}
    connect = setup.http.post(
        setup.gw.http_endpoint + TRACE_RPC,
        content=body,
        headers={**auth, "content-type": "application/proto", "connect-protocol-version": "1"},
    )
    assert connect.status_code == 400 and connect.json()["code"] == "invalid_argument"
    web = setup.http.post(
        setup.gw.http_endpoint + TRACE_RPC,
        content=grpc_frame(body),
        headers={**auth, "content-type": "application/grpc-web+proto"},
    )
    assert web.status_code == 200 and _grpc_web_status(web) == "3"

    for transport, n in before.items():
        assert setup.refusals("acme", transport, "invalid") == n + 1, transport
    time.sleep(0.3)
    assert setup.sink.total() == arrived  # nothing of them was forwarded


def test_red_metrics_never_fail_a_queued_request(setup: Setup) -> None:
    accepted = setup.metric("otlp_gateway_requests_total", tenant="beta", outcome="accepted")
    skipped = setup.metric("otlp_gateway_spans_undecodable_total", feature="red_metrics")
    arrived = setup.sink.total()
    for body in (BAD_SPAN, BAD_UTF8):
        assert setup.post("beta", body).status_code == 200
    # acknowledged once each (no 500, so no client retry duplicating what was queued)
    assert (
        setup.metric("otlp_gateway_requests_total", tenant="beta", outcome="accepted")
        == accepted + 2
    )
    assert setup.sink.wait_total(arrived + 2) == arrived + 2
    assert (
        setup.metric("otlp_gateway_spans_undecodable_total", feature="red_metrics") == skipped + 2
    )


def test_deep_nesting_is_accepted_forwarded_intact_and_still_filtered(setup: Setup) -> None:
    body = deep_request(150)  # 300 nested messages: valid OTLP, past upb's default limit of 100
    with pytest.raises(Exception, match="MaxDepth"):
        ExportTraceServiceRequest.FromString(body)
    arrived = setup.sink.total()
    assert setup.post("acme", body).status_code == 200  # drop rules + RED metrics
    assert setup.post("beta", body).status_code == 200  # RED metrics
    # acme's drop rule removed "GET /healthz"; beta forwards both spans
    assert setup.sink.wait_total(arrived + 3) == arrived + 3
    value = deep_value(150)
    forwarded = [b for _, b in setup.sink.bodies if value in b]
    assert len(forwarded) == 2  # the nested value arrived byte for byte, twice
    assert setup.metric("otlp_gateway_red_spans_total", tenant="acme", span_name="deep") == 1
    assert setup.metric("otlp_gateway_red_spans_total", tenant="beta", span_name="deep") == 1
    assert setup.metric("otlp_gateway_dropped_items_total", tenant="acme", reason="drop_rule") >= 1


def test_malformed_resource_with_tenant_id_is_refused(setup: Setup) -> None:
    before = setup.refusals("gamma", "http/protobuf", "invalid")
    arrived = setup.sink.total()
    resp = setup.post("gamma", BAD_RESOURCE)
    assert resp.status_code == 400
    assert b"resource" in resp.content
    assert setup.refusals("gamma", "http/protobuf", "invalid") == before + 1
    time.sleep(0.3)
    assert setup.sink.total() == arrived


def _rpc(
    setup: Setup, content_type: str, extra: list[tuple[str, bytes]], method: str = "POST"
) -> httpx.Response:
    framed = "grpc" in content_type
    body = sdk_request("rpc-refused")
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", content_type.encode()),
        (b"authorization", f"Bearer {KEYS['acme']}".encode()),
        *((name.encode(), value) for name, value in extra),
    ]
    return setup.http.request(
        method,
        setup.gw.http_endpoint + TRACE_RPC,
        content=grpc_frame(body) if framed else body,
        headers=headers,
    )


@pytest.mark.parametrize(
    ("content_type", "extra", "method", "status", "grpc_status", "transport", "outcome"),
    [
        ("application/proto", [("x-junk", b"\xff\xfe")], "POST", 400, None, "connect", "invalid"),
        (
            "application/json",
            [("user-agent", b"\xc3\x28")],
            "POST",
            400,
            None,
            "connect",
            "invalid",
        ),
        (
            "application/grpc-web+proto",
            [("x-junk", b"\xff")],
            "POST",
            200,
            "3",
            "grpc-web",
            "invalid",
        ),
        (
            "application/proto",
            [("connect-timeout-ms", b"abc")],
            "POST",
            400,
            None,
            "connect",
            "invalid",
        ),
        (
            "application/grpc-web+proto",
            [("grpc-timeout", b"xyz")],
            "POST",
            200,
            "3",
            "grpc-web",
            "invalid",
        ),
        ("application/grpc+proto", [], "POST", 415, "3", "grpc", "unsupported_media_type"),
        ("application/grpc", [], "POST", 415, "3", "grpc", "unsupported_media_type"),
        ("application/grpc+json", [], "POST", 415, "3", "grpc", "unsupported_media_type"),
        ("application/proto", [], "GET", 405, None, "connect", "method_not_allowed"),
        ("application/grpc-web+proto", [], "PUT", 405, None, "grpc-web", "method_not_allowed"),
    ],
)
def test_rpc_refusals_over_http1(
    setup: Setup,
    content_type: str,
    extra: list[tuple[str, bytes]],
    method: str,
    status: int,
    grpc_status: str | None,
    transport: str,
    outcome: str,
) -> None:
    before = setup.refusals("acme", transport, outcome) + setup.refusals(
        "unknown", transport, outcome
    )
    resp = _rpc(setup, content_type, extra, method)
    assert resp.status_code == status, resp.content
    if grpc_status is not None:
        assert _grpc_web_status(resp) == grpc_status
    if status == 405:
        assert resp.headers["allow"] == "POST"
    after = setup.refusals("acme", transport, outcome) + setup.refusals(
        "unknown", transport, outcome
    )
    assert after == before + 1


@pytest.mark.parametrize("content_type", ["application/grpc", "application/grpc+json"])
def test_bad_grpc_timeout_over_http2(setup: Setup, content_type: str) -> None:
    before = setup.refusals("acme", "grpc", "invalid")
    body = sdk_request("timeout")
    if content_type.endswith("json"):
        body = json.dumps({"resourceSpans": []}).encode()
    result = h2_grpc_call(
        setup.gw.http_port,
        TRACE_RPC,
        grpc_frame(body),
        [
            ("content-type", content_type),
            ("authorization", f"Bearer {KEYS['acme']}"),
            ("grpc-timeout", "xyz"),
        ],
    )
    assert result.headers.get(":status") == "200"
    assert result.grpc_status == "3", result
    assert "grpc-timeout" in result.grpc_message
    assert setup.refusals("acme", "grpc", "invalid") == before + 1


# ---------------------------------------------------------------------------------------------
# B: decoding a tenant's large requests does not hold up everyone else


def _big_request(target: int = 15 * MiB) -> tuple[bytes, int, int]:
    """A ~15 MiB request of 10-attribute server spans, 10 of them matched by acme's drop rule:
    (bytes, spans, spans dropped for acme)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "big"
    scope = rs.scope_spans.add()
    proto = Span(
        name="GET /x", trace_id=b"\x01" * 16, span_id=b"\x02" * 8, kind=Span.SPAN_KIND_SERVER
    )
    for i in range(10):
        proto.attributes.add(key=f"attr.{i}").value.string_value = "v" * 20
    size = proto.ByteSize() + 3
    n = target // size
    for _ in range(n - 10):
        scope.spans.append(proto)
    for _ in range(10):
        scope.spans.add(name="GET /healthz", trace_id=b"\x01" * 16, span_id=b"\x03" * 8)
    return req.SerializeToString(), n, 10


def test_large_requests_with_red_and_drop_rules_do_not_stall_other_clients(setup: Setup) -> None:
    body, n, dropped = _big_request()
    assert len(body) > 14 * MiB
    small = sdk_request("small")
    arrived = setup.sink.total()
    stop = threading.Event()
    big_status: list[int] = []
    latencies: list[float] = []
    probes: list[float] = []

    def attacker(tenant: str) -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(3):
                r = client.post(
                    setup.gw.http_endpoint + "/v1/traces",
                    content=body,
                    headers={"content-type": PROTOBUF, "authorization": f"Bearer {KEYS[tenant]}"},
                )
                big_status.append(r.status_code)

    def normal_client() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                t = time.monotonic()
                r = client.post(
                    setup.gw.http_endpoint + "/v1/traces",
                    content=small,
                    headers={"content-type": PROTOBUF, "authorization": f"Bearer {KEYS['gamma']}"},
                )
                latencies.append(time.monotonic() - t)
                assert r.status_code == 200
                t = time.monotonic()
                assert client.get(setup.gw.admin_url + "/healthz").status_code == 200
                probes.append(time.monotonic() - t)
                time.sleep(0.02)

    attackers = [threading.Thread(target=attacker, args=(t,)) for t in ("acme", "beta")]
    watcher = threading.Thread(target=normal_client)
    watcher.start()
    for t in attackers:
        t.start()
    for t in attackers:
        t.join(150)
    stop.set()
    watcher.join(30)

    assert big_status == [200] * 6
    # a generous bound: the figures measured before -> after are in the report / bench
    assert max(latencies) < 2.0, sorted(latencies)[-5:]
    assert max(probes) < 2.0, sorted(probes)[-5:]
    expected = arrived + 3 * (n - dropped) + 3 * n + len(latencies)
    assert setup.sink.wait_total(expected, timeout=120) == expected


# ---------------------------------------------------------------------------------------------
# C: logs and the tail


def test_refusal_with_control_characters_is_one_text_log_line(setup: Setup) -> None:
    forged = "2026-12-06 04:00:00,000 INFO otlp_gateway.intake: forged"
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {"spans": [{"name": "a", "startTimeUnixNano": f"1\n{forged}\x1b[2J\x85"}]}
                    ]
                }
            ]
        }
    ).encode()
    resp = setup.post("delta", body, "application/json")
    assert resp.status_code == 400
    assert "forged" in resp.json()["message"]  # the client is told what was wrong

    def refusal_lines() -> list[str]:
        return [line for line in setup.gw.log().splitlines() if "tenant=delta" in line]

    lines = wait_until(refusal_lines, timeout=10)
    assert len(lines) == 1, lines
    line = lines[0]
    assert "refused a traces request" in line and "\\n2026-12-06" in line and "\\x1b[2J" in line
    assert "\\x85" in line and "\x1b" not in line and "\x85" not in line
    assert not any(line.startswith(forged) for line in setup.gw.log().splitlines())


def test_live_tail_skips_what_it_cannot_show_and_goes_on(setup: Setup) -> None:
    subscribers = setup.metric("otlp_gateway_tail_subscribers")
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "tail",
            "--tenant",
            "beta",
            "--admin",
            setup.gw.admin_url,
            "--key",
            ADMIN_KEY,
            "--limit",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: setup.metric("otlp_gateway_tail_subscribers") > subscribers)
        assert setup.post("beta", sdk_request("tail-a", status_code=-1)).status_code == 200
        assert setup.post("beta", BAD_UTF8).status_code == 200  # acknowledged, not showable
        assert setup.post("beta", deep_request(150)).status_code == 200  # deep: shown
        big_status = sdk_request("tail-b", status_code=2**63 - 1)
        assert setup.post("beta", big_status).status_code == 200
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(5)
    assert tail.returncode == 0, err
    # the undecodable request is told as skipped (its span has no row), and the tail goes on
    assert "... 1 spans skipped" in out
    rows = [line for line in out.splitlines() if not line.startswith("...")]
    assert len(rows) == 4, out
    assert "'tail-a'" in rows[0] and "[" not in rows[0].split("'tail-a'")[1]  # status -1: none
    assert "'deep'" in rows[1] and "'GET /healthz'" in rows[2]
    assert "'tail-b'" in rows[3]


# ---------------------------------------------------------------------------------------------
# Properties of the pure functions


@given(st.text())
def test_escape_leaves_no_control_character(text: str) -> None:
    out = logs.escape(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in out)
    if not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in text):
        assert out == text


@given(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda i: AnyValue(int_value=i)),
        st.text().map(lambda s: AnyValue(string_value=s)),
    )
)
def test_http_status_is_a_status_code_or_zero(value: AnyValue) -> None:
    code = spans.http_status(value)
    assert 0 <= code < 1000
    if 0 < value.int_value < 1000:
        assert code == value.int_value


_NAMES = st.sampled_from(["keep", "GET /healthz", "drop", "x" * 300, "é"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.lists(_NAMES, max_size=5), max_size=3), max_size=3), st.binary(max_size=40)
)
def test_filter_items_equals_decode_delete_encode(
    layout: list[list[list[str]]], junk: bytes
) -> None:
    req = ExportTraceServiceRequest()
    for scopes in layout:
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = "s"
        for names in scopes:
            scope = rs.scope_spans.add()
            for name in names:
                scope.spans.add(name=name, trace_id=b"\x01" * 16)
    payload = req.SerializeToString()

    def drop(item: Any, resource: Any) -> bool:
        return item.name in ("GET /healthz", "drop")

    out, dropped = spans.filter_items(payload, "traces", drop)
    expected = ExportTraceServiceRequest()
    expected.CopyFrom(req)
    removed = 0
    for rs in expected.resource_spans:
        for scope in rs.scope_spans:
            for i in range(len(scope.spans) - 1, -1, -1):
                if scope.spans[i].name in ("GET /healthz", "drop"):
                    del scope.spans[i]
                    removed += 1
    assert dropped == removed
    assert ExportTraceServiceRequest.FromString(out) == expected
    if not removed:
        assert out is payload  # untouched: forwarded as it came
    # garbage never raises anything but UndecodableError
    with contextlib.suppress(spans.UndecodableError):
        spans.filter_items(payload + junk, "traces", drop)
