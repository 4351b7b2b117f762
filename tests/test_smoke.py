"""Smoke: SDK gRPC exporter -> gateway -> rotel (gRPC) -> sink (OTLP/HTTP)."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

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
