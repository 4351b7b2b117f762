"""Every ingress transport and every backend protocol, end to end against real peers.

Senders: the OpenTelemetry Python SDK exporters (gRPC, gRPC+gzip, http/protobuf), httpx posting
OTLP/JSON and protobuf, connect-python (Connect proto/JSON, gRPC-web, gRPC) and grpcio.
Downstream: a counting OTLP/HTTP sink, directly or through rotel; http/json and file backends.

Gateways, sinks and rotel are module-scoped and shared; every test tags its items with a unique
token and counts only those, so the counts asserted are exact.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from connectrpc.protocol import ProtocolType
from opentelemetry import trace as trace_api
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from gateway._gen.opentelemetry.proto.collector.logs.v1.logs_service_connect import (
    LogsServiceClient,
)
from gateway._gen.opentelemetry.proto.collector.trace.v1.trace_service_connect import (
    TraceServiceClient,
)
from tests.support.peers import Gateway, Sink, run_gateway, run_rotel, wait_until

pytestmark = pytest.mark.timeout(60)

TRACE_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# ---------------------------------------------------------------------------------------------
# Helpers


def new_tag() -> str:
    return "t" + uuid.uuid4().hex[:12]


def attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def spans_of(sink: Sink, tag: str) -> list[tuple[dict[str, Any], Any, Span]]:
    """(resource attributes, scope, span) of every span at the sink whose name starts with tag."""
    return [
        (attrs(rs.resource.attributes), ss.scope, s)
        for m in sink.messages("traces")
        for rs in m.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        if s.name.startswith(tag)
    ]


def points_of(sink: Sink, tag: str) -> list[tuple[dict[str, Any], str, Any]]:
    """(resource attributes, metric name, data point) of every point of metrics named tag*."""
    out = []
    for m in sink.messages("metrics"):
        for rm in m.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if not metric.name.startswith(tag):
                        continue
                    kind = metric.WhichOneof("data")
                    for p in getattr(metric, kind).data_points:
                        out.append((attrs(rm.resource.attributes), metric.name, p))
    return out


def logs_of(sink: Sink, tag: str) -> list[tuple[dict[str, Any], Any]]:
    """(resource attributes, log record) of every record whose string body starts with tag."""
    return [
        (attrs(rl.resource.attributes), r)
        for m in sink.messages("logs")
        for rl in m.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
        if r.body.string_value.startswith(tag)
    ]


def wait_exact(collect: Callable[[], list[Any]], n: int, timeout: float = 15.0) -> list[Any]:
    """Wait for n items, then a little longer so duplicates would show, and return them all."""
    wait_until(lambda: len(collect()) >= n, timeout)
    time.sleep(0.3)
    return collect()


def pb_trace_request(tag: str, ids: list[tuple[bytes, bytes, bytes]]) -> ExportTraceServiceRequest:
    """One span per (trace_id, span_id, parent_span_id), named f"{tag}-{i}"."""
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=PbResource(
                    attributes=[KeyValue(key="test.tag", value=AnyValue(string_value=tag))]
                ),
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=t,
                                span_id=s,
                                parent_span_id=p,
                                name=f"{tag}-{i}",
                                kind=Span.SPAN_KIND_CLIENT,
                                start_time_unix_nano=1_700_000_000_000_000_000 + i,
                                end_time_unix_nano=1_700_000_000_000_000_100 + i,
                                attributes=[KeyValue(key="i", value=AnyValue(int_value=i))],
                            )
                            for i, (t, s, p) in enumerate(ids)
                        ]
                    )
                ],
            )
        ]
    )


def random_ids(n: int) -> list[tuple[bytes, bytes, bytes]]:
    return [(uuid.uuid4().bytes, uuid.uuid4().bytes[:8], uuid.uuid4().bytes[:8]) for _ in range(n)]


def assert_spans_exact(sink: Sink, tag: str, ids: list[tuple[bytes, bytes, bytes]]) -> None:
    got = wait_exact(lambda: spans_of(sink, tag), len(ids))
    assert len(got) == len(ids)
    by_name = {s.name: s for _, _, s in got}
    assert len(by_name) == len(ids)  # no duplicates
    for i, (t, s, p) in enumerate(ids):
        span = by_name[f"{tag}-{i}"]
        assert (span.trace_id, span.span_id, span.parent_span_id) == (t, s, p)
        assert span.kind == Span.SPAN_KIND_CLIENT
        assert span.start_time_unix_nano == 1_700_000_000_000_000_000 + i
        assert attrs(span.attributes) == {"i": i}
    # open mode is one tenant, `default`: its tenant.id is on every resource
    assert all(res == {"test.tag": tag, "tenant.id": "default"} for res, _, _ in got)


def otlp_json_traces(tag: str, ids: list[tuple[str, str, str]]) -> dict[str, Any]:
    """An OTLP/JSON traces document: hex ids, integer enums, int64 as strings, unknown fields."""
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "test.tag", "value": {"stringValue": tag}}],
                    "someFutureResourceField": {"x": 1},
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "json-scope", "version": "1.2.3"},
                        "spans": [
                            {
                                "traceId": t,
                                "spanId": s,
                                "parentSpanId": p,
                                "name": f"{tag}-{i}",
                                "kind": 3,  # SPAN_KIND_CLIENT
                                "startTimeUnixNano": str(1_700_000_000_000_000_000 + i),
                                "endTimeUnixNano": str(1_700_000_000_000_000_100 + i),
                                "attributes": [
                                    {"key": "i", "value": {"intValue": str(i)}},
                                    {
                                        "key": "big",
                                        "value": {"intValue": "9007199254740993"},
                                    },
                                ],
                                "status": {"code": 2, "message": "boom"},
                                "unknownSpanField": [1, 2, 3],
                            }
                            for i, (t, s, p) in enumerate(ids)
                        ],
                    }
                ],
            }
        ],
        "unknownTopLevel": "ignored",
    }


def hex_ids(n: int) -> list[tuple[str, str, str]]:
    return [(uuid.uuid4().hex, uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]) for _ in range(n)]


def assert_json_spans_exact(sink: Sink, tag: str, ids: list[tuple[str, str, str]]) -> None:
    got = wait_exact(lambda: spans_of(sink, tag), len(ids))
    assert len(got) == len(ids)
    by_name = {s.name: (res, scope, s) for res, scope, s in got}
    assert len(by_name) == len(ids)
    for i, (t, s, p) in enumerate(ids):
        res, scope, span = by_name[f"{tag}-{i}"]
        assert span.trace_id == bytes.fromhex(t)
        assert span.span_id == bytes.fromhex(s)
        assert span.parent_span_id == bytes.fromhex(p)
        assert span.kind == Span.SPAN_KIND_CLIENT
        assert span.start_time_unix_nano == 1_700_000_000_000_000_000 + i
        assert span.end_time_unix_nano == 1_700_000_000_000_000_100 + i
        assert attrs(span.attributes) == {"i": i, "big": 9007199254740993}
        assert (span.status.code, span.status.message) == (2, "boom")
        assert (scope.name, scope.version) == ("json-scope", "1.2.3")
        assert res == {"test.tag": tag, "tenant.id": "default"}


# ---------------------------------------------------------------------------------------------
# Shared peers


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transports")


@pytest.fixture(scope="module")
def main_sink() -> Iterator[Sink]:
    with Sink().running() as s:
        yield s


@pytest.fixture(scope="module")
def gw(tmp_module: Path, main_sink: Sink) -> Iterator[Gateway]:
    """A gateway forwarding http/protobuf to main_sink, with a tenant header template."""
    config = {
        "backends": {
            "sink": {
                "protocol": "http/protobuf",
                "endpoint": main_sink.endpoint,
                "headers": {"X-Scope-OrgID": "{tenant}"},
            }
        },
        "service_backends": ["sink"],
    }
    with run_gateway(tmp_module, config) as g:
        yield g


@pytest.fixture(scope="module")
def rotel_sink() -> Iterator[Sink]:
    with Sink().running() as s:
        yield s


@pytest.fixture(scope="module")
def rotel_gateways(tmp_module: Path, rotel_sink: Sink) -> Iterator[dict[str, Gateway]]:
    """Two gateways in front of one rotel (which exports to rotel_sink): grpc and http/protobuf."""
    with run_rotel(tmp_module, rotel_sink.endpoint) as rotel:
        grpc_cfg = {
            "backends": {"rotel": {"protocol": "grpc", "endpoint": rotel.grpc_endpoint}},
            "service_backends": ["rotel"],
        }
        http_cfg = {
            "backends": {"rotel": {"protocol": "http/protobuf", "endpoint": rotel.http_endpoint}},
            "service_backends": ["rotel"],
        }
        with run_gateway(tmp_module, grpc_cfg) as g1, run_gateway(tmp_module, http_cfg) as g2:
            yield {"grpc": g1, "http/protobuf": g2}


# ---------------------------------------------------------------------------------------------
# 1 + 2: the OpenTelemetry SDK exporters


def _sdk_exporters(transport: str, gateway: Gateway) -> tuple[Any, Any, Any]:
    if transport.startswith("grpc"):
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        kw: dict[str, Any] = {"endpoint": gateway.grpc_endpoint, "insecure": True, "timeout": 10}
        if transport == "grpc-gzip":
            kw["compression"] = grpc.Compression.Gzip
        return OTLPSpanExporter(**kw), OTLPMetricExporter(**kw), OTLPLogExporter(**kw)

    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HLog
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HMet
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HSpan

    base = gateway.http_endpoint
    comp = Compression.Gzip if transport == "http-gzip" else Compression.NoCompression
    return (
        HSpan(endpoint=f"{base}/v1/traces", timeout=10, compression=comp),
        HMet(endpoint=f"{base}/v1/metrics", timeout=10, compression=comp),
        HLog(endpoint=f"{base}/v1/logs", timeout=10, compression=comp),
    )


N_PARENTS = 3  # each with one child: 6 spans
N_COUNTER_POINTS = 4
N_HISTOGRAM_POINTS = 2
N_LOGS = 5


def _send_with_sdk(transport: str, gateway: Gateway, tag: str) -> dict[str, Any]:
    """Send 6 spans, 6 metric data points and 5 log records; return what the SDK made."""
    span_exp, metric_exp, log_exp = _sdk_exporters(transport, gateway)
    resource = Resource.create({"service.name": f"svc-{tag}", "test.tag": tag})

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exp, schedule_delay_millis=60_000))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(log_exp, schedule_delay_millis=60_000)
    )
    reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])

    tracer = tracer_provider.get_tracer("transport-test")
    otel_logger = logger_provider.get_logger("transport-test")
    spans: dict[str, tuple[int, int, int]] = {}  # name -> (trace_id, span_id, parent span_id)
    log_ctx: dict[str, tuple[int, int]] = {}
    for i in range(N_PARENTS):
        with tracer.start_as_current_span(f"{tag}-parent-{i}", attributes={"i": i}) as parent:
            pc = parent.get_span_context()
            spans[f"{tag}-parent-{i}"] = (pc.trace_id, pc.span_id, 0)
            with tracer.start_as_current_span(
                f"{tag}-child-{i}", kind=trace_api.SpanKind.CLIENT, attributes={"i": i}
            ) as child:
                cc = child.get_span_context()
                spans[f"{tag}-child-{i}"] = (cc.trace_id, cc.span_id, pc.span_id)
    for i in range(N_LOGS):
        with tracer.start_as_current_span(f"{tag}-logspan-{i}") as s:
            sc = s.get_span_context()
            spans[f"{tag}-logspan-{i}"] = (sc.trace_id, sc.span_id, 0)
            body = f"{tag} log {i}"
            log_ctx[body] = (sc.trace_id, sc.span_id)
            otel_logger.emit(body=body, attributes={"n": i, "tag": tag})

    meter = meter_provider.get_meter("transport-test")
    counter = meter.create_counter(f"{tag}.requests")
    for i in range(N_COUNTER_POINTS):
        counter.add(i + 1, {"route": f"/r{i}"})
    histogram = meter.create_histogram(f"{tag}.latency")
    for i in range(N_HISTOGRAM_POINTS):
        histogram.record(10.0 * (i + 1), {"route": f"/h{i}"})

    # shutdown flushes each pipeline exactly once
    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown(timeout_millis=10_000)
    return {"spans": spans, "logs": log_ctx}


def _assert_sdk_data_arrived(sink: Sink, tag: str, sent: dict[str, Any]) -> None:
    expected_res = {"service.name": f"svc-{tag}", "test.tag": tag}

    got_spans = wait_exact(lambda: spans_of(sink, tag), len(sent["spans"]), timeout=20)
    assert len(got_spans) == len(sent["spans"]) == 2 * N_PARENTS + N_LOGS
    by_name = {s.name: (res, scope, s) for res, scope, s in got_spans}
    assert set(by_name) == set(sent["spans"])
    for name, (trace_id, span_id, parent_id) in sent["spans"].items():
        res, scope, span = by_name[name]
        assert span.trace_id == trace_id.to_bytes(16, "big")
        assert span.span_id == span_id.to_bytes(8, "big")
        assert span.parent_span_id == (parent_id.to_bytes(8, "big") if parent_id else b"")
        assert scope.name == "transport-test"
        assert expected_res.items() <= res.items()
        assert res["telemetry.sdk.language"] == "python"
        if "-child-" in name:
            assert span.kind == Span.SPAN_KIND_CLIENT
        if "-logspan-" not in name:
            assert attrs(span.attributes) == {"i": int(name.rsplit("-", 1)[1])}

    n_points = N_COUNTER_POINTS + N_HISTOGRAM_POINTS
    got_points = wait_exact(lambda: points_of(sink, tag), n_points, timeout=20)
    assert len(got_points) == n_points
    counter = sorted(
        (attrs(p.attributes)["route"], p.as_int)
        for _, name, p in got_points
        if name == f"{tag}.requests"
    )
    assert counter == [(f"/r{i}", i + 1) for i in range(N_COUNTER_POINTS)]
    hist = sorted(
        (attrs(p.attributes)["route"], p.count, p.sum)
        for _, name, p in got_points
        if name == f"{tag}.latency"
    )
    assert hist == [(f"/h{i}", 1, 10.0 * (i + 1)) for i in range(N_HISTOGRAM_POINTS)]
    assert all(expected_res.items() <= res.items() for res, _, _ in got_points)

    got_logs = wait_exact(lambda: logs_of(sink, tag), N_LOGS, timeout=20)
    assert len(got_logs) == N_LOGS
    by_body = {r.body.string_value: (res, r) for res, r in got_logs}
    assert set(by_body) == set(sent["logs"])
    for body, (trace_id, span_id) in sent["logs"].items():
        res, record = by_body[body]
        assert record.trace_id == trace_id.to_bytes(16, "big")
        assert record.span_id == span_id.to_bytes(8, "big")
        assert attrs(record.attributes) == {"n": int(body.rsplit(" ", 1)[1]), "tag": tag}
        assert expected_res.items() <= res.items()


@pytest.mark.parametrize("transport", ["grpc", "grpc-gzip", "http", "http-gzip"])
def test_sdk_exporters_to_sink(transport: str, gw: Gateway, main_sink: Sink) -> None:
    tag = new_tag()
    sent = _send_with_sdk(transport, gw, tag)
    _assert_sdk_data_arrived(main_sink, tag, sent)


@pytest.mark.parametrize("backend", ["grpc", "http/protobuf"])
def test_sdk_exporters_through_rotel(
    backend: str, rotel_gateways: dict[str, Gateway], rotel_sink: Sink
) -> None:
    tag = new_tag()
    sent = _send_with_sdk("grpc-gzip", rotel_gateways[backend], tag)
    _assert_sdk_data_arrived(rotel_sink, tag, sent)


# ---------------------------------------------------------------------------------------------
# 3: OTLP/JSON and protobuf over plain HTTP


def test_otlp_json_ids_enums_int64_unknown_fields(gw: Gateway, main_sink: Sink) -> None:
    tag = new_tag()
    ids = hex_ids(3)
    with httpx.Client(timeout=10) as client:
        r = client.post(
            f"{gw.http_endpoint}/v1/traces",
            content=json.dumps(otlp_json_traces(tag, ids)),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {}
    assert_json_spans_exact(main_sink, tag, ids)


def test_otlp_json_gzip(gw: Gateway, main_sink: Sink) -> None:
    tag = new_tag()
    ids = hex_ids(2)
    with httpx.Client(timeout=10) as client:
        r = client.post(
            f"{gw.http_endpoint}/v1/traces",
            content=gzip.compress(json.dumps(otlp_json_traces(tag, ids)).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {}
    assert_json_spans_exact(main_sink, tag, ids)


def test_otlp_json_logs_hex_ids(gw: Gateway, main_sink: Sink) -> None:
    tag = new_tag()
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    doc = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "test.tag", "value": {"stringValue": tag}}]},
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000000000001",
                                "severityNumber": 17,
                                "body": {"stringValue": f"{tag} json log"},
                                "traceId": trace_id,
                                "spanId": span_id,
                                "flags": 1,
                                "somethingNew": True,
                            }
                        ]
                    }
                ],
            }
        ]
    }
    r = httpx.post(
        f"{gw.http_endpoint}/v1/logs",
        content=json.dumps(doc),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert (r.status_code, r.json()) == (200, {})
    got = wait_exact(lambda: logs_of(main_sink, tag), 1)
    assert len(got) == 1
    res, record = got[0]
    assert record.trace_id == bytes.fromhex(trace_id)
    assert record.span_id == bytes.fromhex(span_id)
    assert record.severity_number == 17
    assert record.time_unix_nano == 1_700_000_000_000_000_001
    assert res == {"test.tag": tag, "tenant.id": "default"}


def test_protobuf_request_gets_protobuf_response(gw: Gateway, main_sink: Sink) -> None:
    tag = new_tag()
    ids = random_ids(4)
    r = httpx.post(
        f"{gw.http_endpoint}/v1/traces",
        content=pb_trace_request(tag, ids).SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-protobuf"
    assert ExportTraceServiceResponse.FromString(r.content) == ExportTraceServiceResponse()
    assert_spans_exact(main_sink, tag, ids)


def test_backend_headers_carry_tenant(gw: Gateway, main_sink: Sink) -> None:
    tag = new_tag()
    ids = random_ids(1)
    r = httpx.post(
        f"{gw.http_endpoint}/v1/traces",
        content=pb_trace_request(tag, ids).SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
        timeout=10,
    )
    assert r.status_code == 200
    assert_spans_exact(main_sink, tag, ids)
    with main_sink._lock:
        mine = [
            rec
            for rec in main_sink.received
            if rec.signal == "traces"
            and any(
                s.name.startswith(tag)
                for rs in rec.message.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            )
        ]
    assert len(mine) == 1
    assert mine[0].headers["x-scope-orgid"] == "default"
    assert mine[0].headers["content-type"] == "application/x-protobuf"


# ---------------------------------------------------------------------------------------------
# 4: connect-python: Connect (proto, JSON), gRPC-web, gRPC


def _connect_http_client(protocol: ProtocolType) -> Any:
    import pyqwest

    version = pyqwest.HTTPVersion.HTTP2 if protocol == ProtocolType.GRPC else None
    return pyqwest.Client(
        pyqwest.HTTPTransport(http_version=version, enable_otel=False, timeout=10)
    )


CONNECT_CASES = [
    pytest.param(ProtocolType.CONNECT, False, True, id="connect-proto-gzip"),
    pytest.param(ProtocolType.CONNECT, False, False, id="connect-proto"),
    pytest.param(ProtocolType.CONNECT, True, True, id="connect-json-gzip"),
    pytest.param(ProtocolType.CONNECT, True, False, id="connect-json"),
    pytest.param(ProtocolType.GRPC_WEB, False, True, id="grpc-web-proto"),
    pytest.param(ProtocolType.GRPC_WEB, True, False, id="grpc-web-json"),
    pytest.param(ProtocolType.GRPC, False, True, id="grpc-proto-gzip"),
    pytest.param(ProtocolType.GRPC, True, False, id="grpc-json"),
]


@pytest.mark.parametrize(("protocol", "proto_json", "compress"), CONNECT_CASES)
def test_connect_python_client(
    protocol: ProtocolType, proto_json: bool, compress: bool, gw: Gateway, main_sink: Sink
) -> None:
    from connectrpc.compression.gzip import GzipCompression

    tag = new_tag()
    ids = random_ids(3)
    log_tag = new_tag()
    log_trace, log_span = uuid.uuid4().bytes, uuid.uuid4().bytes[:8]
    logs = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                scope_logs=[
                    ScopeLogs(
                        log_records=[
                            LogRecord(
                                body=AnyValue(string_value=f"{log_tag} connect log"),
                                trace_id=log_trace,
                                span_id=log_span,
                            )
                        ]
                    )
                ]
            )
        ]
    )

    async def send() -> tuple[Any, Any]:
        kw: dict[str, Any] = {
            "proto_json": proto_json,
            "protocol": protocol,
            "send_compression": GzipCompression() if compress else None,
            "timeout_ms": 10_000,
            "http_client": _connect_http_client(protocol),
        }
        async with TraceServiceClient(gw.http_endpoint, **kw) as traces:
            r1 = await traces.export(pb_trace_request(tag, ids))
        async with LogsServiceClient(gw.grpc_endpoint, **kw) as logs_client:
            r2 = await logs_client.export(logs)
        return r1, r2

    r1, r2 = asyncio.run(asyncio.wait_for(send(), 30))
    assert r1 == ExportTraceServiceResponse()
    assert not r2.HasField("partial_success")
    assert_spans_exact(main_sink, tag, ids)
    got = wait_exact(lambda: logs_of(main_sink, log_tag), 1)
    assert len(got) == 1
    assert (got[0][1].trace_id, got[0][1].span_id) == (log_trace, log_span)


# ---------------------------------------------------------------------------------------------
# 5: both listeners serve every transport


def test_every_transport_on_both_listeners(gw: Gateway, main_sink: Sink) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GSpan
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HSpan

    tag = new_tag()
    # OTLP/HTTP (protobuf, then JSON) to the "4317" listener
    http_ids = random_ids(2)
    r = httpx.post(
        f"{gw.grpc_endpoint}/v1/traces",
        content=pb_trace_request(f"{tag}-a", http_ids).SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
        timeout=10,
    )
    assert r.status_code == 200
    json_ids = hex_ids(2)
    r = httpx.post(
        f"{gw.grpc_endpoint}/v1/traces",
        content=json.dumps(otlp_json_traces(f"{tag}-b", json_ids)),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert (r.status_code, r.json()) == (200, {})

    # gRPC (grpcio, raw) to the "4318" listener
    grpc_ids = random_ids(3)
    with grpc.insecure_channel(f"127.0.0.1:{gw.http_port}") as channel:
        call = channel.unary_unary(TRACE_PATH)
        reply = call(pb_trace_request(f"{tag}-c", grpc_ids).SerializeToString(), timeout=10)
    assert reply == b""

    # and both SDK exporters the other way round
    sdk_spans: dict[str, tuple[int, int]] = {}
    for name, exporter in (
        (f"{tag}-d", GSpan(endpoint=gw.http_endpoint, insecure=True, timeout=10)),
        (f"{tag}-e", HSpan(endpoint=f"{gw.grpc_endpoint}/v1/traces", timeout=10)),
    ):
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        with provider.get_tracer("x").start_as_current_span(name) as span:
            ctx = span.get_span_context()
            sdk_spans[name] = (ctx.trace_id, ctx.span_id)
        provider.shutdown()

    assert_spans_exact(main_sink, f"{tag}-a", http_ids)
    assert_json_spans_exact(main_sink, f"{tag}-b", json_ids)
    assert_spans_exact(main_sink, f"{tag}-c", grpc_ids)
    got = wait_exact(lambda: [s for s in spans_of(main_sink, tag) if s[2].name in sdk_spans], 2)
    assert len(got) == 2
    for _, _, span in got:
        trace_id, span_id = sdk_spans[span.name]
        assert span.trace_id == trace_id.to_bytes(16, "big")
        assert span.span_id == span_id.to_bytes(8, "big")
    assert len(spans_of(main_sink, tag)) == 2 + 2 + 3 + 2


# ---------------------------------------------------------------------------------------------
# 6: empty requests


def test_empty_requests_succeed_and_forward_nothing(gw: Gateway, main_sink: Sink) -> None:
    time.sleep(0.3)  # let anything from earlier tests land first
    with main_sink._lock:
        before = len(main_sink.received)

    with httpx.Client(timeout=10) as client:
        url = f"{gw.http_endpoint}/v1/traces"
        r = client.post(url, content=b"", headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-protobuf"
        assert r.content == b""
        for body in (b"{}", b'{"resourceSpans": []}'):
            r = client.post(url, content=body, headers={"content-type": "application/json"})
            assert (r.status_code, r.headers["content-type"], r.json()) == (
                200,
                "application/json",
                {},
            )
        r = client.post(
            f"{gw.grpc_endpoint}/v1/logs",
            content=b"",
            headers={"content-type": "application/x-protobuf"},
        )
        assert r.status_code == 200

    for port in (gw.grpc_port, gw.http_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(TRACE_PATH)(b"", timeout=10) == b""

    async def connect_empty() -> Any:
        async with TraceServiceClient(gw.http_endpoint, timeout_ms=10_000) as client:
            return await client.export(ExportTraceServiceRequest())

    assert asyncio.run(connect_empty()) == ExportTraceServiceResponse()

    # a marker request behind them: once it is at the sink, the empties would have been too
    tag = new_tag()
    ids = random_ids(1)
    r = httpx.post(
        f"{gw.http_endpoint}/v1/traces",
        content=pb_trace_request(tag, ids).SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
        timeout=10,
    )
    assert r.status_code == 200
    assert_spans_exact(main_sink, tag, ids)
    with main_sink._lock:
        after = main_sink.received[before:]
    assert len(after) == 1, [(r.signal, r.items) for r in after]


# ---------------------------------------------------------------------------------------------
# 7: backends: http/json, fan-out, file


@pytest.fixture(scope="module")
def fanout(tmp_module: Path) -> Iterator[tuple[Gateway, Sink, Sink]]:
    """One gateway, two service backends: http/json -> sink A, http/protobuf -> sink B."""
    with Sink().running() as json_sink, Sink().running() as proto_sink:
        config = {
            "backends": {
                "as-json": {"protocol": "http/json", "endpoint": json_sink.endpoint},
                "as-proto": {
                    "protocol": "http/protobuf",
                    "endpoint": proto_sink.endpoint,
                    "compression": "none",
                },
            },
            "service_backends": ["as-json", "as-proto"],
        }
        with run_gateway(tmp_module, config) as g:
            yield g, json_sink, proto_sink


def test_fanout_http_json_and_protobuf_backends(fanout: tuple[Gateway, Sink, Sink]) -> None:
    gateway, json_sink, proto_sink = fanout
    tag = new_tag()
    pb_ids = random_ids(4)
    json_ids = hex_ids(3)
    with httpx.Client(timeout=10) as client:
        r = client.post(
            f"{gateway.http_endpoint}/v1/traces",
            content=pb_trace_request(f"{tag}-p", pb_ids).SerializeToString(),
            headers={"content-type": "application/x-protobuf"},
        )
        assert r.status_code == 200
        r = client.post(
            f"{gateway.http_endpoint}/v1/traces",
            content=json.dumps(otlp_json_traces(f"{tag}-j", json_ids)),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        grpc_ids = random_ids(2)
        channel.unary_unary(TRACE_PATH)(
            pb_trace_request(f"{tag}-g", grpc_ids).SerializeToString(), timeout=10
        )

    for sink in (json_sink, proto_sink):
        assert_spans_exact(sink, f"{tag}-p", pb_ids)
        assert_json_spans_exact(sink, f"{tag}-j", json_ids)
        assert_spans_exact(sink, f"{tag}-g", grpc_ids)
        assert len(spans_of(sink, tag)) == 4 + 3 + 2
    with json_sink._lock:
        assert json_sink.received
        assert all(
            r.headers["content-type"] == "application/json"
            and r.headers.get("content-encoding") == "gzip"
            for r in json_sink.received
        )
    with proto_sink._lock:
        assert all(
            r.headers["content-type"] == "application/x-protobuf"
            and "content-encoding" not in r.headers
            for r in proto_sink.received
        )


@pytest.fixture(scope="module")
def file_gateway(tmp_module: Path) -> Iterator[tuple[Gateway, Path]]:
    out = tmp_module / "files"
    config = {
        "backends": {
            "archive": {
                "protocol": "file",
                "path": str(out),
                "rotate_bytes": 2000,
                "max_files": 2,
                "batch_linger": 0,  # a line per request: the rotation test counts on it
                "concurrency": 1,  # lines in send order, so the kept ones are the newest
            }
        },
        "service_backends": ["archive"],
    }
    with run_gateway(tmp_module, config) as g:
        yield g, out


def _file_lines(path: Path) -> list[dict[str, Any]]:
    try:  # the gateway may rotate or delete the file while we look
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def _file_span_names(doc: dict[str, Any]) -> list[str]:
    return [
        s["name"] for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
    ]


def test_file_backend_writes_otlp_json_lines(file_gateway: tuple[Gateway, Path]) -> None:
    gateway, out = file_gateway
    tag = new_tag()
    ids = random_ids(2)
    r = httpx.post(
        f"{gateway.http_endpoint}/v1/traces",
        content=pb_trace_request(tag, ids).SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
        timeout=10,
    )
    assert r.status_code == 200
    current = out / "traces.jsonl"

    def mine() -> list[dict[str, Any]]:
        return [
            d for d in _file_lines(current) if any(n.startswith(tag) for n in _file_span_names(d))
        ]

    docs = wait_exact(mine, 1)
    assert len(docs) == 1
    spans = docs[0]["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert [s["name"] for s in spans] == [f"{tag}-0", f"{tag}-1"]
    for span, (t, s, p) in zip(spans, ids, strict=True):
        assert (span["traceId"], span["spanId"], span["parentSpanId"]) == (
            t.hex(),
            s.hex(),
            p.hex(),
        )
        assert span["kind"] == Span.SPAN_KIND_CLIENT  # enums as integers
        assert isinstance(span["startTimeUnixNano"], str)  # int64 as strings
    # and it reads back as OTLP/JSON
    from gateway.otlp import jsonpb as otlpjson
    from gateway.otlp.signals import TRACES

    back = ExportTraceServiceRequest.FromString(
        otlpjson.json_to_proto(TRACES, json.dumps(docs[0]).encode())
    )
    sent = pb_trace_request(tag, ids)
    tenant_id = sent.resource_spans[0].resource.attributes.add(key="tenant.id")
    tenant_id.value.string_value = "default"
    assert back == sent


def test_file_backend_rotates_and_keeps_max_files(file_gateway: tuple[Gateway, Path]) -> None:
    gateway, out = file_gateway
    tag = new_tag()
    n = 24  # about 400 bytes a line: several rotations at 2000 bytes
    with httpx.Client(timeout=10) as client:
        for i in range(n):
            r = client.post(
                f"{gateway.http_endpoint}/v1/traces",
                content=pb_trace_request(f"{tag}-{i:02d}", random_ids(1)).SerializeToString(),
                headers={"content-type": "application/x-protobuf"},
            )
            assert r.status_code == 200

    def kept_names() -> list[str]:
        names: list[str] = []
        for path in [*out.glob("traces-*.jsonl"), out / "traces.jsonl"]:
            for doc in _file_lines(path):
                names.extend(_file_span_names(doc))
        return sorted(name for name in names if name.startswith(tag))

    last = f"{tag}-{n - 1:02d}-0"
    assert wait_until(lambda: last in kept_names(), 15), sorted(out.iterdir())
    rotated = sorted(out.glob("traces-*.jsonl"))
    assert len(rotated) == 2, rotated
    for path in rotated:
        assert path.stat().st_size >= 2000
        for doc in _file_lines(path):  # whole lines, each one OTLP/JSON
            assert doc["resourceSpans"]
    current = out / "traces.jsonl"
    assert not current.exists() or current.stat().st_size < 2000
    # what is kept is the newest part of the sequence, each line once, without gaps
    names = kept_names()
    assert 0 < len(names) < n
    first = int(names[0].split("-")[1])
    assert names == [f"{tag}-{i:02d}-0" for i in range(first, n)]
