"""Fault tests with exact accounting: the gateway as a subprocess under load, a counting sink
downstream, and faults in between (kill -9, a backend down, 429 with Retry-After, overload,
SIGTERM). Every request carries unique span names `<tag>:<seq>:<i>`, the load generator records
which requests got 200, and the sink counts every span name it was given:

  acknowledged  the client got 200 (OK on gRPC)
  delivered     the sink answered 200 for it (at least once)
  duplicated    deliveries beyond the first
  lost          acknowledged and never delivered (must be 0)

Every load loop is bounded in requests and seconds; every process is stopped by PID."""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

MiB = 1024 * 1024

# ---------------------------------------------------------------------------------------------
# Accounting (the requests, the counting sink and the load generator: tests/support/faults.py)


@dataclass
class Account:
    acknowledged: int
    delivered: int
    duplicated: int
    lost: int
    delivered_not_acked: int

    def __str__(self) -> str:
        return (
            f"acknowledged={self.acknowledged} delivered={self.delivered} "
            f"duplicated={self.duplicated} lost={self.lost} "
            f"delivered-but-not-acknowledged={self.delivered_not_acked}"
        )


def account(sink: FaultSink, tag: str, acked: set[str]) -> Account:
    delivered = sink.delivered_names(tag)
    return Account(
        acknowledged=len(acked),
        delivered=len(delivered),
        duplicated=sink.duplicates(tag),
        lost=len(acked - delivered),
        delivered_not_acked=len(delivered - acked),
    )


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples the gateway's VmRSS every `interval` s in a thread; records the peak and whether
    the process was alive at every sample."""

    def __init__(self, proc: Any, interval: float = 0.1) -> None:
        self.proc, self.interval = proc, interval
        self.peak = 0
        self.samples = 0
        self.died = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.proc.poll() is not None:
                self.died = True
                return
            rss = rss_bytes(self.proc.pid)
            if rss is not None:
                self.peak = max(self.peak, rss)
                self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def log_problems(tmp_path: Path) -> dict[str, int]:
    """Counts of notable lines in every gateway log of the test."""
    text = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("gateway-*.log")))
    return {
        k: text.count(k)
        for k in ("Traceback", "REPAIRED", "records pending", "dropped", "lost", "ERROR")
    }


# ---------------------------------------------------------------------------------------------
# 1. kill -9 under load, durable queue


def test_kill_9_under_load_durable_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))  # printed: rerun with it
    rng = random.Random(seed)
    tag = new_tag("kill")
    # modes of the sink per round: a backlog on disk at kill time in the failing/slow ones
    modes = ["ok", "503", "slow", "503", "ok", "slow", "503", "ok", "503", "slow"]
    with fault_sink() as sink:
        config = {
            "queue": {"durable": True, "directory": str(tmp_path / "q")},
            "backends": {"sink": backend(sink)},
            "service_backends": ["sink"],
            "retry": {"initial_interval": "100ms", "max_interval": "1s", "max_elapsed": "10m"},
        }
        acked: set[str] = set()
        in_flight_at_kill: list[int] = []
        kill_times: list[float] = []
        seq_base = 0
        for rnd, mode in enumerate(modes):
            sink.status = 503 if mode == "503" else 200
            sink.delay = 0.3 if mode == "slow" else 0.0
            with run_gateway(tmp_path, config) as gw:
                load = Load(
                    gw,
                    tag,
                    threads=6,
                    spans=4,
                    max_requests=5000,
                    max_seconds=5,
                    first_seq=seq_base,  # unique seqs across rounds
                )
                with load:
                    time.sleep(rng.uniform(0.5, 2.0))
                    in_flight_at_kill.append(load.in_flight)
                    gw.proc.kill()  # SIGKILL with requests in flight
                    kill_times.append(time.monotonic())
                    gw.proc.wait(10)
                acked |= load.acked_names()
                seq_base = max(load.results, default=seq_base) + 1
                statuses = load.statuses()
            print(
                f"round {rnd} ({mode}): {dict(statuses)}, in flight at kill {in_flight_at_kill[-1]}"
            )
        sink.status, sink.delay = 200, 0.0
        with run_gateway(tmp_path, config) as gw:
            missing = wait_delivered(sink, acked, timeout=60)
            time.sleep(1.5)  # acks written, emptied segments deleted
            left = sum(f.stat().st_size for f in (tmp_path / "q").rglob("*") if f.is_file())
            log = gw.log()
        result = account(sink, tag, acked)
        with sink._lock:
            dups = [
                (sink.first_arrival[n], sink.first_seen[n]) for n, c in sink.counts.items() if c > 1
            ]
    # Why each duplicate: its first delivery was in flight at a kill (a kill came within 250 ms
    # of it: the gateway had no time to record the acknowledgement), or it was answered long
    # before the next kill (its acknowledgement was lost), or no kill followed it at all.
    in_flight = stale = no_kill = 0
    for arrived, answered in dups:
        if any(arrived - 0.25 <= k <= answered + 0.25 for k in kill_times):
            in_flight += 1
        elif any(k > answered for k in kill_times):
            stale += 1
        else:
            no_kill += 1
    print(
        f"\nkill -9 x{len(modes)} (seed {seed}): {result}; in flight at kills {in_flight_at_kill}; "
        f"duplicated spans: in flight at a kill {in_flight}, delivered long before a kill "
        f"{stale}, without a kill {no_kill}; queue directory after delivery {left} bytes; "
        f"gateway logs: {log_problems(tmp_path)}"
    )
    assert result.acknowledged > 0
    assert sum(in_flight_at_kill) > 0, "no request was in flight at any kill"
    assert not missing, (
        f"{len(missing)} acknowledged spans lost, e.g. {sorted(missing)[:5]}\n{log[-3000:]}"
    )
    assert result.lost == 0
    assert no_kill == 0  # a duplicate needs a crash


# ---------------------------------------------------------------------------------------------
# 2. one backend down for 30 s, the other healthy


def test_backend_down_30s_other_unaffected_then_caught_up(tmp_path: Path) -> None:
    tag = new_tag("down")
    a = FaultSink()
    a.start()
    try:
        with fault_sink() as b:
            config = {
                "backends": {"a": backend(a), "b": backend(b)},
                "service_backends": ["a", "b"],
                "retry": {"initial_interval": "200ms", "max_interval": "2s", "max_elapsed": "120s"},
            }
            with run_gateway(tmp_path, config) as gw:
                a.status = 503  # without Retry-After: the gateway's own backoff applies
                outage_start = time.monotonic()
                with Load(
                    gw, tag, threads=4, spans=5, rate=40, max_requests=1400, max_seconds=30
                ) as load:
                    time.sleep(15)
                    a.stop()  # second half of the outage: connection refused
                    load.wait()
                # read before A is back: a retry may land the moment it is
                a_during = len(a.delivered_names(tag))
                a.status = 200
                a.start()
                outage = time.monotonic() - outage_start
                acked = load.acked_names()
                statuses = load.statuses()
                missing_a = wait_delivered(a, acked, timeout=60)
                caught_up = time.monotonic() - outage_start - outage
                missing_b = wait_delivered(b, acked, timeout=10)
                # B got every request within 2 s of its sending, during the outage (read once B
                # has everything: the last requests' deliveries may still be in flight when the
                # load ends)
                latency = {
                    s: b.first_seen.get(f"{tag}:{s}:0", float("inf")) - o.sent
                    for s, o in list(load.results.items())
                    if o.status == 200
                }
                log = gw.log()
    finally:
        a.stop()
    ra, rb = account(a, tag, acked), account(b, tag, acked)
    worst = max(latency.values(), default=0.0)
    print(
        f"\nA down {outage:.1f}s (503, then refused): client statuses {dict(statuses)}; "
        f"B worst latency {worst:.2f}s; A had {a_during} spans during the outage, caught up "
        f"{caught_up:.1f}s after it; A: {ra}; B: {rb}"
    )
    assert statuses == {200: len(load.results)}, statuses
    assert len(load.results) >= 500
    assert a_during == 0
    assert worst < 2.0, sorted(latency.items(), key=lambda kv: -kv[1])[:5]
    assert not missing_a and not missing_b, log[-3000:]
    assert ra.lost == 0 and rb.lost == 0


# ---------------------------------------------------------------------------------------------
# 3. 429 with Retry-After: 2 for 20 s


def test_429_retry_after_is_honoured(tmp_path: Path) -> None:
    tag = new_tag("r429")
    with fault_sink(status=429, retry_after="2") as sink:
        config = {
            "backends": {"sink": backend(sink)},
            "service_backends": ["sink"],
            "retry": {"initial_interval": "100ms", "max_interval": "1s", "max_elapsed": "120s"},
        }
        with run_gateway(tmp_path, config) as gw:
            started = time.monotonic()
            with Load(gw, tag, threads=2, spans=5, rate=2, max_requests=30, max_seconds=15) as load:
                load.wait()
            time.sleep(max(0.0, 20 - (time.monotonic() - started)))
            sink.status, sink.retry_after = 200, None
            acked = load.acked_names()
            missing = wait_delivered(sink, acked, timeout=30)
            log = gw.log()
        result = account(sink, tag, acked)
        with sink._lock:
            attempts = list(sink.attempts)
    by_batch: dict[frozenset[int], list[tuple[float, int]]] = collections.defaultdict(list)
    for t, status, seqs in attempts:
        if seqs:
            by_batch[seqs].append((t, status))
    gaps = [
        later[0] - earlier[0]
        for tries in by_batch.values()
        for earlier, later in itertools.pairwise(tries)
    ]
    counts = collections.Counter(len(tries) for tries in by_batch.values())
    refused = sum(1 for _, status, _ in attempts if status == 429)
    print(
        f"\n429 for 20 s: {len(attempts)} attempts ({refused} answered 429) for {len(by_batch)} "
        f"batches; attempts per batch {dict(sorted(counts.items()))}; spacing min "
        f"{min(gaps):.2f}s max {max(gaps):.2f}s; {result}"
    )
    assert load.statuses() == {200: 30}
    assert refused >= 20
    assert gaps and min(gaps) >= 1.9, sorted(gaps)[:5]
    assert max(gaps) < 4.0, sorted(gaps)[-5:]
    # every batch was attempted until the 429s stopped, each at most every 2 s
    assert all(len(tries) <= 12 for tries in by_batch.values())
    assert all(tries[-1][1] == 200 for tries in by_batch.values())
    assert not missing and result.lost == 0, log[-3000:]
    assert result.duplicated == 0


# ---------------------------------------------------------------------------------------------
# 4. overload at 3x what the backend can take


def test_overload_3x_bounded_memory_then_recovers(tmp_path: Path) -> None:
    tag = new_tag("over")
    capacity = 300_000  # bytes/s the backend takes
    spans, pad = 20, 800  # ~17 KB per request
    size = len(trace_request(tag, 0, spans, pad))
    rate = 3 * capacity / size  # requests/s: 3x capacity
    with fault_sink(bandwidth=capacity) as sink:
        config = {
            "queue": {"max_bytes": "2MiB"},
            "backends": {
                "sink": backend(sink, compression="none", batch_max_bytes="128KiB", concurrency=2)
            },
            "service_backends": ["sink"],
            "retry": {"initial_interval": "200ms", "max_interval": "2s", "max_elapsed": "120s"},
        }
        with run_gateway(tmp_path, config) as gw:
            base_rss = rss_bytes(gw.proc.pid) or 0
            with RssSampler(gw.proc) as rss:
                load = Load(
                    gw,
                    tag,
                    threads=5,
                    grpc_threads=2,
                    spans=spans,
                    pad=pad,
                    rate=rate,
                    max_requests=int(rate * 20),
                    max_seconds=15,
                )
                with load:
                    load.wait()
                sent_bytes = len(load.results) * size
                statuses = load.statuses()
                acked = load.acked_names()
                # the backlog drains (2 MiB at 300 KB/s), then new requests are taken and arrive
                missing = wait_delivered(sink, acked, timeout=40)
                after = Load(
                    gw, tag + "-after", threads=1, spans=5, max_requests=10, max_seconds=10
                )
                with after:
                    after.wait()
                missing_after = wait_delivered(sink, after.acked_names(), timeout=10)
            alive = gw.proc.poll() is None
            log = gw.log()
        result = account(sink, tag, acked)
    http_429 = [o for o in load.results.values() if o.status == 429]
    grpc_re = [o for o in load.results.values() if o.status == "RESOURCE_EXHAUSTED"]
    print(
        f"\noverload: {len(load.results)} requests of {size} B at {rate:.0f}/s "
        f"({sent_bytes / 15 / 1e6:.2f} MB/s offered, backend {capacity / 1e6:.2f} MB/s) -> "
        f"{dict(statuses)}; 429 with Retry-After {sum(1 for o in http_429 if o.retry_after)}"
        f"/{len(http_429)}, RESOURCE_EXHAUSTED with RetryInfo "
        f"{sum(1 for o in grpc_re if o.retry_info)}/{len(grpc_re)}; RSS start "
        f"{base_rss / MiB:.1f} MiB, peak {rss.peak / MiB:.1f} MiB ({rss.samples} samples); "
        f"after: {dict(after.statuses())}; {result}"
    )
    assert alive and not rss.died, log[-3000:]
    assert rss.samples > 100
    assert rss.peak < 150 * MiB
    assert http_429 and all(o.retry_after and int(o.retry_after) >= 1 for o in http_429)
    assert grpc_re and all(o.retry_info for o in grpc_re)
    assert set(statuses) <= {200, 429, "OK", "RESOURCE_EXHAUSTED"}, statuses
    assert after.statuses() == {200: 10}
    assert not missing and not missing_after and result.lost == 0, log[-3000:]
    assert result.delivered_not_acked == 0  # a refused request was not forwarded either


# ---------------------------------------------------------------------------------------------
# 5. graceful shutdown


def test_sigterm_memory_queue_drains_before_exit(tmp_path: Path) -> None:
    tag = new_tag("term")
    with fault_sink(delay=0.4) as sink:
        config = {
            "backends": {"sink": backend(sink, concurrency=1, batch_max_bytes="1KiB")},
            "service_backends": ["sink"],
            "shutdown_timeout": "20s",
        }
        with run_gateway(tmp_path, config) as gw:
            with Load(gw, tag, threads=1, spans=3, max_requests=20, max_seconds=10) as load:
                load.wait()
            acked = load.acked_names()
            at_term = len(sink.delivered_names(tag))
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            code = gw.proc.wait(30)
            took = time.monotonic() - t0
            log = gw.log()
        result = account(sink, tag, acked)
    print(
        f"\nSIGTERM (memory): {at_term}/{len(acked)} spans delivered at SIGTERM, exit {code} "
        f"after {took:.1f}s; {result}"
    )
    assert load.statuses() == {200: 20}
    assert at_term < len(acked)  # batches were still queued when SIGTERM came
    assert code == 0, log[-3000:]
    assert took < 20 + 5
    assert result.lost == 0 and result.duplicated == 0, log[-3000:]


def test_sigterm_durable_backend_down_keeps_data_for_next_start(tmp_path: Path) -> None:
    tag = new_tag("termd")
    with fault_sink(status=503) as sink:
        config = {
            "queue": {"durable": True, "directory": str(tmp_path / "q")},
            "backends": {"sink": backend(sink)},
            "service_backends": ["sink"],
            "retry": {"initial_interval": "100ms", "max_interval": "500ms", "max_elapsed": "5m"},
            "shutdown_timeout": "2s",
        }
        with run_gateway(tmp_path, config) as gw:
            with Load(gw, tag, threads=2, spans=4, max_requests=40, max_seconds=10) as load:
                load.wait()
            acked = load.acked_names()
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            code = gw.proc.wait(30)
            took = time.monotonic() - t0
            first_log = gw.log()
        assert not sink.delivered_names(tag)
        sink.status = 200
        with run_gateway(tmp_path, config) as gw:
            missing = wait_delivered(sink, acked, timeout=30)
            second_log = gw.log()
        result = account(sink, tag, acked)
    print(f"\nSIGTERM (durable, backend down): exit {code} after {took:.1f}s; next start: {result}")
    assert load.statuses() == {200: 40}
    assert code == 0, first_log[-3000:]
    assert took < 2 + 5
    assert "stay on disk" in first_log
    assert not missing and result.lost == 0, second_log[-3000:]
