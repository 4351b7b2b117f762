"""The OTLP signals: what each one is called on every transport and what its items are."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    http_path: str
    service: str  # fully qualified gRPC service name
    request_type: type[Message]
    response_type: type[Message]
    item_name: str
    # Field numbers from the request down to the counted items. A level with several numbers
    # (metrics: gauge, sum, histogram, ...) descends into whichever of them is present.
    item_path: tuple[frozenset[int], ...]

    @property
    def rpc_path(self) -> str:
        return f"/{self.service}/Export"


def _path(*levels: tuple[int, ...]) -> tuple[frozenset[int], ...]:
    return tuple(frozenset(level) for level in levels)


TRACES = Signal(
    name="traces",
    http_path="/v1/traces",
    service="opentelemetry.proto.collector.trace.v1.TraceService",
    request_type=trace_service_pb2.ExportTraceServiceRequest,
    response_type=trace_service_pb2.ExportTraceServiceResponse,
    item_name="spans",
    # request.resource_spans -> scope_spans -> spans
    item_path=_path((1,), (2,), (2,)),
)
METRICS = Signal(
    name="metrics",
    http_path="/v1/metrics",
    service="opentelemetry.proto.collector.metrics.v1.MetricsService",
    request_type=metrics_service_pb2.ExportMetricsServiceRequest,
    response_type=metrics_service_pb2.ExportMetricsServiceResponse,
    item_name="data points",
    # request.resource_metrics -> scope_metrics -> metrics -> {gauge,sum,histogram,
    # exponential_histogram,summary} -> data_points
    item_path=_path((1,), (2,), (2,), (5, 7, 9, 10, 11), (1,)),
)
LOGS = Signal(
    name="logs",
    http_path="/v1/logs",
    service="opentelemetry.proto.collector.logs.v1.LogsService",
    request_type=logs_service_pb2.ExportLogsServiceRequest,
    response_type=logs_service_pb2.ExportLogsServiceResponse,
    item_name="log records",
    item_path=_path((1,), (2,), (2,)),
)
PROFILES = Signal(
    name="profiles",
    http_path="/v1development/profiles",
    service="opentelemetry.proto.collector.profiles.v1development.ProfilesService",
    request_type=profiles_service_pb2.ExportProfilesServiceRequest,
    response_type=profiles_service_pb2.ExportProfilesServiceResponse,
    item_name="profiles",
    item_path=_path((1,), (2,), (2,)),
)

SIGNALS: tuple[Signal, ...] = (TRACES, METRICS, LOGS, PROFILES)
BY_NAME: dict[str, Signal] = {s.name: s for s in SIGNALS}
