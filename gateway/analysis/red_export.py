"""RED metrics as OTLP, delivered to a tenant's own metrics backends (`red_metrics.export`), as the
Collector's spanmetrics connector makes them: `traces.span.metrics.calls` (a cumulative monotonic
sum) and `traces.span.metrics.duration` (a cumulative histogram in seconds, with the buckets of
/metrics), by service.name, span.name, span.kind and status.code.

Every `export_interval` each exporting tenant's series go out as one ExportMetricsServiceRequest
(one resource per service, with tenant.id and the tenant's attributes, like everything of the
tenant), which the app submits to the pipeline as a batch of the tenant's metrics. Nothing here
runs on a request's path: the counting is red.py's, after the acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.analysis.red import BUCKETS, STATUS_CODES, RedMetrics, SeriesKey, Totals
from gateway.config.model import TenantConfig
from gateway.errors import GatewayError
from gateway.otlp import spans
from gateway.telemetry import otlp_metrics
from gateway.telemetry.otlp_metrics import HistogramPoint, SumPoint

log = logging.getLogger("otlp_gateway.red_export")

CALLS = "traces.span.metrics.calls"
DURATION = "traces.span.metrics.duration"
# Which gateway process counted a series (a data point attribute, so that backends keep the
# series of several replicas or `workers: N` apart): sum over it in queries.
INSTANCE_KEY = "otlp_gateway.instance.id"


def _by_number(items: Iterable[tuple[str, int]], count: int) -> tuple[str, ...]:
    names = {number: name for name, number in items}
    return tuple(names[i] for i in range(count))


# The enums' names, as the spanmetrics connector writes them: SPAN_KIND_SERVER, STATUS_CODE_ERROR
KIND_NAMES = _by_number(Span.SpanKind.items(), len(spans.KINDS))
STATUS_NAMES = _by_number(Status.StatusCode.items(), STATUS_CODES)

# (tenant, payload, items, backends): the app hands the batch to the pipeline
Submit = Callable[[str, bytes, int, tuple[str, ...]], Awaitable[None]]


class ExportingTenant(Protocol):
    """What the export reads of a tenant (gateway/tenancy/tenants.py's Tenant)."""

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> TenantConfig: ...
    @property
    def red(self) -> RedMetrics | None: ...
    @property
    def routes(self) -> Mapping[str, tuple[str, ...]]: ...


def build_request(
    tenant: str,
    attributes: Mapping[str, str],
    series: Iterable[tuple[SeriesKey, Totals]],
    now: int,
) -> tuple[bytes, int]:
    """One tenant's series as an ExportMetricsServiceRequest and its data points."""
    by_service: dict[str, tuple[list[SumPoint], list[HistogramPoint]]] = {}
    for (service, name, kind, code), t in series:
        point = (
            ("service.name", service),
            ("span.name", name),
            ("span.kind", KIND_NAMES[kind]),
            ("status.code", STATUS_NAMES[code]),
            (INSTANCE_KEY, otlp_metrics.INSTANCE_ID),
        )
        calls, durations = by_service.setdefault(service, ([], []))
        calls.append((point, t.start_ns, t.calls))
        durations.append(HistogramPoint(point, t.start_ns, t.calls, t.seconds, t.buckets))
    tenant_attributes = (("tenant.id", tenant), *attributes.items())
    resources: list[tuple[otlp_metrics.Attributes, list[Metric]]] = [
        (
            (("service.name", service), *tenant_attributes),
            [
                otlp_metrics.monotonic_sum(
                    CALLS, "", "Spans by service, span name, kind and status code.", calls, now
                ),
                otlp_metrics.histogram(
                    DURATION,
                    "s",
                    "Span durations by service, span name, kind and status code.",
                    BUCKETS,
                    durations,
                    now,
                ),
            ],
        )
        for service, (calls, durations) in by_service.items()
    ]
    return otlp_metrics.request(resources)


@dataclass(slots=True)
class _Exporting:
    red: RedMetrics
    due: float  # clock time of the next export


class RedExport:
    """tick() (from a Periodic) sends each exporting tenant's series when its interval has
    passed. The tenants are read on each tick, so a reload takes effect at once: a tenant whose
    RED settings changed has new RedMetrics, and what the old ones counted since their last
    export is sent once more first."""

    def __init__(
        self,
        tenants: Callable[[], Iterable[ExportingTenant]],
        submit: Submit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tenants = tenants
        self._submit = submit
        self._clock = clock
        self._exporting: dict[str, _Exporting] = {}

    async def tick(self, final: bool) -> None:
        now = self._clock()
        current = {}
        for tenant in self._tenants():
            settings, red = tenant.config.red_metrics, tenant.red
            if red is None or settings is None:
                continue
            if settings.export:
                current[tenant.name] = (tenant, red, settings.export_interval)
            else:
                red.keep_totals(False)
        for name in [n for n in self._exporting if n not in current]:
            del self._exporting[name]  # removed, or its export turned off
        for name, (tenant, red, interval) in current.items():
            state = self._exporting.get(name)
            if state is None or state.red is not red:
                if state is not None:
                    await self._send(tenant, state.red)
                red.keep_totals(True)
                state = self._exporting[name] = _Exporting(red, now + interval)
            state.due = min(state.due, now + interval)  # a shorter interval counts at once
            if final or now >= state.due:
                state.due = now + interval
                await self._send(tenant, red)

    async def _send(self, tenant: ExportingTenant, red: RedMetrics) -> None:
        series = red.totals()
        if not series:
            return
        payload, items = await asyncio.to_thread(
            build_request, tenant.name, tenant.config.attributes, series, time.time_ns()
        )
        try:
            await self._submit(tenant.name, payload, items, tenant.routes["metrics"])
        except GatewayError as exc:  # a full queue, shutting down: the next export has it all
            log.warning(
                "RED metrics of tenant %s were not queued for export: %s", tenant.name, exc.message
            )
        except Exception:  # a bug: one tenant's export must not stop the others'
            log.exception("RED metrics of tenant %s: the export failed", tenant.name)
