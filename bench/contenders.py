"""The contenders: the gateway (`server: uvicorn | hypercorn`) and rotel, with the same pipeline:
an API key check (rotel has none), the resource attribute `tenant.id` added, forwarding as
OTLP/HTTP protobuf with gzip to the sink (backend.py). Each runs pinned to the contender core, a
fresh process per cell, and answers on the 127.0.0.1 ports of procs.PORTS (`--base-port`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.backend import TENANT
from bench.payload import HTTP_PATH
from bench.procs import CONTENDER_CORE, PORTS, ROOT, Procs, http_get, http_post, pinned
from bench.records import LogSummary, Variant

API_KEY = "otlpgw_bench-only-key-not-a-secret-0123456789abcdef"


@dataclass(frozen=True)
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

    def port(self, transport: str) -> int:
        return self.grpc_port if transport == "grpc" else self.http_port

    def log_summary(self) -> LogSummary:
        text = self.log_path.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if re.search(r"WARN|ERROR|Traceback", ln)]
        return LogSummary(len(lines), tuple(ln[:240] for ln in lines[:3]))


def sink_ports(variant: Variant) -> tuple[int, ...]:
    return PORTS.sinks if variant == "fanout" else PORTS.sinks[:1]


# ---------------------------------------------------------------------------------------------
# The gateway


def gateway_config(
    server: str, variant: Variant, workdir: Path, admin: bool = False
) -> dict[str, object]:
    """The gateway's YAML config (as a dict): `single` one backend, `fanout` two, `durable` one
    with `queue.durable`; `admin`: its admin listener on PORTS.gateway_admin."""
    backends = {
        f"sink{i}": {
            "protocol": "http/protobuf",
            "endpoint": f"http://127.0.0.1:{port}",
            "compression": "gzip",
        }
        for i, port in enumerate(sink_ports(variant))
    }
    config: dict[str, object] = {
        "listen": [f"127.0.0.1:{PORTS.gateway}"],
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
        config["admin"] = {"listen": f"127.0.0.1:{PORTS.gateway_admin}"}
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


def export_gateway(rev: str, dest: Path) -> Path:
    """The gateway package as committed in `rev`, in `dest` (git archive | tar)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "gateway"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def start_gateway(
    procs: Procs, workdir: Path, server: str, variant: Variant, tree: Path, admin: bool
) -> Contender:
    """`python -m gateway serve` from `tree` (a directory holding the gateway package); `admin`:
    put its admin listener on PORTS.gateway_admin."""
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
    ports = sink_ports(variant)
    port = PORTS.gateway
    c = Contender(f"gateway-{server}", proc, port, port, log_path, ports)
    # serving = an empty export without a key gets 401 (a bound port alone does not say so)
    wait_answers(c, port, (401,))
    return c


@dataclass(frozen=True)
class GatewayCounts:
    """The gateway's trace items accepted and refused so far (its /metrics)."""

    accepted: float
    refused: float


def gateway_spans(admin: bool) -> GatewayCounts | None:
    """The gateway's own count of trace items accepted and refused (its /metrics), or None when it
    has no admin listener. h2load counts a gRPC call refused with RESOURCE_EXHAUSTED (HTTP 200,
    grpc-status 8) as a success, so over gRPC only these say what was acknowledged."""
    if not admin:
        return None
    text = http_get(PORTS.gateway_admin, "/metrics").decode()
    out = {"accepted": 0.0, "refused": 0.0}
    for line in text.splitlines():
        for kind in out:
            if line.startswith(f"otlp_gateway_{kind}_items_total{{") and 'signal="traces"' in line:
                out[kind] += float(line.rsplit(" ", 1)[1])
    return GatewayCounts(out["accepted"], out["refused"])


# ---------------------------------------------------------------------------------------------
# rotel


def rotel_agent() -> str:
    """The rotel-agent binary of the `rotel` package (found, not imported: it has no types)."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        raise RuntimeError("the rotel package is not installed (uv sync)")
    return str(Path(spec.origin).parent / "rotel-agent")


def start_rotel(procs: Procs, workdir: Path, variant: Variant) -> Contender:
    """rotel 0.0.1-alpha10 (PyPI rotel 0.0.1a15, the newest): `single` only. It has no disk queue
    (durable) and refuses a second traces exporter ("Only one exporter supported for
    ROTEL_EXPORTERS_TRACES"), so no fan-out either."""
    assert variant == "single", variant
    ports = PORTS.sinks[:1]
    grpc_port, http_port = PORTS.rotel
    args = [
        rotel_agent(),
        "start",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint",
        f"127.0.0.1:{http_port}",
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
    c = Contender("rotel", proc, http_port, grpc_port, log_path, ports)
    wait_answers(c, http_port, (200,))
    return c


def wait_answers(c: Contender, port: int, statuses: tuple[int, ...], timeout: float = 30) -> None:
    """Wait until an empty OTLP/HTTP export to `port` is answered with one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        if c.proc.poll() is not None:
            raise RuntimeError(f"{c.name} exited:\n{c.log_path.read_text(errors='replace')}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if (
                http_post(port, HTTP_PATH, b"", {"content-type": "application/x-protobuf"})
                in statuses
            ):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{c.name} did not answer on {port}")
        time.sleep(0.05)
