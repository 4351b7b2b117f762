"""Real peers the tests run on 127.0.0.1: the gateway as a subprocess, a counting OTLP/HTTP sink
served by uvicorn, and rotel (a Rust collector) as a downstream. Every process is started here and
stopped by PID."""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[2]  # the repository
REQUEST_TYPES: dict[str, Any] = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}


# Ports the tests hand out: below Linux's ephemeral range (32768-60999), so neither the kernel's
# port-0 choices nor outgoing connections take them, and split between pytest-xdist's workers, so
# two workers never hand out the same port (a port-0 probe can: the kernel gives a port closed by
# one process to the next that asks).
_PORTS = range(20000, 32768)
_cursor: list[int] = []


def _my_ports() -> range:
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % count if worker.isdigit() else 0
    size = len(_PORTS) // count
    return _PORTS[index * size : (index + 1) * size]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False  # in use (a long-lived gateway of this worker, another program)
    return True


def free_port() -> int:
    """A port nothing listens on, from this worker's share; a child process (a bench script) that
    inherits the worker's share starts at a random place in it."""
    return free_ports(1)


def free_ports(n: int) -> int:
    """The first of `n` consecutive ports nothing listens on, from this worker's share: for a
    child that lays its ports out from a base (bench/run.py --base-port)."""
    ports = _my_ports()
    if not _cursor:
        _cursor.append(random.randrange(len(ports)))
    for _ in range(len(ports)):
        start = _cursor[0] if _cursor[0] + n <= len(ports) else 0
        _cursor[0] = (start + n) % len(ports)
        block = ports[start : start + n]
        if all(_bindable(port) for port in block):
            return block[0]
    raise RuntimeError(f"no {n} free ports in a row in {ports}")


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Counting sink


def count_items(signal: str, msg: Any) -> int:
    if signal == "traces":
        return sum(len(ss.spans) for rs in msg.resource_spans for ss in rs.scope_spans)
    if signal == "logs":
        return sum(len(sl.log_records) for rl in msg.resource_logs for sl in rl.scope_logs)
    total = 0
    for rm in msg.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                total += len(getattr(m, kind).data_points) if kind else 0
    return total


@dataclass
class Received:
    signal: str
    headers: dict[str, str]
    message: Any  # the decoded Export*ServiceRequest

    @property
    def items(self) -> int:
        return count_items(self.signal, self.message)


@dataclass
class Sink:
    """An OTLP/HTTP receiver (protobuf and JSON bodies, gzip) that records every request.

    `status` / `retry_after` make it answer with an error, for delivery tests."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    status: int = 200
    retry_after: str | None = None
    max_body: int | None = None  # larger (decompressed) bodies get 413
    body_sizes: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: Request) -> Response:
        signal = request.url.path.rsplit("/", 1)[-1]
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.max_body is not None and len(body) > self.max_body:
            return Response(status_code=413)
        self.body_sizes.append(len(body))
        if self.status != 200:
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            return Response(status_code=self.status, headers=headers)
        msg = REQUEST_TYPES[signal]()
        if request.headers.get("content-type", "").startswith("application/json"):
            from gateway.otlp import jsonpb as otlpjson
            from gateway.otlp.signals import BY_NAME

            msg.ParseFromString(otlpjson.json_to_proto(BY_NAME[signal], body))
        else:
            msg.ParseFromString(body)
        with self._lock:
            self.received.append(Received(signal, dict(request.headers), msg))
        return Response(b"", media_type=request.headers.get("content-type"))

    def items(self, signal: str) -> int:
        with self._lock:
            return sum(r.items for r in self.received if r.signal == signal)

    def messages(self, signal: str) -> list[Any]:
        with self._lock:
            return [r.message for r in self.received if r.signal == signal]

    def span_names(self, prefix: str = "") -> list[str]:
        """The names of the spans received (those starting with `prefix`), sorted."""
        return sorted(
            s.name
            for m in self.messages("traces")
            for rs in m.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
            if s.name.startswith(prefix)
        )

    def wait_items(self, signal: str, n: int, timeout: float = 15.0) -> int:
        wait_until(lambda: self.items(signal) >= n, timeout)
        time.sleep(0.2)  # let stragglers (duplicates) arrive before the caller asserts equality
        return self.items(signal)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sink]:
        app = Starlette(routes=[Route("/v1/{signal}", self._handle, methods=["POST"])])
        with serve_in_thread(app, self.port):
            yield self


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int) -> Iterator[None]:
    """An ASGI app on 127.0.0.1:`port` (uvicorn on a thread) for the length of the block."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


