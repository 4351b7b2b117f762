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

Each cell: start the contender, read its idle RSS, warm up, then load it for `--duration` seconds
at full speed (wrk -c 16 / h2load -c 4 -m 4: 16 requests in flight), wait until the sink has
every acknowledged span (and nothing more arrives), and take the contender's CPU
(utime+stime from /proc/PID/stat) over that window. spans/CPU-s = spans that reached the sink
(the fewest over the backends, for fan-out) / contender CPU seconds. Latency p50/p99 at full
load come from the load generator. For `single`, a second run at half the measured maximum rate
gives the latency the targets speak of, from open-loop clients in this process that send on an
even schedule and count latency from when each request was due: asyncio over HTTP/1.1 for
OTLP/HTTP, grpcio aio over 4 connections for gRPC. wrk cannot pace (wrk2 is not packaged by
Debian), h2load's HTTP/1.1 parser refuses hypercorn's status line, and h2load --rps starts all its
clients' timers together, so they send in bursts; a closed-loop run at full speed measures
queueing, not service time. Peak RSS = VmHWM
at the end of the cell.

The request: one ExportTraceServiceRequest, 512 spans with 10 attributes each, 244,943 bytes,
sent uncompressed (gRPC: with the 5-byte gRPC frame header).

  uv run --frozen python bench/run.py                    # 3 repeats x 10 s, ~30 minutes
  uv run --frozen python bench/run.py --smoke            # a few requests per cell, ~1 minute
  uv run --frozen python bench/run.py --contenders gateway-hypercorn,rotel --transports http \
      --variants single --repeat 1 --duration 5
  uv run --frozen python bench/run.py --profile ...      # py-spy on the gateway (see --help)

Needs wrk and h2load: `apt-get install -y wrk nghttp2-client`. Uses 127.0.0.1 ports 4600-4699
only. Every process it starts is stopped by PID at the end, also on errors and Ctrl-C. Writes
bench/results/<UTC time>.json (and .md with the table); --results-dir changes where.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

SINK_PORTS = (4600, 4601)
GATEWAY_PORT = 4610
GATEWAY_ADMIN_PORT = 4611  # gateways that have an admin listener (/metrics, status page)
ROTEL_GRPC_PORT, ROTEL_HTTP_PORT = 4620, 4621
CONTENDER_CORE, LOAD_CORE = 0, 1
TENANT = "acme"
API_KEY = "otlpgw_bench-only-key-not-a-secret-0123456789abcdef"
GRPC_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SPANS_PER_REQUEST = 512

CONTENDERS = ("gateway-hypercorn", "gateway-uvicorn", "rotel")
TRANSPORTS = ("http", "grpc")
VARIANTS = ("single", "fanout", "durable")
INSTALL_HINT = "apt-get install -y wrk nghttp2-client"


# ---------------------------------------------------------------------------------------------
# The request


