"""Tenants end to end: API keys, per-tenant routes, enrichment, refusals, quotas, drop rules.

One gateway (module-scoped) with three tenants and four counting sinks:

- `central` is the service backend (every tenant's data, `X-Scope-OrgID: {tenant}`),
- `acme-own` and `globex-own` are the tenants' own backends,
- `acme-logs` gets acme's logs only (`signal_backends`).

`acme` sends with the SDK gRPC exporters (`headers=`), `globex` with the SDK http/protobuf
exporters (`OTEL_EXPORTER_OTLP_HEADERS`), `initech` is the tenant with a quota. Every test tags its
resources with a unique `test.tag`, so the counts asserted are exact although the sinks are shared.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from gateway._gen.opentelemetry.proto.collector.trace.v1.trace_service_connect import (
    TraceServiceClient,
)
from gateway.tenancy import keys
from tests.support.peers import Gateway, Sink
from tests.support.tenants import (
    _entries,
    bearer,
    exact,
    items_of,
    kv_list,
    new_tag,
    nothing,
    post,
    run_tenant_gateway,
    simple_spans,
    trace_request,
)

pytestmark = pytest.mark.timeout(60)

TRACE_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_PATH = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

KEYS = {name: keys.new_key() for name in ("acme", "globex", "initech")}
WRONG_KEY = keys.new_key()  # well-formed, never configured
ACME_ATTRIBUTES = {"deployment.environment": "prod", "cost.center": "a-42"}
GLOBEX_ATTRIBUTES = {"org.region": "eu-west"}
INITECH_MAX_REQUEST_BYTES = 4096


# ---------------------------------------------------------------------------------------------
# Starting a gateway with tenants


# ---------------------------------------------------------------------------------------------
# Helpers


def metrics_request(tag: str) -> bytes:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=PbResource(
                    attributes=[KeyValue(key="test.tag", value=AnyValue(string_value=tag))]
                ),
                scope_metrics=[
                    ScopeMetrics(
                        metrics=[
                            Metric(
                                name=f"{tag}.gauge",
                                gauge=Gauge(data_points=[NumberDataPoint(as_int=1)]),
                            )
                        ]
                    )
                ],
            )
        ]
    ).SerializeToString()


def basic(tenant: str, key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{tenant}:{key}".encode()).decode()}


def grpc_call(
    gw: Gateway, path: str, body: bytes, metadata: list[tuple[str, str]]
) -> grpc.RpcError | None:
    """A raw unary gRPC call (grpcio); the error, or None when it succeeded."""
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
        try:
            channel.unary_unary(path)(body, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error
    return None


def connect_post(gw: Gateway, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """A raw Connect unary call (proto), to see the HTTP status connect maps the code to."""
    return httpx.post(
        f"{gw.http_endpoint}{TRACE_PATH}",
        content=body,
        headers={"content-type": "application/proto", "connect-protocol-version": "1", **headers},
        timeout=10,
    )


def secrets_of(*presented: str) -> list[str]:
    """What must never show up in a response or the log: the keys, their digests, and the
    base64 of every Basic credential built from them."""
    out: list[str] = []
    for key in presented:
        out += [key, keys.digest(key)]
        for tenant in KEYS:
            out.append(base64.b64encode(f"{tenant}:{key}".encode()).decode())
    return out


def assert_no_secret(text: str | bytes, *presented: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    for secret in secrets_of(*presented):
        assert secret not in text


def status_of(r: httpx.Response) -> status_pb2.Status:
    assert r.headers["content-type"] == "application/x-protobuf"
    return status_pb2.Status.FromString(r.content)


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    trailers = dict(error.trailing_metadata() or ())
    raw = trailers.get("grpc-status-details-bin")
    if raw is None:
        return None
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    return None


# ---------------------------------------------------------------------------------------------
# Peers


@pytest.fixture(scope="module")
def sinks() -> Iterator[dict[str, Sink]]:
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(Sink().running())
            for name in ("central", "acme-own", "globex-own", "acme-logs")
        }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sinks: dict[str, Sink]) -> Iterator[Gateway]:
    backends: dict[str, Any] = {
        name: {"protocol": "http/protobuf", "endpoint": sink.endpoint, "compression": "none"}
        for name, sink in sinks.items()
    }
    backends["central"]["headers"] = {"X-Scope-OrgID": "{tenant}"}
    backends["central"]["compression"] = "gzip"
    config = {
        "backends": backends,
        "service_backends": ["central"],
        "retry": {"initial_interval": "100ms", "max_interval": "1s"},
        "tenants": {
            "acme": {
                "api_keys": [keys.config_entry(KEYS["acme"])],
                "backends": ["acme-own"],
                "signal_backends": {"logs": ["acme-logs"]},
                "attributes": ACME_ATTRIBUTES,
                "drop": [
                    {"attribute": "user_agent.original", "starts_with": "kube-probe/"},
                    {"span_name": "GET /healthz"},
                ],
            },
            "globex": {
                "api_keys": [keys.config_entry(KEYS["globex"])],
                "backends": ["globex-own"],
                "signals": ["traces", "logs"],
                "attributes": GLOBEX_ATTRIBUTES,
            },
            "initech": {
                "api_keys": [keys.config_entry(KEYS["initech"])],
                "quota": {
                    "items_per_second": 50,
                    "burst_seconds": 1,
                    "max_request_bytes": INITECH_MAX_REQUEST_BYTES,
                },
            },
        },
    }
    with run_tenant_gateway(tmp_path_factory.mktemp("tenants"), config) as g:
        yield g


# ---------------------------------------------------------------------------------------------
# Routing and enrichment with the SDK exporters


def _sdk_send(tag: str, span_exp: Any, log_exp: Any, metric_exp: Any, spoof: bool) -> None:
    """3 spans, 2 log records and (with a metric exporter) 2 counter points under test.tag=tag.
    With spoof the resource claims another tenant and another deployment.environment."""
    attributes = {"service.name": f"svc-{tag}", "test.tag": tag}
    if spoof:
        attributes |= {"tenant.id": "globex", "deployment.environment": "dev"}
    resource = Resource.create(attributes)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exp, schedule_delay_millis=60_000))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(log_exp, schedule_delay_millis=60_000)
    )
    tracer = tracer_provider.get_tracer("tenant-test")
    for i in range(3):
        with tracer.start_as_current_span(f"{tag}-span-{i}"):
            pass
    otel_logger = logger_provider.get_logger("tenant-test")
    for i in range(2):
        otel_logger.emit(body=f"{tag} log {i}")
    if metric_exp is not None:
        reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=3_600_000)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        counter = meter_provider.get_meter("tenant-test").create_counter(f"{tag}.requests")
        counter.add(1, {"route": "/a"})
        counter.add(2, {"route": "/b"})
        meter_provider.shutdown(timeout_millis=10_000)
    tracer_provider.shutdown()
    logger_provider.shutdown()


def _assert_enriched(res: list[tuple[str, Any]], tenant: str, attributes: dict[str, str]) -> None:
    assert [v for k, v in res if k == "tenant.id"] == [tenant]
    for key, value in attributes.items():
        assert [v for k, v in res if k == key] == [value]


def test_each_tenant_reaches_only_its_backends(
    gw: Gateway, sinks: dict[str, Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GLog
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GMet
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GSpan
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HLog
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HSpan

    central, acme_own, globex_own, acme_logs = (
        sinks[n] for n in ("central", "acme-own", "globex-own", "acme-logs")
    )
    a, g = new_tag(), new_tag()

    # acme: gRPC, key in headers=, and a resource that claims to be globex
    kw: dict[str, Any] = {
        "endpoint": gw.grpc_endpoint,
        "insecure": True,
        "timeout": 10,
        "headers": bearer(KEYS["acme"]),
    }
    _sdk_send(a, GSpan(**kw), GLog(**kw), GMet(**kw), spoof=True)

    # globex: http/protobuf, key from OTEL_EXPORTER_OTLP_HEADERS as `otlp-gateway keys` prints it
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", keys.client_headers_env(KEYS["globex"]))
    base = gw.http_endpoint
    _sdk_send(
        g,
        HSpan(endpoint=f"{base}/v1/traces", timeout=10),
        HLog(endpoint=f"{base}/v1/logs", timeout=10),
        None,
        spoof=False,
    )

    expected = {"traces": 3, "logs": 2, "metrics": 2}
    for signal, n in expected.items():
        for sink in (central, acme_own):
            for headers, res, _ in exact(sink, signal, a, n):
                _assert_enriched(res, "acme", ACME_ATTRIBUTES)
                assert ("service.name", f"svc-{a}") in res
                assert ("org.region", "eu-west") not in res
                if sink is central:
                    assert headers["x-scope-orgid"] == "acme"
                else:
                    assert "x-scope-orgid" not in headers
        assert items_of(globex_own, signal, a) == []
    for headers, res, _ in exact(acme_logs, "logs", a, 2):
        _assert_enriched(res, "acme", ACME_ATTRIBUTES)
        assert "x-scope-orgid" not in headers
    assert items_of(acme_logs, "traces", a) == items_of(acme_logs, "metrics", a) == []

    for signal, n in (("traces", 3), ("logs", 2)):
        for sink in (central, globex_own):
            for headers, res, _ in exact(sink, signal, g, n):
                _assert_enriched(res, "globex", GLOBEX_ATTRIBUTES)
                assert not any(k in ACME_ATTRIBUTES for k, _ in res)
                if sink is central:
                    assert headers["x-scope-orgid"] == "globex"
    for sink in (acme_own, acme_logs):
        nothing(sink, g)
    assert items_of(central, "metrics", g) == items_of(globex_own, "metrics", g) == []

    # Invariants over everything these sinks have seen so far in the module.
    for name, sink in sinks.items():
        with sink._lock:
            received = list(sink.received)
        assert received
        for r in received:
            tenants = {
                v
                for resource, _ in _entries(r.signal, r.message)
                for k, v in kv_list(resource.attributes)
                if k == "tenant.id"
            }
            if name == "central":
                assert tenants == {r.headers["x-scope-orgid"]}
            else:
                assert tenants == {{"acme-own": "acme", "globex-own": "globex"}.get(name, "acme")}
            if name == "acme-logs":
                assert r.signal == "logs"


# ---------------------------------------------------------------------------------------------
# Keys: the accepted forms, and refusals on every transport


def test_key_header_forms(gw: Gateway, sinks: dict[str, Sink]) -> None:
    key = KEYS["acme"]
    tag = new_tag()
    accepted = [
        bearer(key),
        {"authorization": f"bearer   {key}"},
        {"x-api-key": key},
        basic("acme", key),
        {"authorization": key},  # no scheme: OTEL_EXPORTER_OTLP_HEADERS=authorization=<key>
    ]
    for i, headers in enumerate(accepted):
        r = post(gw, "traces", simple_spans(f"{tag}", 1 + i), headers)
        assert r.status_code == 200, (headers, r.content)
    refused = [
        basic("globex", key),  # a good key under another tenant's name
        basic("acme", KEYS["globex"]),  # globex's key claiming acme
        basic("acme", WRONG_KEY),
        {"authorization": f"Basic {key}"},  # not base64 of tenant:key
        {"authorization": f"Token {key}"},
    ]
    for headers in refused:
        r = post(gw, "traces", simple_spans(new_tag(), 1), headers)
        assert r.status_code == 401, headers
        status = status_of(r)
        assert status.code == 16
        assert_no_secret(r.content, key, WRONG_KEY, KEYS["globex"])
        hinted = 'use "authorization: Bearer <key>"' in status.message
        assert hinted == headers["authorization"].startswith("Token "), status.message
    # another scheme over gRPC: the same hint (from the HTTP/2 server's early refusal)
    error = grpc_call(
        gw, TRACE_PATH, simple_spans(new_tag(), 1), [("authorization", f"Token {key}")]
    )
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert 'use "authorization: Bearer <key>"' in error.details()
    assert_no_secret(error.details(), key)
    # x-api-key and a bare key over gRPC too
    assert grpc_call(gw, TRACE_PATH, simple_spans(tag, 6), [("x-api-key", key)]) is None
    assert grpc_call(gw, TRACE_PATH, simple_spans(tag, 7), [("authorization", key)]) is None

    n = 1 + 2 + 3 + 4 + 5 + 6 + 7
    for _, res, _ in exact(sinks["acme-own"], "traces", tag, n):
        _assert_enriched(res, "acme", ACME_ATTRIBUTES)
    exact(sinks["central"], "traces", tag, n)
    nothing(sinks["globex-own"], tag)


@pytest.mark.parametrize("presented", ["missing", "wrong"])
def test_unauthenticated_on_every_transport(
    gw: Gateway, sinks: dict[str, Sink], presented: str
) -> None:
    headers = {} if presented == "missing" else bearer(WRONG_KEY)
    tag = new_tag()
    body = simple_spans(tag, 2)

    r = post(gw, "traces", body, headers)
    assert r.status_code == 401
    status = status_of(r)
    assert status.code == 16
    assert ("missing API key" in status.message) == (presented == "missing")
    assert_no_secret(r.content, WRONG_KEY)

    r = httpx.post(
        f"{gw.http_endpoint}/v1/logs",
        content=b'{"resourceLogs": []}',
        headers={"content-type": "application/json", **headers},
        timeout=10,
    )
    assert r.status_code == 401
    assert r.json()["code"] == 16
    assert_no_secret(r.content, WRONG_KEY)

    metadata = list(headers.items())
    error = grpc_call(gw, TRACE_PATH, body, metadata)
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_no_secret(error.details(), WRONG_KEY)
    assert retry_info(error) is None

    r = connect_post(gw, body, headers)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthenticated"
    assert_no_secret(r.content, WRONG_KEY)

    async def connect_client() -> ConnectError:
        import pyqwest

        client = pyqwest.Client(pyqwest.HTTPTransport(enable_otel=False, timeout=10))
        async with TraceServiceClient(
            gw.http_endpoint, protocol=ProtocolType.CONNECT, http_client=client, timeout_ms=10_000
        ) as traces:
            with pytest.raises(ConnectError) as info:
                await traces.export(ExportTraceServiceRequest.FromString(body), headers=headers)
        return info.value

    err = asyncio.run(asyncio.wait_for(connect_client(), 30))
    assert err.code == Code.UNAUTHENTICATED
    assert_no_secret(err.message, WRONG_KEY)

    time.sleep(0.3)
    for sink in sinks.values():
        nothing(sink, tag)


def test_signal_not_allowed(gw: Gateway, sinks: dict[str, Sink]) -> None:
    """globex may send traces and logs, not metrics."""
    key = KEYS["globex"]
    tag = new_tag()
    body = metrics_request(tag)

    r = post(gw, "metrics", body, bearer(key))
    assert r.status_code == 403
    status = status_of(r)
    assert status.code == 7
    assert "globex may not send metrics" in status.message
    assert_no_secret(r.content, key)

    error = grpc_call(gw, METRICS_PATH, body, list(bearer(key).items()))
    assert error is not None
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert_no_secret(error.details(), key)

    r = httpx.post(
        f"{gw.http_endpoint}{METRICS_PATH}",
        content=body,
        headers={
            "content-type": "application/proto",
            "connect-protocol-version": "1",
            **bearer(key),
        },
        timeout=10,
    )
    assert r.status_code == 403
    assert r.json()["code"] == "permission_denied"
    assert_no_secret(r.content, key)

    # the same tenant's traces go through
    assert post(gw, "traces", simple_spans(tag, 1), bearer(key)).status_code == 200
    exact(sinks["globex-own"], "traces", tag, 1)
    for sink in sinks.values():
        assert items_of(sink, "metrics", tag) == []


# ---------------------------------------------------------------------------------------------
# Quota


def test_quota_burst_gets_429_with_retry_after(gw: Gateway, sinks: dict[str, Sink]) -> None:
    key = KEYS["initech"]
    tag = new_tag()
    time.sleep(1.1)  # a full bucket: 50 items
    statuses = []
    accepted = 0
    with httpx.Client(timeout=10) as client:
        for _ in range(12):
            r = client.post(
                f"{gw.http_endpoint}/v1/traces",
                content=simple_spans(tag, 10),
                headers={"content-type": "application/x-protobuf", **bearer(key)},
            )
            statuses.append(r.status_code)
            if r.status_code == 200:
                accepted += 10
            else:
                assert r.status_code == 429
                assert int(r.headers["retry-after"]) >= 1
                status = status_of(r)
                assert status.code == 8
                assert "quota" in status.message
                assert_no_secret(r.content, key)
    assert statuses[:5] == [200] * 5, statuses  # the bucket holds 50 items
    assert 429 in statuses, statuses
    exact(sinks["central"], "traces", tag, accepted)


def test_quota_on_grpc_has_retry_info(gw: Gateway, sinks: dict[str, Sink]) -> None:
    key = KEYS["initech"]
    tag = new_tag()
    time.sleep(1.1)
    accepted = 0
    error = None
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
        call = channel.unary_unary(TRACE_PATH)
        for _ in range(20):
            try:
                call(simple_spans(tag, 10), metadata=list(bearer(key).items()), timeout=10)
            except grpc.RpcError as e:
                error = e
                break
            accepted += 10
    assert error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = retry_info(error)
    assert info is not None
    assert info.retry_delay.ToTimedelta().total_seconds() > 0
    assert accepted >= 50
    exact(sinks["central"], "traces", tag, accepted)


def test_max_request_bytes_gets_413(gw: Gateway, sinks: dict[str, Sink]) -> None:
    key = KEYS["initech"]
    tag = new_tag()
    big = trace_request(tag, [(f"{tag}-{'x' * 100}-{i}", {}) for i in range(40)])
    body = big.SerializeToString()
    assert len(body) > INITECH_MAX_REQUEST_BYTES
    r = post(gw, "traces", body, bearer(key))
    assert r.status_code == 413
    assert "retry-after" not in r.headers
    status = status_of(r)
    assert status.code == 8
    assert str(INITECH_MAX_REQUEST_BYTES) in status.message

    error = grpc_call(gw, TRACE_PATH, body, list(bearer(key).items()))
    assert error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_info(error) is None  # not retryable

    # the limit is initech's: acme sends the same request
    assert post(gw, "traces", body, bearer(KEYS["acme"])).status_code == 200
    exact(sinks["acme-own"], "traces", tag, 40)
    for _, res, _ in exact(sinks["central"], "traces", tag, 40):
        _assert_enriched(res, "acme", ACME_ATTRIBUTES)


# ---------------------------------------------------------------------------------------------
# Drop rules


DROP_CASES: list[tuple[str, dict[str, str], bool]] = [  # (span name, attributes, dropped by acme)
    ("GET /healthz", {}, True),
    ("GET /api", {"user_agent.original": "kube-probe/1.30"}, True),
    ("GET /healthz", {"user_agent.original": "curl/8.5"}, True),
    ("GET /api", {"user_agent.original": "curl/8.5"}, False),
    ("GET /healthz/deep", {}, False),  # the span_name rule is an exact match
    ("GET /users", {"user_agent.original": "Mozilla/5.0 kube-probe/1.30"}, False),  # not a prefix
    ("GET /users", {"http.route": "/users"}, False),
]


def test_drop_rules_apply_to_their_tenant_only(gw: Gateway, sinks: dict[str, Sink]) -> None:
    tag_http, tag_grpc, tag_globex, tag_all = new_tag(), new_tag(), new_tag(), new_tag()
    cases = [(name, attributes) for name, attributes, _ in DROP_CASES]
    kept = {i for i, (_, _, dropped) in enumerate(DROP_CASES) if not dropped}

    body = trace_request(tag_http, cases).SerializeToString()
    assert post(gw, "traces", body, bearer(KEYS["acme"])).status_code == 200
    body = trace_request(tag_grpc, cases).SerializeToString()
    assert grpc_call(gw, TRACE_PATH, body, list(bearer(KEYS["acme"]).items())) is None
    body = trace_request(tag_globex, cases).SerializeToString()
    assert post(gw, "traces", body, bearer(KEYS["globex"])).status_code == 200
    # only health checks: accepted, nothing forwarded
    only_probes = [c for c, (_, _, dropped) in zip(cases, DROP_CASES, strict=True) if dropped]
    body = trace_request(tag_all, only_probes).SerializeToString()
    assert post(gw, "traces", body, bearer(KEYS["acme"])).status_code == 200

    def span_numbers(got: list[Any]) -> set[int]:
        numbers = [dict(kv_list(span.attributes))["n"] for _, _, span in got]
        assert len(numbers) == len(set(numbers))
        return set(numbers)

    for tag in (tag_http, tag_grpc):
        for sink in (sinks["central"], sinks["acme-own"]):
            got = exact(sink, "traces", tag, len(kept))
            assert span_numbers(got) == kept
            for _, _, span in got:
                i = dict(kv_list(span.attributes))["n"]
                assert span.name == DROP_CASES[i][0]
                assert dict(kv_list(span.attributes)) == {"n": i, **DROP_CASES[i][1]}
    for sink in (sinks["central"], sinks["globex-own"]):
        got = exact(sink, "traces", tag_globex, len(DROP_CASES))
        assert span_numbers(got) == set(range(len(DROP_CASES)))
    for sink in sinks.values():
        nothing(sink, tag_all)


# ---------------------------------------------------------------------------------------------
# No key material in the log or in answers


def test_no_key_material_in_log_or_answers(gw: Gateway, sinks: dict[str, Sink]) -> None:
    tag = new_tag()
    bad = keys.new_key()
    good = KEYS["acme"]
    answers: list[str | bytes] = []
    for headers in (bearer(good), {"x-api-key": good}, basic("acme", good)):
        r = post(gw, "traces", simple_spans(tag, 1), headers)
        assert r.status_code == 200
    for headers in (bearer(bad), {"x-api-key": bad}, basic("acme", bad), basic("globex", good)):
        for signal in ("traces", "logs"):
            r = post(gw, signal, b"", headers)
            assert r.status_code == 401
            answers.append(r.content)
        r = connect_post(gw, simple_spans(tag, 1), headers)
        assert r.status_code == 401
        answers.append(r.content)
        error = grpc_call(gw, TRACE_PATH, simple_spans(tag, 1), list(headers.items()))
        assert error is not None
        answers.append(error.details())
        answers.append(repr(error.trailing_metadata()))
    r = post(gw, "metrics", metrics_request(tag), bearer(KEYS["globex"]))
    assert r.status_code == 403
    answers.append(r.content)
    exact(sinks["acme-own"], "traces", tag, 3)

    every_key = [*KEYS.values(), WRONG_KEY, bad]
    for answer in answers:
        assert_no_secret(answer, *every_key)
    log = gw.log()
    assert "tenants: acme, globex, initech" in log  # it is the gateway's log
    assert_no_secret(log, *every_key)


# ---------------------------------------------------------------------------------------------
# Open mode: one tenant named `default`, enriched like any other


def test_open_mode_sets_tenant_id_default_on_every_transport(tmp_path: Path, sink: Sink) -> None:
    """Without a `tenants` section no key is asked, and every resource gets tenant.id=default,
    replacing one the client sent, as a configured tenant's resources get their name."""
    config = {
        "backends": {
            "central": {
                "protocol": "http/protobuf",
                "endpoint": sink.endpoint,
                "headers": {"X-Scope-OrgID": "{tenant}"},
            }
        },
        "service_backends": ["central"],
    }
    tag = new_tag()
    spoofed = trace_request(tag, [(f"{tag}-0", {}), (f"{tag}-1", {})])
    spoofed.resource_spans[0].resource.attributes.add(
        key="tenant.id", value=AnyValue(string_value="acme")
    )
    body = spoofed.SerializeToString()
    document = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "tenant.id", "value": {"stringValue": "acme"}},
                        {"key": "test.tag", "value": {"stringValue": tag}},
                    ]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": f"{tag}-json",
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000000000100",
                            }
                        ]
                    }
                ],
            }
        ]
    }
    with run_tenant_gateway(tmp_path, config) as gw:
        assert post(gw, "traces", body, {}).status_code == 200  # http/protobuf, no key
        assert grpc_call(gw, TRACE_PATH, body, []) is None  # gRPC
        r = httpx.post(
            f"{gw.http_endpoint}/v1/traces",
            json=document,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 200, r.text  # OTLP/JSON
        r = connect_post(gw, body, {})  # Connect
        assert r.status_code == 200, r.text
        r = post(gw, "metrics", metrics_request(tag), {})
        assert r.status_code == 200
        got = exact(sink, "traces", tag, 2 + 2 + 1 + 2)
        got += exact(sink, "metrics", tag, 1)
        assert "no tenants configured" in gw.log()
    for headers, res, _ in got:
        assert [v for k, v in res if k == "tenant.id"] == ["default"], res
        assert ("test.tag", tag) in res
        assert headers["x-scope-orgid"] == "default"
