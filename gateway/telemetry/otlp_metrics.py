"""Metric samples as OTLP: the one conversion behind the gateway's two OTLP metric exports, RED
metrics to a tenant's metrics backends (gateway/analysis/red_export.py) and the gateway's own
metrics to an operator's backend (self_telemetry.py).

Everything is cumulative, as a Prometheus scrape is: counters become monotonic sums, histograms
keep explicit bounds, each point carries the start of the series it belongs to.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from gateway import __version__

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
# This process as a writer of cumulative series: two gateways (or `workers: N` processes) that
# export the same series must not overwrite each other's totals (OTel's single-writer rule).
INSTANCE_ID = str(uuid.uuid4())
SCOPE = "otlp_gateway"

Attributes = tuple[tuple[str, str], ...]
SumPoint = tuple[Attributes, int, int | float]  # attributes, start of the series (ns), value


def key_values(attributes: Iterable[tuple[str, str]]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes]


@dataclass(frozen=True, slots=True)
class HistogramPoint:
    attributes: Attributes
    start_ns: int
    count: int
    sum: float
    bucket_counts: Sequence[int]  # one more than the bounds: the last counts values above them


def monotonic_sum(
    name: str, unit: str, description: str, points: Iterable[SumPoint], now: int
) -> Metric:
    """A cumulative monotonic sum (a counter)."""
    return Metric(
        name=name,
        unit=unit,
        description=description,
        sum=Sum(
            aggregation_temporality=CUMULATIVE,
            is_monotonic=True,
            data_points=[_number(a, start, now, value) for a, start, value in points],
        ),
    )


def gauge(
    name: str,
    unit: str,
    description: str,
    points: Iterable[tuple[Attributes, int | float]],
    now: int,
) -> Metric:
    return Metric(
        name=name,
        unit=unit,
        description=description,
        gauge=Gauge(data_points=[_number(a, 0, now, value) for a, value in points]),
    )


def histogram(
    name: str,
    unit: str,
    description: str,
    bounds: Sequence[float],
    points: Iterable[HistogramPoint],
    now: int,
) -> Metric:
    return Metric(
        name=name,
        unit=unit,
        description=description,
        histogram=Histogram(
            aggregation_temporality=CUMULATIVE,
            data_points=[
                HistogramDataPoint(
                    attributes=key_values(p.attributes),
                    start_time_unix_nano=p.start_ns,
                    time_unix_nano=now,
                    count=p.count,
                    sum=p.sum,
                    bucket_counts=p.bucket_counts,
                    explicit_bounds=bounds,
                )
                for p in points
            ],
        ),
    )


def _number(attributes: Attributes, start: int, now: int, value: int | float) -> NumberDataPoint:
    point = NumberDataPoint(
        attributes=key_values(attributes), start_time_unix_nano=start, time_unix_nano=now
    )
    # ints (RED calls) as integers; a registry's values are floats, and a series keeps one type
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value
    return point


def points_of(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def request(resources: Iterable[tuple[Attributes, Sequence[Metric]]]) -> tuple[bytes, int]:
    """One ExportMetricsServiceRequest, one ResourceMetrics per (resource attributes, metrics),
    under the gateway's instrumentation scope; returns it serialized and its data points (the
    items a Batch counts)."""
    scope = InstrumentationScope(name=SCOPE, version=__version__)
    message = ExportMetricsServiceRequest()
    items = 0
    for attributes, metrics in resources:
        message.resource_metrics.append(
            ResourceMetrics(
                resource=Resource(attributes=key_values(attributes)),
                scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics)],
            )
        )
        items += sum(points_of(m) for m in metrics)
    return message.SerializeToString(), items


# -- a Prometheus registry --------------------------------------------------------------------


def _unit(name: str) -> str:
    """The UCUM unit a Prometheus name's suffix gives; with it a Prometheus-compatible backend
    that takes OTLP names the metric as /metrics does (the suffix is not doubled)."""
    if name.endswith("_seconds"):
        return "s"
    if name.endswith("_bytes"):
        return "By"
    return ""


def _labels(labels: Mapping[str, str], drop: str = "") -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def from_registry(registry: Collector, start_ns: int, now: int) -> list[Metric]:
    """What a scrape of `registry` shows, as OTLP metrics named as the Prometheus families (a
    counter without `_total`, which backends add back): counters as monotonic sums since
    `start_ns`, histograms with their buckets, gauges (and info, unknown) as gauges. Other types
    (summaries) are left out: the gateway defines none."""
    out: list[Metric] = []
    for family in registry.collect():
        unit, doc = _unit(family.name), family.documentation
        if family.type == "counter":
            points = [
                (_labels(s.labels), start_ns, s.value)
                for s in family.samples
                if s.name.endswith("_total")
            ]
            out.append(monotonic_sum(family.name, unit, doc, points, now))
        elif family.type == "histogram":
            out.append(_histogram(family.name, unit, doc, family.samples, start_ns, now))
        elif family.type in ("gauge", "info", "unknown"):
            by_name: dict[str, list[tuple[Attributes, float]]] = {}
            for s in family.samples:
                by_name.setdefault(s.name, []).append((_labels(s.labels), s.value))
            out.extend(gauge(name, unit, doc, points, now) for name, points in by_name.items())
    return [m for m in out if points_of(m)]


@dataclass(slots=True)
class _Buckets:
    """One series of a Prometheus histogram: its cumulative `le` buckets, count and sum."""

    le: list[tuple[float, float]] = field(default_factory=list)
    count: float = 0.0
    sum: float = 0.0

    def point(self, attributes: Attributes, start_ns: int) -> tuple[list[float], HistogramPoint]:
        """The bounds and the OTLP point: Prometheus counts cumulatively, OTLP per bucket."""
        cumulative = sorted(self.le)
        bounds = [le for le, _ in cumulative if math.isfinite(le)]
        counts, below = [], 0.0
        for _, c in cumulative:
            counts.append(round(c - below))
            below = c
        if len(counts) == len(bounds):  # no +Inf bucket: what is above the last bound
            counts.append(round(self.count - below))
        return bounds, HistogramPoint(attributes, start_ns, round(self.count), self.sum, counts)


def _histogram(
    name: str, unit: str, doc: str, samples: Iterable[Sample], start_ns: int, now: int
) -> Metric:
    series: dict[Attributes, _Buckets] = {}
    for s in samples:
        entry = series.setdefault(_labels(s.labels, drop="le"), _Buckets())
        if s.name.endswith("_bucket"):
            entry.le.append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            entry.count = s.value
        elif s.name.endswith("_sum"):
            entry.sum = s.value
    bounds: list[float] = []
    points = []
    for attributes, entry in series.items():
        bounds, point = entry.point(attributes, start_ns)  # every series has the same bounds
        points.append(point)
    return histogram(name, unit, doc, bounds, points, now)
