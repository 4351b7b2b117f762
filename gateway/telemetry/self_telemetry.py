"""The gateway's own metrics over OTLP (`self_telemetry: {backend, interval}`): what /metrics shows,
sent every `interval` to one configured backend through the pipeline like any batch, so operators
see the gateway in the same place as their services, as the Collector's service::telemetry does.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable

from prometheus_client.registry import Collector

from gateway import __version__
from gateway.config.model import SelfTelemetryConfig
from gateway.errors import GatewayError
from gateway.telemetry import metrics, otlp_metrics

log = logging.getLogger("otlp_gateway.self_telemetry")

SERVICE_NAME = "otlp-gateway"
# The counters of the registry start with the process, which imports this as the app is made.
PROCESS_START_NS = time.time_ns()

# (tenant, payload, items, backends): the app hands the batch to the pipeline
Submit = Callable[[str, bytes, int, tuple[str, ...]], Awaitable[None]]


def resource(worker: int | None = None) -> otlp_metrics.Attributes:
    attributes = [
        ("service.name", SERVICE_NAME),
        ("service.version", __version__),
        ("service.instance.id", otlp_metrics.INSTANCE_ID),
        ("host.name", socket.gethostname()),
    ]
    if worker is not None:  # `workers: N`: each process exports its own registry
        attributes.append(("otlp_gateway.worker", str(worker)))
    return tuple(attributes)


class SelfTelemetry:
    """tick() (from a Periodic) exports when `interval` has passed; the settings are read on each
    tick, so a reload that adds, changes or removes `self_telemetry` takes effect at once."""

    def __init__(
        self,
        settings: Callable[[], SelfTelemetryConfig | None],
        submit: Submit,
        worker: int | None = None,
        registry: Collector = metrics.REGISTRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._submit = submit
        self._resource = resource(worker)
        self._registry = registry
        self._clock = clock
        self._due: float | None = None  # None: not configured

    def request(self) -> tuple[bytes, int]:
        """The registry now, as one ExportMetricsServiceRequest and its data points."""
        found = otlp_metrics.from_registry(self._registry, PROCESS_START_NS, time.time_ns())
        return otlp_metrics.request([(self._resource, found)])

    async def tick(self, final: bool) -> None:
        settings = self._settings()
        if settings is None:
            self._due = None
            return
        now = self._clock()
        # the first export one interval after start; a shorter interval (reload) counts at once
        due = now + settings.interval
        self._due = due if self._due is None else min(self._due, due)
        if not final and now < self._due:
            return
        self._due = due
        payload, items = self.request()
        try:
            await self._submit(settings.tenant, payload, items, (settings.backend,))
        except GatewayError as exc:  # a full queue, shutting down: the next export has it all
            log.warning(
                "self-telemetry: the gateway's metrics were not queued for backend %s: %s",
                settings.backend,
                exc.message,
            )
