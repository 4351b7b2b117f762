"""Gateway memory (RSS) under load, for sizing container memory limits (Nomad, Kubernetes).

Starts the gateway (`python -m gateway serve --config`, tenants with keys, a durable or memory
queue) and a counting OTLP/HTTP sink as its backend, all on 127.0.0.1, then runs the scenarios
below one after the other while sampling the gateway's VmRSS every 50 ms. Every scenario is bounded
in requests and time. Prints a JSON line with the settings, then one per scenario.

Load: `--clients` threads, half OTLP/gRPC (grpcio, gzip), half OTLP/HTTP protobuf (httpx, gzip),
each sending traces (512 spans, ~245 KB), metrics (200 data points) and logs (256 records) in
turn, as fast as the gateway answers (closed loop: the most the gateway can be made to hold), two
tenants. Each scenario runs in a fresh gateway and ends when the queue has drained:

  idle             started, nothing sent
  steady           healthy backend
  outage-recovery  the backend answers 503 for `--requests` requests (durable: the queue grows on
                   disk; memory: until full, then clients get 429), then it is back while the load
                   goes on for another `--requests`, and the backlog drains
  big-requests     `--clients` x 4 requests of 4 MiB each (in-flight budget, decompression caps)
  many-clients     `--many-clients` connections (200), 10 requests each, all open at once

  python bench/memory.py --queue durable --requests 3000 --clients 16
  python bench/memory.py --queue memory --requests 3000 --clients 16
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import httpx  # noqa: E402

from bench.export_client import build_request  # noqa: E402
from gateway.tenancy import keys  # noqa: E402
from tests.support.peers import Sink, run_gateway  # noqa: E402

GRPC_PATHS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}


def metrics_request(points: int = 200, seed: int = 3) -> bytes:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

    rnd = random.Random(seed)
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="checkout"))
    )
    sm = rm.scope_metrics.add()
    for m in range(points // 10):
        metric = sm.metrics.add(name=f"http.server.request.count.{m}", unit="1")
        metric.sum.aggregation_temporality = (
            AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        )
        metric.sum.is_monotonic = True
        for p in range(10):
            dp = metric.sum.data_points.add(
                as_int=rnd.randrange(10**6), time_unix_nano=1_700_000_000_000_000_000 + p
            )
            dp.attributes.append(
                KeyValue(key="http.route", value=AnyValue(string_value=f"/api/{p}"))
            )
    return req.SerializeToString()


def logs_request(records: int = 256, seed: int = 5) -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    rnd = random.Random(seed)
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="checkout"))
    )
    sl = rl.scope_logs.add()
    for i in range(records):
        rec = sl.log_records.add(
            time_unix_nano=1_700_000_000_000_000_000 + i,
            severity_number=9,
            severity_text="INFO",
            body=AnyValue(string_value=f"handled order {rnd.randrange(10**9)} in {i} ms " * 3),
        )
        rec.attributes.append(KeyValue(key="order.id", value=AnyValue(int_value=i)))
    return req.SerializeToString()


def big_request(target_bytes: int) -> bytes:
    """A trace request of about `target_bytes`, made of 512-span requests concatenated (a valid
    request); random enough that gzip does not shrink it to nothing."""
    one = build_request()
    return one * max(1, target_bytes // len(one))


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.peak_kib = max(self.peak_kib, self.rss_kib())

    @contextlib.contextmanager
    def window(self) -> Iterator[RssSampler]:
        self.peak_kib = self.rss_kib()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)


def run_load(
    grpc_port: int,
    http_port: int,
    keys_by_tenant: list[str],
    payloads: dict[str, bytes],
    clients: int,
    requests: int,
    max_seconds: float,
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds
    gz = {signal: gzip.compress(body, 1) for signal, body in payloads.items()}
    signals = list(payloads)

    def grpc_worker(i: int) -> None:
        key = keys_by_tenant[i % len(keys_by_tenant)]
        local: Counter[str] = Counter()
        with grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", -1)]
        ) as channel:
            calls = {
                s: channel.unary_unary(
                    GRPC_PATHS[s], request_serializer=lambda b: b, response_deserializer=lambda b: b
                )
                for s in signals
            }
            for n in counter:
                if n >= requests or time.monotonic() > deadline:
                    break
                signal = signals[n % len(signals)]
                try:
                    calls[signal](
                        payloads[signal],
                        timeout=30,
                        compression=grpc.Compression.Gzip,
                        metadata=(("authorization", f"Bearer {key}"),),
                    )
                    local["grpc ok"] += 1
                except grpc.RpcError as exc:
                    local[f"grpc {exc.code().name}"] += 1
        with lock:
            outcomes.update(local)

    def http_worker(i: int) -> None:
        key = keys_by_tenant[i % len(keys_by_tenant)]
        local: Counter[str] = Counter()
        with httpx.Client(timeout=30) as client:
            for n in counter:
                if n >= requests or time.monotonic() > deadline:
                    break
                signal = signals[n % len(signals)]
                try:
                    r = client.post(
                        f"http://127.0.0.1:{http_port}/v1/{signal}",
                        content=gz[signal],
                        headers={
                            "content-type": "application/x-protobuf",
                            "content-encoding": "gzip",
                            "authorization": f"Bearer {key}",
                        },
                    )
                    local[f"http {r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    local[f"http {type(exc).__name__}"] += 1
        with lock:
            outcomes.update(local)

    threads = [
        threading.Thread(target=grpc_worker if i % 2 == 0 else http_worker, args=(i,), daemon=True)
        for i in range(clients)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 60)
    wall = time.monotonic() - t0
    done = sum(outcomes.values())
    return {
        "requests": done,
        "wall_s": round(wall, 1),
        "req_per_s": round(done / wall, 1) if wall else None,
        "outcomes": dict(outcomes),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--queue", choices=["durable", "memory"], default="durable")
    p.add_argument("--requests", type=int, default=3000, help="per load step")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=120.0, help="per load step")
    p.add_argument("--max-inflight", default=None, help="limits.max_inflight_bytes, e.g. 64MiB")
    p.add_argument("--queue-max", default=None, help="queue.max_bytes, e.g. 64MiB")
    p.add_argument("--many-clients", type=int, default=200, help="connections, many-clients")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    args = p.parse_args()

    payloads = {
        "traces": build_request(),
        "metrics": metrics_request(),
        "logs": logs_request(),
    }
    big = {"traces": big_request(4 << 20)}
    steps: dict[str, list[tuple[int, dict[str, bytes], int]]] = {
        "idle": [],
        "steady": [(200, payloads, args.requests)],
        "outage-recovery": [(503, payloads, args.requests), (200, payloads, args.requests)],
        "big-requests": [(200, big, args.clients * 4)],
        "many-clients": [(200, payloads, args.many_clients * 10)],
    }
    print(
        json.dumps(
            {
                "queue": args.queue,
                "clients": args.clients,
                "max_inflight": args.max_inflight or "default",
                "queue_max": args.queue_max or "default",
                "request_bytes": {s: len(b) for s, b in payloads.items()},
                "big_request_bytes": len(big["traces"]),
            }
        ),
        flush=True,
    )
    for name in args.scenarios.split(","):
        clients = args.many_clients if name == "many-clients" else args.clients
        result = scenario(args, steps[name], clients)
        print(json.dumps({"scenario": name, "clients": clients, **result}), flush=True)


SCENARIOS = ("idle", "steady", "outage-recovery", "big-requests", "many-clients")


def scenario(
    args: argparse.Namespace, steps: list[tuple[int, dict[str, bytes], int]], clients: int
) -> Any:
    """One fresh gateway: the steps one after the other (backend status, payloads, requests),
    then the queue drains; RSS sampled all along."""
    tenant_keys = [keys.new_key() for _ in range(2)]
    with tempfile.TemporaryDirectory(prefix="gw-memory-") as tmp, Sink().running() as sink:
        queue: dict[str, Any] = {"durable": args.queue == "durable"}
        queue["directory"] = str(Path(tmp) / "queue")
        if args.queue_max:
            queue["max_bytes"] = args.queue_max
        config: dict[str, Any] = {
            "queue": queue,
            "backends": {
                "central": {
                    "protocol": "http/protobuf",
                    "endpoint": sink.endpoint,
                    "headers": {"X-Scope-OrgID": "{tenant}"},
                    "timeout": "5s",
                }
            },
            "service_backends": ["central"],
            "retry": {"initial_interval": "200ms", "max_interval": "1s", "max_elapsed": "10m"},
            "tenants": {
                f"team-{i}": {"api_keys": [keys.config_entry(k)]} for i, k in enumerate(tenant_keys)
            },
        }
        if args.max_inflight:
            config["limits"] = {"max_inflight_bytes": args.max_inflight}
        with run_gateway(Path(tmp), config) as gw:
            sampler = RssSampler(gw.proc.pid)
            time.sleep(1.0)
            out: dict[str, Any] = {"start_rss_mib": round(sampler.rss_kib() / 1024, 1)}
            loads = []
            with sampler.window():
                time.sleep(1.0)
                for status, body, n in steps:
                    sink.status = status
                    load = run_load(
                        gw.grpc_port,
                        gw.http_port,
                        tenant_keys,
                        body,
                        clients,
                        n,
                        args.max_seconds,
                    )
                    loads.append({"backend_status": status, **load})
                sink.status = 200
                # the queue drains (retries after an outage): until the sink gets nothing new
                # for 2 s, at most 90 s
                last, quiet_since, t_end = -1, time.monotonic(), time.monotonic() + 90
                while time.monotonic() < t_end and time.monotonic() - quiet_since < 2.0:
                    now = len(sink.received)
                    if now != last:
                        last, quiet_since = now, time.monotonic()
                    time.sleep(0.2)
            out["peak_rss_mib"] = round(sampler.peak_kib / 1024, 1)
            out["vm_hwm_mib"] = round(_status_kib(gw.proc.pid, "VmHWM") / 1024, 1)
            out["end_rss_mib"] = round(sampler.rss_kib() / 1024, 1)
            out["delivered_requests"] = len(sink.received)
            out["alive"] = gw.proc.poll() is None
            out["load"] = loads
    return out


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
