"""gRPC soak: one long-lived OTLP/gRPC client, many concurrent exports, count every failure.

Starts the gateway (`python -m gateway serve --config`, as tests/support/peers.run_gateway does)
with `server: uvicorn | hypercorn` and no backends (data is accepted and dropped), then runs
`--concurrency` threads over ONE client until `--requests` export calls are done (or
`--max-seconds` passed: the run then says `"truncated": true`). Prints one JSON line.

  --client sdk     one opentelemetry-sdk OTLPSpanExporter shared by all threads; it retries
                   UNAVAILABLE etc. itself, so `failure` = export() returned FAILURE after its
                   retries. `attempts` counts every RPC attempt's status (a wrapped stub).
  --client grpcio  one grpc.insecure_channel, unary calls of pre-serialized bytes, no retries:
                   every error shows.

Gateway cost: CPU seconds (utime+stime from /proc/<pid>/stat, during the load only) and peak RSS
(VmHWM). Example:

  python bench/grpc_soak.py --server uvicorn --client sdk --requests 50000 --concurrency 32
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# grpc logs each GOAWAY at INFO; the gateway log is counted instead
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import yaml  # noqa: E402

from tests.support.peers import Gateway, free_port, wait_for_port  # noqa: E402

EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SDK_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after "(comm)": state is field 3, utime 14, stime 15 (1-based) -> indexes 11, 12 here
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


@contextlib.contextmanager
def start_gateway(tmp: Path, config: dict[str, Any], launcher: str | None) -> Iterator[Gateway]:
    """Like tests/support/peers.run_gateway, with an optional launcher script run instead of
    `-m gateway` (to try a server patch without editing gateway/). Stopped by PID."""
    grpc_port, http_port = free_port(), free_port()
    config = {"listen": [f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"], **config}
    # an admin listener of its own, not the default 127.0.0.1:9464 a running gateway may hold
    config.setdefault("admin", {"listen": f"127.0.0.1:{free_port()}"})
    config_path = tmp / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp / "gateway.log"
    entry = [launcher] if launcher else ["-m", "gateway"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *entry, "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    gw = Gateway(proc, grpc_port, http_port, log_path)
    try:
        # the listeners are bound before the server runs, so a port probe is not proof it serves:
        # the warm-up export in run() is
        wait_for_port(grpc_port)
        yield gw
    finally:
        gw.stop()


def warm_up(call: Any, spans: Any, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        outcome = call(spans)
        if outcome == "success" or time.monotonic() > deadline:
            return str(outcome)
        time.sleep(0.5)


def make_spans(n: int) -> list[Any]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": "grpc-soak"}))
    tracer = provider.get_tracer("bench.grpc_soak")
    spans = []
    for i in range(n):
        span = tracer.start_span(f"op-{i}", attributes={"i": i, "k": "v" * 16})
        span.end()
        spans.append(span)  # an SDK Span is a ReadableSpan
    return spans


class _CountLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        kind = msg.split(" encountered")[0].split(",")[0][:60]
        self.counts[kind] += 1
        if record.levelno >= logging.WARNING and len(self.samples) < 3:
            self.samples.append(msg[:300])


class _Attempts:
    """Counts every RPC attempt the SDK exporter makes, by outcome (wraps its stub)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: collections.Counter[str] = collections.Counter()
        self.details: collections.Counter[str] = collections.Counter()

    def wrap(self, stub: Any) -> Any:
        attempts = self

        class Stub:
            def Export(self, *args: Any, **kwargs: Any) -> Any:
                try:
                    out = stub.Export(*args, **kwargs)
                except grpc.RpcError as exc:
                    with attempts.lock:
                        attempts.codes[exc.code().name] += 1
                        attempts.details[str(exc.details())[:120]] += 1
                    raise
                except Exception as exc:
                    with attempts.lock:
                        attempts.codes[type(exc).__name__] += 1
                    raise
                with attempts.lock:
                    attempts.codes["OK"] += 1
                return out

        return Stub()


def sdk_client(target: str, attempts: _Attempts, timeout: float) -> tuple[Any, Any, Any]:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class CountingExporter(OTLPSpanExporter):
        def _initialize_channel_and_stub(self) -> None:
            super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
            self._client = attempts.wrap(self._client)

    exporter = CountingExporter(endpoint=f"http://{target}", insecure=True, timeout=timeout)
    from opentelemetry.sdk.trace.export import SpanExportResult

    def call(spans: Any) -> str:
        result = exporter.export(spans)
        return "success" if result is SpanExportResult.SUCCESS else "failure"

    return exporter, call, exporter.shutdown


def grpcio_client(target: str, payload: bytes, timeout: float) -> tuple[Any, Any, Any]:
    channel = grpc.insecure_channel(target)
    export = channel.unary_unary(EXPORT_PATH)  # no (de)serializers: bytes in, bytes out

    def call(_: Any) -> str:
        try:
            export(payload, timeout=timeout)
            return "success"
        except grpc.RpcError as exc:
            return str(exc.code().name)

    return channel, call, channel.close


