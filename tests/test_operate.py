"""Operating the gateway: /metrics after a known run (exact counters), health probes (HTTP and
the gRPC health service) including unwritable durable storage, the admin API (auth, tenants
without key material, backend state, recent errors), the live tail (API and CLI), RED metrics
from spans, JSON logs, and `otlp-gateway status`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pyqwest
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from prometheus_client.parser import text_string_to_metric_families

from gateway._gen.opentelemetry.proto.collector.trace.v1.trace_service_connect import (
    TraceServiceClient,
)
from gateway._gen.otlp_gateway.admin.v1 import admin_pb2 as pb
from gateway._gen.otlp_gateway.admin.v1.admin_connect import AdminServiceClient
from gateway.tenancy import keys
from tests.support.peers import ROOT, Gateway, Sink, free_port, run_gateway, wait_until

pytestmark = pytest.mark.timeout(120)

ADMIN_KEY = "admin-" + uuid.uuid4().hex
ACME, GLOBEX, INITECH = (keys.new_key() for _ in range(3))
PROTOBUF = {"content-type": "application/x-protobuf"}
# for tests that forward nothing: a config needs a backend data goes to (under the gateway's cwd)
FILES: dict[str, Any] = {
    "backends": {"files": {"protocol": "file", "path": "./otlp-data"}},
    "service_backends": ["files"],
}


def tenant(key: str, **extra: Any) -> dict[str, Any]:
    return {"api_keys": [keys.config_entry(key)], **extra}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def span(name: str, *, ms: float = 10.0, error: bool = False, **attrs: Any) -> Span:
    start = time.time_ns()
    s = Span(
        trace_id=uuid.uuid4().bytes,
        span_id=uuid.uuid4().bytes[:8],
        name=name,
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=start + int(ms * 1e6),
    )
    if error:
        s.status.code = Status.STATUS_CODE_ERROR
        s.status.message = "boom"
    for k, v in attrs.items():
        value = AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=str(v))
        key = k.replace("_", ".").replace("status.code", "status_code")  # semconv names
        s.attributes.append(KeyValue(key=key, value=value))
    return s


def request(*spans: Span, service: str = "shop") -> ExportTraceServiceRequest:
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
    )
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )


def spans(n: int, prefix: str = "op") -> list[Span]:
    return [span(f"{prefix}-{i}") for i in range(n)]


def post(gw: Gateway, body: bytes, headers: dict[str, str], path: str = "/v1/traces") -> int:
    r = httpx.post(gw.http_endpoint + path, content=body, headers=headers, timeout=10)
    return r.status_code


def scrape(gw: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def _rpc_export(
    gw: Gateway, protocol: ProtocolType, req: ExportTraceServiceRequest, key: str
) -> None:
    client = pyqwest.Client(pyqwest.HTTPTransport(enable_otel=False, timeout=10))
    address = gw.grpc_endpoint
    async with TraceServiceClient(address, protocol=protocol, http_client=client) as traces:
        await traces.export(req, headers=bearer(key))


def rpc_export(
    gw: Gateway, protocol: ProtocolType, req: ExportTraceServiceRequest, key: str
) -> Code | grpc.StatusCode | None:
    """Export with grpcio (gRPC) or connect-python (Connect); the error code, or None."""
    if protocol == ProtocolType.GRPC:
        with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )
            try:
                export(req, metadata=list(bearer(key).items()), timeout=20)
            except grpc.RpcError as exc:
                return exc.code()
        return None
    try:
        asyncio.run(asyncio.wait_for(_rpc_export(gw, protocol, req, key), 20))
    except ConnectError as exc:
        return exc.code
    return None


def admin_client(gw: Gateway, protocol: ProtocolType = ProtocolType.CONNECT) -> AdminServiceClient:
    http = pyqwest.Client(pyqwest.HTTPTransport(enable_otel=False, timeout=10))
    return AdminServiceClient(gw.admin_url, protocol=protocol, http_client=http)


def admin_call(
    gw: Gateway,
    method: str,
    message: Any,
    key: str | None = ADMIN_KEY,
    protocol: ProtocolType = ProtocolType.CONNECT,
) -> Any:
    async def call() -> Any:
        async with admin_client(gw, protocol) as client:
            return await getattr(client, method)(message, headers=bearer(key) if key else {})

    return asyncio.run(asyncio.wait_for(call(), 20))


# ---------------------------------------------------------------------------------------------
# /metrics after a known run


def test_metrics_count_a_known_run_exactly(tmp_path: Path) -> None:
    with Sink().running() as sink:
        config = {
            "backends": {"central": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["central"],
            "tenants": {
                "acme": tenant(ACME, drop=[{"span_name": "healthcheck"}]),
                "globex": tenant(GLOBEX, signals=["traces"]),
                "initech": tenant(
                    INITECH,
                    quota={"items_per_second": 5, "burst_seconds": "1s", "max_request_bytes": 4000},
                ),
            },
            "admin": {"api_key": ADMIN_KEY},
        }
        with run_gateway(tmp_path, config) as gw:
            before = scrape(gw)  # wait_ready probed without a key: those refusals count too
            # accepted: http/protobuf 2 x 5 spans (one healthcheck dropped by rule), http/json 3,
            # gRPC 2 x 4, Connect 2
            for _ in range(2):
                body = request(*spans(4), span("healthcheck")).SerializeToString()
                assert post(gw, body, {**PROTOBUF, **bearer(ACME)}) == 200
            from gateway.otlp import jsonpb as otlpjson
            from gateway.otlp.signals import TRACES

            as_json = otlpjson.proto_to_json(TRACES, request(*spans(3)).SerializeToString())
            assert post(gw, as_json, {"content-type": "application/json", **bearer(ACME)}) == 200
            for _ in range(2):
                assert rpc_export(gw, ProtocolType.GRPC, request(*spans(4)), ACME) is None
            assert rpc_export(gw, ProtocolType.CONNECT, request(*spans(2)), GLOBEX) is None
            # refused: 2 without a key, 1 wrong key over gRPC, 1 signal not allowed, 1 garbage,
            # 1 over the tenant's request cap, 1 over the tenant's rate quota
            one = request(span("x")).SerializeToString()
            assert post(gw, one, PROTOBUF) == 401
            assert post(gw, one, PROTOBUF) == 401
            assert (
                rpc_export(gw, ProtocolType.GRPC, request(span("x")), "wrong")
                == grpc.StatusCode.UNAUTHENTICATED
            )
            assert post(gw, b"", {**PROTOBUF, **bearer(GLOBEX)}, "/v1/metrics") == 403
            assert post(gw, b"\xff\xff\xff", {**PROTOBUF, **bearer(ACME)}) == 400
            big = request(*[span("y" * 100, text="z" * 200) for _ in range(20)]).SerializeToString()
            assert post(gw, big, {**PROTOBUF, **bearer(INITECH)}) == 413
            five = request(*spans(5)).SerializeToString()
            assert post(gw, five, {**PROTOBUF, **bearer(INITECH)}) == 200
            assert post(gw, five, {**PROTOBUF, **bearer(INITECH)}) == 429

            assert sink.wait_items("traces", 8 + 3 + 8 + 2 + 5) == 26
            m = scrape(gw)

    def delta(name: str, **labels: str) -> float:
        return value(m, name, **labels) - value(before, name, **labels)

    req = "otlp_gateway_requests_total"
    assert (
        value(m, req, tenant="acme", signal="traces", transport="http/protobuf", outcome="accepted")
        == 2
    )
    assert (
        value(m, req, tenant="acme", signal="traces", transport="http/json", outcome="accepted")
        == 1
    )
    assert value(m, req, tenant="acme", signal="traces", transport="grpc", outcome="accepted") == 2
    assert (
        value(m, req, tenant="globex", signal="traces", transport="connect", outcome="accepted")
        == 1
    )
    assert (
        value(
            m, req, tenant="initech", signal="traces", transport="http/protobuf", outcome="accepted"
        )
        == 1
    )
    assert (
        delta(
            req,
            tenant="unknown",
            signal="traces",
            transport="http/protobuf",
            outcome="unauthenticated",
        )
        == 2
    )
    assert (
        value(
            m, req, tenant="unknown", signal="traces", transport="grpc", outcome="unauthenticated"
        )
        == 1
    )
    assert (
        value(
            m,
            req,
            tenant="globex",
            signal="metrics",
            transport="http/protobuf",
            outcome="permission_denied",
        )
        == 1
    )
    assert (
        value(m, req, tenant="acme", signal="traces", transport="http/protobuf", outcome="invalid")
        == 1
    )
    assert (
        value(
            m,
            req,
            tenant="initech",
            signal="traces",
            transport="http/protobuf",
            outcome="too_large",
        )
        == 1
    )
    assert (
        value(m, req, tenant="initech", signal="traces", transport="http/protobuf", outcome="quota")
        == 1
    )

    items = "otlp_gateway_received_items_total"
    assert value(m, items, tenant="acme", signal="traces", transport="http/protobuf") == 10
    assert value(m, items, tenant="acme", signal="traces", transport="grpc") == 8
    assert (
        value(m, items, tenant="initech", signal="traces", transport="http/protobuf") == 20 + 5 + 5
    )  # the too-large request was read, then refused
    acc = "otlp_gateway_accepted_items_total"
    assert value(m, acc, tenant="acme", signal="traces", transport="http/protobuf") == 8
    assert value(m, acc, tenant="acme", signal="traces", transport="http/json") == 3
    assert value(m, acc, tenant="acme", signal="traces", transport="grpc") == 8
    assert value(m, acc, tenant="globex", signal="traces", transport="connect") == 2
    assert value(m, acc, tenant="initech", signal="traces", transport="http/protobuf") == 5
    assert (
        value(
            m,
            "otlp_gateway_refused_items_total",
            tenant="initech",
            signal="traces",
            transport="http/protobuf",
            reason="quota",
        )
        == 5
    )
    assert (
        value(
            m,
            "otlp_gateway_dropped_items_total",
            tenant="acme",
            signal="traces",
            backend="",
            reason="drop_rule",
        )
        == 2
    )

    assert (
        delta(
            "otlp_gateway_auth_failures_total", transport="http/protobuf", reason="unauthenticated"
        )
        == 2
    )
    assert (
        value(m, "otlp_gateway_auth_failures_total", transport="grpc", reason="unauthenticated")
        == 1
    )
    assert (
        value(
            m,
            "otlp_gateway_auth_failures_total",
            transport="http/protobuf",
            reason="permission_denied",
        )
        == 1
    )

    exported = "otlp_gateway_exported_items_total"
    assert value(m, exported, backend="central", tenant="acme", signal="traces") == 19
    assert value(m, exported, backend="central", tenant="globex", signal="traces") == 2
    assert value(m, exported, backend="central", tenant="initech", signal="traces") == 5
    oks = value(
        m, "otlp_gateway_export_attempts_total", backend="central", signal="traces", outcome="ok"
    )
    assert oks == value(
        m, "otlp_gateway_export_duration_seconds_count", backend="central", signal="traces"
    )
    assert 1 <= oks <= 7  # queued requests merge into fewer exports
    assert value(m, "otlp_gateway_queue_batches", backend="central", tenant="") == 0
    assert value(m, "otlp_gateway_queue_max_bytes", backend="central", tenant="") > 0
    build = [k for k in m if k[0] == "otlp_gateway_build_info"]
    assert len(build) == 1 and dict(build[0][1])["server"] == "uvicorn"
    assert value(m, "process_resident_memory_bytes") > 0


def test_export_failures_retries_and_reloads_are_counted(tmp_path: Path) -> None:
    with Sink(status=503, retry_after="1").running() as sink:
        config = {
            "backends": {"central": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["central"],
            "tenants": {"acme": tenant(ACME)},
            "retry": {"initial_interval": "100ms", "max_interval": "200ms", "max_elapsed": "1m"},
            "admin": {"api_key": ADMIN_KEY},
            "reload_interval": "200ms",
        }
        with run_gateway(tmp_path, config) as gw:
            assert (
                post(gw, request(*spans(3)).SerializeToString(), {**PROTOBUF, **bearer(ACME)})
                == 200
            )
            assert wait_until(lambda: len(sink.body_sizes) >= 2, 10)
            backends = admin_call(gw, "list_backends", pb.ListBackendsRequest()).backends
            (central,) = backends
            assert central.state == pb.BACKEND_STATE_RETRYING
            assert "503" in central.last_error and central.last_error_time > 0
            assert central.queues[0].bytes > 0 and central.queues[0].oldest_age_seconds > 0
            m = scrape(gw)
            assert (
                value(
                    m,
                    "otlp_gateway_export_attempts_total",
                    backend="central",
                    signal="traces",
                    outcome="retryable",
                )
                >= 2
            )
            assert (
                value(m, "otlp_gateway_export_retries_total", backend="central", signal="traces")
                >= 1
            )
            assert (
                value(m, "otlp_gateway_queue_oldest_age_seconds", backend="central", tenant="") > 0
            )

            sink.status = 200
            assert sink.wait_items("traces", 3) == 3
            assert wait_until(
                lambda: (
                    admin_call(gw, "list_backends", pb.ListBackendsRequest()).backends[0].state
                    == pb.BACKEND_STATE_UP
                )
            )
            m = scrape(gw)
            assert (
                value(
                    m,
                    "otlp_gateway_exported_items_total",
                    backend="central",
                    tenant="acme",
                    signal="traces",
                )
                == 3
            )
            assert (
                value(m, "otlp_gateway_queue_oldest_age_seconds", backend="central", tenant="") == 0
            )

            # reloads: one refused (bad file), one taken
            path = next(tmp_path.glob(f"gateway-{gw.grpc_port}.yaml"))
            good = path.read_text()
            path.write_text(good + "\nbogus_key: 1\n")
            assert wait_until(
                lambda: (
                    value(scrape(gw), "otlp_gateway_config_reloads_total", outcome="failed") == 1
                )
            )
            path.write_text(good + "\n# touched\n")
            assert wait_until(
                lambda: value(scrape(gw), "otlp_gateway_config_reloads_total", outcome="ok") == 1
            )
            errors = admin_call(gw, "list_recent_errors", pb.ListRecentErrorsRequest()).errors
            kinds = {e.kind for e in errors}
            assert {"export", "reload"} <= kinds
            reload_error = next(e for e in errors if e.kind == "reload")
            assert "bogus_key" in reload_error.message


# ---------------------------------------------------------------------------------------------
# Health


def grpc_health(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)


def test_probes_follow_durable_storage(tmp_path: Path) -> None:
    queue_dir = tmp_path / "queue"
    with Sink().running() as sink:
        config = {
            "backends": {"central": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["central"],
            "queue": {"durable": True, "directory": str(queue_dir)},
        }
        with run_gateway(tmp_path, config) as gw:
            assert httpx.get(gw.admin_url + "/healthz").status_code == 200
            ready = httpx.get(gw.admin_url + "/readyz")
            assert ready.status_code == 200 and ready.json() == {"ready": True, "problems": []}
            for port in (gw.grpc_port, gw.http_port, gw.admin_port):
                assert port is not None
                assert grpc_health(port) == health_pb2.HealthCheckResponse.SERVING
            assert (
                grpc_health(gw.grpc_port, "opentelemetry.proto.collector.trace.v1.TraceService")
                == 1
            )
            with pytest.raises(grpc.RpcError) as info:
                grpc_health(gw.grpc_port, "no.such.Service")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

            # The queue's directory goes away and a file takes its place (root can write into a
            # read-only directory, so permissions would not show it): storage is unwritable.
            backend_dir = queue_dir / "central"
            moved = tmp_path / "moved"
            backend_dir.rename(moved)
            backend_dir.write_text("not a directory")
            assert wait_until(lambda: httpx.get(gw.admin_url + "/readyz").status_code == 503)
            problems = httpx.get(gw.admin_url + "/readyz").json()["problems"]
            assert len(problems) == 1 and "not writable" in problems[0] and "central" in problems[0]
            assert grpc_health(gw.grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert gw.admin_port is not None
            assert grpc_health(gw.admin_port) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert httpx.get(gw.admin_url + "/healthz").status_code == 200  # alive all the same

            backend_dir.unlink()
            moved.rename(backend_dir)
            assert wait_until(lambda: httpx.get(gw.admin_url + "/readyz").status_code == 200)
            assert grpc_health(gw.grpc_port) == health_pb2.HealthCheckResponse.SERVING
            # admin-only paths are not on the OTLP listeners
            assert httpx.get(gw.http_endpoint + "/metrics").status_code == 404


# ---------------------------------------------------------------------------------------------
# Admin API and tail


@pytest.fixture(scope="module")
def admin_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sink]]:
    tmp = tmp_path_factory.mktemp("admin")
    with Sink().running() as sink:
        config = {
            "backends": {
                "central": {"protocol": "http/protobuf", "endpoint": sink.endpoint},
                "acme-own": {
                    "protocol": "http/protobuf",
                    "endpoint": f"http://127.0.0.1:{free_port()}",  # nothing listens
                    "headers": {"X-Scope-OrgID": "{tenant}"},
                },
            },
            "service_backends": ["central"],
            "tenants": {
                "acme": tenant(ACME, backends=["acme-own"], attributes={"team": "payments"}),
                "globex": tenant(GLOBEX),
                "initech": tenant(INITECH, red_metrics={"max_series": 3, "span_kinds": ["server"]}),
            },
            "admin": {"api_key": keys.config_entry(ADMIN_KEY)},  # the digest form works too
            "shutdown_timeout": "1s",
        }
        with run_gateway(tmp, config) as gw:
            yield gw, sink


def test_admin_api_needs_the_admin_key(admin_gateway: tuple[Gateway, Sink]) -> None:
    gw, _ = admin_gateway
    for key in (None, "wrong", ACME):
        with pytest.raises(ConnectError) as info:
            admin_call(gw, "list_tenants", pb.ListTenantsRequest(), key=key)
        assert info.value.code == Code.UNAUTHENTICATED
    # /metrics and the probes need no key
    assert httpx.get(gw.admin_url + "/metrics").status_code == 200
    assert httpx.get(gw.admin_url + "/readyz").status_code == 200


def test_admin_api_off_without_a_configured_key(tmp_path: Path) -> None:
    with run_gateway(tmp_path, FILES) as gw:
        with pytest.raises(ConnectError) as info:
            admin_call(gw, "list_backends", pb.ListBackendsRequest(), key="anything")
        assert info.value.code == Code.PERMISSION_DENIED
        assert "admin.api_key" in info.value.message


def test_list_tenants_shows_no_key_material(admin_gateway: tuple[Gateway, Sink]) -> None:
    gw, _ = admin_gateway
    with grpc.insecure_channel(f"127.0.0.1:{gw.admin_port}") as channel:
        over_grpc = channel.unary_unary(
            "/otlp_gateway.admin.v1.AdminService/ListTenants",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ListTenantsResponse.FromString,
        )(pb.ListTenantsRequest(), metadata=[("authorization", f"Bearer {ADMIN_KEY}")], timeout=10)
    answers = [over_grpc] + [
        admin_call(gw, "list_tenants", pb.ListTenantsRequest(), protocol=protocol)
        for protocol in (ProtocolType.CONNECT, ProtocolType.GRPC_WEB)
    ]
    for res in answers:
        by_name = {t.name: t for t in res.tenants}
        assert set(by_name) == {"acme", "globex", "initech"} and not res.open
        assert by_name["acme"].api_keys == 1
        assert list(by_name["acme"].backends) == ["acme-own"]
        assert dict(by_name["acme"].resource_attributes) == {"team": "payments"}
        assert by_name["initech"].red_metrics and not by_name["acme"].red_metrics
        text = str(res) + res.SerializeToString().hex()
        for key in (ACME, GLOBEX, ADMIN_KEY):
            assert key not in text and keys.digest(key) not in text


def _send_tail_traffic(gw: Gateway, tag: str) -> None:
    body = request(
        span(
            f"GET /cart {tag}",
            ms=12.5,
            http_request_method="GET",
            http_route="/cart",
            http_response_status_code=200,
        ),
        span(
            f"POST /pay {tag}",
            ms=250,
            error=True,
            http_request_method="POST",
            http_route="/pay",
            http_response_status_code=502,
        ),
        service="checkout",
    ).SerializeToString()
    other = request(span(f"globex {tag}")).SerializeToString()
    for key, payload in ((GLOBEX, other), (ACME, body)):  # globex's span must not show
        assert post(gw, payload, {**PROTOBUF, **bearer(key)}) == 200


def _tail_grpc(gw: Gateway, tag: str) -> list[pb.AccessRow]:
    rows: list[pb.AccessRow] = []
    with grpc.insecure_channel(f"127.0.0.1:{gw.admin_port}") as channel:
        tail = channel.unary_stream(
            "/otlp_gateway.admin.v1.AdminService/Tail",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.TailResponse.FromString,
        )
        stream = tail(
            pb.TailRequest(tenant="acme"),
            metadata=[("authorization", f"Bearer {ADMIN_KEY}")],
            timeout=30,
        )
        assert not next(stream).rows  # the stream is open: send now
        _send_tail_traffic(gw, tag)
        for message in stream:
            rows.extend(message.rows)
            if len(rows) >= 2:
                stream.cancel()
                break
    return rows


def _tail_connect(gw: Gateway, tag: str) -> list[pb.AccessRow]:
    async def watch() -> list[pb.AccessRow]:
        rows: list[pb.AccessRow] = []
        async with admin_client(gw, ProtocolType.CONNECT) as client:
            stream = client.tail(pb.TailRequest(tenant="acme"), headers=bearer(ADMIN_KEY))
            assert not (await anext(stream)).rows  # the stream is open: send now
            await asyncio.to_thread(_send_tail_traffic, gw, tag)
            async for message in stream:
                rows.extend(message.rows)
                if len(rows) >= 2:
                    break
        return rows

    return asyncio.run(asyncio.wait_for(watch(), 30))


@pytest.mark.parametrize("protocol", ["grpc", "connect"])
def test_tail_streams_a_tenants_spans(admin_gateway: tuple[Gateway, Sink], protocol: str) -> None:
    gw, _sink = admin_gateway
    tag = uuid.uuid4().hex[:8]
    rows = (_tail_grpc if protocol == "grpc" else _tail_connect)(gw, tag)
    assert [r.span_name for r in rows] == [f"GET /cart {tag}", f"POST /pay {tag}"]
    cart, pay = rows
    assert (cart.tenant, cart.service, cart.kind, cart.status) == (
        "acme",
        "checkout",
        "server",
        "unset",
    )
    assert (cart.http_method, cart.http_route, cart.http_status) == ("GET", "/cart", 200)
    assert cart.duration_ms == pytest.approx(12.5)
    assert (pay.status, pay.status_message, pay.http_status) == ("error", "boom", 502)
    assert len(cart.trace_id) == 32 and len(cart.span_id) == 16


def test_tail_of_unknown_tenant_is_not_found(admin_gateway: tuple[Gateway, Sink]) -> None:
    gw, _ = admin_gateway

    async def watch() -> None:
        async with admin_client(gw) as client:
            async for _ in client.tail(pb.TailRequest(tenant="nobody"), headers=bearer(ADMIN_KEY)):
                pass

    with pytest.raises(ConnectError) as info:
        asyncio.run(asyncio.wait_for(watch(), 20))
    assert info.value.code == Code.NOT_FOUND


def cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OTLP_GATEWAY_ADMIN_KEY": ADMIN_KEY},
        **kw,
    )


def test_cli_tail_and_status(admin_gateway: tuple[Gateway, Sink]) -> None:
    gw, _ = admin_gateway
    tag = uuid.uuid4().hex[:8]
    watching = value(scrape(gw), "otlp_gateway_tail_subscribers")  # earlier tests' streams
    proc = cli("tail", "--admin", gw.admin_url, "--tenant", "acme", "--limit", "3")
    try:
        # the CLI is watching once the gauge says so
        assert wait_until(lambda: value(scrape(gw), "otlp_gateway_tail_subscribers") > watching, 20)
        body = request(
            span(
                f"GET /a {tag}",
                http_request_method="GET",
                http_route="/a",
                http_response_status_code=200,
            ),
            span(f"GET /b {tag}"),
            span(f"GET /c {tag}", error=True),
        ).SerializeToString()
        assert post(gw, body, {**PROTOBUF, **bearer(ACME)}) == 200
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert (
        f"'GET /a {tag}'" in lines[0] and "[GET /a 200]" in lines[0] and " shop server " in lines[0]
    )
    assert f"'GET /c {tag}'" in lines[2] and " error " in lines[2] and "'boom'" in lines[2]

    status = cli("status", "--admin", gw.admin_url)
    out, err = status.communicate(timeout=20)
    assert status.returncode == 0, err
    assert "central (service-wide)" in out and "acme-own" in out and "RETRYING" in out
    assert "acme" in out and "globex" in out and "recent errors" in out

    bad = cli("status", "--admin", gw.admin_url, "--key", "wrong")
    _, err = bad.communicate(timeout=20)
    assert bad.returncode == 1 and "unauthenticated" in err


def test_red_metrics_from_spans(admin_gateway: tuple[Gateway, Sink]) -> None:
    gw, _sink = admin_gateway
    service = "red-" + uuid.uuid4().hex[:6]
    body = request(
        span("GET /a", ms=20),
        span("GET /a", ms=40),
        span("GET /a", ms=3000, error=True),
        span("GET /b", ms=5),
        span("GET /c", ms=5),
        span("GET /d", ms=5),  # past max_series (3): counted as _other_
        span("GET /e", ms=5),
        service=service,
    )
    client_span = span("outbound", ms=1)
    client_span.kind = Span.SPAN_KIND_CLIENT  # not a server span: not counted
    body.resource_spans[0].scope_spans[0].spans.append(client_span)
    assert post(gw, body.SerializeToString(), {**PROTOBUF, **bearer(INITECH)}) == 200
    # the same spans from acme, which did not opt in
    assert post(gw, body.SerializeToString(), {**PROTOBUF, **bearer(ACME)}) == 200
    m = scrape(gw)

    def red(name: str, **labels: str) -> float:
        return value(m, name, tenant="initech", service=service, **labels)

    assert red("otlp_gateway_red_spans_total", span_name="GET /a", error="false") == 2
    assert red("otlp_gateway_red_spans_total", span_name="GET /a", error="true") == 1
    assert red("otlp_gateway_red_spans_total", span_name="GET /b", error="false") == 1
    assert red("otlp_gateway_red_spans_total", span_name="GET /c", error="false") == 1
    assert red("otlp_gateway_red_spans_total", span_name="_other_", error="false") == 2
    assert red("otlp_gateway_red_span_duration_seconds_count", span_name="GET /a") == 3
    assert red("otlp_gateway_red_span_duration_seconds_sum", span_name="GET /a") == pytest.approx(
        3.06
    )
    assert red("otlp_gateway_red_span_duration_seconds_bucket", span_name="GET /a", le="0.025") == 1
    assert not any(
        k[0].startswith("otlp_gateway_red_")
        and ("service", service) in k[1]
        and ("tenant", "acme") in k[1]
        for k in m
    )
    assert not any(("span_name", "outbound") in k[1] for k in m)


def test_tail_ends_when_the_gateway_stops(tmp_path: Path) -> None:
    config = {
        **FILES,
        "tenants": {"acme": tenant(ACME)},
        "admin": {"api_key": ADMIN_KEY},
    }
    with run_gateway(tmp_path, config) as gw:
        proc = cli("tail", "--admin", gw.admin_url, "--tenant", "acme")
        try:
            assert wait_until(
                lambda: (
                    "otlp_gateway_tail_subscribers 1.0" in httpx.get(gw.admin_url + "/metrics").text
                ),
                20,
            )
            started = time.monotonic()
            assert gw.stop() == 0
            took = time.monotonic() - started
            proc.communicate(timeout=20)
        finally:
            proc.kill()
        # the open stream did not hold the shutdown up to the graceful timeout (15 s here)
        assert took < 8, took


# ---------------------------------------------------------------------------------------------
# Logs


def test_json_logs_one_line_per_refusal_and_no_keys_anywhere(tmp_path: Path) -> None:
    config = {
        **FILES,
        "tenants": {"acme": tenant(ACME, signals=["traces"])},
        "admin": {"api_key": ADMIN_KEY},
        "log": {"format": "json"},
    }
    with run_gateway(tmp_path, config) as gw:
        n = len(gw.log().splitlines())
        wrong = keys.new_key()
        assert post(gw, b"", {**PROTOBUF, **bearer(wrong)}) == 401
        assert post(gw, b"", {**PROTOBUF, **bearer(ACME)}, "/v1/logs") == 403
        code = rpc_export(gw, ProtocolType.GRPC, request(span("x")), wrong)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert wait_until(lambda: gw.log().count('"event": "refused"') >= 3 + 1)  # + the probe
        metrics_text = httpx.get(gw.admin_url + "/metrics").text
        errors = admin_call(gw, "list_recent_errors", pb.ListRecentErrorsRequest())
        lines = gw.log().splitlines()
        entries = [json.loads(line) for line in lines]  # every line is JSON, the banner too
        refused = [e for e in entries[n:] if e.get("event") == "refused"]
        assert [(e["reason"], e["transport"], e["tenant"]) for e in refused] == [
            ("unauthenticated", "http/protobuf", "unknown"),
            ("permission_denied", "http/protobuf", "acme"),
            ("unauthenticated", "grpc", "unknown"),
        ]
        assert refused[1]["http_status"] == 403 and refused[2]["grpc_code"] == 16
        everything = gw.log() + metrics_text + str(errors)
        for key in (wrong, ACME, ADMIN_KEY):
            assert key not in everything and keys.digest(key) not in everything


def test_embedded_default_serves_admin_with_its_own_key(tmp_path: Path) -> None:
    """`otlp-gateway serve` with no config: the status page and admin API with a key kept in the
    data directory; `otlp-gateway status` finds it there. On free ports (--listen, --admin), not
    the embedded default's own."""
    admin_port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "gateway", "serve", "--data-dir", str(data)),
            *("--listen", f"127.0.0.1:{free_port()}", "--listen", f"127.0.0.1:{free_port()}"),
            *("--admin", f"127.0.0.1:{admin_port}"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{admin_port}"
        assert wait_until(lambda: _get(url + "/readyz") == 200, 30)
        key = (data / "admin-api-key").read_text().strip()
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "otlp-gateway" in page.text
        status = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--admin", url, "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert status.returncode == 0, status.stderr
        assert "local-files" in status.stdout and "dev" in status.stdout
        assert key not in status.stdout
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    # one link opens the status page with its key (a fragment: the server never sees it)
    assert f"Status page and admin API: {url}/#key={quote(key, safe='')}  " in out


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_unwritable_spool_dir_is_not_ready_at_start(tmp_path: Path) -> None:
    """A queue directory that cannot be used makes the start fail loudly, not half-ready."""
    blocker = tmp_path / "queue"
    blocker.write_text("a file where the queue directory should be")
    with Sink().running() as sink:
        config = {
            "backends": {"central": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["central"],
            "queue": {"durable": True, "directory": str(blocker)},
        }
        with pytest.raises(RuntimeError) as info, run_gateway(tmp_path, config):
            pass
    assert "queue" in str(info.value)
    shutil.rmtree(tmp_path / "queue", ignore_errors=True)