def build_request(spans: int = SPANS_PER_REQUEST, seed: int = 7) -> bytes:
    """One ExportTraceServiceRequest: 1 resource, 1 scope, `spans` server spans with 10 attributes
    each (8 strings, 2 ints), trace ids shared by 16 spans. 512 spans: 244,943 bytes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (
        ("service.name", "checkout"),
        ("host.name", "node-17"),
        ("k8s.pod.name", "checkout-7f9c4"),
    ):
        rs.resource.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    ss = rs.scope_spans.add()
    ss.scope.name = "bench.run"
    t0 = 1_700_000_000_000_000_000
    trace_id = b""
    for i in range(spans):
        if i % 16 == 0:
            trace_id = rnd.randbytes(16)
        span = ss.spans.add(
            trace_id=trace_id,
            span_id=rnd.randbytes(8),
            parent_span_id=rnd.randbytes(8),
            name=f"GET /api/v1/items/{rnd.randrange(10_000)}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=t0 + i * 1_000_000,
            end_time_unix_nano=t0 + i * 1_000_000 + rnd.randrange(10_000_000),
            status=Status(code=Status.STATUS_CODE_OK),
        )
        strings = {
            "http.request.method": "GET",
            "url.full": f"https://shop.local/api/v1/items/{rnd.randrange(10**6)}"
            f"?q={rnd.randbytes(6).hex()}",
            "user_agent.original": "okhttp/4.12.0",
            "server.address": "shop.local",
            "client.address": f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}",
            "db.statement": f"SELECT * FROM items WHERE id = {rnd.randrange(10**6)}",
            "http.route": "/api/v1/items/{id}",
            "http.scheme": "https",
        }
        for k, v in strings.items():
            span.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
        span.attributes.append(
            KeyValue(key="http.response.status_code", value=AnyValue(int_value=200))
        )
        span.attributes.append(
            KeyValue(key="http.response.body.size", value=AnyValue(int_value=rnd.randrange(10**5)))
        )
    return req.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


# ---------------------------------------------------------------------------------------------
# Processes: every one started here is stopped here, by PID


class Procs:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.running:
            self.running.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, timeout=10)


def pinned(core: int, args: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *args]


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy_seconds() -> dict[int, float]:
    """Busy time of each core since boot (/proc/stat: everything but idle and iowait)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in values]
                out[int(name[3:])] = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    return out


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to `max_wait` s) until the machine's other work uses under `threshold` cores,
    measured over 1 s; this process's children are idle then. Returns the cores in use at the
    last check."""
    deadline = time.monotonic() + max_wait
    told = False
    while True:
        a = core_busy_seconds()
        time.sleep(1.0)
        b = core_busy_seconds()
        used = sum(b[k] - a[k] for k in b)
        if used < threshold or time.monotonic() > deadline:
            return round(used, 2)
        if not told:
            print(f"    other processes use {used:.2f} cores; waiting up to {max_wait:.0f} s")
            told = True


def proc_status_mib(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("POST", path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# The sink


class SinkProc:
    def __init__(self, procs: Procs, workdir: Path, ports: tuple[int, ...]) -> None:
        self.ports = ports
        self.log = open(workdir / "sink.log", "wb")  # noqa: SIM115 - closed in stop()
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

    def stats(self) -> dict[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[0], timeout=5)
        try:
            conn.request("GET", "/stats")
            data = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return {int(p): s for p, s in data.items()}

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)


def gateway_spans(admin: bool) -> dict[str, float] | None:
    """The gateway's own count of trace items accepted and refused (its /metrics), or None when it
    has no admin listener. h2load counts a gRPC call refused with RESOURCE_EXHAUSTED (HTTP 200,
    grpc-status 8) as a success, so over gRPC only these say what was acknowledged."""
    if not admin:
        return None
    conn = http.client.HTTPConnection("127.0.0.1", GATEWAY_ADMIN_PORT, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {"accepted": 0.0, "refused": 0.0}
    for line in text.splitlines():
        for kind in out:
            if line.startswith(f"otlp_gateway_{kind}_items_total{{") and 'signal="traces"' in line:
                out[kind] += float(line.rsplit(" ", 1)[1])
    return out


def stats_delta(after: dict[int, Any], before: dict[int, Any], ports: tuple[int, ...]) -> Any:
    keys = ("requests", "spans", "wire_bytes", "body_bytes", "untagged_spans", "errors")
    return {p: {k: after[p][k] - before[p][k] for k in keys} for p in ports}


def wait_drained(
    sink: SinkProc, before: dict[int, Any], ports: tuple[int, ...], min_spans: int
) -> dict[int, Any]:
    """Wait until every port has at least `min_spans` more spans than `before` and nothing more
    arrived for 0.8 s (or nothing at all for 5 s, or 60 s passed)."""
    start = time.monotonic()
    last = None
    last_change = start
    while True:
        now = time.monotonic()
        stats = sink.stats()
        spans = tuple(stats[p]["spans"] - before[p]["spans"] for p in ports)
        if spans != last:
            last, last_change = spans, now
        quiet = now - last_change
        if (min(spans) >= min_spans and quiet >= 0.8) or quiet >= 5.0 or now - start > 60:
            return stats
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Contenders


@dataclass
class Contender:
    name: str
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    ports: tuple[int, ...]  # sink ports it forwards to

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_summary(self) -> dict[str, Any]:
        text = self.log_path.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if re.search(r"WARN|ERROR|Traceback", ln)]
        return {"warning_error_lines": len(lines), "samples": [ln[:240] for ln in lines[:3]]}


def gateway_config(server: str, variant: str, workdir: Path, admin: bool = False) -> dict[str, Any]:
    ports = SINK_PORTS if variant == "fanout" else SINK_PORTS[:1]
    backends = {
        f"sink{i}": {
            "protocol": "http/protobuf",
            "endpoint": f"http://127.0.0.1:{port}",
            "compression": "gzip",
        }
        for i, port in enumerate(ports)
    }
    config: dict[str, Any] = {
        "listen": [f"127.0.0.1:{GATEWAY_PORT}"],
        "server": server,
        "backends": backends,
        "service_backends": list(backends),
        "tenants": {
            TENANT: {"api_keys": ["sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()]}
        },
    }
    if variant == "durable":
        config["queue"] = {"durable": True, "directory": str(workdir / "queue")}
    if admin:  # kept on (as it is by default), on a port of ours
        config["admin"] = {"listen": f"127.0.0.1:{GATEWAY_ADMIN_PORT}"}
    return config


def gateway_has_admin(tree: Path, workdir: Path) -> bool:
    """Whether this gateway's config knows the `admin` section (newer than the first release of
    this benchmark): asked with `otlp-gateway check`."""
    import yaml

    path = workdir / "admin-check.yaml"
    path.write_text(yaml.safe_dump(gateway_config("hypercorn", "single", workdir, admin=True)))
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        timeout=60,
    )
    return check.returncode == 0


def start_gateway(
    procs: Procs, workdir: Path, server: str, variant: str, tree: Path, admin: bool
) -> Contender:
    """`python -m gateway serve` from `tree` (a directory holding the gateway package); `admin`:
    put its admin listener on GATEWAY_ADMIN_PORT."""
    import yaml

    config_path = workdir / "gateway.yaml"
    config = gateway_config(server, variant, workdir, admin=admin)
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"gateway-{server}-{variant}.log"
    with open(log_path, "wb") as log:
        proc = procs.start(
            pinned(
                CONTENDER_CORE,
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(config_path),
                    "--log-level",
                    "warning",
                ],
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
    ports = SINK_PORTS if variant == "fanout" else SINK_PORTS[:1]
    c = Contender(f"gateway-{server}", proc, GATEWAY_PORT, GATEWAY_PORT, log_path, ports)
    # serving = an empty export without a key gets 401 (a bound port alone does not say so)
    wait_answers(c, GATEWAY_PORT, (401,))
    return c


def start_rotel(procs: Procs, workdir: Path, variant: str) -> Contender:
    """rotel 0.0.1-alpha10 (PyPI rotel 0.0.1a15, the newest): `single` only. It has no disk queue
    (durable) and refuses a second traces exporter ("Only one exporter supported for
    ROTEL_EXPORTERS_TRACES"), so no fan-out either."""
    import rotel

    assert variant == "single", variant
    binary = str(Path(rotel.__file__).parent / "rotel-agent")
    ports = SINK_PORTS[:1]
    args = [
        binary,
        "start",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{ROTEL_GRPC_PORT}",
        "--otlp-http-endpoint",
        f"127.0.0.1:{ROTEL_HTTP_PORT}",
        "--otel-resource-attributes",
        f"tenant.id={TENANT}",
    ]
    args += [
        "--exporter",
        "otlp",
        "--otlp-exporter-endpoint",
        f"http://127.0.0.1:{ports[0]}",
        "--otlp-exporter-protocol",
        "http",
        "--otlp-exporter-compression",
        "gzip",
    ]
    log_path = workdir / f"rotel-{variant}.log"
    with open(log_path, "wb") as log:
        proc = procs.start(pinned(CONTENDER_CORE, args), stdout=log, stderr=subprocess.STDOUT)
    c = Contender("rotel", proc, ROTEL_HTTP_PORT, ROTEL_GRPC_PORT, log_path, ports)
    wait_answers(c, ROTEL_HTTP_PORT, (200,))
    return c


def wait_answers(c: Contender, port: int, statuses: tuple[int, ...], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if c.proc.poll() is not None:
            raise RuntimeError(f"{c.name} exited:\n{c.log_path.read_text(errors='replace')}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if (
                http_post(port, "/v1/traces", b"", {"content-type": "application/x-protobuf"})
                in statuses
            ):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{c.name} did not answer on {port}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Load generators


@dataclass
class Load:
    sent: int  # requests started
    ok: int  # answered 200 (gRPC: HTTP 200; grpc-status is not checked by h2load)
    failed: int  # other statuses, connection errors, timeouts
    wall_s: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_s: float  # the load generator's CPU
    raw: dict[str, Any] = field(default_factory=dict)


def _run_child(procs: Procs, cmd: list[str], env: dict[str, str], timeout: float) -> str:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        procs.stop(proc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _run_child.cpu = (  # type: ignore[attr-defined]
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    )
    return out.decode(errors="replace")


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
            f"http://127.0.0.1:{port}/v1/traces",
        ],
    )
    t0 = time.monotonic()
    out = _run_child(procs, cmd, env, timeout=duration + 120)
    wall = time.monotonic() - t0
    line = next((ln for ln in out.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = json.loads(line[5:])
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
        cpu_s=_run_child.cpu,  # type: ignore[attr-defined]
        raw=r,
    )


def run_h2load(
    procs: Procs,
    port: int,
    transport: str,
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
    args = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", "-d", str(body_file)]
    args += ["-H", f"authorization: Bearer {API_KEY}", f"--log-file={log_file}"]
    if transport == "grpc":
        args += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        url = f"http://127.0.0.1:{port}{GRPC_PATH}"
    else:
        args += ["--h1", "-H", "content-type: application/x-protobuf"]
        url = f"http://127.0.0.1:{port}/v1/traces"
    if duration is not None:
        args += ["-D", str(max(1, round(duration)))]
    else:
        args += ["-n", str(requests)]
    if rps is not None:
        args += [f"--rps={rps:.3f}"]
    t0 = time.monotonic()
    out = _run_child(procs, pinned(LOAD_CORE, [*args, url]), dict(os.environ), 300)
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
    lat = sorted(r[2] for r in rows if r[1] == 200)
    m_time = re.search(r"finished in ([\d.]+)(m?s)", out)
    if m_time:
        wall = float(m_time.group(1)) / (1000 if m_time.group(2) == "ms" else 1)
    if duration is not None:
        wall = min(wall, duration)
    return Load(
        sent=started,
        ok=ok2xx,
        failed=max(0, done - ok2xx),  # finished without a 2xx (error, timeout, other status)
        wall_s=wall,
        p50_ms=percentile(lat, 50) / 1000 if lat else None,
        p99_ms=percentile(lat, 99) / 1000 if lat else None,
        cpu_s=_run_child.cpu,  # type: ignore[attr-defined]
        raw={"output_tail": out.strip().splitlines()[-12:], "latency_samples": len(lat)},
    )


async def _on_schedule(
    rate: float, requests: int, one: Callable[[int, float], Awaitable[None]]
) -> float:
    """Start `one(i, due)` for request i at its due time, start + i / rate, without waiting for
    earlier ones (open loop); returns the seconds from start until all have finished."""
    import asyncio

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(requests):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    return time.perf_counter() - start


def _paced_load(
    latencies: list[tuple[float, bool, float]],
    requests: int,
    wall: float,
    cpu: float,
    skip_first_s: float,
    **raw: Any,
) -> Load:
    """A Load from (due, ok, latency s) per answered request; the first `skip_first_s` seconds
    of the schedule are not counted in the percentiles."""
    ok = sum(1 for _, good, _ in latencies if good)
    t_first = min((due for due, _, _ in latencies), default=0.0)
    lat = sorted(
        round(lat_s * 1e6)
        for due, good, lat_s in latencies
        if good and due >= t_first + skip_first_s
    )
    return Load(
        sent=requests,
        ok=ok,
        failed=requests - ok,
        wall_s=wall,
        p50_ms=percentile(lat, 50) / 1000 if lat else None,
        p99_ms=percentile(lat, 99) / 1000 if lat else None,
        cpu_s=cpu,
        raw={"latency_samples": len(lat), **raw},
    )


def run_paced_http(
    port: int, body: bytes, *, rate: float, requests: int, skip_first_s: float = 0.0
) -> Load:
    """An open-loop OTLP/HTTP client (this process, asyncio, HTTP/1.1 keep-alive): request i is
    due at start + i / rate and goes out on an idle connection (a new one when none is idle), so
    a slow answer does not delay the requests after it; latency = end of the response - the time
    it was due (no coordinated omission). Used for the paced half-load runs and the exact smoke
    runs over OTLP/HTTP: h2load's HTTP/1.1 parser refuses the gateway's status line (hypercorn
    writes `HTTP/1.1 200 ` with an empty reason phrase, which is valid HTTP) and wrk cannot pace."""
    import asyncio

    head = (
        f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/x-protobuf\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    latencies: list[tuple[float, bool, float]] = []  # (due, answered 200, latency s)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = 0

    async def one(_: int, due: float) -> None:
        nonlocal errors
        try:
            if idle:
                reader, writer = idle.pop()
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            writer.write(body)
            await writer.drain()
            response_head = await reader.readuntil(b"\r\n\r\n")
            lines = response_head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append((due, status == 200, time.perf_counter() - due))
            idle.append((reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1

    async def main() -> float:
        wall = await _on_schedule(rate, requests, one)
        for _, writer in idle:
            writer.close()
        return wall

    cpu0 = time.process_time()
    wall = asyncio.run(main())
    cpu = time.process_time() - cpu0
    return _paced_load(latencies, requests, wall, cpu, skip_first_s, connection_errors=errors)


def run_paced_grpc(
    port: int,
    body: bytes,
    *,
    rate: float,
    requests: int,
    channels: int = 4,
    skip_first_s: float = 0.0,
) -> Load:
    """The same open-loop schedule over OTLP/gRPC (grpcio aio, `channels` HTTP/2 connections
    taking requests in turn, like that many SDK exporters): request i is due at start + i / rate,
    latency = end of the call - the time it was due. h2load --rps starts every client's timer at
    once, so its clients send in bursts of one request each, and the queueing inside each burst
    is the p99 it reports (for rotel too)."""
    import asyncio

    import grpc

    latencies: list[tuple[float, bool, float]] = []  # (due, ok, latency s)

    async def main() -> float:
        # a local subchannel pool each: grpcio otherwise shares one connection between channels
        # to the same target (and across cells, to a gateway that has since been stopped)
        options = [("grpc.use_local_subchannel_pool", 1)]
        opened = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(channels)
        ]
        calls = [
            ch.unary_unary(GRPC_PATH, request_serializer=None, response_deserializer=None)
            for ch in opened
        ]
        metadata = (("authorization", f"Bearer {API_KEY}"),)
        for call in calls:  # connect before the clock starts
            await call(body, metadata=metadata, timeout=30)

        async def one(i: int, due: float) -> None:
            ok = True
            try:
                await calls[i % channels](body, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError:
                ok = False
            latencies.append((due, ok, time.perf_counter() - due))

        wall = await _on_schedule(rate, requests, one)
        for ch in opened:
            await ch.close()
        return wall

    cpu0 = time.process_time()
    wall = asyncio.run(main())
    return _paced_load(latencies, requests, wall, time.process_time() - cpu0, skip_first_s)


def percentile(sorted_values: list[int], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[k])


# ---------------------------------------------------------------------------------------------
# One cell: contender x transport x variant


@dataclass
class Settings:
    duration: float
    warmup: float
    latency_duration: float
    smoke: bool
    smoke_requests: int
    profile_dir: Path | None
    profile_native: bool
    gateway_tree: Path
    wait_idle: float
    gateway_admin: bool = False


def drive(
    procs: Procs,
    c: Contender,
    transport: str,
    files: dict[str, Path],
    workdir: Path,
    *,
    duration: float | None = None,
    requests: int | None = None,
    tag: str,
) -> Load:
    """Full speed for `duration` seconds with 16 requests in flight: wrk -c 16 (OTLP/HTTP),
    h2load -c 4 -m 4 (gRPC). Or exactly `requests` requests (gRPC: h2load -n with 2
    connections; OTLP/HTTP: the paced client at 50 requests/s), which ends with nothing in
    flight: then sent == answered."""
    port = c.grpc_port if transport == "grpc" else c.http_port
    log = workdir / f"h2load-{tag}.log"
    if requests is not None and transport == "http":
        return run_paced_http(port, files["http"].read_bytes(), rate=50, requests=requests)
    if requests is not None:
        return run_h2load(
            procs, port, "grpc", files["grpc"], log, clients=2, streams=2, requests=requests
        )
    assert duration is not None
    if transport == "http":
        return run_wrk(procs, port, files["http"], connections=16, threads=1, duration=duration)
    return run_h2load(
        procs, port, "grpc", files["grpc"], log, clients=4, streams=4, duration=duration
    )


def measure_cell(
    procs: Procs,
    sink: SinkProc,
    contender: str,
    transport: str,
    variant: str,
    files: dict[str, Path],
    workdir: Path,
    s: Settings,
) -> dict[str, Any]:
    cell_dir = Path(tempfile.mkdtemp(prefix=f"{contender}-{transport}-{variant}-", dir=workdir))
    other_cores_before = wait_quiet(s.wait_idle) if s.wait_idle else None
    if contender == "rotel":
        c = start_rotel(procs, cell_dir, variant)
    else:
        server = contender.removeprefix("gateway-")
        c = start_gateway(procs, cell_dir, server, variant, s.gateway_tree, s.gateway_admin)
    result: dict[str, Any] = {"contender": contender, "transport": transport, "variant": variant}
    result["other_cores_before"] = other_cores_before
    is_gateway = contender != "rotel"
    try:
        time.sleep(0.5 if s.smoke else 1.0)
        result["idle_rss_mib"] = round(proc_status_mib(c.pid, "VmRSS"), 1)

        # warm-up (not measured), then wait for the sink to have it all
        # (smoke: 1 s, which also exercises wrk / h2load's timed mode)
        before = sink.stats()
        warm = drive(procs, c, transport, files, cell_dir, duration=s.warmup, tag="w")
        after = wait_drained(sink, before, c.ports, warm.ok * SPANS_PER_REQUEST)
        result["warmup"] = {
            "sent_spans": warm.sent * SPANS_PER_REQUEST,
            "acked_spans": warm.ok * SPANS_PER_REQUEST,
            "delivered_spans": min(
                d["spans"] for d in stats_delta(after, before, c.ports).values()
            ),
            "failed_requests": warm.failed,
        }

        # the measured window: load, then drain
        before = sink.stats()
        counted0 = gateway_spans(is_gateway and s.gateway_admin)
        cpu0, sink_cpu0, t0 = proc_cpu_seconds(c.pid), sink.cpu(), time.monotonic()
        cores0, own0 = core_busy_seconds(), time.process_time()
        prof = start_profile(procs, c, s, f"{contender}-{transport}-{variant}")
        if s.smoke:
            load = drive(procs, c, transport, files, cell_dir, requests=s.smoke_requests, tag="m")
        else:
            load = drive(procs, c, transport, files, cell_dir, duration=s.duration, tag="m")
        load_end = time.monotonic()
        counted = gateway_spans(is_gateway and s.gateway_admin)
        acked = load.ok * SPANS_PER_REQUEST
        if counted is not None and counted0 is not None:
            acked = round(counted["accepted"] - counted0["accepted"])
        after = wait_drained(sink, before, c.ports, acked)
        cpu1, sink_cpu1, t1 = proc_cpu_seconds(c.pid), sink.cpu(), time.monotonic()
        cores1, own1 = core_busy_seconds(), time.process_time()
        stop_profile(procs, prof, result)
        delta = stats_delta(after, before, c.ports)
        delivered = min(d["spans"] for d in delta.values())
        cpu = cpu1 - cpu0
        result.update(
            {
                "sent_spans": load.sent * SPANS_PER_REQUEST,
                # the gateway's own count when it has one (see gateway_spans), else the client's
                "acked_spans": acked,
                "client_ok_spans": load.ok * SPANS_PER_REQUEST,
                "refused_spans": (
                    round(counted["refused"] - counted0["refused"])
                    if counted is not None and counted0 is not None
                    else None
                ),
                "delivered_spans": delivered,
                "delivered_per_backend": [d["spans"] for d in delta.values()],
                "failed_requests": load.failed,
                # spans whose resource arrived without tenant.id = acme
                "untagged_spans": sum(d["untagged_spans"] for d in delta.values()),
                "sink_errors": sum(d["errors"] for d in delta.values()),
                "sink_requests": [d["requests"] for d in delta.values()],
                "gzip_ratio": round(
                    sum(d["body_bytes"] for d in delta.values())
                    / max(1, sum(d["wire_bytes"] for d in delta.values())),
                    2,
                ),
                "load_s": round(load.wall_s, 3),
                "window_s": round(t1 - t0, 3),
                "drain_s": round(t1 - load_end, 3),
                "cpu_s": round(cpu, 3),
                "cpu_busy": round(cpu / load.wall_s, 3) if load.wall_s else None,
                "spans_per_cpu_s": round(delivered / cpu) if cpu > 0 else None,
                "spans_per_s": round(delivered / load.wall_s) if load.wall_s else None,
                "requests_per_s": round(load.ok / load.wall_s, 1) if load.wall_s else None,
                "p50_ms": load.p50_ms,
                "p99_ms": load.p99_ms,
                "loader_cpu_s": round(load.cpu_s, 3),
                "sink_cpu_s": round(sink_cpu1 - sink_cpu0, 3),
                "load_core_busy": round((load.cpu_s + sink_cpu1 - sink_cpu0) / (t1 - t0), 3),
                # other processes on the contender's core during the window (interference):
                # the core's busy time less the contender's own CPU, as a share of the window
                "other_on_core0": round(
                    max(0.0, cores1[CONTENDER_CORE] - cores0[CONTENDER_CORE] - cpu) / (t1 - t0), 3
                ),
                "other_on_core1": round(
                    max(
                        0.0,
                        cores1[LOAD_CORE]
                        - cores0[LOAD_CORE]
                        - load.cpu_s
                        - (sink_cpu1 - sink_cpu0)
                        - (own1 - own0),
                    )
                    / (t1 - t0),
                    3,
                ),
                "other_cores_before": result.get("other_cores_before"),
                "load_raw": load.raw,
            }
        )

        # latency at half the measured maximum rate (paced), `single` only
        if variant == "single" and load.ok:
            result["half_load"] = half_load_latency(
                procs, sink, c, transport, files, cell_dir, s, load.ok / load.wall_s
            )
        result["peak_rss_mib"] = round(proc_status_mib(c.pid, "VmHWM"), 1)
    finally:
        code = procs.stop(c.proc)
        result["exit_code"] = code
        result["log"] = c.log_summary()
    return result


def half_load_latency(
    procs: Procs,
    sink: SinkProc,
    c: Contender,
    transport: str,
    files: dict[str, Path],
    workdir: Path,
    s: Settings,
    max_rps: float,
) -> dict[str, Any]:
    """Latency at half the measured maximum rate, open loop and evenly paced: OTLP/HTTP with
    run_paced_http, gRPC with run_paced_grpc. The first second is not counted."""
    target = max_rps / 2
    duration = 1.0 if s.smoke else s.latency_duration
    before = sink.stats()
    if transport == "http":
        load = run_paced_http(
            c.http_port,
            files["http"].read_bytes(),
            rate=target,
            requests=max(2, round(target * (duration + 1))),
            skip_first_s=1.0,
        )
    else:
        load = run_paced_grpc(
            c.grpc_port,
            files["http"].read_bytes(),  # the same request, framed by grpcio
            rate=target,
            requests=max(2, round(target * (duration + 1))),
            skip_first_s=1.0,
        )
    wait_drained(sink, before, c.ports, load.ok * SPANS_PER_REQUEST)
    return {
        "target_rps": round(target, 1),
        "achieved_rps": round(load.ok / load.wall_s, 1) if load.wall_s else None,
        "client": "paced asyncio client" if transport == "http" else "paced grpcio aio, 4 channels",
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "failed_requests": load.failed,
        "samples": load.raw.get("latency_samples"),
    }


# ---------------------------------------------------------------------------------------------
# Profiling (py-spy on the gateway during the measured window)


def start_profile(
    procs: Procs, c: Contender, s: Settings, tag: str
) -> tuple[subprocess.Popen[bytes], Path] | None:
    if s.profile_dir is None or c.name == "rotel":
        return None
    s.profile_dir.mkdir(parents=True, exist_ok=True)
    out = s.profile_dir / f"{tag}.txt"
    args = [*py_spy_command(), "record", "--pid", str(c.pid), "--format", "raw", "-o", str(out)]
    args += ["--rate", "250", "--duration", str(round(s.duration + 5))]
    # blocking sampling (py-spy pauses the process for each sample): whole, consistent stacks;
    # --nonblocking would perturb less but returns partial coroutine stacks
    args += ["--native"] if s.profile_native else []
    proc = procs.start(
        pinned(LOAD_CORE, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    return proc, out


def py_spy_command() -> list[str]:
    """py-spy from PATH or this environment, else through uvx (`uv add --dev py-spy` puts it in
    the environment)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found:
        return [found]
    if shutil.which("uvx"):
        return ["uvx", "py-spy"]
    raise SystemExit("bench/run.py --profile: py-spy not found; uv add --dev py-spy")


def stop_profile(
    procs: Procs, prof: tuple[subprocess.Popen[bytes], Path] | None, result: dict[str, Any]
) -> None:
    if prof is None:
        return
    proc, out = prof
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
    procs.stop(proc)
    result["profile"] = {"file": str(out), **summarise_profile(out)}


# The innermost frame's module -> the part of the hot path a sample belongs to (first match)
PROFILE_COMPONENTS = (
    ("gzip (gateway/otlp/gz.py, zlib, ISA-L)", ("gateway/otlp/gz.py", "zlib", "isal", "/gzip.py")),
    ("wire walk: validation + counts (gateway/otlp/wire.py)", ("gateway/otlp/wire.py",)),
    ("enrichment (gateway/tenancy/enrich.py)", ("gateway/tenancy/enrich.py",)),
    ("durable spool (gateway/delivery/spool.py)", ("gateway/delivery/spool.py",)),
    ("rest of the gateway (gateway/)", ("gateway/",)),
    ("connect-python (gRPC server)", ("connectrpc/",)),
    ("HTTP/2 framing (h2, hyperframe, hpack)", ("h2/", "hyperframe/", "hpack/")),
    ("hypercorn", ("hypercorn/",)),
    ("uvicorn + zttp", ("uvicorn/", "zttp")),
    ("h11 (HTTP/1.1: hypercorn and the export client)", ("h11/",)),
    ("httpx + httpcore (export client)", ("httpx/", "httpcore/", "anyio/", "cookiejar")),
    ("starlette", ("starlette/",)),
    ("asyncio event loop, sockets", ("asyncio/", "selectors.py")),
)


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Collapsed stacks -> % of all samples: by function, self (the innermost frame; time in C code
    is the Python function that called it) and inclusive (anywhere on the stack); and by part of
    the hot path (the innermost frame's module, PROFILE_COMPONENTS)."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    components: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        raw = [f for f in stack.split(";") if f]
        frames = [_frame_name(f) for f in raw]
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for name in set(frames):
            incl_counts[name] = incl_counts.get(name, 0) + count
        part = next(
            (label for label, keys in PROFILE_COMPONENTS if any(k in raw[-1] for k in keys)),
            "other",
        )
        components[part] = components.get(part, 0) + count

    def ranked(counts: dict[str, int], n: int = top) -> list[tuple[str, float]]:
        items = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        return [(name, round(100 * v / total, 1)) for name, v in items]

    return {
        "samples": total,
        "self": ranked(self_counts),
        "inclusive": ranked(incl_counts, 40),
        "components": ranked(components, len(components)),
    }


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)" -> "function (file.py)"
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


# ---------------------------------------------------------------------------------------------
# Report


def median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["contender"], r["transport"], r["variant"]), []).append(r)
    out = []
    for (contender, transport, variant), rs in cells.items():
        half = [r.get("half_load") or {} for r in rs]
        out.append(
            {
                "contender": contender,
                "transport": transport,
                "variant": variant,
                "runs": len(rs),
                "spans_per_cpu_s": median([r["spans_per_cpu_s"] for r in rs]),
                "spans_per_cpu_s_all": [r["spans_per_cpu_s"] for r in rs],
                "spans_per_s": median([r["spans_per_s"] for r in rs]),
                "cpu_busy": median([r["cpu_busy"] for r in rs]),
                "p50_ms": median([r["p50_ms"] for r in rs]),
                "p99_ms": median([r["p99_ms"] for r in rs]),
                "half_load_rps": median([h.get("achieved_rps") for h in half]),
                "half_load_p50_ms": median([h.get("p50_ms") for h in half]),
                "half_load_p99_ms": median([h.get("p99_ms") for h in half]),
                "idle_rss_mib": median([r["idle_rss_mib"] for r in rs]),
                "peak_rss_mib": median([r["peak_rss_mib"] for r in rs]),
                "gzip_ratio": median([r["gzip_ratio"] for r in rs]),
                "load_core_busy": median([r["load_core_busy"] for r in rs]),
                "other_on_core0_max": max(r["other_on_core0"] for r in rs),
                "other_on_core1_max": max(r["other_on_core1"] for r in rs),
                "interfered_runs": sum(interfered(r) for r in rs),
                "sent_spans": sum(r["sent_spans"] for r in rs),
                "acked_spans": sum(r["acked_spans"] for r in rs),
                "delivered_spans": sum(r["delivered_spans"] for r in rs),
                "failed_requests": sum(r["failed_requests"] for r in rs),
                "untagged_spans": sum(r["untagged_spans"] for r in rs),
            }
        )
    by_key = {(o["contender"], o["transport"], o["variant"]): o for o in out}
    for o in out:
        ref = by_key.get(("rotel", o["transport"], o["variant"]))
        o["rotel_reference"] = o["variant"]
        if ref is None:  # rotel runs `single` only; compare fan-out and durable with that
            ref = by_key.get(("rotel", o["transport"], "single"))
            o["rotel_reference"] = "single"
        if ref and ref["spans_per_cpu_s"] and o["spans_per_cpu_s"]:
            o["ratio_to_rotel"] = round(o["spans_per_cpu_s"] / ref["spans_per_cpu_s"], 2)
        else:
            o["ratio_to_rotel"] = None
        mem = by_key.get((o["contender"], o["transport"], "single"))
        if o["variant"] == "durable" and mem and mem["spans_per_cpu_s"] and o["spans_per_cpu_s"]:
            o["durable_vs_memory"] = {
                "spans_per_cpu_s": round(o["spans_per_cpu_s"] / mem["spans_per_cpu_s"], 2),
                "spans_per_s": round(o["spans_per_s"] / mem["spans_per_s"], 2)
                if mem["spans_per_s"] and o["spans_per_s"]
                else None,
            }
    order = {name: i for i, name in enumerate((*CONTENDERS, *TRANSPORTS, *VARIANTS))}
    out.sort(key=lambda o: (order[o["transport"]], order[o["variant"]], order[o["contender"]]))
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown_table(summary: list[dict[str, Any]]) -> str:
    head = (
        "| contender | transport | variant | spans/CPU-s | ratio to rotel | spans/s | "
        "CPU busy | p50 / p99 ms (full load) | p50 / p99 ms (half load) | idle / peak RSS MiB | "
        "delivered / acked / sent spans | delivered without tenant.id |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for o in summary:
        ratio = _fmt(o["ratio_to_rotel"], 2)
        if o["ratio_to_rotel"] is not None and o["rotel_reference"] != o["variant"]:
            ratio += f" (vs {o['rotel_reference']})"
        half = "-"
        if o["half_load_p50_ms"] is not None:
            half = (
                f"{_fmt(o['half_load_p50_ms'], 2)} / {_fmt(o['half_load_p99_ms'], 2)} "
                f"@ {_fmt(o['half_load_rps'], 0)} req/s"
            )
        rows.append(
            f"| {o['contender']} | {o['transport']} | {o['variant']} | "
            f"{_fmt(round(o['spans_per_cpu_s']) if o['spans_per_cpu_s'] else None)} | {ratio} | "
            f"{_fmt(round(o['spans_per_s']) if o['spans_per_s'] else None)} | "
            f"{_fmt(o['cpu_busy'] and 100 * o['cpu_busy'], 0)}% | "
            f"{_fmt(o['p50_ms'], 1)} / {_fmt(o['p99_ms'], 1)} | {half} | "
            f"{_fmt(o['idle_rss_mib'])} / {_fmt(o['peak_rss_mib'])} | "
            f"{_fmt(o['delivered_spans'])} / {_fmt(o['acked_spans'])} / {_fmt(o['sent_spans'])} | "
            f"{_fmt(o['untagged_spans'])} |"
        )
    return head + "\n".join(rows) + "\n"


def export_gateway(rev: str, dest: Path) -> Path:
    """The gateway package as committed in `rev`, in `dest` (git archive | tar)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "gateway"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def versions(gateway_rev: str | None) -> dict[str, str]:
    from importlib.metadata import version

    def cmd(args: list[str]) -> str:
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=10)
        except OSError:
            return "not found"
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else ""

    import rotel

    if gateway_rev:
        source = f"git {gateway_rev[:10]}, as committed"
    else:
        git = cmd(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"])
        dirty = cmd(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"])
        source = f"git {git}" + (" + uncommitted changes in gateway/" if dirty else "")
    return {
        "otlp-gateway": f"{version('otlp-gateway')} ({source})",
        "rotel": cmd([str(Path(rotel.__file__).parent / "rotel-agent"), "--version"])
        + f" (PyPI rotel {version('rotel')})",
        "python": platform.python_version(),
        "hypercorn": version("hypercorn"),
        "uvicorn": version("uvicorn"),
        "zttp": version("zttp"),
        "wrk": cmd(["wrk", "-v"]),
        "h2load": cmd(["h2load", "--version"]),
        "kernel": platform.release(),
    }


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------
# Main


def interfered(r: dict[str, Any]) -> bool:
    """Other processes took more than 5% of the contender's core or 25% of the load core."""
    return bool(r["other_on_core0"] > 0.05 or r["other_on_core1"] > 0.25)


def missing_tools() -> list[str]:
    return [t for t in ("wrk", "h2load", "taskset") if shutil.which(t) is None]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    args = p.parse_args(argv)
    for name, allowed in (
        ("contenders", CONTENDERS),
        ("transports", TRANSPORTS),
        ("variants", VARIANTS),
    ):
        values = [v for v in getattr(args, name).split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
        setattr(args, name, values)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(
            f"bench/run.py: missing {', '.join(missing)}; install with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    if (os.cpu_count() or 1) < 2:
        print("bench/run.py: needs 2 cores (contender on core 0, load on core 1)", file=sys.stderr)
        return 2
    busy = [
        p
        for p in (*SINK_PORTS, GATEWAY_PORT, GATEWAY_ADMIN_PORT, ROTEL_GRPC_PORT, ROTEL_HTTP_PORT)
        if not port_free(p)
    ]
    if busy:
        print(f"bench/run.py: ports in use: {busy}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    os.sched_setaffinity(0, {LOAD_CORE})  # this process runs the paced client: core 1 too

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        duration=args.duration,
        warmup=1.0 if args.smoke else args.warmup,
        latency_duration=args.latency_duration,
        smoke=args.smoke,
        smoke_requests=args.smoke_requests,
        profile_dir=results_dir / f"profile-{stamp}" if args.profile else None,
        profile_native=args.profile_native,
        gateway_tree=ROOT,
        wait_idle=0.0 if args.smoke else args.wait_idle,
    )
    repeat = 1 if args.smoke else args.repeat
    if args.gateway_rev:  # resolved once: the commit measured, even if the branch moves meanwhile
        args.gateway_rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", args.gateway_rev + "^{commit}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    procs = Procs()
    runs: list[dict[str, Any]] = []
    body = build_request()
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(args.gateway_rev),
        "request": {"spans": SPANS_PER_REQUEST, "bytes": len(body), "attributes_per_span": 10},
        "settings": {
            "smoke": args.smoke,
            "repeat": repeat,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "latency_duration_s": args.latency_duration,
            "in_flight_full_load": 16,
            "contenders": args.contenders,
            "transports": args.transports,
            "variants": args.variants,
        },
    }
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="otlp-bench-") as tmp:
            workdir = Path(tmp)
            files = {"http": workdir / "request.pb", "grpc": workdir / "request.grpc"}
            files["http"].write_bytes(body)
            files["grpc"].write_bytes(grpc_frame(body))
            if args.gateway_rev:
                settings.gateway_tree = export_gateway(args.gateway_rev, workdir / "gateway-rev")
            settings.gateway_admin = gateway_has_admin(settings.gateway_tree, workdir)
            sink = SinkProc(procs, workdir, SINK_PORTS)
            try:
                for rep in range(repeat):
                    for variant in args.variants:
                        for transport in args.transports:
                            for contender in args.contenders:
                                if contender == "rotel" and variant != "single":
                                    continue  # rotel: no disk queue, one traces exporter
                                if args.smoke and variant != "single" and transport == "grpc":
                                    continue  # smoke: fan-out and durable over OTLP/HTTP only
                                label = f"[{rep + 1}/{repeat}] {contender} {transport} {variant}"
                                print(label, "...", flush=True)
                                for attempt in range(1, args.retries + 2):
                                    r = measure_cell(
                                        procs,
                                        sink,
                                        contender,
                                        transport,
                                        variant,
                                        files,
                                        workdir,
                                        settings,
                                    )
                                    if args.smoke or not interfered(r):
                                        break
                                    print(
                                        "    other processes ran during the window (core 0: "
                                        f"{r['other_on_core0']:.0%}, core 1: "
                                        f"{r['other_on_core1']:.0%} of it)"
                                        + ("; measuring again" if attempt <= args.retries else ""),
                                        flush=True,
                                    )
                                r["repeat"] = rep + 1
                                r["attempts"] = attempt
                                runs.append(r)
                                print(
                                    f"    {_fmt(r['spans_per_cpu_s'])} spans/CPU-s, "
                                    f"{_fmt(r['spans_per_s'])} spans/s, CPU {r['cpu_busy']}, "
                                    f"p50/p99 {r['p50_ms']}/{r['p99_ms']} ms, delivered "
                                    f"{r['delivered_spans']} / acked {r['acked_spans']} / "
                                    f"sent {r['sent_spans']}, peak RSS {r['peak_rss_mib']} MiB",
                                    flush=True,
                                )
            finally:
                procs.stop(sink.proc)
                sink.log.close()
    except KeyboardInterrupt:
        print("interrupted; stopping every process started", file=sys.stderr)
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()

    summary = summarise(runs)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["machine"]["loadavg_at_end"] = os.getloadavg()
    table = markdown_table(summary)
    out = results_dir / f"{'smoke-' if args.smoke else ''}{stamp}.json"
    out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print()
    print(table)
    for r in runs:
        if "profile" in r:
            print_profile(r)
    print(f"results: {out}")
    return 0


def print_profile(r: dict[str, Any]) -> None:
    p = r["profile"]
    print(f"\nprofile {r['contender']} {r['transport']} {r['variant']}: {p.get('samples')} samples")
    for kind in ("components", "self"):
        print(f"  top by {'part of the hot path' if kind == 'components' else 'function (self)'}:")
        for name, pct in p.get(kind, [])[:12]:
            print(f"    {pct:5.1f}%  {name}")


if __name__ == "__main__":
    sys.exit(main())
