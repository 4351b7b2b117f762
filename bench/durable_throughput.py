"""Throughput of the gateway with a memory queue and with a durable queue (`queue.durable: true`).

For each mode: a fresh gateway (tests/support/peers.run_gateway: a subprocess on free 127.0.0.1
ports) forwarding over http/protobuf to a counting sink in this process
(tests/support/faults.fault_sink, on a free port); `--threads` threads post `--requests` requests
of 50 spans with 900 bytes of attribute each (~50 KB) over OTLP/HTTP as fast as they are
answered (tests/support/faults.Load). Printed per mode: requests acknowledged, the seconds that
took, requests/s and MB/s, the statuses answered, and how many acknowledged spans had not reached
the sink 60 s later (should be 0). Measured, not asserted: this was
tests/test_faults.py::test_throughput_durable_vs_memory.

Bounded: each mode stops after `--requests` requests or `--max-seconds` of load, then waits at
most 60 s for the sink; every process is stopped by PID.

  uv run --frozen python bench/durable_throughput.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.faults import (
    FaultSink,
    Load,
    backend,
    fault_sink,
    new_tag,
    trace_request,
    wait_delivered,
)
from tests.support.peers import run_gateway

MODES = ("memory", "durable")
SPANS, PAD = 50, 900  # ~50 KB per request


def measure(
    sink: FaultSink, mode: str, workdir: Path, *, requests: int, threads: int, max_seconds: float
) -> str:
    """One mode: a fresh gateway under load, then the sink's account; the line printed."""
    size = len(trace_request("t", 0, SPANS, PAD))
    tag = new_tag(mode)
    queue = {"durable": True, "directory": str(workdir / "q")} if mode == "durable" else {}
    config = {
        "queue": queue,
        "backends": {"sink": backend(sink)},
        "service_backends": ["sink"],
    }
    with run_gateway(workdir, config) as gw:
        load = Load(
            gw,
            tag,
            threads=threads,
            spans=SPANS,
            pad=PAD,
            max_requests=requests,
            max_seconds=max_seconds,
        )
        t0 = time.monotonic()
        with load:
            load.wait()
        took = time.monotonic() - t0
        acked = load.acked_seqs()
        missing = wait_delivered(sink, load.acked_names(), timeout=60)
    return (
        f"{mode}: {len(acked)}/{requests} requests of {size / 1000:.0f} KB acknowledged in "
        f"{took:.2f}s = {len(acked) / took:.0f} req/s, "
        f"{len(acked) * size / took / 1e6:.1f} MB/s"
        f" (statuses {dict(load.statuses())}, missing at the sink {len(missing)})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--requests", type=int, default=1000, help="requests per mode")
    p.add_argument("--threads", type=int, default=8, help="client threads (OTLP/HTTP)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="load per mode at most")
    args = p.parse_args(argv)
    lines = []
    with tempfile.TemporaryDirectory(prefix="otlp-durable-") as tmp, fault_sink() as sink:
        for mode in MODES:
            lines.append(
                measure(
                    sink,
                    mode,
                    Path(tmp),
                    requests=args.requests,
                    threads=args.threads,
                    max_seconds=args.max_seconds,
                )
            )
    print(f"\nthroughput, {args.threads} threads -> gateway -> sink:\n  " + "\n  ".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
