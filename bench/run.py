"""Gateway vs rotel: one command that reproduces the forwarding comparison on a 2-core machine.

Every contender runs the same pipeline: an API key check (rotel has no receiver authentication,
so it skips this step), the resource attribute `tenant.id` added, and forwarding as OTLP/HTTP
protobuf with gzip to a counting sink. Spans are counted at the sink, not at the sender.

  core 0: the contender (taskset -c 0), one fresh process per measured cell
  core 1: the load generator (wrk for OTLP/HTTP, h2load for OTLP/gRPC) and the sink (bench/sink.py)

Contenders: `gateway-uvicorn` (the default server), `gateway-hypercorn` (`server: hypercorn`) and
`rotel` (`--otel-resource-attributes tenant.id=acme`, OTLP exporter over HTTP, gzip, its default
batching). Variants: `single` (one backend), `fanout` (two backends, two sink ports), `durable`
(`queue.durable: true`). rotel runs `single` only: this version has no disk queue and refuses a
second traces exporter, so the gateway's fan-out and durable rows are compared with rotel's
`single` (which flatters rotel: its fan-out would cost it more).

A cell is a contender x transport x variant x request size (`--spans`, spans per request). Each
cell: start the contender, read its idle RSS, warm up, then load it for `--duration` seconds
at full speed (wrk -c `--connections`, default 16; h2load -c `--grpc-clients` -m
`--grpc-streams`, default 4 x 4: 16 requests in flight either way), wait until the sink has
every acknowledged span (and nothing more arrives), and take the contender's CPU
(utime+stime from /proc/PID/stat) over that window. spans/CPU-s = spans that reached the sink
(the fewest over the backends, for fan-out) / contender CPU seconds. Latency p50/p99 at full
load come from the load generator. For `single`, a second run at half the measured maximum rate
gives the latency the targets speak of, from open-loop clients in this process that send on an
even schedule and count latency from when each request was due: asyncio over HTTP/1.1 for
OTLP/HTTP, a minimal HTTP/2 client over `--grpc-clients` connections for gRPC (paced.py). wrk
cannot pace (wrk2 is not packaged by Debian), h2load's HTTP/1.1 parser refuses hypercorn's
status line, and h2load --rps starts all its clients' timers together, so they send in bursts; a
closed-loop run at full speed measures queueing, not service time. Peak RSS = VmHWM at the end
of the cell.

The request: one ExportTraceServiceRequest, by default 512 spans with 10 attributes each,
244,943 bytes, sent uncompressed (gRPC: with the 5-byte gRPC frame header); `--spans 1,16,64,512`
measures every cell at each size (1 span: 585 bytes, 16: 7,765) and prints a table per size.

  uv run --frozen python bench/run.py                    # 3 repeats x 10 s, ~30 minutes
  uv run --frozen python bench/run.py --smoke            # a few requests per cell, ~1 minute
  uv run --frozen python bench/run.py --contenders gateway-hypercorn,rotel --transports http \
      --variants single --repeat 1 --duration 5
  uv run --frozen python bench/run.py --spans 1,16,64,512 --connections 64 \
      --grpc-clients 16 --grpc-streams 4                 # the request sizes of the issue "Lean"
  uv run --frozen python bench/run.py --profile ...      # py-spy on the gateway (see --help)

Needs wrk and h2load: `apt-get install -y wrk nghttp2-client`. Uses 127.0.0.1 ports 4600-4621
only (`--base-port` moves them). Every process it starts is stopped by PID at the end, also on
errors and Ctrl-C. Writes bench/results/<UTC time>.json (and .md with the table); --results-dir
changes where.

This file is the command line and the loop over cells; the rest is in bench/: payload.py (the
request), procs.py (processes, CPU accounting), backend.py (the sink process), contenders.py
(gateway and rotel, their configs), loadgen.py (wrk, h2load), paced.py (the paced clients),
cell.py (one cell, half-load latency), profiling.py (py-spy), report.py (summary, table,
versions, machine) and records.py (the JSON written, as types).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/run.py`: the bench.* modules next to this file

from bench.backend import SinkProc  # noqa: E402
from bench.cell import Rig, Settings, measure_cell  # noqa: E402
from bench.contenders import export_gateway, gateway_has_admin  # noqa: E402
from bench.loadgen import H2LOAD_CLIENTS, H2LOAD_STREAMS, WRK_CONNECTIONS  # noqa: E402
from bench.payload import ATTRIBUTES_PER_SPAN, SPANS_PER_REQUEST, Payload  # noqa: E402
from bench.procs import (  # noqa: E402
    BENCH,
    INSTALL_HINT,
    LOAD_CORE,
    PORTS,
    Procs,
    missing_tools,
    port_free,
)
from bench.profiling import print_profile  # noqa: E402
from bench.records import (  # noqa: E402
    CONTENDERS,
    TRANSPORTS,
    VARIANTS,
    CellKey,
    ContenderName,
    Meta,
    Report,
    RequestInfo,
    Run,
    RunSettings,
    Transport,
    Variant,
    to_json,
)
from bench.report import fmt, machine, markdown_table, summarise, versions  # noqa: E402


@dataclass(frozen=True, kw_only=True)
class Options:
    """The command line."""

    smoke: bool
    repeat: int
    duration: float
    warmup: float
    latency_duration: float
    contenders: tuple[ContenderName, ...]
    transports: tuple[Transport, ...]
    variants: tuple[Variant, ...]
    spans: tuple[int, ...]  # request sizes, spans per request
    connections: int  # wrk -c (OTLP/HTTP)
    grpc_clients: int  # h2load -c (gRPC)
    grpc_streams: int  # h2load -m (gRPC)
    smoke_requests: int
    results_dir: Path
    profile: bool
    profile_native: bool
    wait_idle: float
    retries: int
    gateway_rev: str | None
    base_port: int

    @property
    def repeats(self) -> int:
        return 1 if self.smoke else self.repeat


_Choice = TypeVar("_Choice", bound=str)


def _choices(
    p: argparse.ArgumentParser, name: str, raw: str, allowed: tuple[_Choice, ...]
) -> tuple[_Choice, ...]:
    values = [v for v in raw.split(",") if v]
    bad = [v for v in values if v not in allowed]
    if bad:
        p.error(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return tuple(a for v in values for a in allowed if a == v)


def _sizes(p: argparse.ArgumentParser, raw: str) -> tuple[int, ...]:
    """--spans: comma-separated positive integers, in the order given, each once."""
    sizes: list[int] = []
    for v in (v.strip() for v in raw.split(",")):
        if not v:
            continue
        if not v.isdigit() or int(v) < 1:
            p.error(f"--spans: {v!r} is not a positive number of spans")
        if int(v) not in sizes:
            sizes.append(int(v))
    if not sizes:
        p.error("--spans: no request size given")
    return tuple(sizes)


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        description="Gateway vs rotel forwarding benchmark (see the module docstring)."
    )
    p.add_argument("--smoke", action="store_true", help="a few exact requests per cell, < 1 min")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--latency-duration", type=float, default=8.0, help="half-load run seconds")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument(
        "--spans",
        default=str(SPANS_PER_REQUEST),
        help="spans per request, comma-separated (e.g. 1,16,64,512): every cell is measured at "
        "each size, with a table per size (default %(default)s)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=WRK_CONNECTIONS,
        help="OTLP/HTTP full load: wrk connections, one request in flight each "
        "(default %(default)s)",
    )
    p.add_argument(
        "--grpc-clients",
        type=int,
        default=H2LOAD_CLIENTS,
        help="gRPC full load: h2load connections; also the paced half-load gRPC client's "
        "connections (default %(default)s)",
    )
    p.add_argument(
        "--grpc-streams",
        type=int,
        default=H2LOAD_STREAMS,
        help="gRPC full load: h2load concurrent streams per connection (default %(default)s)",
    )
    p.add_argument("--smoke-requests", type=int, default=24, help="requests per smoke cell")
    p.add_argument("--results-dir", default=str(BENCH / "results"))
    p.add_argument(
        "--profile",
        action="store_true",
        help="run py-spy (raw collapsed stacks, 250 Hz) on the gateway during each measured window "
        "and summarise the top functions; output under <results-dir>/profile-<time>/. The "
        "sampling slows the gateway: the numbers of a profiled run are not comparable",
    )
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (pauses)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=300.0,
        help="before each cell, wait up to this many seconds for other processes on the machine "
        "to use under 0.15 cores (not in --smoke); the JSON records what was seen",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        help="measure a cell again (up to this many times) when other processes ran on the "
        "machine during its window; the last attempt is kept either way",
    )
    p.add_argument(
        "--gateway-rev",
        help="benchmark the gateway package of this git revision (e.g. HEAD: the committed code, "
        "whatever the work tree holds) instead of the work tree's",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=PORTS.base,
        help=f"the 127.0.0.1 ports used: this one and the {PORTS.SPAN - 1} above it "
        "(default %(default)s)",
    )
    args = p.parse_args(argv)
    for name in ("connections", "grpc_clients", "grpc_streams"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be at least 1")
    return Options(
        smoke=args.smoke,
        repeat=args.repeat,
        duration=args.duration,
        warmup=args.warmup,
        latency_duration=args.latency_duration,
        contenders=_choices(p, "contenders", args.contenders, CONTENDERS),
        transports=_choices(p, "transports", args.transports, TRANSPORTS),
        variants=_choices(p, "variants", args.variants, VARIANTS),
        spans=_sizes(p, args.spans),
        connections=args.connections,
        grpc_clients=args.grpc_clients,
        grpc_streams=args.grpc_streams,
        smoke_requests=args.smoke_requests,
        results_dir=Path(args.results_dir),
        profile=args.profile,
        profile_native=args.profile_native,
        wait_idle=args.wait_idle,
        retries=args.retries,
        gateway_rev=args.gateway_rev,
        base_port=args.base_port,
    )


def preflight() -> str | None:
    """Why the benchmark cannot run here, or None."""
    missing = missing_tools()
    if missing:
        return f"bench/run.py: missing {', '.join(missing)}; install with: {INSTALL_HINT}"
    if (os.cpu_count() or 1) < 2:
        return "bench/run.py: needs 2 cores (contender on core 0, load on core 1)"
    busy = [port for port in PORTS.all() if not port_free(port)]
    if busy:
        return f"bench/run.py: ports in use: {busy}"
    return None


def resolve_rev(rev: str) -> str:
    """The commit `rev` names now: the commit measured, even if the branch moves meanwhile."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", rev + "^{commit}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def plan(opts: Options) -> list[tuple[int, CellKey]]:
    """(repeat, cell) in the order measured: per repeat, request size, variant, transport,
    contender (so the contenders alternate, each next to the others at the same size). rotel:
    `single` only (no disk queue, one traces exporter); smoke: fan-out and durable over
    OTLP/HTTP only."""
    return [
        (rep, CellKey(contender, transport, variant, spans))
        for rep in range(1, opts.repeats + 1)
        for spans in opts.spans
        for variant in opts.variants
        for transport in opts.transports
        for contender in opts.contenders
        if not (contender == "rotel" and variant != "single")
        and not (opts.smoke and variant != "single" and transport == "grpc")
    ]


