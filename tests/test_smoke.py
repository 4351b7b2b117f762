"""Smoke: SDK gRPC exporter -> gateway -> rotel (gRPC) -> sink (OTLP/HTTP)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.support.grpcwire import trace_request
from tests.support.peers import Sink, run_gateway, run_rotel


def test_sdk_grpc_through_gateway_and_rotel(tmp_path: Path, sink: Sink) -> None:
    with run_rotel(tmp_path, sink.endpoint) as rotel:
        config = {
            "backends": {"rotel": {"protocol": "grpc", "endpoint": rotel.grpc_endpoint}},
            "service_backends": ["rotel"],
        }
        with run_gateway(tmp_path, config) as gw:
            provider = TracerProvider()
            provider.add_span_processor(
                SimpleSpanProcessor(OTLPSpanExporter(endpoint=gw.grpc_endpoint, insecure=True))
            )
            tracer = provider.get_tracer("smoke")
            for i in range(5):
                with tracer.start_as_current_span(f"span-{i}"):
                    pass
            provider.shutdown()
            assert sink.wait_items("traces", 5, timeout=20) == 5
    names = sorted(
        s.name
        for m in sink.messages("traces")
        for rs in m.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    )
    assert names == [f"span-{i}" for i in range(5)]


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_both_event_loops_serve_http_and_grpc(tmp_path: Path, sink: Sink, event_loop: str) -> None:
    """`event_loop: uvloop` (the default) and `asyncio`: the gateway says which it runs on and
    serves OTLP/HTTP and gRPC on it."""
    config = {
        "event_loop": event_loop,
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["sink"],
    }
    with run_gateway(tmp_path, config) as gw:
        r = httpx.post(
            f"{gw.http_endpoint}/v1/traces",
            content=trace_request(3),
            headers={"content-type": "application/x-protobuf"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        provider = TracerProvider()
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=gw.grpc_endpoint, insecure=True))
        )
        with provider.get_tracer("loop").start_as_current_span("over-grpc"):
            pass
        provider.shutdown()
        assert sink.wait_items("traces", 4, timeout=20) == 4
        assert f"event loop: {event_loop}" in gw.log()
