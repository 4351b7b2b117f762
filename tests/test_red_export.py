"""RED metrics as OTLP (`red_metrics: {export: true}`), end to end: spans sent to a real gateway
come out of the tenant's metrics routes as `traces.span.metrics.calls` and
`traces.span.metrics.duration`, cumulative, tagged with tenant.id, with exact counts; a tenant
without export sends none; stopping the gateway sends what was counted since the last export."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from gateway.analysis.red import RedMetrics
from gateway.analysis.red_export import RedExport
from gateway.config import RedConfig, TenantConfig
from gateway.tenancy import keys
from tests.support.peers import Gateway, Sink, run_gateway, wait_until
from tests.support.tenants import kv_list

pytestmark = pytest.mark.timeout(90)

ACME, GLOBEX = keys.new_key(), keys.new_key()
CALLS = "traces.span.metrics.calls"
DURATION = "traces.span.metrics.duration"
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
ERROR = Status.STATUS_CODE_ERROR
Sent = tuple[str, "Span.SpanKind.ValueType", bool, int]  # span name, kind, error, milliseconds

# what one test sends: 6 spans in 3 series
SENT: list[Sent] = [
    ("GET /a", SERVER, False, 20),
    ("GET /a", SERVER, False, 40),
    ("GET /a", SERVER, False, 3000),
    ("GET /a", SERVER, True, 7),
    ("GET /a", SERVER, True, 8),
    ("SELECT", CLIENT, False, 2),
]
EXPECTED_CALLS = {
    ("GET /a", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"): 3,
    ("GET /a", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR"): 2,
    ("SELECT", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET"): 1,
}


def trace_body(service: str, sent: list[Sent]) -> bytes:
    start = time.time_ns()
    spans = []
    for name, kind, error, ms in sent:
        span = Span(
            trace_id=uuid.uuid4().bytes,
            span_id=uuid.uuid4().bytes[:8],
            name=name,
            kind=kind,
            start_time_unix_nano=start,
            end_time_unix_nano=start + ms * 1_000_000,
        )
        if error:
            span.status.code = ERROR
        spans.append(span)
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
    )
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    ).SerializeToString()


def send(gw: Gateway, key: str, body: bytes) -> None:
    r = httpx.post(
        gw.http_endpoint + "/v1/traces",
        content=body,
        headers={"content-type": "application/x-protobuf", "authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def red_resources(sink: Sink, service: str) -> list[tuple[list[tuple[str, Any]], Any]]:
    """(resource attributes, ResourceMetrics) of every RED export of `service` at the sink, in
    the order they arrived."""
    out = []
    for message in sink.messages("metrics"):
        for rm in message.resource_metrics:
            res = kv_list(rm.resource.attributes)
            if ("service.name", service) in res:
                out.append((res, rm))
    return out


def latest_calls(sink: Sink, service: str) -> dict[tuple[str, str, str], int]:
    """The calls of the last export of `service`: (span name, kind, status code) -> value."""
    found = red_resources(sink, service)
    if not found:
        return {}
    calls: dict[tuple[str, str, str], int] = {}
    for metric in found[-1][1].scope_metrics[0].metrics:
        if metric.name == CALLS:
            for p in metric.sum.data_points:
                a = dict(kv_list(p.attributes))
                calls[(a["span.name"], a["span.kind"], a["status.code"])] = p.as_int
    return calls


@pytest.fixture(scope="module")
def sinks() -> Iterator[dict[str, Sink]]:
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(Sink().running()) for name in ("traces", "metrics")}


def config(sinks: dict[str, Sink], interval: str) -> dict[str, Any]:
    routes = {"traces": ["traces"], "metrics": ["metrics"]}
    return {
        "backends": {
            name: {"protocol": "http/protobuf", "endpoint": sink.endpoint, "compression": "none"}
            for name, sink in sinks.items()
        },
        "tenants": {
            "acme": {
                "api_keys": [keys.config_entry(ACME)],
                "signal_backends": routes,
                "attributes": {"team": "payments"},
                "red_metrics": {"export": True, "export_interval": interval},
            },
            # RED metrics on /metrics only: nothing of them at the sinks
            "globex": {
                "api_keys": [keys.config_entry(GLOBEX)],
                "signal_backends": routes,
                "red_metrics": True,
            },
        },
        "shutdown_timeout": "5s",
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sinks: dict[str, Sink]) -> Iterator[Gateway]:
    with run_gateway(tmp_path_factory.mktemp("red-export"), config(sinks, "1s")) as g:
        yield g


def test_red_metrics_reach_the_tenants_metrics_backend_with_exact_counts(
    gw: Gateway, sinks: dict[str, Sink]
) -> None:
    service = "svc-" + uuid.uuid4().hex[:8]
    body = trace_body(service, SENT)
    send(gw, ACME, body)  # a request of 6 spans, twice
    send(gw, ACME, body)
    doubled = {k: 2 * v for k, v in EXPECTED_CALLS.items()}
    assert wait_until(lambda: latest_calls(sinks["metrics"], service) == doubled, 20), latest_calls(
        sinks["metrics"], service
    )
    # the spans themselves went to the traces route only, the RED metrics to the metrics route
    assert sinks["traces"].wait_items("traces", 12) >= 12
    assert not any(
        ("service.name", service) in kv_list(rm.resource.attributes)
        for m in sinks["traces"].messages("metrics")
        for rm in m.resource_metrics
    )

    res, rm = red_resources(sinks["metrics"], service)[-1]
    assert [v for k, v in res if k == "tenant.id"] == ["acme"]
    assert ("team", "payments") in res  # the tenant's attributes, as on all its data
    [scope] = rm.scope_metrics
    assert scope.scope.name == "otlp_gateway"
    by_name = {m.name: m for m in scope.metrics}
    assert set(by_name) == {CALLS, DURATION}
    calls, duration = by_name[CALLS], by_name[DURATION]
    assert calls.sum.is_monotonic and calls.sum.aggregation_temporality == CUMULATIVE
    assert duration.histogram.aggregation_temporality == CUMULATIVE and duration.unit == "s"
    points = {}
    for p in duration.histogram.data_points:
        a = dict(kv_list(p.attributes))
        assert a["service.name"] == service and a["otlp_gateway.instance.id"]
        assert 0 < p.start_time_unix_nano <= p.time_unix_nano
        assert sum(p.bucket_counts) == p.count
        assert len(p.bucket_counts) == len(p.explicit_bounds) + 1
        points[(a["span.name"], a["span.kind"], a["status.code"])] = p
    assert {k: p.count for k, p in points.items()} == doubled
    ok = points[("GET /a", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET")]
    assert ok.sum == pytest.approx(2 * 3.06)
    bounds = list(ok.explicit_bounds)
    assert bounds[:4] == [0.001, 0.005, 0.01, 0.025] and bounds[-1] == 10
    # 20 ms and 40 ms in (0.01, 0.025] and (0.025, 0.05]; 3 s in (2.5, 5]
    assert ok.bucket_counts[bounds.index(0.025)] == 2
    assert ok.bucket_counts[bounds.index(0.05)] == 2
    assert ok.bucket_counts[bounds.index(5)] == 2

    # cumulative: the exports go on, each with the totals so far, from the same start
    exports = len(red_resources(sinks["metrics"], service))
    wait_until(lambda: len(red_resources(sinks["metrics"], service)) > exports, 10)
    assert latest_calls(sinks["metrics"], service) == doubled
    send(gw, ACME, trace_body(service, SENT[:1]))
    more = dict(doubled)
    more[("GET /a", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET")] += 1
    assert wait_until(lambda: latest_calls(sinks["metrics"], service) == more, 20)


def test_a_tenant_without_export_sends_no_red_metrics(gw: Gateway, sinks: dict[str, Sink]) -> None:
    service = "quiet-" + uuid.uuid4().hex[:8]
    send(gw, GLOBEX, trace_body(service, SENT))
    assert sinks["traces"].wait_items("traces", 1) >= 1
    time.sleep(2.5)  # more than two export intervals of acme's
    assert red_resources(sinks["metrics"], service) == []
    assert not any(
        ("tenant.id", "globex") in kv_list(rm.resource.attributes)
        for m in sinks["metrics"].messages("metrics")
        for rm in m.resource_metrics
    )


def test_stopping_the_gateway_sends_what_was_counted_since_the_last_export(
    tmp_path: Path, sinks: dict[str, Sink]
) -> None:
    service = "last-" + uuid.uuid4().hex[:8]
    with run_gateway(tmp_path, config(sinks, "1h")) as g:
        send(g, ACME, trace_body(service, SENT))
        time.sleep(1.0)  # an interval of an hour: nothing yet
        assert red_resources(sinks["metrics"], service) == []
        assert g.stop() == 0
    assert latest_calls(sinks["metrics"], service) == EXPECTED_CALLS


# ---------------------------------------------------------------------------------------------
# In process: reloads, tenants without export, values the enums do not name


@dataclass
class FakeTenant:
    name: str
    config: TenantConfig
    red: RedMetrics | None
    routes: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"metrics": ("m",)})


def test_reloads_and_tenants_without_export_in_process() -> None:
    now = [0.0]
    sent: list[tuple[str, dict[tuple[str, str, str], int], tuple[str, ...]]] = []

    async def submit(tenant: str, payload: bytes, items: int, to: tuple[str, ...]) -> None:
        calls = {}
        for rm in ExportMetricsServiceRequest.FromString(payload).resource_metrics:
            for m in rm.scope_metrics[0].metrics:
                for p in m.sum.data_points if m.name == CALLS else ():
                    a = dict(kv_list(p.attributes))
                    calls[(a["span.name"], a["span.kind"], a["status.code"])] = p.as_int
        assert items == 2 * len(calls)
        sent.append((tenant, calls, to))

    exporting = RedConfig(export=True, export_interval=10.0)
    acme = FakeTenant("acme", TenantConfig(name="acme", red_metrics=exporting), None)
    acme.red = RedMetrics("acme", (), 10)
    quiet = FakeTenant("quiet", TenantConfig(name="quiet", red_metrics=RedConfig()), None)
    quiet.red = RedMetrics("quiet", (), 10)
    tenants = [acme, quiet]
    export = RedExport(lambda: tenants, submit, clock=lambda: now[0])

    body = trace_body("s", SENT)
    odd = ExportTraceServiceRequest.FromString(body)
    for span in odd.resource_spans[0].scope_spans[0].spans:
        # not in the enums: counted as unspecified, unset
        span.kind, span.status.code = Span.SpanKind.ValueType(9), Status.StatusCode.ValueType(7)
    acme.red.observe(body)
    acme.red.observe(odd.SerializeToString())
    quiet.red.observe(body)
    asyncio.run(export.tick(False))
    assert sent == [] and quiet.red.totals() == []  # not exporting: its totals are dropped
    now[0] = 10.0
    asyncio.run(export.tick(False))
    expected = {**EXPECTED_CALLS, ("GET /a", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET"): 5}
    expected[("SELECT", "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET")] = 1
    assert sent == [("acme", expected, ("m",))]

    # a reload gives acme new RED metrics: the old ones' totals go out once more, then the new
    old = acme.red
    old.observe(body)
    acme.red = RedMetrics("acme", (), 10)
    acme.red.observe(trace_body("s", SENT[:1]))
    now[0] = 11.0
    asyncio.run(export.tick(False))
    twice = {k: v + EXPECTED_CALLS.get(k, 0) for k, v in expected.items()}
    assert sent[1:] == [("acme", twice, ("m",))]
    asyncio.run(export.tick(True))  # at shutdown
    assert sent[2:] == [("acme", {("GET /a", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"): 1}, ("m",))]