def send_spans(exporter: Any, prefix: str, n: int) -> None:
    """Spans `prefix-0` .. `prefix-<n-1>` through an OpenTelemetry SDK exporter, one export each."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("otlp-gateway-tests")
    for i in range(n):
        with tracer.start_as_current_span(f"{prefix}-{i}"):
            pass
    provider.shutdown()


# ---------------------------------------------------------------------------------------------
# The gateway under test


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path
    admin_port: int | None = None

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def wait_ready(gw: Gateway, *, tls: bool = False, timeout: float = 20.0) -> None:
    """Wait until both listeners answer an (empty) OTLP/HTTP export: a bound port alone does not
    mean the server behind it is serving yet."""
    import httpx

    scheme = "https" if tls else "http"
    deadline = time.monotonic() + timeout
    for port in (gw.grpc_port, gw.http_port):
        while True:
            if gw.proc.poll() is not None:
                raise TimeoutError("the gateway exited")
            try:
                r = httpx.post(
                    f"{scheme}://127.0.0.1:{port}/v1/traces",
                    content=b"",
                    headers={"content-type": "application/x-protobuf"},
                    verify=False,
                    timeout=1.0,
                )
                if r.status_code in (200, 401):  # 401: serving, with tenants configured
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} did not answer")
            time.sleep(0.05)


@contextlib.contextmanager
def run_gateway(
    tmp_path: Path, config: dict[str, Any], *, env: dict[str, str] | None = None
) -> Iterator[Gateway]:
    """Start `python -m gateway serve --config` with `config` plus two free listener ports."""
    grpc_port, http_port = free_port(), free_port()
    config = {"listen": [f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"], **config}
    admin = dict(config.get("admin") or {})
    admin.setdefault("listen", f"127.0.0.1:{free_port()}")  # not the shared default port
    config["admin"] = admin
    admin_port = int(str(admin["listen"]).rpartition(":")[2])
    config_path = tmp_path / f"gateway-{grpc_port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / f"gateway-{grpc_port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
        )
    gw = Gateway(proc, grpc_port, http_port, log_path, admin_port)
    try:
        try:
            wait_ready(gw, tls="tls" in config)
        except TimeoutError:
            raise RuntimeError(f"gateway did not start:\n{gw.log()}") from None
        yield gw
    finally:
        gw.stop()


# ---------------------------------------------------------------------------------------------
# rotel


def rotel_binary() -> str:
    import rotel

    return str(Path(rotel.__file__).parent / "rotel-agent")


@dataclass
class Rotel:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def run_rotel(
    tmp_path: Path,
    exporter_endpoint: str,
    protocol: str = "http",
    ports: tuple[int, int] | None = None,
) -> Iterator[Rotel]:
    """rotel receiving OTLP (gRPC and HTTP) and exporting OTLP to `exporter_endpoint`; on
    `ports` (gRPC, HTTP) when given, e.g. ports a gateway was configured for before rotel is up."""
    grpc_port, http_port = ports if ports is not None else (free_port(), free_port())
    log_path = tmp_path / f"rotel-{grpc_port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                rotel_binary(),
                "start",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{grpc_port}",
                "--otlp-http-endpoint",
                f"127.0.0.1:{http_port}",
                "--exporter",
                "otlp",
                "--otlp-exporter-endpoint",
                exporter_endpoint,
                "--otlp-exporter-protocol",
                protocol,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(grpc_port)
        wait_for_port(http_port)
        yield Rotel(proc, grpc_port, http_port)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
