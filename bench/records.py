"""The results of bench/run.py as types: what bench/results/<time>.json holds.

{"meta": Meta, "summary": [SummaryRow, ...], "runs": [Run, ...]}: one frozen dataclass per JSON
object, its fields in the order of the file's keys. `to_json` turns one into the dict written. A
field with the metadata OMIT_IF_NONE is left out when it is None (`half_load`: only `single` cells
with answered requests have one; `profile`: only with --profile); every other field is always
written, as null when it is None. What a load generator printed is kept as the TypedDict it was
parsed into (`load_raw`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, NotRequired, TypedDict

ContenderName = Literal["gateway-hypercorn", "gateway-uvicorn", "rotel"]
Transport = Literal["http", "grpc"]
Variant = Literal["single", "fanout", "durable"]

CONTENDERS: tuple[ContenderName, ...] = ("gateway-hypercorn", "gateway-uvicorn", "rotel")
TRANSPORTS: tuple[Transport, ...] = ("http", "grpc")
VARIANTS: tuple[Variant, ...] = ("single", "fanout", "durable")

_OMIT = "omit_if_none"
_JSON_NAME = "json_name"
OMIT_IF_NONE = {_OMIT: True}  # field metadata: the JSON leaves the field out when it is None


def to_json(value: object) -> object:
    """A record (or a list / tuple / dict of them) as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is None and f.metadata.get(_OMIT):
                continue
            out[f.metadata.get(_JSON_NAME, f.name)] = to_json(v)
        return out
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class CellKey:
    """What a cell measures. Cells are measured, summarised and ordered by this."""

    contender: ContenderName
    transport: Transport
    variant: Variant
    spans: int  # spans per request (the request size, --spans)

    def __str__(self) -> str:
        return f"{self.contender} {self.transport} {self.variant} {self.spans} spans"

    @property
    def slug(self) -> str:
        """For file names: `gateway-uvicorn-http-single-512`."""
        return f"{self.contender}-{self.transport}-{self.variant}-{self.spans}"


# ---------------------------------------------------------------------------------------------
# What the load generators printed (`load_raw`)


class WrkJson(TypedDict):
    """The "JSON {...}" line of bench/wrk_post.lua (latencies in microseconds)."""

    sent: int
    ok: int
    other_status: int
    completed: int
    duration_us: int
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int
    timeouts: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    mean_us: float


class H2loadRaw(TypedDict):
    output_tail: list[str]  # the last 12 lines h2load printed
    latency_samples: int


class PacedRaw(TypedDict):
    """The paced clients of this process (paced.run_paced_http / run_paced_grpc)."""

    latency_samples: int
    connection_errors: NotRequired[int]  # OTLP/HTTP only


LoadRaw = WrkJson | H2loadRaw | PacedRaw


# ---------------------------------------------------------------------------------------------
# One measured cell: an entry of "runs"


@dataclass(frozen=True)
class Warmup:
    sent_spans: int
    acked_spans: int
    delivered_spans: int
    failed_requests: int


@dataclass(frozen=True)
class HalfLoad:
    """Latency at half the measured maximum request rate (paced, open loop)."""

    target_rps: float
    achieved_rps: float | None
    client: str
    p50_ms: float | None
    p99_ms: float | None
    failed_requests: int
    samples: int
    # how late the client itself started requests (p99 of start - due, counted requests): when
    # it is not small against p99_ms, the paced client could not keep the schedule (its core was
    # busy) and the latencies above include its own delay
    client_late_p99_ms: float | None = field(default=None, metadata=OMIT_IF_NONE)


@dataclass(frozen=True)
class LogSummary:
    """The contender's log: lines with WARN, ERROR or Traceback, and the first 3 of them."""

    warning_error_lines: int
    samples: tuple[str, ...]


# (name, % of all samples), most first
Ranking = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ProfileSummary:
    """py-spy's collapsed stacks of the measured window, summarised (profiling.py)."""

    file: str
    samples: int
    # the innermost frame (time in C code: the Python function that called it)
    self_: Ranking | None = field(metadata={**OMIT_IF_NONE, _JSON_NAME: "self"})
    inclusive: Ranking | None = field(metadata=OMIT_IF_NONE)  # anywhere on the stack
    components: Ranking | None = field(metadata=OMIT_IF_NONE)  # by part of the hot path


