"""`workers: 1` against `workers: 2` on the same machine: what a second gateway process adds.

The same pipeline as run.py (key check, `tenant.id`, gzip forward to the counting sink, spans
counted at the sink), driven at full speed with more connections (wrk -c 32, h2load -c 16 -m 2)
so that SO_REUSEPORT spreads them over the workers. One worker runs on core 0; two run on cores
0 and 1, and the load generator and the sink stay on core 1 as in run.py. Reported per run:
spans/s delivered, the CPU of the gateway's processes (supervisor + workers) and of each worker,
spans per gateway CPU-second, and the load generator's and sink's CPU: on a 2-core machine they
need a share of the core the second worker gets, so throughput cannot double here; spans per
gateway CPU-second says whether a second process costs per span what the first does.

  uv run --frozen python bench/scale.py --duration 10 --repeat 3

Ports 4600 (sink), 4610-4612 (gateway and admin; `--base-port` moves them); 127.0.0.1 only;
every process stopped by PID.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.backend import SinkProc, wait_drained
from bench.contenders import (
    Contender,
    gateway_config,
    wait_answers,
)
from bench.loadgen import Load, run_h2load, run_wrk
from bench.payload import Payload
from bench.procs import (
    BENCH,
    INSTALL_HINT,
    PORTS,
    ROOT,
    Procs,
    missing_tools,
    proc_cpu_seconds,
)
from bench.records import to_json
from bench.report import machine

TRANSPORTS = ("grpc", "http")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def start(procs: Procs, workdir: Path, workers: int) -> tuple[Contender, list[int]]:
    import yaml

    config = gateway_config("uvicorn", "single", workdir)
    config["workers"] = workers
    config["admin"] = {"listen": f"127.0.0.1:{PORTS.gateway_admin}"}  # worker i: port + i
    path = workdir / f"scale-{workers}.yaml"
    path.write_text(yaml.safe_dump(config))
    cores = "0" if workers == 1 else "0,1"
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
    with open(workdir / f"gateway-{workers}.log", "wb") as log:
        proc = procs.start(
            ["taskset", "-c", cores, *cmd, "--log-level", "warning"],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
    port = PORTS.gateway
    c = Contender(f"workers-{workers}", proc, port, port, workdir, PORTS.sinks[:1])
    wait_answers(c, port, (401,))
    deadline = time.monotonic() + 30
    while len(children(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = children(proc.pid) if workers > 1 else [proc.pid]
    if len(pids) != workers:
        raise RuntimeError(f"expected {workers} worker processes, found {pids}")
    return c, pids


def load(procs: Procs, transport: str, payload: Payload, workdir: Path, duration: float) -> Load:
    if transport == "http":
        return run_wrk(
            procs, PORTS.gateway, payload.http_file, connections=32, threads=1, duration=duration
        )
    return run_h2load(
        procs,
        PORTS.gateway,
        "grpc",
        payload.grpc_file,
        workdir / "h2load-scale.log",
        clients=16,
        streams=2,
        duration=duration,
    )


def measure(
    procs: Procs,
    sink: SinkProc,
    workers: int,
    transport: str,
    payload: Payload,
    workdir: Path,
    duration: float,
) -> dict[str, Any]:
    c, pids = start(procs, workdir, workers)
    try:
        load(procs, transport, payload, workdir, 3.0)  # warm up
        wait_drained(sink, sink.stats(), c.ports, 0)
        everyone = [c.pid, *(p for p in pids if p != c.pid)]
        cpu0 = {p: proc_cpu_seconds(p) for p in everyone}
        sink_cpu0, before, t0 = sink.cpu(), sink.stats(), time.monotonic()
        result = load(procs, transport, payload, workdir, duration)
        after = wait_drained(sink, before, c.ports, 0)
        wall = min(time.monotonic() - t0, result.wall_s + 0.8)
        cpu = {p: proc_cpu_seconds(p) - cpu0[p] for p in everyone}
        spans = after[c.ports[0]].spans - before[c.ports[0]].spans
        gateway_cpu = sum(cpu.values())
        return {
            "workers": workers,
            "transport": transport,
            "spans": spans,
            "spans_per_s": round(spans / result.wall_s),
            "gateway_cpu_cores": round(gateway_cpu / wall, 2),
            "worker_cpu_cores": [round(cpu[p] / wall, 2) for p in pids],
            "spans_per_gateway_cpu_s": round(spans / gateway_cpu) if gateway_cpu else None,
            "load_and_sink_cpu_cores": round((result.cpu_s + sink.cpu() - sink_cpu0) / wall, 2),
            "requests_ok": result.ok,
            "requests_refused": result.failed,
        }
    finally:
        procs.stop(c.proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--results-dir", default=str(BENCH / "results"))
    p.add_argument("--base-port", type=int, default=PORTS.base, help="first of the ports used")
    args = p.parse_args(argv)
    PORTS.base = args.base_port
    missing = missing_tools()
    if missing:
        print(f"bench/scale.py: missing {', '.join(missing)}; {INSTALL_HINT}", file=sys.stderr)
        return 2
    procs = Procs()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="otlp-scale-") as tmp:
        workdir = Path(tmp)
        payload = Payload.write(workdir)
        try:
            sink = SinkProc(procs, workdir, PORTS.sinks[:1])
            for i in range(args.repeat):
                for transport in args.transports.split(","):
                    for workers in (1, 2):
                        r = measure(
                            procs, sink, workers, transport, payload, workdir, args.duration
                        )
                        r["repeat"] = i + 1
                        rows.append(r)
                        print(json.dumps(r), flush=True)
        finally:
            procs.stop_all()
    summary = []
    for transport in args.transports.split(","):
        for workers in (1, 2):
            mine = [r for r in rows if r["transport"] == transport and r["workers"] == workers]
            summary.append(
                {
                    "transport": transport,
                    "workers": workers,
                    **{
                        k: statistics.median(r[k] for r in mine)
                        for k in (
                            "spans_per_s",
                            "gateway_cpu_cores",
                            "spans_per_gateway_cpu_s",
                            "load_and_sink_cpu_cores",
                        )
                    },
                }
            )
    print(
        "\n| transport | workers | spans/s | gateway CPU (cores) | spans per gateway CPU-s "
        "| load + sink CPU (cores) |\n|---|---|---|---|---|---|"
    )
    for s in summary:
        print(
            f"| {s['transport']} | {s['workers']} | {s['spans_per_s']:,.0f} | "
            f"{s['gateway_cpu_cores']:.2f} | {s['spans_per_gateway_cpu_s']:,.0f} | "
            f"{s['load_and_sink_cpu_cores']:.2f} |"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scale-{stamp}.json").write_text(
        json.dumps({"machine": to_json(machine()), "runs": rows, "summary": summary}, indent=1)
    )
    print(f"results: {out / f'scale-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
