"""One cell: a contender x transport x variant x request size, measured once (a `Run`).

Start the contender (a fresh process), read its idle RSS, warm up, then load it for the measured
window (full speed for `duration` s, or exactly `smoke_requests` requests), wait until the sink
has every acknowledged span and nothing more arrives, and take the CPU of the contender, the
load generator, the sink and each core over that window. `single` cells then measure the latency
at half the maximum rate just measured. The contender is stopped by PID whatever happens.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.backend import SinkProc, SinkStats, received, wait_drained
from bench.contenders import Contender, gateway_spans, start_gateway, start_rotel
from bench.loadgen import Load, run_h2load, run_wrk
from bench.paced import run_paced_grpc, run_paced_http
from bench.payload import Payload
from bench.procs import (
    CONTENDER_CORE,
    LOAD_CORE,
    Procs,
    core_busy_seconds,
    proc_cpu_seconds,
    proc_status_mib,
    wait_quiet,
)
from bench.profiling import start_profile, stop_profile
from bench.records import CellKey, HalfLoad, ProfileSummary, Run, Transport, Warmup
from bench.sink import PortStats


@dataclass(frozen=True, kw_only=True)
class Settings:
    duration: float  # measured seconds at full load
    warmup: float
    latency_duration: float  # seconds of the half-load run (plus 1 s not counted)
    smoke: bool  # exactly `smoke_requests` requests instead of `duration`
    smoke_requests: int
    profile_dir: Path | None  # py-spy on the gateway into this directory
    profile_native: bool
    gateway_tree: Path  # a directory holding the gateway package to run
    gateway_admin: bool  # that gateway has an admin listener (its own counts)
    wait_idle: float  # wait up to this long for the machine to be quiet before a cell
    connections: int  # full load over OTLP/HTTP: wrk -c
    grpc_clients: int  # full load over gRPC: h2load -c (and the paced gRPC client's connections)
    grpc_streams: int  # h2load -m


@dataclass(frozen=True)
class Rig:
    """What every cell of a run shares."""

    procs: Procs
    sink: SinkProc
    payloads: Mapping[int, Payload]  # per request size (spans per request)
    workdir: Path
    settings: Settings


@dataclass(frozen=True)
class Window:
    """Readings over the measured window: the load, then the drain until the sink had it all."""

    load: Load
    backends: tuple[PortStats, ...]  # what each sink port received
    acked_spans: int
    refused_spans: int | None
    seconds: float  # load + drain
    drain_s: float
    cpu_s: float  # the contender's
    sink_cpu_s: float
    own_cpu_s: float  # this process (the paced clients run here, on the load core)
    core_busy_s: dict[int, float]  # each core's busy time
    profile: ProfileSummary | None


def measure_cell(rig: Rig, key: CellKey, *, repeat: int, attempt: int) -> Run:
    s = rig.settings
    payload = rig.payloads[key.spans]
    cell_dir = Path(tempfile.mkdtemp(prefix=f"{key.slug}-", dir=rig.workdir))
    other_cores_before = wait_quiet(s.wait_idle) if s.wait_idle else None
    # the profile's file: one per measured window (repeats and attempts do not overwrite)
    tag = f"{key.slug}-r{repeat}" + (f"-a{attempt}" if attempt > 1 else "")
    with running(rig, key, cell_dir) as c:
        time.sleep(0.5 if s.smoke else 1.0)
        idle_rss_mib = round(proc_status_mib(c.pid, "VmRSS"), 1)
        warmup = warm_up(rig, c, key.transport, payload, cell_dir)
        window = measured_window(rig, c, key, payload, cell_dir, tag)
        half_load = None
        rate = window.load.rate
        if key.variant == "single" and window.load.ok and rate is not None:
            half_load = half_load_latency(rig, c, key.transport, payload, rate)
        peak_rss_mib = round(proc_status_mib(c.pid, "VmHWM"), 1)
    return run_record(
        key,
        window,
        payload.spans,
        other_cores_before=other_cores_before,
        idle_rss_mib=idle_rss_mib,
        warmup=warmup,
        half_load=half_load,
        peak_rss_mib=peak_rss_mib,
        exit_code=rig.procs.stop(c.proc),  # stopped already: its exit code
        contender=c,
        repeat=repeat,
        attempt=attempt,
    )


@contextlib.contextmanager
def running(rig: Rig, key: CellKey, cell_dir: Path) -> Iterator[Contender]:
    """The contender of `key`, started in `cell_dir`, stopped (by PID) on the way out."""
    if key.contender == "rotel":
        c = start_rotel(rig.procs, cell_dir, key.variant)
    else:
        server = key.contender.removeprefix("gateway-")
        s = rig.settings
        c = start_gateway(rig.procs, cell_dir, server, key.variant, s.gateway_tree, s.gateway_admin)
    try:
        yield c
    finally:
        rig.procs.stop(c.proc)


def drive(
    rig: Rig,
    c: Contender,
    transport: Transport,
    p: Payload,
    workdir: Path,
    *,
    duration: float | None = None,
    requests: int | None = None,
    tag: str,
) -> Load:
    """Full speed for `duration` seconds: wrk -c `connections` (OTLP/HTTP, one request in flight
    per connection), h2load -c `grpc_clients` -m `grpc_streams` (gRPC); by default 16 requests
    in flight either way. Or exactly `requests` requests (gRPC: h2load -n with 2 connections;
    OTLP/HTTP: the paced client at 50 requests/s), which ends with nothing in flight: then
    sent == answered. Every request is `p`."""
    port = c.port(transport)
    s = rig.settings
    log = workdir / f"h2load-{tag}.log"
    if requests is not None and transport == "http":
        return run_paced_http(port, p.body, rate=50, requests=requests)
    if requests is not None:
        return run_h2load(
            rig.procs, port, "grpc", p.grpc_file, log, clients=2, streams=2, requests=requests
        )
    assert duration is not None
    if transport == "http":
        return run_wrk(
            rig.procs, port, p.http_file, connections=s.connections, threads=1, duration=duration
        )
    return run_h2load(
        rig.procs,
        port,
        "grpc",
        p.grpc_file,
        log,
        clients=s.grpc_clients,
        streams=s.grpc_streams,
        duration=duration,
    )


def warm_up(rig: Rig, c: Contender, transport: Transport, p: Payload, cell_dir: Path) -> Warmup:
    """Load for `warmup` s (not measured), then wait for the sink to have it all (smoke: 1 s,
    which also exercises wrk / h2load's timed mode)."""
    spans = p.spans
    before = rig.sink.stats()
    warm = drive(rig, c, transport, p, cell_dir, duration=rig.settings.warmup, tag="w")
    after = wait_drained(rig.sink, before, c.ports, warm.ok * spans)
    return Warmup(
        sent_spans=warm.sent * spans,
        acked_spans=warm.ok * spans,
        delivered_spans=min(d.spans for d in received(after, before, c.ports)),
        failed_requests=warm.failed,
    )


def measured_window(
    rig: Rig, c: Contender, key: CellKey, p: Payload, cell_dir: Path, tag: str
) -> Window:
    """The measured window: load, then drain; with --profile, py-spy into `tag`.txt."""
    s, sink, spans = rig.settings, rig.sink, p.spans
    admin = c.name != "rotel" and s.gateway_admin
    before: SinkStats = sink.stats()
    counted0 = gateway_spans(admin)
    cpu0, sink_cpu0, t0 = proc_cpu_seconds(c.pid), sink.cpu(), time.monotonic()
    cores0, own0 = core_busy_seconds(), time.process_time()
    prof = start_profile(rig.procs, c, s.profile_dir, s.duration, s.profile_native, tag)
    if s.smoke:
        load = drive(rig, c, key.transport, p, cell_dir, requests=s.smoke_requests, tag="m")
    else:
        load = drive(rig, c, key.transport, p, cell_dir, duration=s.duration, tag="m")
    load_end = time.monotonic()
    counted = gateway_spans(admin)
    acked = load.ok * spans
    refused = None
    if counted is not None and counted0 is not None:
        acked = round(counted.accepted - counted0.accepted)
        refused = round(counted.refused - counted0.refused)
    after = wait_drained(sink, before, c.ports, acked)
    cpu1, sink_cpu1, t1 = proc_cpu_seconds(c.pid), sink.cpu(), time.monotonic()
    cores1, own1 = core_busy_seconds(), time.process_time()
    profile = stop_profile(rig.procs, prof)
    return Window(
        load=load,
        backends=received(after, before, c.ports),
        acked_spans=acked,
        refused_spans=refused,
        seconds=t1 - t0,
        drain_s=t1 - load_end,
        cpu_s=cpu1 - cpu0,
        sink_cpu_s=sink_cpu1 - sink_cpu0,
        own_cpu_s=own1 - own0,
        core_busy_s={core: cores1[core] - cores0[core] for core in cores1},
        profile=profile,
    )


def half_load_latency(
    rig: Rig, c: Contender, transport: Transport, p: Payload, max_rps: float
) -> HalfLoad:
    """Latency at half the measured maximum rate, open loop and evenly paced, every request `p`:
    OTLP/HTTP with run_paced_http, gRPC with run_paced_grpc over `grpc_clients` connections. The
    first second is not counted."""
    target = max_rps / 2
    duration = 1.0 if rig.settings.smoke else rig.settings.latency_duration
    requests = max(2, round(target * (duration + 1)))
    before = rig.sink.stats()
    body = p.body  # gRPC: the same request, framed by grpcio
    channels = rig.settings.grpc_clients
    if transport == "http":
        load = run_paced_http(c.http_port, body, rate=target, requests=requests, skip_first_s=1.0)
        client = "paced asyncio client"
    else:
        load = run_paced_grpc(
            c.grpc_port, body, rate=target, requests=requests, channels=channels, skip_first_s=1.0
        )
        client = f"paced HTTP/2 client, {channels} connections"
    wait_drained(rig.sink, before, c.ports, load.ok * p.spans)
    achieved = load.rate
    return HalfLoad(
        target_rps=round(target, 1),
        achieved_rps=round(achieved, 1) if achieved is not None else None,
        client=client,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        failed_requests=load.failed,
        samples=load.latency_samples,
        client_late_p99_ms=load.late_p99_ms,
    )


def run_record(
    key: CellKey,
    w: Window,
    spans: int,
    *,
    other_cores_before: float | None,
    idle_rss_mib: float,
    warmup: Warmup,
    half_load: HalfLoad | None,
    peak_rss_mib: float,
    exit_code: int,
    contender: Contender,
    repeat: int,
    attempt: int,
) -> Run:
    """The `Run` of a cell: the window's readings as rates and shares."""
    load, backends = w.load, w.backends
    delivered = min(d.spans for d in backends)
    return Run(
        contender=key.contender,
        transport=key.transport,
        variant=key.variant,
        spans=key.spans,
        other_cores_before=other_cores_before,
        idle_rss_mib=idle_rss_mib,
        warmup=warmup,
        profile=w.profile,
        sent_spans=load.sent * spans,
        acked_spans=w.acked_spans,
        client_ok_spans=load.ok * spans,
        refused_spans=w.refused_spans,
        delivered_spans=delivered,
        delivered_per_backend=tuple(d.spans for d in backends),
        failed_requests=load.failed,
        untagged_spans=sum(d.untagged_spans for d in backends),
        sink_errors=sum(d.errors for d in backends),
        sink_requests=tuple(d.requests for d in backends),
        gzip_ratio=round(
            sum(d.body_bytes for d in backends) / max(1, sum(d.wire_bytes for d in backends)), 2
        ),
        load_s=round(load.wall_s, 3),
        window_s=round(w.seconds, 3),
        drain_s=round(w.drain_s, 3),
        cpu_s=round(w.cpu_s, 3),
        cpu_busy=round(w.cpu_s / load.wall_s, 3) if load.wall_s else None,
        spans_per_cpu_s=round(delivered / w.cpu_s) if w.cpu_s > 0 else None,
        spans_per_s=round(delivered / load.wall_s) if load.wall_s else None,
        requests_per_s=round(load.ok / load.wall_s, 1) if load.wall_s else None,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        loader_cpu_s=round(load.cpu_s, 3),
        sink_cpu_s=round(w.sink_cpu_s, 3),
        load_core_busy=round((load.cpu_s + w.sink_cpu_s) / w.seconds, 3),
        # other processes on each core: its busy time less what ran there for the benchmark
        other_on_core0=round(max(0.0, w.core_busy_s[CONTENDER_CORE] - w.cpu_s) / w.seconds, 3),
        other_on_core1=round(
            max(0.0, w.core_busy_s[LOAD_CORE] - load.cpu_s - w.sink_cpu_s - w.own_cpu_s)
            / w.seconds,
            3,
        ),
        load_raw=load.raw,
        half_load=half_load,
        peak_rss_mib=peak_rss_mib,
        exit_code=exit_code,
        log=contender.log_summary(),
        repeat=repeat,
        attempts=attempt,
    )
