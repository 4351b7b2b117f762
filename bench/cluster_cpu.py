"""What shared quotas (`cluster`) cost the gateway: CPU seconds per 1,000 spans with and without
the section, at the same paced load, at 1 and 64 spans per request.

One gateway at a time (pinned to the contender core; the paced client, bench/sink.py and a real
redis-server on the load core), its tenant with a quota far above the load so nothing is refused:
with `cluster` every request takes from the leased pools and the background task tops them up from
Redis; without, the tenant's local token buckets. The gateway's CPU (utime + stime) is read over a
measured stretch after a warm-up; the runs alternate (off, on) `--repeat` times and the median of
each is reported, with the ratio on / off.

  python bench/cluster_cpu.py                 # 10 s each, 2,000 req/s at 1 span, 500 at 64
  python bench/cluster_cpu.py --seconds 20 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/cluster_cpu.py`: the bench.* modules next to it

import yaml  # noqa: E402

from bench.backend import TENANT, SinkProc  # noqa: E402
from bench.contenders import API_KEY  # noqa: E402
from bench.paced import run_paced_http  # noqa: E402
from bench.payload import HTTP_PATH, build_request  # noqa: E402
from bench.procs import (  # noqa: E402
    CONTENDER_CORE,
    LOAD_CORE,
    Procs,
    http_post,
    pinned,
    proc_cpu_seconds,
)

QUOTA = 1e9  # items per second: never refuses
HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/x-protobuf"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answering(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if http_post(port, HTTP_PATH, b"", HEADERS) == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not answer:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def config(sink_port: int, redis_url: str | None) -> dict[str, object]:
    import hashlib

    out: dict[str, object] = {
        "listen": [f"127.0.0.1:{free_port()}"],
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "backends": {
            "sink": {
                "protocol": "http/protobuf",
                "endpoint": f"http://127.0.0.1:{sink_port}",
                "compression": "gzip",
            }
        },
        "service_backends": ["sink"],
        "tenants": {
            TENANT: {
                "api_keys": ["sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()],
                "quota": {"items_per_second": QUOTA, "burst_seconds": 1},
            }
        },
    }
    if redis_url is not None:
        out["cluster"] = {"redis": redis_url, "name": "bench"}
    return out


def measure(
    procs: Procs, workdir: Path, cfg: dict[str, object], spans: int, rate: float, seconds: float
) -> float:
    """Gateway CPU seconds per 1,000 spans acknowledged, over `seconds` after a 3 s warm-up."""
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = workdir / "gateway.log"
    port = int(str(cfg["listen"][0]).rpartition(":")[2])  # type: ignore[index]
    with open(log, "wb") as out:
        gw = procs.start(
            pinned(CONTENDER_CORE, [sys.executable, "-m", "gateway", "serve", "-c", str(path)]),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_answering(port, gw, log)
        body = build_request(spans)
        run_paced_http(port, body, rate=rate, requests=int(rate * 3))  # warm-up
        cpu0 = proc_cpu_seconds(gw.pid)
        load = run_paced_http(port, body, rate=rate, requests=int(rate * seconds))
        cpu = proc_cpu_seconds(gw.pid) - cpu0
        if load.failed:
            raise RuntimeError(f"{load.failed} of {load.sent} requests failed (refused?)")
        return cpu / (load.ok * spans / 1000)
    finally:
        procs.stop(gw)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--repeat", type=int, default=2, help="runs of each (off, on) pair")
    p.add_argument("--rate-1", type=float, default=2000.0, help="requests/s at 1 span")
    p.add_argument("--rate-64", type=float, default=500.0, help="requests/s at 64 spans")
    opts = p.parse_args()
    import os

    os.sched_setaffinity(0, {LOAD_CORE})  # the paced client shares the load core
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="cluster-cpu-") as tmp:
        workdir = Path(tmp)
        try:
            redis_port, sink_port = free_port(), free_port()
            procs.start(
                pinned(
                    LOAD_CORE,
                    [
                        "redis-server",
                        *("--bind", "127.0.0.1", "--port", str(redis_port)),
                        *("--save", "", "--appendonly", "no", "--dir", tmp),
                    ],
                ),
                stdout=subprocess.DEVNULL,
            )
            SinkProc(procs, workdir, (sink_port,))
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            print("spans/request  req/s  cluster  CPU s per 1,000 spans (runs)")
            for spans, rate in ((1, opts.rate_1), (64, opts.rate_64)):
                runs: dict[str, list[float]] = {"off": [], "on": []}
                for _ in range(opts.repeat):
                    for mode, url in (("off", None), ("on", redis_url)):
                        cfg = config(sink_port, url)
                        runs[mode].append(measure(procs, workdir, cfg, spans, rate, opts.seconds))
                med = {m: statistics.median(v) for m, v in runs.items()}
                for mode in ("off", "on"):
                    values = ", ".join(f"{v:.4f}" for v in runs[mode])
                    print(f"{spans:>13}  {rate:>5.0f}  {mode:>7}  {med[mode]:.4f} ({values})")
                print(f"{spans:>13}  {rate:>5.0f}  on/off   {med['on'] / med['off']:.3f}")
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
