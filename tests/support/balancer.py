"""deploy/haproxy/haproxy.cfg run by the tests: HAProxy on free ports in front of gateways, its
servers and frontend read from its stats (CSV), stopped by PID."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.peers import (
    ROOT,
    Gateway,
    free_port,
    stop_process,
    wait_for_port,
    wait_until,
)

HAPROXY_CFG = ROOT / "deploy/haproxy/haproxy.cfg"


@dataclass
class Balancer:
    proc: subprocess.Popen[bytes]
    port: int
    stats_port: int
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def servers(self) -> dict[str, dict[str, str]]:
        """HAProxy's stats (CSV) of the backend's servers, by server name."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            r["svname"]: r
            for r in rows
            if r["pxname"] == "gateways" and r["svname"] not in ("FRONTEND", "BACKEND")
        }

    def frontend(self) -> dict[str, str]:
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return next(r for r in rows if r["pxname"] == "otlp" and r["svname"] == "FRONTEND")


@contextlib.contextmanager
def haproxy(tmp: Path, gateways: list[Gateway]) -> Iterator[Balancer]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port, stats_port = free_port(), free_port()
    env = {
        **os.environ,
        "OTLP_BIND": f"127.0.0.1:{port}",
        "STATS_BIND": f"127.0.0.1:{stats_port}",
    }
    for i, gw in enumerate(gateways, 1):
        env[f"GATEWAY_{i}"] = f"127.0.0.1:{gw.grpc_port}"
        env[f"GATEWAY_{i}_ADMIN_PORT"] = str(gw.admin_port)
    log_path = tmp / "haproxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "-f", str(HAPROXY_CFG), "-db"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    balancer = Balancer(proc, port, stats_port, log_path)
    try:
        wait_for_port(stats_port, timeout=10)
        wait_for_port(port, timeout=10)

        def all_up() -> bool:
            servers = balancer.servers()
            return len(servers) == len(gateways) and all(
                s["status"] == "UP" and s["check_status"] == "L7OK" for s in servers.values()
            )

        assert wait_until(all_up, timeout=10), (balancer.servers(), log_path.read_text())
        yield balancer
    finally:
        stop_process(proc)
