"""A multi-tenant gateway and what its sinks received: keys, tags, exact counts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tests.support.peers import Gateway, Sink, run_gateway, wait_until

run_tenant_gateway = run_gateway  # wait_ready takes the 401 of a keyless probe as "serving"


def new_tag() -> str:
    return "t" + uuid.uuid4().hex[:12]


def any_value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def kv_list(kvs: Any) -> list[tuple[str, Any]]:
    """Attributes as a list: a key that occurs twice shows twice."""
    return [(kv.key, any_value(kv.value)) for kv in kvs]


def _entries(signal: str, msg: Any) -> Iterator[tuple[Any, list[Any]]]:
    """(resource, items) of every top-level entry of an export request."""
    if signal == "traces":
        for rs in msg.resource_spans:
            yield rs.resource, [s for ss in rs.scope_spans for s in ss.spans]
    elif signal == "logs":
        for rl in msg.resource_logs:
            yield rl.resource, [r for sl in rl.scope_logs for r in sl.log_records]
    else:
        for rm in msg.resource_metrics:
            points: list[Any] = []
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points.extend(getattr(m, kind).data_points if kind else [])
            yield rm.resource, points


def items_of(sink: Sink, signal: str, tag: str) -> list[tuple[dict[str, str], list[Any], Any]]:
    """(request headers, resource attributes as a list, item) of every item at the sink whose
    resource has test.tag == tag."""
    with sink._lock:
        received = [r for r in sink.received if r.signal == signal]
    out: list[tuple[dict[str, str], list[Any], Any]] = []
    for r in received:
        for resource, items in _entries(signal, r.message):
            res = kv_list(resource.attributes)
            if ("test.tag", tag) in res:
                out.extend((r.headers, res, item) for item in items)
    return out


def exact(sink: Sink, signal: str, tag: str, n: int, timeout: float = 15.0) -> list[Any]:
    """Wait for n items of `tag`, then a little longer so duplicates would show."""
    wait_until(lambda: len(items_of(sink, signal, tag)) >= n, timeout)
    time.sleep(0.3)
    got = items_of(sink, signal, tag)
    assert len(got) == n, (sink.endpoint, signal, len(got), n)
    return got


def nothing(sink: Sink, tag: str) -> None:
    for signal in ("traces", "metrics", "logs"):
        assert items_of(sink, signal, tag) == [], (sink.endpoint, signal)


def trace_request(tag: str, spans: list[tuple[str, dict[str, str]]]) -> ExportTraceServiceRequest:
    """One resource (test.tag) with spans (name, attributes); each span also gets attribute n."""
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
                                trace_id=uuid.uuid4().bytes,
                                span_id=uuid.uuid4().bytes[:8],
                                name=name,
                                start_time_unix_nano=1_700_000_000_000_000_000,
                                end_time_unix_nano=1_700_000_000_000_000_100,
                                attributes=[
                                    KeyValue(key="n", value=AnyValue(int_value=i)),
                                    *(
                                        KeyValue(key=k, value=AnyValue(string_value=v))
                                        for k, v in attributes.items()
                                    ),
                                ],
                            )
                            for i, (name, attributes) in enumerate(spans)
                        ]
                    )
                ],
            )
        ]
    )


def simple_spans(tag: str, n: int) -> bytes:
    return trace_request(tag, [(f"{tag}-{i}", {}) for i in range(n)]).SerializeToString()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def post(gw: Gateway, signal: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{gw.http_endpoint}/v1/{signal}",
        content=body,
        headers={"content-type": "application/x-protobuf", **headers},
        timeout=10,
    )
