"""The worst inputs for the TLS peek (gateway/server/tls_peek.py), measured on a real gateway
(`tls:` with a self-signed certificate, uvloop, limits.header_timeout 2 s):

1. plaintext_flood: 16 threads, each opening connections to the TLS port in a loop and sending
   `POST /v1/traces HTTP/1.1`, headers and a body streamed on (1 MiB per connection), then
   reading the 400 to its end, for 10 s;
2. silent: 1,000 connections opened and held, sending nothing, until header_timeout closes them;
3. slow_hello: 500 connections whose ClientHello comes a byte at a time, one per 100 ms (the
   first, 0x16, at once), until the handshake's time (header_timeout) runs out;
4. baseline: the probe alone.

Throughout, a probe makes a 1-span OTLP/HTTP export over TLS (httpx, HTTP/1.1, one keep-alive
connection, the test CA trusted) every 5 ms to the other listener (same event loop): its worst
and p99 latency in each case is the longest the event loop was held. For each case: the
gateway's RSS (VmRSS) and open fds before, at their peak (sampled every 20 ms) and after (once
the fds are back to where they were, or 6 s), its CPU seconds, what it logged, and
connections_ended_total{reason="plaintext_on_tls"}.

The attacks run in a child process (this script with --attack, niced to 10), so that their
threads do not hold the probe's GIL; with two cores or more the gateway has the first to itself
and everything else runs on the others (--no-pin: no affinity set). --cases silent,slow_hello,...
runs those instead (repeats allowed). Prints one JSON line. Only 127.0.0.1; the gateway and the
children are started and stopped here (by PID). About 40 s.

  uv run --frozen python bench/tls_peek_worst.py [--no-pin] [--cases CASE,...]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.grpcwire import trace_request
from tests.support.peers import Gateway, Sink, run_gateway

MiB = 1024 * 1024
HEADER_TIMEOUT = 2.0
FLOOD_THREADS = 16
FLOOD_SECONDS = 10.0
FLOOD_BODY = MiB
SILENT_CONNECTIONS = 1000
SLOW_CONNECTIONS = 500
SLOW_INTERVAL = 0.1
PROBE_INTERVAL = 0.005
BASELINE_SECONDS = 5.0
CASES: tuple[str, ...] = ("baseline", "plaintext_flood", "silent", "slow_hello")

# -- the attacks (in the child process) ---------------------------------------------------------


def plaintext_flood(port: int) -> dict[str, Any]:
    head = (
        b"POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"content-type: application/x-protobuf\r\ncontent-length: %d\r\n\r\n" % (port, FLOOD_BODY)
    )
    chunk = b"\x0a" * (64 * 1024)
    deadline = time.monotonic() + FLOOD_SECONDS
    lock = threading.Lock()
    totals = {"connections": 0, "answered_400": 0, "body_bytes_sent": 0, "send_errors": 0}

    def one() -> None:
        while time.monotonic() < deadline:
            counts = {"connections": 1, "answered_400": 0, "body_bytes_sent": 0, "send_errors": 0}
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(head)
                    try:
                        while counts["body_bytes_sent"] < FLOOD_BODY:
                            sock.sendall(chunk)
                            counts["body_bytes_sent"] += len(chunk)
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        counts["send_errors"] += 1
                    answer = b""
                    while data := sock.recv(65536):
                        answer += data
                    if answer.startswith(b"HTTP/1.1 400 "):
                        counts["answered_400"] += 1
            except OSError:
                counts["send_errors"] += 1
            with lock:
                for k, v in counts.items():
                    totals[k] += v

    threads = [threading.Thread(target=one) for _ in range(FLOOD_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return totals


def _held(socks: list[socket.socket], opened: list[float], tick: Any, limit: float) -> list[float]:
    """Wait (at most `limit` s) until the gateway closes each of `socks`, calling `tick(open
    sockets)` every SLOW_INTERVAL; the seconds each stayed open (-1: still open at the end)."""
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
    lasted = [-1.0] * len(socks)
    left = len(socks)
    deadline = time.monotonic() + limit
    next_tick = time.monotonic() + SLOW_INTERVAL
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.02):
            i = key.data
            try:
                data = socks[i].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                lasted[i] = time.monotonic() - opened[i]
                sel.unregister(socks[i])
                left -= 1
        if tick is not None and time.monotonic() >= next_tick:
            next_tick += SLOW_INTERVAL
            tick([s for s, t in zip(socks, lasted, strict=True) if t < 0])
    sel.close()
    for sock in socks:
        sock.close()
    return lasted


def _summary(lasted: list[float]) -> dict[str, Any]:
    closed = sorted(t for t in lasted if t >= 0)
    return {
        "connections": len(lasted),
        "closed_by_gateway": len(closed),
        "open_seconds_min": round(closed[0], 2) if closed else None,
        "open_seconds_max": round(closed[-1], 2) if closed else None,
    }


def silent(port: int) -> dict[str, Any]:
    socks, opened = [], []
    for _ in range(SILENT_CONNECTIONS):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        opened.append(time.monotonic())
    return _summary(_held(socks, opened, None, HEADER_TIMEOUT + 8))


def client_hello() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def slow_hello(port: int) -> dict[str, Any]:
    hello = client_hello()
    socks, opened = [], []
    sent = {}
    for _ in range(SLOW_CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(hello[:1])
        socks.append(sock)
        opened.append(time.monotonic())
        sent[sock.fileno()] = 1
    send_errors = [0]

    def tick(still_open: list[socket.socket]) -> None:
        for sock in still_open:
            n = sent[sock.fileno()]
            try:
                sock.send(hello[n : n + 1])
                sent[sock.fileno()] = n + 1
            except OSError:
                send_errors[0] += 1

    result = _summary(_held(socks, opened, tick, HEADER_TIMEOUT + 8))
    result["hello_bytes"] = len(hello)
    result["most_bytes_sent"] = max(sent.values())
    result["send_errors"] = send_errors[0]
    return result


def attack(kind: str, port: int) -> None:
    os.nice(10)  # the gateway and the probe first: the probe measures the gateway, not this
    began = time.monotonic()
    run = {"plaintext_flood": plaintext_flood, "silent": silent, "slow_hello": slow_hello}[kind]
    result = run(port)
    result["seconds"] = round(time.monotonic() - began, 2)
    print(json.dumps(result))


# -- measuring (in this process) ----------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _plaintext_on_tls(gw: Gateway) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    m = re.search(r'connections_ended_total\{reason="plaintext_on_tls"\} (\S+)', text)
    return 0.0 if m is None else float(m.group(1))


class Sampler:
    """The gateway's peak RSS and fd count, sampled every 20 ms while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss = _rss_mib(pid)
        self.fds = _fds(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.rss = max(self.rss, _rss_mib(self.pid))
            self.fds = max(self.fds, _fds(self.pid))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Probe:
    """A 1-span export over TLS every PROBE_INTERVAL on one keep-alive connection: (when, seconds)
    of each, and the failures."""

    def __init__(self, url: str, ca_file: Path) -> None:
        self.url = url
        self.trust = ssl.create_default_context(cafile=str(ca_file))
        self.samples: list[tuple[float, float]] = []
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = trace_request(1, "probe")
        headers = {"content-type": "application/x-protobuf"}
        with httpx.Client(verify=self.trust, timeout=10) as client:
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    r = client.post(self.url, content=body, headers=headers)
                    if r.status_code != 200:
                        self.failures.append((t, str(r.status_code)))
                except httpx.HTTPError as exc:
                    self.failures.append((t, type(exc).__name__))
                self.samples.append((t, time.monotonic() - t))
                time.sleep(PROBE_INTERVAL)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, began: float, ended: float) -> dict[str, Any]:
        samples = [(s, t) for t, s in self.samples if began <= t < ended]
        took = sorted(s for s, _ in samples)
        failed = [f for t, f in self.failures if began <= t < ended]
        if not took:
            return {"probe_exports": 0}
        return {
            "probe_exports": len(took),
            "probe_failures": sorted(set(failed)),
            "probe_p50_ms": round(took[len(took) // 2] * 1000, 1),
            "probe_p99_ms": round(took[min(len(took) - 1, len(took) * 99 // 100)] * 1000, 1),
            "probe_worst_ms": round(took[-1] * 1000, 1),
            "probe_worst_at_s": round(max(samples)[1] - began, 2),  # from the case's start
        }


def run_attack(kind: str, port: int) -> dict[str, Any]:
    if kind == "baseline":
        time.sleep(BASELINE_SECONDS)
        return {}
    child = subprocess.Popen(
        [sys.executable, __file__, "--attack", kind, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = child.communicate(timeout=40)
    finally:
        if child.poll() is None:
            child.kill()  # by its PID
            child.wait(5)
    return dict(json.loads(out)) if child.returncode == 0 and out else {"rc": child.returncode}


def measure(kind: str, gw: Gateway, probe: Probe) -> dict[str, Any]:
    pid = gw.proc.pid
    time.sleep(0.5)
    rss, fds, cpu = _rss_mib(pid), _fds(pid), _cpu_seconds(pid)
    ended, log_size = _plaintext_on_tls(gw), gw.log_path.stat().st_size
    began = time.monotonic()
    with Sampler(pid) as peak:
        attacked = run_attack(kind, gw.http_port)
        attack_ended = time.monotonic()
        # back to the fds of before (the refused ones linger up to 2 s), or 6 s
        while _fds(pid) > fds and time.monotonic() < attack_ended + 6:
            time.sleep(0.05)
        settled = time.monotonic()
    logged = gw.log_path.read_bytes()[log_size:].decode(errors="replace").splitlines()
    return {
        "case": kind,
        "attack": attacked,
        **probe.between(began, attack_ended),
        "rss_mib": [round(rss, 1), round(peak.rss, 1), round(_rss_mib(pid), 1)],
        "fds": [fds, peak.fds, _fds(pid)],
        "fds_back_after_s": round(settled - attack_ended, 2),
        "gateway_cpu_s": round(_cpu_seconds(pid) - cpu, 2),
        "plaintext_on_tls": _plaintext_on_tls(gw) - ended,
        "log_lines": len(logged),
        "log_sample": sorted({line[:160] for line in logged})[:3],
    }


def pin(gateway: int | None) -> bool:
    """With two cores or more: the gateway (every thread of it) alone on the first, this process
    (and so the sink, the probe and the attackers) on the others, so that the probe's latency is
    the gateway's and not a fight for a core. Called with None first, before any thread starts."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return False
    if gateway is None:
        os.sched_setaffinity(0, cores[1:])
        return True
    for task in os.listdir(f"/proc/{gateway}/task"):
        os.sched_setaffinity(int(task), cores[:1])
    return True


def main() -> None:
    cases = CASES
    if "--cases" in sys.argv:  # a comma-separated choice, repeats allowed
        cases = tuple(sys.argv[sys.argv.index("--cases") + 1].split(","))
    result: dict[str, Any] = {"cases": [], "pinned": "--no-pin" not in sys.argv}
    if result["pinned"]:
        result["pinned"] = pin(None)
    with tempfile.TemporaryDirectory() as tmp, Sink().running() as sink:
        ca = trustme.CA()
        pem, ca_file = Path(tmp) / "server.pem", Path(tmp) / "ca.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
        ca.cert_pem.write_to_path(str(ca_file))
        config = {
            "tls": {"cert": str(pem)},
            "limits": {"header_timeout": f"{HEADER_TIMEOUT:g}s"},
            "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["sink"],
        }
        with run_gateway(Path(tmp), config) as gw:
            loop = re.search(r"event loop: (\w+)", gw.log())
            result["event_loop"] = loop.group(1) if loop else None
            if result["pinned"]:
                pin(gw.proc.pid)
            probe = Probe(f"https://127.0.0.1:{gw.grpc_port}/v1/traces", ca_file)
            probe.start()
            time.sleep(2.0)  # the probe's connection made, the loop warm, startup's fds closed
            try:
                for kind in cases:
                    result["cases"].append(measure(kind, gw, probe))
            finally:
                probe.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--attack"]:
        attack(sys.argv[2], int(sys.argv[3]))
    else:
        main()
