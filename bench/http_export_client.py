"""Client CPU per OTLP/HTTP export: the HTTP clients the `http/protobuf` exporter can use.

Each client posts the 512-span request of run.py, gzipped at level 1 (about 40 KB), to the
counting sink (sink.py, core 1) with 4 requests in flight; the client runs in its own process on
core 0 and its CPU is `time.process_time()` (every thread: pyqwest's tokio workers too) over the
measured requests, after 200 warm-up requests. Clients: httpx (AsyncClient, h11), httpx over
pyqwest's transport (pyqwest.httpx), and pyqwest's own Client, as
gateway/delivery/exporters/http.py uses it. Prints one JSON line per run and a median table.

  uv run --frozen python bench/http_export_client.py --requests 4000 --repeat 3

Port 4620 on 127.0.0.1 (`--port`); the sink is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLIENTS = ("httpx", "httpx-over-pyqwest", "pyqwest")
PORT = 4620


async def _measure(client: str, requests: int, concurrency: int, port: int) -> dict[str, object]:
    import httpx
    import pyqwest
    from pyqwest.httpx import AsyncPyqwestTransport

    from bench.payload import build_request
    from gateway.otlp import gz

    url = f"http://127.0.0.1:{port}/v1/traces"
    body = gz.gzip_compress(build_request(), 1)
    headers = {"content-type": "application/x-protobuf", "content-encoding": "gzip"}

    def transport() -> pyqwest.HTTPTransport:
        return pyqwest.HTTPTransport(timeout=10, enable_otel=False, follow_redirects=False)

    closers = []
    if client == "pyqwest":
        pq_transport = transport()
        pq = pyqwest.Client(pq_transport)
        closers.append(pq_transport.aclose)

        async def post() -> int:
            return (await pq.post(url, headers, body)).status
    else:
        hx = (
            httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=8))
            if client == "httpx"
            else httpx.AsyncClient(transport=AsyncPyqwestTransport(transport()))
        )
        closers.append(hx.aclose)

        async def post() -> int:
            return (await hx.post(url, content=body, headers=headers)).status_code

    for _ in range(200):
        assert await post() == 200
    left = [requests]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            assert await post() == 200

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for close in closers:
        await close()
    return {
        "client": client,
        "body_bytes": len(body),
        "cpu_us_per_request": round(cpu / requests * 1e6, 1),
        "requests_per_s": round(requests / wall),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--port", type=int, default=PORT, help="the sink's (default %(default)s)")
    p.add_argument("--one", choices=CLIENTS, help=argparse.SUPPRESS)  # the measuring child
    args = p.parse_args(argv)
    if args.one:
        print(
            json.dumps(asyncio.run(_measure(args.one, args.requests, args.concurrency, args.port)))
        )
        sys.stdout.flush()
        # pyqwest's runtime threads can crash the interpreter's finalization in a process that
        # exits right after its last request (SIGABRT/SIGBUS in 2 of 6 runs here); the result is out
        os._exit(0)
    here = Path(__file__).resolve()
    sink = subprocess.Popen(
        [
            "taskset",
            "-c",
            "1",
            sys.executable,
            str(here.parent / "sink.py"),
            "--ports",
            str(args.port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    rows: list[dict[str, object]] = []
    try:
        time.sleep(1.0)
        for _ in range(args.repeat):
            for client in CLIENTS:
                sizes = ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
                sizes += ["--port", str(args.port)]
                child = subprocess.run(
                    ["taskset", "-c", "0", sys.executable, str(here), "--one", client, *sizes],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if child.returncode != 0:
                    raise SystemExit(f"{client}: exit {child.returncode}\n{child.stderr[-3000:]}")
                out = child.stdout
                rows.append(json.loads(out))
                print(out.strip(), flush=True)
    finally:
        sink.terminate()
        sink.wait(10)
    print("\n| client | CPU µs per export (median) | runs |\n|---|---|---|")
    for client in CLIENTS:
        values = [float(str(r["cpu_us_per_request"])) for r in rows if r["client"] == client]
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {client} | {statistics.median(values):.0f} | {runs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
