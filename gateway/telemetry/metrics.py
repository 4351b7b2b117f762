"""Every metric the gateway exports, defined once, on one registry served at /metrics.

Labels are bounded: tenant (configured tenants, plus "unknown" for requests without a valid
key), signal, transport, backend (configured backends), reason and outcome (fixed sets). Span
names and services appear only in the opt-in RED metrics, which cap their own series.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the output and say little here
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # RSS, CPU seconds, open fds of the gateway process
PlatformCollector(registry=REGISTRY)

UNKNOWN_TENANT = "unknown"  # requests refused before a tenant is known

_P = "otlp_gateway_"

# -- intake -------------------------------------------------------------------------------------

REQUESTS = Counter(
    _P + "requests",
    "Export requests answered, by outcome: accepted or the reason they were refused.",
    ["tenant", "signal", "transport", "outcome"],
    registry=REGISTRY,
)
RECEIVED_ITEMS = Counter(
    _P + "received_items",
    "Spans, data points, log records or profiles in requests that were read and validated.",
    ["tenant", "signal", "transport"],
    registry=REGISTRY,
)
RECEIVED_BYTES = Counter(
    _P + "received_bytes",
    "Uncompressed protobuf bytes of requests that were read and validated.",
    ["tenant", "signal", "transport"],
    registry=REGISTRY,
)
ACCEPTED_ITEMS = Counter(
    _P + "accepted_items",
    "Items acknowledged to clients (queued for every destination).",
    ["tenant", "signal", "transport"],
    registry=REGISTRY,
)
ACCEPTED_BYTES = Counter(
    _P + "accepted_bytes",
    "Bytes acknowledged to clients, as forwarded (after drop rules and enrichment).",
    ["tenant", "signal", "transport"],
    registry=REGISTRY,
)
REFUSED_ITEMS = Counter(
    _P + "refused_items",
    "Items in requests refused after they were read (quota, full queue, shutdown).",
    ["tenant", "signal", "transport", "reason"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    _P + "auth_failures",
    "Requests refused for a missing or wrong key (unauthenticated) or a signal the tenant may "
    "not send (permission_denied).",
    ["transport", "reason"],
    registry=REGISTRY,
)
INFLIGHT_BYTES = Gauge(
    _P + "inflight_bytes",
    "Request bytes held by the gateway right now, all transports.",
    registry=REGISTRY,
)

# -- connections --------------------------------------------------------------------------------

CONNECTIONS_ENDED = Counter(
    _P + "connections_ended",
    "Connections the gateway ended or refused to protect other clients, by reason: "
    "stream_churn (a connection's reset budget), peer_churn (a peer address's budget, new "
    "connections included), write_backlog (a client that does not read), header_timeout, "
    "body_timeout.",
    ["reason"],
    registry=REGISTRY,
)
ADMIN_AUTH_FAILURES = Counter(
    _P + "admin_auth_failures",
    "Admin API calls refused: unauthenticated (missing or wrong admin key) or locked_out (too "
    "many recent failures from the peer address; answered 429 without checking the key).",
    ["outcome"],
    registry=REGISTRY,
)

# -- export -------------------------------------------------------------------------------------

EXPORTED_ITEMS = Counter(
    _P + "exported_items",
    "Items a backend acknowledged.",
    ["backend", "tenant", "signal"],
    registry=REGISTRY,
)
EXPORTED_BYTES = Counter(
    _P + "exported_bytes",
    "Uncompressed bytes a backend acknowledged.",
    ["backend", "tenant", "signal"],
    registry=REGISTRY,
)
EXPORT_ATTEMPTS = Counter(
    _P + "export_attempts",
    "Export attempts by outcome: ok, retryable, permanent, too_large.",
    ["backend", "signal", "outcome"],
    registry=REGISTRY,
)
RETRIES = Counter(
    _P + "export_retries",
    "Exports sent again after a retryable failure.",
    ["backend", "signal"],
    registry=REGISTRY,
)
REJECTED_ITEMS = Counter(
    _P + "export_rejected_items",
    "Items a backend reported as rejected in an OTLP partial success.",
    ["backend", "signal"],
    registry=REGISTRY,
)
DROPPED_ITEMS = Counter(
    _P + "dropped_items",
    "Items dropped after they were accepted, by reason: drop_rule (tenant or global drop "
    "rules, backend empty), permanent_error, retries_exhausted, shutdown, unexpected.",
    ["tenant", "signal", "backend", "reason"],
    registry=REGISTRY,
)
WORKER_ERRORS = Counter(
    _P + "export_worker_errors",
    "Unexpected errors in a backend's export workers (a bug): the worker logs it, sets the "
    "batch aside (a durable queue's quarantine, else dropped as unexpected) and goes on.",
    ["backend"],
    registry=REGISTRY,
)
EXPORT_SECONDS = Histogram(
    _P + "export_duration_seconds",
    "Duration of one export attempt to a backend, successful or not.",
    ["backend", "signal"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

# -- operation ----------------------------------------------------------------------------------

RELOADS = Counter(
    _P + "config_reloads",
    "Config reloads by outcome: ok, or failed (the previous config kept serving).",
    ["outcome"],
    registry=REGISTRY,
)
CONFIG_LOADED = Gauge(
    _P + "config_last_load_timestamp_seconds",
    "Unix time the config in use was loaded.",
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    _P + "build_info",
    "Always 1; the labels say what is running.",
    ["version", "python", "server"],
    registry=REGISTRY,
)
TAIL_SUBSCRIBERS = Gauge(
    _P + "tail_subscribers",
    "Live tail streams open on the admin API.",
    registry=REGISTRY,
)

# -- RED metrics from spans (opt-in per tenant) ---------------------------------------------------

RED_SPANS = Counter(
    _P + "red_spans",
    "Spans by tenant, service, span name and whether their status is an error (opt-in per "
    'tenant; names past the tenant\'s series cap count as span_name="_other_").',
    ["tenant", "service", "span_name", "error"],
    registry=REGISTRY,
)
# seconds; the OTLP export of RED metrics (gateway/analysis/red_export.py) uses the same bounds
RED_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RED_SECONDS = Histogram(
    _P + "red_span_duration_seconds",
    "Span durations by tenant, service and span name (opt-in per tenant).",
    ["tenant", "service", "span_name"],
    buckets=RED_BUCKETS,
    registry=REGISTRY,
)

# -- span analysis after the acknowledgement (gateway/analysis/background.py) --------------

BACKGROUND_SKIPPED = Counter(
    _P + "background_skipped",
    "Accepted requests whose RED metrics or live-tail rows were skipped because too many bytes "
    "were already waiting for the analysis thread, by pool.",
    ["pool"],
    registry=REGISTRY,
)
SPANS_UNDECODABLE = Counter(
    _P + "spans_undecodable",
    "Accepted trace requests whose spans RED metrics or the live tail could not decode "
    "(corrupt items, strings that are not UTF-8) and so left out, by feature.",
    ["feature"],
    registry=REGISTRY,
)


def set_build_info(version: str, server: str) -> None:
    BUILD_INFO.clear()
    BUILD_INFO.labels(version, platform.python_version(), server).set(1)


# -- queues: read at scrape time ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueReading:
    backend: str
    tenant: str  # "" for a backend's shared queue
    batches: int
    bytes: int
    max_bytes: int
    oldest_age: float
    quarantined: int = 0  # durable queue records kept in quarantine/ (not delivered)


class _QueueCollector(Collector):
    def __init__(self) -> None:
        self.source: Callable[[], Iterable[QueueReading]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["backend", "tenant"]
        depth = GaugeMetricFamily(
            _P + "queue_batches", "Batches waiting in a destination's queue.", labels=labels
        )
        size = GaugeMetricFamily(
            _P + "queue_bytes", "Bytes queued or in delivery for a destination.", labels=labels
        )
        cap = GaugeMetricFamily(
            _P + "queue_max_bytes", "The most bytes a destination's queue takes.", labels=labels
        )
        age = GaugeMetricFamily(
            _P + "queue_oldest_age_seconds",
            "Seconds since the oldest batch not yet delivered was queued (0 when empty).",
            labels=labels,
        )
        quarantined = GaugeMetricFamily(
            _P + "queue_quarantined_records",
            "Records of a durable queue kept in its quarantine/ directory: data that could not "
            "be delivered (it does not decode, or its delivery failed unexpectedly), for the "
            "operator to look at and delete. Counted on disk, so it survives restarts.",
            labels=labels,
        )
        for r in self.source() if self.source is not None else ():
            values = [r.backend, r.tenant]
            depth.add_metric(values, r.batches)
            size.add_metric(values, r.bytes)
            cap.add_metric(values, r.max_bytes)
            age.add_metric(values, r.oldest_age)
            quarantined.add_metric(values, r.quarantined)
        yield from (depth, size, cap, age, quarantined)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # read per scrape; nothing to check at registration


QUEUES = _QueueCollector()
REGISTRY.register(QUEUES)


def bind_app(
    queues: Callable[[], Iterable[QueueReading]], inflight_bytes: Callable[[], float]
) -> Callable[[], None]:
    """Point the gauges that are read at scrape time (queue levels, bytes in flight) to one app;
    returns what unbinds them. The registry is the process's, so one app at a time binds it: a
    second one is refused instead of silently taking over the first one's gauges."""
    if QUEUES.source is not None:
        raise RuntimeError("the metrics are bound to another app of this process")
    QUEUES.source = queues
    INFLIGHT_BYTES.set_function(inflight_bytes)

    def unbind() -> None:
        QUEUES.source = None
        INFLIGHT_BYTES.set_function(lambda: 0.0)

    return unbind


