"""Load generators at full speed on the load core: wrk (OTLP/HTTP) and h2load (OTLP/gRPC). Each
returns a `Load`, as do the open-loop clients that send on an even schedule (paced.py: half-load
latency, exact smoke runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench.contenders import API_KEY
from bench.payload import GRPC_PATH, HTTP_PATH
from bench.procs import BENCH, LOAD_CORE, Procs, pinned, run_measured
from bench.records import H2loadRaw, LoadRaw, Transport, WrkJson

# Full load, by default: 16 requests in flight (wrk -c 16 over OTLP/HTTP, h2load -c 4 -m 4 over
# gRPC); run.py --connections, --grpc-clients, --grpc-streams change them
WRK_CONNECTIONS = 16
H2LOAD_CLIENTS, H2LOAD_STREAMS = 4, 4


@dataclass(frozen=True)
class Load:
    sent: int  # requests started
    ok: int  # answered 200 (gRPC: HTTP 200; grpc-status is not checked by h2load)
    failed: int  # other statuses, connection errors, timeouts
    wall_s: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_s: float  # the load generator's CPU
    latency_samples: int  # the latencies p50 / p99 are taken from
    raw: LoadRaw
    # paced clients: p99 of how late they started a request (start - due), of the counted ones
    late_p99_ms: float | None = None

    @property
    def rate(self) -> float | None:
        """Requests answered 200 per second."""
        return self.ok / self.wall_s if self.wall_s else None


def percentile(sorted_values: list[int], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[k])


def _ms(sorted_us: list[int], pct: float) -> float | None:
    return percentile(sorted_us, pct) / 1000 if sorted_us else None


# ---------------------------------------------------------------------------------------------
# wrk and h2load (processes on the load core)


def run_wrk(
    procs: Procs,
    port: int,
    body_file: Path,
    *,
    connections: int,
    threads: int,
    duration: float,
) -> Load:
    env = {
        **os.environ,
        "BENCH_BODY": str(body_file),
        "BENCH_AUTH": f"Bearer {API_KEY}",
    }
    cmd = pinned(
        LOAD_CORE,
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH / "wrk_post.lua"),
            f"http://127.0.0.1:{port}{HTTP_PATH}",
        ],
    )
    t0 = time.monotonic()
    out, cpu = run_measured(procs, cmd, env, timeout=duration + 120)
    wall = time.monotonic() - t0
    line = next((ln for ln in out.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r: WrkJson = json.loads(line[5:])
    failed = (
        r["other_status"]
        + r["connect_errors"]
        + r["read_errors"]
        + r["write_errors"]
        + r["timeouts"]
    )
    return Load(
        sent=r["sent"],
        ok=r["ok"],
        failed=failed,
        wall_s=r["duration_us"] / 1e6 or wall,
        p50_ms=r["p50_us"] / 1000 if r["completed"] else None,
        p99_ms=r["p99_us"] / 1000 if r["completed"] else None,
        cpu_s=cpu,
        latency_samples=r["completed"],
        raw=r,
    )


# The gateway ends an HTTP/2 connection gracefully after 3840 streams (gateway/server/
# uvicorn_h2.py), and h2load's timed mode does not reconnect: a long gRPC run would go idle once
# every connection had its 3840 calls. So a timed gRPC run is a series of h2load rounds, each
# short enough that no connection reaches ROUND_STREAMS calls (each round, new connections).
ROUND_STREAMS = 3000


@dataclass(frozen=True)
class _Round:
    started: int
    done: int
    ok: int
    wall_s: float
    cpu_s: float
    latencies_us: list[int]
    tail: list[str]


def run_h2load(
    procs: Procs,
    port: int,
    transport: Transport,
    body_file: Path,
    log_file: Path,
    *,
    clients: int,
    streams: int,
    duration: float | None = None,
    requests: int | None = None,
    rps: float | None = None,
    skip_first_s: float = 0.0,
) -> Load:
    """h2load for `duration` seconds or `requests` requests; latencies from its --log-file (of
    the requests answered 200, after the first `skip_first_s` seconds). A timed gRPC run is
    made of rounds (see ROUND_STREAMS)."""
    args = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", "-d", str(body_file)]
    args += ["-H", f"authorization: Bearer {API_KEY}", f"--log-file={log_file}"]
    if transport == "grpc":
        args += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        url = f"http://127.0.0.1:{port}{GRPC_PATH}"
    else:
        args += ["--h1", "-H", "content-type: application/x-protobuf"]
        url = f"http://127.0.0.1:{port}{HTTP_PATH}"
    if rps is not None:
        args += [f"--rps={rps:.3f}"]
    if duration is None:
        rounds = [_h2load_round(procs, [*args, "-n", str(requests), url], log_file, None, 0.0)]
    elif transport != "grpc" or rps is not None:
        seconds = float(max(1, round(duration)))
        timed = [*args, "-D", str(int(seconds)), url]
        rounds = [_h2load_round(procs, timed, log_file, seconds, skip_first_s)]
    else:
        rounds = []
        left = float(max(1, round(duration)))
        seconds = 1.0  # the first round measures the rate the next ones are sized by
        while left > 0.05:
            this = min(seconds, left)
            timed = [*args, "-D", f"{max(1, round(this * 1000))}ms", url]
            skip = skip_first_s if not rounds else 0.0
            done = _h2load_round(procs, timed, log_file, this, skip)
            rounds.append(done)
            left -= this
            per_connection = done.started / clients / max(this, 0.001)
            seconds = max(0.5, ROUND_STREAMS / max(per_connection, 1.0))
    lat = sorted(us for r in rounds for us in r.latencies_us)
    raw: H2loadRaw = {"output_tail": rounds[-1].tail, "latency_samples": len(lat)}
    return Load(
        sent=sum(r.started for r in rounds),
        ok=sum(r.ok for r in rounds),
        # finished without a 2xx (error, timeout, other status)
        failed=sum(max(0, r.done - r.ok) for r in rounds),
        wall_s=sum(r.wall_s for r in rounds),
        p50_ms=_ms(lat, 50),
        p99_ms=_ms(lat, 99),
        cpu_s=sum(r.cpu_s for r in rounds),
        latency_samples=len(lat),
        raw=raw,
    )


def _h2load_round(
    procs: Procs, argv: list[str], log_file: Path, seconds: float | None, skip_first_s: float
) -> _Round:
    """One h2load run (timed: `seconds`): its counts, and the latencies of its requests
    answered 200."""
    t0 = time.monotonic()
    out, cpu = run_measured(procs, pinned(LOAD_CORE, argv), dict(os.environ), 300)
    wall = time.monotonic() - t0
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if m is None:
        raise RuntimeError(f"h2load printed no result:\n{out}")
    _total, started, done = map(int, m.groups()[:3])
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    ok2xx = int(codes.group(1)) if codes else 0
    # per request: start (us since epoch), status, microseconds until the end of the response
    rows = []
    with contextlib.suppress(FileNotFoundError), open(log_file) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if rows and skip_first_s:
        t_first = min(r[0] for r in rows)
        rows = [r for r in rows if r[0] >= t_first + skip_first_s * 1e6]
    m_time = re.search(r"finished in ([\d.]+)(m?s)", out)
    if m_time:
        wall = float(m_time.group(1)) / (1000 if m_time.group(2) == "ms" else 1)
    if seconds is not None:
        wall = min(wall, seconds)
    return _Round(
        started=started,
        done=done,
        ok=ok2xx,
        wall_s=wall,
        cpu_s=cpu,
        latencies_us=[r[2] for r in rows if r[1] == 200],
        tail=out.strip().splitlines()[-12:],
    )
