"""RED metrics (rate, errors, duration) from a tenant's spans, by service and span name.

Opt-in per tenant: it decodes every trace request of the tenant. Series are capped per tenant:
once a tenant has `max_series` (service, span name) pairs, new pairs count as
span_name="_other_", so a span name carrying ids cannot grow the metrics without bound.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any

from prometheus_client import Counter, Histogram

from gateway.otlp import spans
from gateway.telemetry import metrics

OTHER = "_other_"
FLUSH_SPANS = 4096
_KIND = {name: i for i, name in enumerate(spans.KINDS)}


class RedMetrics:
    def __init__(self, tenant: str, span_kinds: Collection[str], max_series: int) -> None:
        self.tenant = tenant
        self.kinds = frozenset(_KIND[k] for k in span_kinds)  # empty: every kind
        self.max_series = max_series
        self._series: dict[tuple[str, str], tuple[Counter, Counter, Histogram]] = {}
        # Small requests are observed on the event loop, large ones on a worker thread.
        self._lock = threading.Lock()

    def _children(self, service: str, name: str) -> tuple[Counter, Counter, Histogram]:
        key = (service, name)
        children = self._series.get(key)
        if children is None:
            with self._lock:
                return self._new_children(key)
        return children

    def _new_children(self, key: tuple[str, str]) -> tuple[Counter, Counter, Histogram]:
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
        seen: dict[tuple[str, str], list[Any]] = {}
        held = 0
        try:
            for service, span_list in spans.by_service(payload):
                for span in span_list:
                    if kinds and span.kind not in kinds:
                        continue
                    key = (service, span.name)
                    entry = seen.get(key)
                    if entry is None:
                        entry = seen[key] = [0, 0, []]
                    entry[1 if span.status.code == spans.ERROR else 0] += 1
                    entry[2].append(
                        max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
                    )
                    held += 1
                    if held >= FLUSH_SPANS:
                        self._flush(seen)
                        held = 0
        except spans.UndecodableError:
            metrics.SPANS_UNDECODABLE.labels("red_metrics").inc()
        self._flush(seen)

    def _flush(self, seen: dict[tuple[str, str], list[Any]]) -> None:
        for (service, name), (ok, failed, durations) in seen.items():
            ok_counter, failed_counter, seconds = self._children(service, name)
            if ok:
                ok_counter.inc(ok)
            if failed:
                failed_counter.inc(failed)
            for d in durations:
                seconds.observe(d)
        seen.clear()