def measure(rig: Rig, key: CellKey, repeat: int, retries: int) -> Run:
    """A cell, measured again (up to `retries` times) while other processes disturbed it."""
    attempt = 1
    while True:
        r = measure_cell(rig, key, repeat=repeat, attempt=attempt)
        if rig.settings.smoke or not r.interfered():
            return r
        again = attempt <= retries
        print(
            "    other processes ran during the window (core 0: "
            f"{r.other_on_core0:.0%}, core 1: {r.other_on_core1:.0%} of it)"
            + ("; measuring again" if again else ""),
            flush=True,
        )
        if not again:
            return r
        attempt += 1


def measure_all(
    procs: Procs,
    opts: Options,
    rev: str | None,
    workdir: Path,
    payloads: dict[int, Payload],
    stamp: str,
) -> list[Run]:
    tree = export_gateway(rev, workdir / "gateway-rev") if rev else ROOT
    settings = Settings(
        duration=opts.duration,
        warmup=1.0 if opts.smoke else opts.warmup,
        latency_duration=opts.latency_duration,
        smoke=opts.smoke,
        smoke_requests=opts.smoke_requests,
        profile_dir=opts.results_dir / f"profile-{stamp}" if opts.profile else None,
        profile_native=opts.profile_native,
        gateway_tree=tree,
        gateway_admin=gateway_has_admin(tree, workdir),
        wait_idle=0.0 if opts.smoke else opts.wait_idle,
        connections=opts.connections,
        grpc_clients=opts.grpc_clients,
        grpc_streams=opts.grpc_streams,
    )
    sink = SinkProc(procs, workdir, PORTS.sinks)
    rig = Rig(procs, sink, payloads, workdir, settings)
    runs = []
    try:
        for rep, key in plan(opts):
            print(f"[{rep}/{opts.repeats}] {key}", "...", flush=True)
            r = measure(rig, key, rep, opts.retries)
            runs.append(r)
            print(
                f"    {fmt(r.spans_per_cpu_s)} spans/CPU-s, "
                f"{fmt(r.spans_per_s)} spans/s, CPU {r.cpu_busy}, "
                f"p50/p99 {r.p50_ms}/{r.p99_ms} ms, delivered "
                f"{r.delivered_spans} / acked {r.acked_spans} / "
                f"sent {r.sent_spans}, peak RSS {r.peak_rss_mib} MiB",
                flush=True,
            )
    finally:
        sink.close()
    return runs


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    PORTS.base = opts.base_port
    problem = preflight()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})  # this process runs the paced client: core 1 too
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    rev = resolve_rev(opts.gateway_rev) if opts.gateway_rev else None
    signal.signal(signal.SIGTERM, _interrupt)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    at_start, measured = machine(), versions(rev)
    started = time.monotonic()
    procs = Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="otlp-bench-") as tmp:
            workdir = Path(tmp)
            payloads = {n: Payload.write(workdir, n) for n in opts.spans}
            runs = measure_all(procs, opts, rev, workdir, payloads, stamp)
    except KeyboardInterrupt:
        print("interrupted; stopping every process started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()

    sizes = tuple(RequestInfo(p.spans, len(p.body), ATTRIBUTES_PER_SPAN) for p in payloads.values())
    meta = Meta(
        date=date,
        machine=replace(at_start, loadavg_at_end=os.getloadavg()),
        versions=measured,
        request=sizes[0],
        requests=sizes,
        settings=RunSettings(
            smoke=opts.smoke,
            repeat=opts.repeats,
            duration_s=opts.duration,
            warmup_s=opts.warmup,
            latency_duration_s=opts.latency_duration,
            in_flight_full_load=opts.connections,
            spans=opts.spans,
            connections=opts.connections,
            grpc_clients=opts.grpc_clients,
            grpc_streams=opts.grpc_streams,
            contenders=opts.contenders,
            transports=opts.transports,
            variants=opts.variants,
        ),
        elapsed_s=round(time.monotonic() - started, 1),
    )
    report = Report(meta, tuple(summarise(runs)), tuple(runs))
    table = markdown_table(report.summary, sizes)
    out = opts.results_dir / f"{'smoke-' if opts.smoke else ''}{stamp}.json"
    out.write_text(json.dumps(to_json(report), indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print()
    print(table)
    for r in report.runs:
        print_profile(r)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
