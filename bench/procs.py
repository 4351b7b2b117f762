"""Processes and CPU accounting for bench/run.py.

Every process the benchmark starts goes through `Procs` and is stopped by PID (SIGTERM, then
SIGKILL), also on errors and Ctrl-C. CPU is read from /proc: a process's utime+stime, each core's
busy time (to see other processes on the machine), and the CPU of children run to completion.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

CONTENDER_CORE, LOAD_CORE = 0, 1
TOOLS = ("wrk", "h2load", "taskset")
INSTALL_HINT = "apt-get install -y wrk nghttp2-client"

Output = int | IO[bytes] | None  # where a child's stdout / stderr go (a file, PIPE, DEVNULL)


class Procs:
    """The processes started and not yet stopped."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: list[str],
        *,
        stdout: Output = None,
        stderr: Output = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, cwd=cwd, env=env)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
        """SIGTERM, SIGKILL after `timeout` s; its exit code (also when it had exited)."""
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


def run_measured(
    procs: Procs, cmd: list[str], env: Mapping[str, str], timeout: float
) -> tuple[str, float]:
    """Run `cmd` to the end: its output (stdout and stderr) and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        procs.stop(proc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return out.decode(errors="replace"), cpu


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
    """A memory line of /proc/PID/status (VmRSS, VmHWM) in MiB; NaN when absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Ports:
    """The 127.0.0.1 ports of a run, laid out from `base` (default 4600, ports 4600-4621);
    `--base-port` moves them all, e.g. to a block the tests found free. One layout per process:
    PORTS, set before anything starts."""

    SPAN = 22  # base .. base + 21

    def __init__(self, base: int = 4600) -> None:
        self.base = base

    @property
    def sinks(self) -> tuple[int, int]:
        return self.base, self.base + 1

    @property
    def gateway(self) -> int:
        return self.base + 10

    @property
    def gateway_admin(self) -> int:
        """The admin listener of the gateway (of its first worker; worker i: + i)."""
        return self.base + 11

    @property
    def rotel(self) -> tuple[int, int]:
        """gRPC, HTTP."""
        return self.base + 20, self.base + 21

    def all(self) -> tuple[int, ...]:
        return (*self.sinks, self.gateway, self.gateway_admin, *self.rotel)


PORTS = Ports()


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


def http_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]
