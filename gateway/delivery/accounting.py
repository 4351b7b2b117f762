"""What one destination reports about its deliveries: the export metrics (attempts and their
durations, items and bytes exported, retries, worker errors), dropped items counted and logged
with the reason, and the last error that the admin listener shows. The metrics themselves are
defined in gateway/telemetry/metrics.py."""

from __future__ import annotations

import logging
import time

from gateway.delivery.batch import Batch
from gateway.delivery.exporters import ExportError
from gateway.otlp.signals import SIGNALS
from gateway.telemetry import metrics
from gateway.telemetry.recent import RecentErrors

# The pipeline's logger: these lines read in the log as they did when the pipeline wrote them.
log = logging.getLogger("otlp_gateway.pipeline")


class DeliveryTelemetry:
    """The counters, log lines and recent errors of one destination. `name` is the destination
    as the log names it (`backend` or `backend[tenant]`), `backend` the metrics' label."""

    def __init__(self, name: str, backend: str, recent: RecentErrors) -> None:
        self.name = name
        self._recent = recent
        self.backend = backend
        self.delivered_items = 0
        self.dropped_items = 0
        self.last_error: str | None = None
        self.last_error_time = 0.0  # Unix seconds
        self._seconds = {s.name: metrics.EXPORT_SECONDS.labels(backend, s.name) for s in SIGNALS}

    # -- export attempts ----------------------------------------------------------------------

    def exported(self, batch: Batch, seconds: float) -> None:
        """The backend took `batch` in an attempt of `seconds`."""
        signal = batch.signal.name
        self._seconds[signal].observe(seconds)
        metrics.EXPORT_ATTEMPTS.labels(self.backend, signal, "ok").inc()
        metrics.EXPORTED_ITEMS.labels(self.backend, batch.tenant, signal).inc(batch.items)
        metrics.EXPORTED_BYTES.labels(self.backend, batch.tenant, signal).inc(len(batch.payload))
        self.delivered_items += batch.items

    def failed(self, batch: Batch, exc: ExportError, seconds: float) -> None:
        """The backend refused `batch` in an attempt of `seconds`."""
        signal = batch.signal.name
        self._seconds[signal].observe(seconds)
        outcome = "too_large" if exc.too_large else "retryable" if exc.retryable else "permanent"
        metrics.EXPORT_ATTEMPTS.labels(self.backend, signal, outcome).inc()
        self._error(batch, str(exc))

    def crashed(self, batch: Batch, exc: Exception) -> None:
        """The exporter raised something else than an ExportError (a bug): `batch` is dropped.
        Called while `exc` is being handled, so that the log has its traceback."""
        log.exception("backend %s: unexpected export failure", self.name)
        metrics.EXPORT_ATTEMPTS.labels(self.backend, batch.signal.name, "unexpected").inc()
        self._error(batch, repr(exc))
        self.drop(batch, "unexpected", f"unexpected error: {exc!r}")

    def retrying(self, batch: Batch, attempt: int, wait: float, exc: ExportError) -> None:
        log.info(
            "backend %s: attempt %d for %d %s failed, retrying in %.1fs: %s",
            self.name,
            attempt,
            batch.items,
            batch.signal.item_name,
            wait,
            exc,
        )

    def retried(self, batch: Batch) -> None:
        """`batch` is sent again after a retryable failure."""
        metrics.RETRIES.labels(self.backend, batch.signal.name).inc()

    def worker_error(self, exc: Exception) -> None:
        """An export worker caught `exc` (a bug) and goes on. Called while it is being handled."""
        metrics.WORKER_ERRORS.labels(self.backend).inc()
        log.exception(
            "backend %s: unexpected error in an export worker, going on: %r", self.name, exc
        )
        message = f"unexpected error in an export worker: {exc!r}"
        self.last_error = message
        self.last_error_time = time.time()
        self._recent.note("export", message, backend=self.backend)

    def _error(self, batch: Batch, message: str) -> None:
        self.last_error = message
        self.last_error_time = time.time()
        self._recent.note(
            "export",
            message,
            tenant=batch.tenant,
            backend=self.backend,
            signal=batch.signal.name,
        )

    # -- drops --------------------------------------------------------------------------------

    def drop(self, batch: Batch, label: str, reason: str) -> None:
        """`batch` is dropped: counted under `label`, logged with `reason`."""
        self.count_drop(batch, label)
        self.report_drop(batch, batch.items, reason)

    def count_drop(self, batch: Batch, label: str) -> None:
        """Count `batch` as dropped without a log line (the caller writes one for many)."""
        self.dropped_items += batch.items
        metrics.DROPPED_ITEMS.labels(batch.tenant, batch.signal.name, self.backend, label).inc(
            batch.items
        )

    def report_drop(self, batch: Batch, items: int, reason: str) -> None:
        """One log line and recent-errors entry for `items` dropped of `batch`."""
        self._recent.note(
            "dropped",
            f"{items} {batch.signal.item_name}: {reason}",
            tenant=batch.tenant,
            backend=self.backend,
            signal=batch.signal.name,
        )
        log.error(
            "backend %s: dropped %d %s of tenant %s: %s",
            self.name,
            items,
            batch.signal.item_name,
            batch.tenant,
            reason,
        )

    def lost_at_stop(self, items: int, which: str) -> None:
        """`items` of a memory queue were lost when its workers stopped; `which` says which."""
        metrics.DROPPED_ITEMS.labels("", "", self.backend, "shutdown").inc(items)
        log.error("backend %s: %d items %s were lost", self.name, items, which)
