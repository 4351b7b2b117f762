"""RED metrics (rate, errors, duration) from a tenant's spans, by service and span name.

Opt-in per tenant: it decodes every trace request of the tenant. Series are capped per tenant:
once a tenant has `max_series` (service, span name) pairs, new pairs count as
span_name="_other_", so a span name carrying ids cannot grow the metrics without bound.

The counts go to the gateway's /metrics, and into cumulative totals by span kind and status
code, which red_export.py sends as OTLP metrics (`red_metrics.export`); the totals reuse the
capped pairs, so they are bounded too (at most 6 kinds x 3 status codes per pair).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from gateway.otlp import spans
from gateway.telemetry import metrics

OTHER = "_other_"
FLUSH_SPANS = 4096
_KIND = {name: i for i, name in enumerate(spans.KINDS)}
BUCKETS = metrics.RED_BUCKETS  # seconds
STATUS_CODES = 3  # unset, ok, error
# (service, span name) after the cap, span kind and status code (as the proto enums number them)
SeriesKey = tuple[str, str, int, int]
# a pair as counted (past the cap: with "_other_") and its /metrics children: ok, failed, seconds
_Children = tuple[tuple[str, str], Counter, Counter, Histogram]


@dataclass(slots=True)
class Totals:
    """One exported series, cumulative since `start_ns`."""

    start_ns: int
    calls: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    def copy(self) -> Totals:
        return Totals(self.start_ns, self.calls, self.seconds, list(self.buckets))


class RedMetrics:
    def __init__(self, tenant: str, span_kinds: Collection[str], max_series: int) -> None:
        self.tenant = tenant
        self.kinds = frozenset(_KIND[k] for k in span_kinds)  # empty: every kind
        self.max_series = max_series
        self._series: dict[tuple[str, str], _Children] = {}
        # Small requests are observed on the event loop, large ones on a worker thread.
        self._lock = threading.Lock()
        # What the OTLP export sends, kept from the start (no span is missed before the export
        # first looks, within 0.5 s); None once the export said the tenant does not export,
        # which then pays nothing for it. Updated from both threads, read by the export.
        self._totals: dict[SeriesKey, Totals] | None = {}
        self._totals_lock = threading.Lock()

    def _children(self, service: str, name: str) -> _Children:
        key = (service, name)
        children = self._series.get(key)
        if children is None:
            with self._lock:
                return self._new_children(key)
        return children

    def _new_children(self, key: tuple[str, str]) -> _Children:
        children = self._series.get(key)
        if children is None:
            if len(self._series) >= self.max_series:
                key = (key[0], OTHER)
                children = self._series.get(key)
                if children is None and len(self._series) >= 2 * self.max_series:
                    key = (OTHER, OTHER)  # services past the cap too
                    children = self._series.get(key)
            if children is None:
                children = (
                    key,
                    metrics.RED_SPANS.labels(self.tenant, key[0], key[1], "false"),
                    metrics.RED_SPANS.labels(self.tenant, key[0], key[1], "true"),
                    metrics.RED_SECONDS.labels(self.tenant, key[0], key[1]),
                )
                self._series[key] = children
        return children

    def observe(self, payload: bytes) -> None:
        """Count the spans of an acknowledged request. Runs after the acknowledgement, so it
        never raises for what is in the request: spans it cannot decode are left out (with
        those after them; what came before is counted)."""
        # Counted per request first, so each series' counters are touched once per request;
        # flushed every FLUSH_SPANS spans, so a request of millions of spans (or of span names)
        # holds a bounded amount of memory.
        kinds = self.kinds
        seen: dict[SeriesKey, list[float]] = {}
        held = 0
        try:
            for service, span_list in spans.by_service(payload):
                for span in span_list:
                    if kinds and span.kind not in kinds:
                        continue
                    key = (service, span.name, span.kind, span.status.code)
                    durations = seen.get(key)
                    if durations is None:
                        durations = seen[key] = []
                    durations.append(
                        max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
                    )
                    held += 1
                    if held >= FLUSH_SPANS:
                        self._flush(seen)
                        held = 0
        except spans.UndecodableError:
            metrics.SPANS_UNDECODABLE.labels("red_metrics").inc()
        self._flush(seen)

    def _flush(self, seen: dict[SeriesKey, list[float]]) -> None:
        exported: list[tuple[SeriesKey, list[float]]] = []
        for (service, name, kind, code), durations in seen.items():
            pair, ok_counter, failed_counter, seconds = self._children(service, name)
            (failed_counter if code == spans.ERROR else ok_counter).inc(len(durations))
            for d in durations:
                seconds.observe(d)
            if self._totals is not None:
                # proto3 enums are open: an unknown kind or code would be a series per value
                kind = kind if 0 <= kind < len(spans.KINDS) else 0
                code = code if 0 <= code < STATUS_CODES else 0
                exported.append(((pair[0], pair[1], kind, code), durations))
        seen.clear()
        if exported:
            self._add(exported)

    def _add(self, exported: list[tuple[SeriesKey, list[float]]]) -> None:
        with self._totals_lock:
            totals = self._totals
            if totals is None:  # turned off meanwhile
                return
            for key, durations in exported:
                t = totals.get(key)
                if t is None:
                    t = totals[key] = Totals(time.time_ns())
                t.calls += len(durations)
                t.seconds += sum(durations)
                buckets = t.buckets
                for d in durations:  # upper bounds inclusive, as Prometheus' `le`
                    buckets[bisect.bisect_left(BUCKETS, d)] += 1

    # -- the OTLP export (red_export.py) ------------------------------------------------------

    def keep_totals(self, keep: bool) -> None:
        """Keep the totals the OTLP export sends, or drop them and keep none from now on."""
        with self._totals_lock:
            if not keep:
                self._totals = None
            elif self._totals is None:
                self._totals = {}

    def totals(self) -> list[tuple[SeriesKey, Totals]]:
        """A copy of every exported series' totals."""
        with self._totals_lock:
            return [(key, t.copy()) for key, t in (self._totals or {}).items()]
