"""The request the load generators send, again and again: one ExportTraceServiceRequest.

`Payload.write(directory, spans)` builds it with `spans` spans per request and writes the two
files the load generators read (the protobuf body for OTLP/HTTP, the same body with the 5-byte
gRPC frame header for OTLP/gRPC). Everything downstream counts spans with `Payload.spans`, never
with a constant: a request size is a parameter of a run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

SPANS_PER_REQUEST = 512
ATTRIBUTES_PER_SPAN = 10
HTTP_PATH = "/v1/traces"
GRPC_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def build_request(spans: int = SPANS_PER_REQUEST, seed: int = 7) -> bytes:
    """One ExportTraceServiceRequest: 1 resource, 1 scope, `spans` server spans with 10 attributes
    each (8 strings, 2 ints), trace ids shared by 16 spans. 512 spans: 244,943 bytes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (
        ("service.name", "checkout"),
        ("host.name", "node-17"),
        ("k8s.pod.name", "checkout-7f9c4"),
    ):
        rs.resource.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    ss = rs.scope_spans.add()
    ss.scope.name = "bench.run"
    t0 = 1_700_000_000_000_000_000
    trace_id = b""
    for i in range(spans):
        if i % 16 == 0:
            trace_id = rnd.randbytes(16)
        span = ss.spans.add(
            trace_id=trace_id,
            span_id=rnd.randbytes(8),
            parent_span_id=rnd.randbytes(8),
            name=f"GET /api/v1/items/{rnd.randrange(10_000)}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=t0 + i * 1_000_000,
            end_time_unix_nano=t0 + i * 1_000_000 + rnd.randrange(10_000_000),
            status=Status(code=Status.STATUS_CODE_OK),
        )
        strings = {
            "http.request.method": "GET",
            "url.full": f"https://shop.local/api/v1/items/{rnd.randrange(10**6)}"
            f"?q={rnd.randbytes(6).hex()}",
            "user_agent.original": "okhttp/4.12.0",
            "server.address": "shop.local",
            "client.address": f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}",
            "db.statement": f"SELECT * FROM items WHERE id = {rnd.randrange(10**6)}",
            "http.route": "/api/v1/items/{id}",
            "http.scheme": "https",
        }
        for k, v in strings.items():
            span.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
        span.attributes.append(
            KeyValue(key="http.response.status_code", value=AnyValue(int_value=200))
        )
        span.attributes.append(
            KeyValue(key="http.response.body.size", value=AnyValue(int_value=rnd.randrange(10**5)))
        )
    return req.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class Payload:
    """One request as sent: `spans` spans, `body` (protobuf), and the files the load generators
    read: `http_file` (the body) and `grpc_file` (the body in a gRPC frame)."""

    spans: int
    body: bytes
    http_file: Path
    grpc_file: Path

    @classmethod
    def write(cls, directory: Path, spans: int = SPANS_PER_REQUEST) -> Payload:
        body = build_request(spans)
        http_file = directory / f"request-{spans}.pb"
        grpc_file = directory / f"request-{spans}.grpc"
        http_file.write_bytes(body)
        grpc_file.write_bytes(grpc_frame(body))
        return cls(spans, body, http_file, grpc_file)

    def file(self, transport: str) -> Path:
        return self.grpc_file if transport == "grpc" else self.http_file
