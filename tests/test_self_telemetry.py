"""The gateway's own metrics over OTLP (`self_telemetry: {backend, interval}`), end to end: what
/metrics shows arrives at the named backend as OTLP metrics, with the resource of the gateway,
counters as cumulative monotonic sums (accepted items equal to what was sent), histograms and
gauges as such; `{tenant}` in that backend's headers is `otlp-gateway`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from gateway.tenancy import keys
from tests.support.peers import Gateway, Sink, run_gateway, wait_until
from tests.support.tenants import bearer, kv_list, new_tag, post, simple_spans

pytestmark = pytest.mark.timeout(60)

ACME = keys.new_key()
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


@pytest.fixture(scope="module")
def sinks() -> Iterator[dict[str, Sink]]:
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(Sink().running()) for name in ("central", "ops")}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sinks: dict[str, Sink]) -> Iterator[Gateway]:
    backends: dict[str, Any] = {
        name: {"protocol": "http/protobuf", "endpoint": sink.endpoint, "compression": "none"}
        for name, sink in sinks.items()
    }
    backends["ops"]["headers"] = {"X-Scope-OrgID": "{tenant}"}
    config = {
        "backends": backends,
        "service_backends": ["central"],
        "tenants": {"acme": {"api_keys": [keys.config_entry(ACME)]}},
        "self_telemetry": {"backend": "ops", "interval": "1s"},
    }
    with run_gateway(tmp_path_factory.mktemp("self-telemetry"), config) as g:
        yield g


def latest(sink: Sink) -> tuple[dict[str, str], list[tuple[str, Any]], dict[str, Any]]:
    """(headers, resource attributes, metrics by name) of the last export the sink received."""
    with sink._lock:
        last = [r for r in sink.received if r.signal == "metrics"][-1]
    [rm] = last.message.resource_metrics
    [scope] = rm.scope_metrics
    return last.headers, kv_list(rm.resource.attributes), {m.name: m for m in scope.metrics}


def point(metric: Any, **attributes: str) -> Any:
    """The data point of `metric` with exactly these attributes."""
    data = getattr(metric, metric.WhichOneof("data"))
    found = [p for p in data.data_points if dict(kv_list(p.attributes)) == attributes]
    assert len(found) == 1, (metric.name, attributes, data.data_points)
    return found[0]


def test_the_gateways_own_metrics_arrive_over_otlp(gw: Gateway, sinks: dict[str, Sink]) -> None:
    tag = new_tag()
    for n in (3, 4):  # two requests, 7 spans
        assert post(gw, "traces", simple_spans(tag, n), bearer(ACME)).status_code == 200
    assert sinks["central"].wait_items("traces", 7) == 7
    acme_traces = {"tenant": "acme", "signal": "traces", "transport": "http/protobuf"}

    def arrived() -> bool:
        if not sinks["ops"].messages("metrics"):
            return False
        metrics = latest(sinks["ops"])[2]
        exported = metrics.get("otlp_gateway_exported_items")
        return (
            exported is not None
            and any(p.as_double == 7 for p in exported.sum.data_points)
            and point(metrics["otlp_gateway_accepted_items"], **acme_traces).as_double == 7
        )

    assert wait_until(arrived, 20)
    headers, resource, metrics = latest(sinks["ops"])
    # the gateway as a service of its own; `{tenant}` in the backend's headers is otlp-gateway
    assert ("service.name", "otlp-gateway") in resource
    assert [k for k, _ in resource].count("service.instance.id") == 1
    assert any(k == "host.name" and v for k, v in resource)
    assert headers["x-scope-orgid"] == "otlp-gateway"
    assert all(r.signal == "metrics" for r in sinks["ops"].received)  # no tenant data here

    # counters: cumulative monotonic sums, named as the Prometheus family, exact
    accepted = metrics["otlp_gateway_accepted_items"]
    assert accepted.sum.is_monotonic and accepted.sum.aggregation_temporality == CUMULATIVE
    assert point(metrics["otlp_gateway_requests"], **acme_traces, outcome="accepted").as_double == 2
    delivered = point(
        metrics["otlp_gateway_exported_items"], backend="central", tenant="acme", signal="traces"
    )
    assert (
        delivered.as_double == 7 and 0 < delivered.start_time_unix_nano < delivered.time_unix_nano
    )
    assert metrics["otlp_gateway_accepted_bytes"].unit == "By"
    # histograms with their buckets
    seconds = metrics["otlp_gateway_export_duration_seconds"]
    assert seconds.unit == "s" and seconds.histogram.aggregation_temporality == CUMULATIVE
    export = point(seconds, backend="central", signal="traces")
    assert export.count >= 1 and sum(export.bucket_counts) == export.count
    assert len(export.bucket_counts) == len(export.explicit_bounds) + 1
    # gauges
    assert metrics["otlp_gateway_inflight_bytes"].WhichOneof("data") == "gauge"
    assert point(metrics["process_resident_memory_bytes"]).as_double > 0
