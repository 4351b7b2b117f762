"""The backend every contender forwards to: bench/sink.py as a process on the load core, and
waiting until it has received everything acknowledged."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import BENCH, LOAD_CORE, Procs, http_get, pinned, proc_cpu_seconds
from bench.sink import PortStats

TENANT = "acme"  # the sink counts spans whose resource lacks tenant.id = this

SinkStats = dict[int, PortStats]  # per sink port, since the sink started


class SinkProc:
    """bench/sink.py listening on `ports`, pinned to the load core. `stats()` reads its counters
    (GET /stats); `cpu()` its CPU seconds so far."""

    def __init__(self, procs: Procs, workdir: Path, ports: tuple[int, ...]) -> None:
        self.procs = procs
        self.ports = ports
        self.log = open(workdir / "sink.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = procs.start(
            pinned(
                LOAD_CORE,
                [
                    sys.executable,
                    str(BENCH / "sink.py"),
                    "--ports",
                    ",".join(map(str, ports)),
                    "--tenant",
                    TENANT,
                    "--dump-dir",
                    str(workdir),
                ],
            ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                self.stats()
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sink did not start: {(workdir / 'sink.log').read_text()}")
            time.sleep(0.05)

    def stats(self) -> SinkStats:
        # {"<port>": PortStats as a dict}: sink.py's stats_json()
        data: dict[str, dict[str, Any]] = json.loads(http_get(self.ports[0], "/stats"))
        return {int(port): PortStats(**s) for port, s in data.items()}

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.procs.stop(self.proc)
        self.log.close()


def received(after: SinkStats, before: SinkStats, ports: tuple[int, ...]) -> tuple[PortStats, ...]:
    """What each of `ports` received between two `stats()`, in the order of `ports`."""
    return tuple(
        PortStats(
            requests=after[p].requests - before[p].requests,
            spans=after[p].spans - before[p].spans,
            wire_bytes=after[p].wire_bytes - before[p].wire_bytes,
            body_bytes=after[p].body_bytes - before[p].body_bytes,
            untagged_spans=after[p].untagged_spans - before[p].untagged_spans,
            errors=after[p].errors - before[p].errors,
        )
        for p in ports
    )


def wait_drained(
    sink: SinkProc, before: SinkStats, ports: tuple[int, ...], min_spans: int
) -> SinkStats:
    """Wait until every port has at least `min_spans` more spans than `before` and nothing more
    arrived for 0.8 s (or nothing at all for 5 s, or 60 s passed)."""
    start = time.monotonic()
    last = None
    last_change = start
    while True:
        now = time.monotonic()
        stats = sink.stats()
        spans = tuple(stats[p].spans - before[p].spans for p in ports)
        if spans != last:
            last, last_change = spans, now
        quiet = now - last_change
        if (min(spans) >= min_spans and quiet >= 0.8) or quiet >= 5.0 or now - start > 60:
            return stats
        time.sleep(0.1)