def gateway_log_summary(text: str) -> dict[str, Any]:
    lines = [ln for ln in text.splitlines() if re.search(r"\bWARNING\b|\bERROR\b|Traceback", ln)]
    return {
        "warning_error_lines": len(lines),
        "zttp_flood_goaways": text.count("enhance your calm"),
        "samples": [ln[:200] for ln in lines[:3]],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    spans = make_spans(args.batch)
    log_counter = _CountLogs()
    sdk_logger = logging.getLogger(SDK_LOGGER)
    sdk_logger.filters.clear()  # the SDK's DuplicateFilter would hide repeats within 20 s
    sdk_logger.addHandler(log_counter)
    sdk_logger.setLevel(logging.DEBUG)
    sdk_logger.propagate = False

    with tempfile.TemporaryDirectory(prefix="grpc-soak-") as tmp, contextlib.ExitStack() as stack:
        # what it forwards is not the point: a small rotating file keeps the disk out of it
        files = {"protocol": "file", "path": str(Path(tmp) / "out"), "rotate_bytes": "4MiB"}
        config = {
            "server": args.server,
            "backends": {"files": {**files, "max_files": 1}},
            "service_backends": ["files"],
        }
        gw = stack.enter_context(start_gateway(Path(tmp), config, args.gateway_launcher))
        target = f"127.0.0.1:{gw.grpc_port}"
        attempts = _Attempts()
        if args.client == "sdk":
            _, call, close = sdk_client(target, attempts, args.timeout)
        else:
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            payload = encode_spans(spans).SerializeToString()
            _, call, close = grpcio_client(target, payload, args.timeout)

        # warm up one call (connection set-up), not counted
        warm = warm_up(call, spans)
        if warm != "success":
            raise SystemExit(f"the gateway does not answer gRPC ({warm}):\n{gw.log()[-3000:]}")
        attempts.codes.clear()
        counter = itertools.count()
        results: collections.Counter[str] = collections.Counter()
        results_lock = threading.Lock()
        latencies: list[float] = []
        deadline = time.monotonic() + args.max_seconds
        truncated = threading.Event()

        def worker() -> None:
            local: collections.Counter[str] = collections.Counter()
            lat: list[float] = []
            while next(counter) < args.requests:
                if time.monotonic() > deadline:
                    truncated.set()
                    break
                t0 = time.perf_counter()
                try:
                    outcome = call(spans)
                except Exception as exc:  # the SDK exporter can raise (e.g. a closed channel)
                    outcome = f"exception:{type(exc).__name__}: {exc}"[:100]
                lat.append(time.perf_counter() - t0)
                local[outcome] += 1
            with results_lock:
                results.update(local)
                latencies.extend(lat)

        cpu0 = proc_cpu_seconds(gw.proc.pid)
        client_cpu0 = time.process_time()
        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.max_seconds + args.timeout * 8 + 30)
        wall = time.monotonic() - t0
        gw_cpu = proc_cpu_seconds(gw.proc.pid) - cpu0
        client_cpu = time.process_time() - client_cpu0
        hwm = proc_status_kib(gw.proc.pid, "VmHWM")
        alive = gw.proc.poll() is None
        close()
        gw_log = gw.log()

    done = sum(results.values())
    latencies.sort()
    q = (
        (lambda p: round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2))
        if latencies
        else (lambda p: None)
    )
    out: dict[str, Any] = {
        "server": args.server,
        "client": args.client,
        "requests": done,
        "concurrency": args.concurrency,
        "batch_spans": args.batch,
        "success": results.pop("success", 0),
        "failure": results.pop("failure", 0),
        "other_outcomes": dict(results),
        "truncated": truncated.is_set() or done < args.requests,
        "wall_s": round(wall, 1),
        "req_per_s": round(done / wall, 1) if wall else None,
        "latency_ms": {
            "p50": q(0.5),
            "p99": q(0.99),
            "max": round(latencies[-1] * 1000, 1) if latencies else None,
        },
        "gateway_cpu_s": round(gw_cpu, 1),
        "gateway_cpu_ms_per_req": round(gw_cpu * 1000 / done, 3) if done else None,
        "gateway_peak_rss_mib": round(hwm / 1024, 1),
        "gateway_alive_at_end": alive,
        "client_cpu_s": round(client_cpu, 1),
        "launcher": args.gateway_launcher,
    }
    if args.client == "sdk":
        out["sdk_attempts"] = dict(attempts.codes)
        out["sdk_attempt_error_details"] = dict(attempts.details.most_common(3))
        out["sdk_log_records"] = dict(log_counter.counts)
        out["sdk_log_samples"] = log_counter.samples
    out["gateway_log"] = gateway_log_summary(gw_log)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--server", choices=["uvicorn", "hypercorn"], default="uvicorn")
    p.add_argument("--client", choices=["sdk", "grpcio"], default="sdk")
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch", type=int, default=10, help="spans per export")
    p.add_argument("--timeout", type=float, default=10.0, help="per-export deadline (s)")
    p.add_argument(
        "--max-seconds", type=float, default=480.0, help="stop starting calls after this"
    )
    p.add_argument(
        "--gateway-launcher",
        help="a Python script run instead of `-m gateway` (same CLI), to try a server patch",
    )
    args = p.parse_args()
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
