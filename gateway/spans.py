"""Reading spans out of a trace export request, for the features that need to look inside:
the live tail (access-log rows) and RED metrics. Forwarding never decodes; these do, and only
for tenants that asked for them (RED) or while someone watches (tail)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUS = {Status.STATUS_CODE_UNSET: "unset", Status.STATUS_CODE_OK: "ok"}
ERROR = Status.STATUS_CODE_ERROR

# Semantic-convention names, current first, then the older ones SDKs still send.
_METHOD = ("http.request.method", "http.method")
_ROUTE = ("http.route", "url.path", "http.target")
_STATUS_CODE = ("http.response.status_code", "http.status_code")


@dataclass(frozen=True, slots=True)
class AccessRow:
    time_unix_nano: int
    service: str
    span_name: str
    kind: str
    status: str
    status_message: str
    duration_ms: float
    http_method: str
    http_route: str
    http_status: int
    trace_id: str
    span_id: str


def decode(payload: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(payload)


def by_service(request: ExportTraceServiceRequest) -> Iterator[tuple[str, list[Span]]]:
    """(service.name, spans) per resource; "unknown_service" when the resource has no name,
    as the SDKs default it."""
    for rs in request.resource_spans:
        service = "unknown_service"
        for kv in rs.resource.attributes:
            if kv.key == "service.name":
                service = kv.value.string_value or service
                break
        spans: list[Span] = []
        for ss in rs.scope_spans:
            spans.extend(ss.spans)
        yield service, spans


def _http(span: Span) -> tuple[str, str, int]:
    method = route = ""
    status = 0
    for kv in span.attributes:
        key = kv.key
        if key in _METHOD and not method:
            method = kv.value.string_value
        elif key in _ROUTE and not route:
            route = kv.value.string_value
        elif key in _STATUS_CODE and not status:
            v = kv.value
            status = v.int_value or (int(v.string_value) if v.string_value.isdigit() else 0)
    return method, route, status


def access_rows(payload: bytes) -> list[AccessRow]:
    rows = []
    for service, spans in by_service(decode(payload)):
        for span in spans:
            method, route, http_status = _http(span)
            code = span.status.code
            rows.append(
                AccessRow(
                    time_unix_nano=span.start_time_unix_nano,
                    service=service,
                    span_name=span.name,
                    kind=KINDS[span.kind] if 0 <= span.kind < len(KINDS) else "unspecified",
                    status="error" if code == ERROR else _STATUS.get(code, "unset"),
                    status_message=span.status.message,
                    duration_ms=max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
                    http_method=method,
                    http_route=route,
                    http_status=http_status,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                )
            )
    return rows
