"""`workers: 2`: two processes on the same ports (SO_REUSEPORT), each with its own durable spool.
Everything acknowledged arrives exactly once; a worker killed with SIGKILL is started again and
delivers what its spool held; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from prometheus_client.parser import text_string_to_metric_families

from tests.support.peers import Sink, run_gateway, wait_until

pytestmark = pytest.mark.timeout(120)


def body(name: str) -> bytes:
    span = Span(trace_id=uuid.uuid4().bytes, span_id=uuid.uuid4().bytes[:8], name=name)
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()


def send(endpoint: str, names: list[str]) -> None:
    for name in names:  # a new connection each: the kernel spreads connections, not requests
        with httpx.Client() as client:
            r = client.post(
                endpoint + "/v1/traces",
                content=body(name),
                headers={"content-type": "application/x-protobuf"},
            )
            assert r.status_code == 200, r.text


def accepted(admin_url: str) -> float:
    text = httpx.get(admin_url + "/metrics", timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "otlp_gateway_accepted_items_total"
    )


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return sorted(int(c) for c in children)


def test_two_workers_share_the_ports_and_keep_their_spools(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    tag = uuid.uuid4().hex[:8]
    with Sink().running() as sink:
        config = {
            "workers": 2,
            "queue": {"durable": True, "directory": str(queue)},
            "backends": {"central": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["central"],
            "retry": {"initial_interval": "100ms", "max_interval": "500ms"},
        }
        with run_gateway(tmp_path, config) as gw:
            assert gw.admin_port is not None
            admins = [f"http://127.0.0.1:{gw.admin_port + i}" for i in (0, 1)]
            assert wait_until(lambda: len(worker_pids(gw.proc.pid)) == 2)
            for url in admins:
                assert wait_until(lambda url=url: _status(url + "/readyz") == 200, 20)

            first = [f"{tag}-a{i}" for i in range(100)]
            send(gw.http_endpoint, first)
            per_worker = [accepted(url) for url in admins]
            assert sum(per_worker) == 100 and min(per_worker) > 0, per_worker
            assert sink.wait_items("traces", 100) == 100
            assert sorted(sink.span_names(tag)) == sorted(first)
            assert sorted(p.name for p in queue.iterdir()) == ["worker-0", "worker-1"]

            # The backend goes down; what both workers accept waits in their spools. Worker 1
            # is killed outright; it is started again and delivers its spool once the backend
            # is back.
            sink.status = 503
            second = [f"{tag}-b{i}" for i in range(60)]
            send(gw.http_endpoint, second)
            victim = worker_pids(gw.proc.pid)[1]
            os.kill(victim, signal.SIGKILL)
            assert wait_until(
                lambda: (
                    len(worker_pids(gw.proc.pid)) == 2 and victim not in worker_pids(gw.proc.pid)
                ),
                20,
            )
            for url in admins:
                assert wait_until(lambda url=url: _status(url + "/readyz") == 200, 20)
            sink.status = 200
            assert wait_until(lambda: set(second) <= set(sink.span_names(tag)), 60)
            got = sink.span_names(tag)
            assert set(got) == set(first) | set(second)  # nothing acknowledged was lost
            assert "died (signal SIGKILL); starting it again" in gw.log()

            started = time.monotonic()
            assert gw.stop() == 0
            assert time.monotonic() - started < 15
            assert "worker 0 stopped" in gw.log() and "worker 1 stopped" in gw.log()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0