@dataclass(frozen=True, kw_only=True)
class Run:
    """One cell measured once (run.py's "runs"). Spans are counted at the sink; `acked_spans`
    is the gateway's own count when it has an admin listener (see contenders.gateway_spans),
    else the load generator's."""

    contender: ContenderName
    transport: Transport
    variant: Variant
    spans: int  # spans per request
    other_cores_before: float | None  # cores other processes used before the cell (wait_quiet)
    idle_rss_mib: float
    warmup: Warmup
    profile: ProfileSummary | None = field(metadata=OMIT_IF_NONE)
    sent_spans: int
    acked_spans: int
    client_ok_spans: int
    refused_spans: int | None
    delivered_spans: int  # the fewest over the backends
    delivered_per_backend: tuple[int, ...]
    failed_requests: int
    untagged_spans: int  # spans whose resource arrived without tenant.id = acme
    sink_errors: int
    sink_requests: tuple[int, ...]
    gzip_ratio: float
    load_s: float
    window_s: float
    drain_s: float
    cpu_s: float
    cpu_busy: float | None
    spans_per_cpu_s: int | None
    spans_per_s: int | None
    requests_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    loader_cpu_s: float
    sink_cpu_s: float
    load_core_busy: float
    # other processes on each core during the window, as a share of it (interference)
    other_on_core0: float
    other_on_core1: float
    load_raw: LoadRaw
    half_load: HalfLoad | None = field(metadata=OMIT_IF_NONE)
    peak_rss_mib: float
    exit_code: int
    log: LogSummary
    repeat: int
    attempts: int

    @property
    def key(self) -> CellKey:
        return CellKey(self.contender, self.transport, self.variant, self.spans)

    def interfered(self) -> bool:
        """Other processes took more than 5% of the contender's core or 25% of the load core."""
        return self.other_on_core0 > 0.05 or self.other_on_core1 > 0.25


# ---------------------------------------------------------------------------------------------
# The medians of a cell's runs: an entry of "summary"


@dataclass(frozen=True)
class DurableVsMemory:
    spans_per_cpu_s: float
    spans_per_s: float | None


@dataclass(frozen=True, kw_only=True)
class SummaryRow:
    contender: ContenderName
    transport: Transport
    variant: Variant
    spans: int  # spans per request
    runs: int
    spans_per_cpu_s: float | None
    spans_per_cpu_s_all: tuple[int | None, ...]
    spans_per_s: float | None
    cpu_busy: float | None
    p50_ms: float | None
    p99_ms: float | None
    half_load_rps: float | None
    half_load_p50_ms: float | None
    half_load_p99_ms: float | None
    half_load_client_late_p99_ms: float | None  # HalfLoad.client_late_p99_ms, median
    idle_rss_mib: float | None
    peak_rss_mib: float | None
    gzip_ratio: float | None
    load_core_busy: float | None
    other_on_core0_max: float
    other_on_core1_max: float
    interfered_runs: int
    sent_spans: int
    acked_spans: int
    delivered_spans: int
    failed_requests: int
    untagged_spans: int
    rotel_reference: Variant  # rotel runs `single` only: fan-out and durable compare with that
    ratio_to_rotel: float | None
    durable_vs_memory: DurableVsMemory | None = field(metadata=OMIT_IF_NONE)

    @property
    def key(self) -> CellKey:
        return CellKey(self.contender, self.transport, self.variant, self.spans)


# ---------------------------------------------------------------------------------------------
# "meta"


@dataclass(frozen=True)
class Machine:
    cpus: int | None
    cpu_model: str
    memory_gib: float
    loadavg_at_start: tuple[float, float, float]
    loadavg_at_end: tuple[float, float, float] | None = field(metadata=OMIT_IF_NONE)


@dataclass(frozen=True)
class RequestInfo:
    spans: int
    bytes: int
    attributes_per_span: int


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    smoke: bool
    repeat: int
    duration_s: float
    warmup_s: float
    latency_duration_s: float
    in_flight_full_load: int  # OTLP/HTTP: wrk connections; gRPC: grpc_clients x grpc_streams
    spans: tuple[int, ...]  # the request sizes measured (--spans)
    connections: int  # wrk -c (OTLP/HTTP)
    grpc_clients: int  # h2load -c (gRPC), also the paced gRPC client's connections
    grpc_streams: int  # h2load -m (gRPC)
    contenders: tuple[ContenderName, ...]
    transports: tuple[Transport, ...]
    variants: tuple[Variant, ...]


@dataclass(frozen=True, kw_only=True)
class Meta:
    date: str
    machine: Machine
    versions: dict[str, str]
    request: RequestInfo  # the first of `requests` (with one size, the request)
    requests: tuple[RequestInfo, ...]  # one per request size measured, in --spans order
    settings: RunSettings
    elapsed_s: float


@dataclass(frozen=True)
class Report:
    """The whole file."""

    meta: Meta
    summary: tuple[SummaryRow, ...]
    runs: tuple[Run, ...]
