"""The status page's charts: per tenant, accepted and refused items and refused requests per
second; per backend, exported items per second and queued bytes. One point every interval (5 s),
the last 180 kept (15 minutes), so a page opened late still shows what happened before.

Sampled from what the gateway counts anyway (the Prometheus counters, the queues' byte levels),
so requests do no work for it. The sampler runs on a thread of its own: the admin listener has no
lifespan to start a task in, and what it reads is safe from another thread (the counters take
their own locks; a queue level is one int, read from a copy of the destinations).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from gateway.delivery.pipeline import Pipeline
from gateway.ingress.intake import Intake
from gateway.telemetry import metrics

log = logging.getLogger("otlp_gateway")

INTERVAL_ENV = "OTLP_GATEWAY_HISTORY_INTERVAL"  # seconds between points; tests take less than 5
DEFAULT_INTERVAL = 5.0
MIN_INTERVAL = 0.1
POINTS = 180

TENANT_SERIES = ("accepted_items", "refused_items", "refused_requests")  # per second
BACKEND_SERIES = ("exported_items", "queue_bytes")
LEVELS = frozenset({"queue_bytes"})  # shown as read; every other series is a counter's rate

# (group, name, series): ("tenants", "acme", "accepted_items"), ("backends", "central", ...)
Key = tuple[str, str, str]
Readings = dict[Key, float]


def sum_by(counter: Counter, label: str, **match: str) -> dict[str, float]:
    """A counter's total per value of `label`, over the samples whose labels match `match`."""
    totals: dict[str, float] = defaultdict(float)
    for family in counter.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if all(sample.labels.get(k) == v for k, v in match.items()):
                totals[sample.labels[label]] += sample.value
    return totals


def interval_from_env() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value >= MIN_INTERVAL:  # also NaN
        log.warning(
            "%s=%r is not a number of seconds >= %s; sampling every %s s",
            INTERVAL_ENV,
            raw,
            MIN_INTERVAL,
            DEFAULT_INTERVAL,
        )
        return DEFAULT_INTERVAL
    return value


def gateway_readings(intake: Intake, pipeline: Pipeline) -> Callable[[], Readings]:
    """What the charts show, read now: counter totals and queue levels. Series exist for the
    configured tenants and backends (and `unknown` once a request came without a valid key), the
    metrics' own bounds; a reload adds and removes them."""

    def read() -> Readings:
        out: Readings = {}
        tenants = list(intake.registry.tenants)
        accepted = sum_by(metrics.ACCEPTED_ITEMS, "tenant")
        refused_items = sum_by(metrics.REFUSED_ITEMS, "tenant")
        requests = sum_by(metrics.REQUESTS, "tenant")
        accepted_requests = sum_by(metrics.REQUESTS, "tenant", outcome="accepted")
        if requests.get(metrics.UNKNOWN_TENANT) and metrics.UNKNOWN_TENANT not in tenants:
            tenants.append(metrics.UNKNOWN_TENANT)
        for t in tenants:
            out["tenants", t, "refused_requests"] = requests.get(t, 0.0) - accepted_requests.get(
                t, 0.0
            )
            if t != metrics.UNKNOWN_TENANT:  # a request without a valid key has no items
                out["tenants", t, "accepted_items"] = accepted.get(t, 0.0)
                out["tenants", t, "refused_items"] = refused_items.get(t, 0.0)
        exported = sum_by(metrics.EXPORTED_ITEMS, "backend")
        queued: dict[str, float] = defaultdict(float)
        for (backend, _), destination in list(pipeline.destinations.items()):
            queued[backend] += destination.queue.queued_bytes
        for b in list(pipeline.backends):
            out["backends", b, "exported_items"] = exported.get(b, 0.0)
            out["backends", b, "queue_bytes"] = queued.get(b, 0.0)
        return out

    return read


class History:
    """A ring of `points` samples per series, one sample every `interval` seconds."""

    def __init__(
        self,
        read: Callable[[], Readings],
        interval: float = DEFAULT_INTERVAL,
        points: int = POINTS,
    ) -> None:
        self.interval = interval
        self.points = points
        self._read = read
        self._lock = threading.Lock()  # sample() runs on the sampler thread, snapshot() on the loop
        self._times: deque[float] = deque(maxlen=points)  # Unix seconds of each point
        self._series: dict[Key, deque[float | None]] = {}
        self._totals: Readings = {}  # the counters at the last sample, for the next rate
        self._at: float | None = None  # time.monotonic() of the last sample
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, wall: float | None = None, mono: float | None = None) -> None:
        """Read the values now and append a point to every series. The first call only takes the
        counters' totals: a rate needs two readings."""
        readings = self._read()
        wall = time.time() if wall is None else wall
        mono = time.monotonic() if mono is None else mono
        with self._lock:
            at, self._at = self._at, mono
            totals, self._totals = (
                self._totals,
                {k: v for k, v in readings.items() if k[2] not in LEVELS},
            )
            if at is None:
                return
            elapsed = mono - at
            for key, value in readings.items():
                point: float | None = value
                if key[2] not in LEVELS:
                    before = totals.get(key)
                    # a series new since the last sample has no rate yet
                    point = (
                        None
                        if before is None or elapsed <= 0
                        else max(0.0, value - before) / elapsed
                    )
                series = self._series.get(key)
                if series is None:  # a new tenant or backend: empty before now
                    series = self._series[key] = deque([None] * len(self._times), self.points)
                series.append(None if point is None else round(point, 3))
            for key in self._series.keys() - readings.keys():  # removed by a reload
                del self._series[key]
            self._times.append(round(wall, 3))

    def snapshot(self) -> dict[str, Any]:
        """The points held, oldest first, as the admin API serves them (GET /api/history)."""
        groups: dict[str, dict[str, dict[str, list[float | None]]]] = {
            "tenants": {},
            "backends": {},
        }
        with self._lock:
            times = list(self._times)
            for (group, name, series), values in self._series.items():
                groups[group].setdefault(name, {})[series] = list(values)
        return {
            "interval_seconds": self.interval,
            "points": self.points,
            "times": times,
            **groups,
        }

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="admin-history", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        due = time.monotonic()
        failing = False
        while True:
            try:
                self.sample()
                failing = False
            except Exception:  # a bug here must not end the charts, nor log every interval
                if not failing:
                    log.exception("sampling the status page's charts failed")
                failing = True
            due = max(due + self.interval, time.monotonic())  # no burst after a stall
            if self._stop.wait(due - time.monotonic()):
                return