# -- the fleet as this replica last read it from Redis (gateway/cluster/fleet.py) ------------

FLEET_REPLICAS = Gauge(
    _P + "fleet_replicas",
    "Replicas of this cluster by state, as last read from Redis: live (heartbeat within 3 "
    "heartbeat intervals) or stale (stopped heartbeating, record not yet expired).",
    ["state"],
    registry=REGISTRY,
)
FLEET_CONFIG_DRIFT = Gauge(
    _P + "fleet_config_drift",
    "1 when the live replicas serve more than one config (their config digests differ), else 0.",
    registry=REGISTRY,
)

# -- shared quotas and the heartbeat (gateway/cluster/quota.py, registry.py) ----------------------

CLUSTER_LEASES = Counter(
    _P + "cluster_leases",
    "Quota leases asked of Redis, by outcome: granted (all asked for), partial, empty (the "
    "shared bucket was empty), returned (tokens an idle replica gave back), failed (Redis did "
    "not answer).",
    ["outcome"],
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class ClusterReading:
    redis_up: bool
    quota_fallback: bool  # quotas are this replica's local share, not the shared buckets
    live_replicas: int


class _ClusterCollector(Collector):
    """Present only with `cluster` configured (a gateway without one has no Redis to be down)."""

    def __init__(self) -> None:
        self.source: Callable[[], ClusterReading] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.source is None:
            return
        r = self.source()
        yield GaugeMetricFamily(
            _P + "cluster_redis_up",
            "1 while the cluster's Redis answers this replica within the timeout, else 0.",
            value=1 if r.redis_up else 0,
        )
        yield GaugeMetricFamily(
            _P + "cluster_quota_fallback",
            "1 while tenant quotas are this replica's local share (quota / live replicas) "
            "because Redis does not answer, 0 while they are shared through Redis.",
            value=1 if r.quota_fallback else 0,
        )
        yield GaugeMetricFamily(
            _P + "cluster_live_replicas",
            "Replicas that heartbeated within 3 heartbeat intervals, as last read from Redis "
            "(this one included); the fallback divides quotas by it.",
            value=r.live_replicas,
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


CLUSTER = _ClusterCollector()
REGISTRY.register(CLUSTER)


def bind_cluster(source: Callable[[], ClusterReading]) -> Callable[[], None]:
    """Point the cluster gauges to this process's link, leases and heartbeat; returns what
    unbinds them."""
    CLUSTER.source = source

    def unbind() -> None:
        CLUSTER.source = None

    return unbind
