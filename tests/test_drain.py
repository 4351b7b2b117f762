"""`otlp-gateway drain`: what a removed replica left in its durable queue directory reaches the
backends, counted exactly at a real sink. The replica is a real `otlp-gateway serve` whose
backend is down while it acknowledges spans, killed with SIGKILL; drain runs as the command."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from gateway.delivery.batch import Batch
from gateway.delivery.queues import DurableQueue
from gateway.otlp.signals import BY_NAME
from tests.support.peers import Sink, run_gateway
from tests.support.sdkspans import named_spans

EXPORTS = 20
SPANS_PER_EXPORT = 10
N = EXPORTS * SPANS_PER_EXPORT


def config_for(sink: Sink, queue: Path) -> dict[str, Any]:
    return {
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["sink"],
        "queue": {"durable": True, "directory": str(queue)},
    }


def leave_a_queue(tmp: Path, sink: Sink) -> Path:
    """A replica whose backend (`sink`, not running) is down acknowledges N spans, then is killed
    (SIGKILL): its queue directory, as the replica left it."""
    queue = tmp / "queue"
    with run_gateway(tmp, config_for(sink, queue)) as gw:
        exporter = OTLPSpanExporter(endpoint=gw.grpc_endpoint, insecure=True, timeout=10)
        try:
            for i in range(EXPORTS):
                result = exporter.export(named_spans(f"left-{i}", SPANS_PER_EXPORT))
                assert result == SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
    return queue


def drain(
    queue: Path, config: dict[str, Any], tmp: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    path = tmp / "drain.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "gateway", "drain", "--queue-dir", str(queue)]
    return subprocess.run(
        [*command, "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
    )


def test_drain_delivers_what_a_killed_replica_acknowledged(tmp_path: Path) -> None:
    sink = Sink()
    queue = leave_a_queue(tmp_path, sink)
    with sink.running():
        done = drain(queue, config_for(sink, queue), tmp_path, "--timeout", "30s")
        assert done.returncode == 0, done.stdout + done.stderr
        assert sink.wait_items("traces", N) == N
        names = sink.span_names("left-")
        assert len(names) == len(set(names)) == N  # each span once
        assert "every queue is empty" in done.stdout
        assert f"sink: {EXPORTS} batches found, {N} items delivered" in done.stdout

        began = time.monotonic()
        again = drain(queue, config_for(sink, queue), tmp_path, "--timeout", "30s")
        seconds = time.monotonic() - began
        assert again.returncode == 0, again.stdout + again.stderr
        assert "sink: 0 batches found, 0 items delivered" in again.stdout
        assert seconds < 10, f"an empty drain took {seconds:.1f}s"  # the interpreter's start
        assert sink.items("traces") == N


def test_drain_stops_at_its_deadline_and_says_what_is_left(tmp_path: Path) -> None:
    sink = Sink()
    queue = leave_a_queue(tmp_path, sink)
    began = time.monotonic()
    late = drain(queue, config_for(sink, queue), tmp_path, "--timeout", "2s")
    assert late.returncode == 1, late.stdout + late.stderr
    assert time.monotonic() - began < 15
    assert "the deadline (2s) passed with data left" in late.stderr
    assert f"sink: {EXPORTS} batches (" in late.stderr and str(queue / "sink") in late.stderr
    # what was left is still there: the next drain, with the backend up, delivers all of it
    with sink.running():
        done = drain(queue, config_for(sink, queue), tmp_path, "--timeout", "30s")
        assert done.returncode == 0, done.stdout + done.stderr
        assert sink.wait_items("traces", N) == N


def _request(prefix: str, n: int) -> Batch:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(n):
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name = b"\x01" * 16, i.to_bytes(8, "big"), f"{prefix}-{i}"
    return Batch(BY_NAME["traces"], req.SerializeToString(), n, "acme")


async def _fill(directory: Path, batches: list[Batch]) -> None:
    queue = DurableQueue(directory, 64 * 1024 * 1024)
    await queue.open()
    for batch in batches:
        pending = queue.submit(batch)
        assert pending is not None
        await pending
    await queue.close()


def test_drain_finds_worker_and_tenant_queues(tmp_path: Path) -> None:
    """`workers: N` leaves worker-<i>/<backend>; a backend whose headers name the tenant
    leaves <backend>@<tenant>: both are found and delivered, with the tenant's headers."""
    queue = tmp_path / "queue"
    asyncio.run(_fill(queue / "worker-0" / "sink", [_request("w0", 3)]))
    asyncio.run(_fill(queue / "worker-1" / "sink", [_request("w1", 4), _request("w1b", 5)]))
    asyncio.run(_fill(queue / "per-tenant@acme", [_request("t", 6)]))
    with Sink().running() as sink:
        config = config_for(sink, queue)
        config["backends"]["per-tenant"] = {
            "protocol": "http/protobuf",
            "endpoint": sink.endpoint,
            "headers": {"X-Scope-OrgID": "{tenant}"},
        }
        config["service_backends"] = ["sink", "per-tenant"]
        done = drain(queue, config, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert sink.wait_items("traces", 18) == 18
        assert "sink (worker 1): 2 batches found, 9 items delivered" in done.stdout
        assert "per-tenant[acme]: 1 batches found, 6 items delivered" in done.stdout
        orgs = [r.headers.get("x-scope-orgid") for r in sink.received]
        assert orgs.count("acme") == 1  # the tenant's queue, sent with the tenant's header


def test_drain_refuses_a_queue_the_config_has_no_backend_for(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    asyncio.run(_fill(queue / "old-backend", [_request("x", 1)]))
    config = {
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": "http://127.0.0.1:9"}},
        "service_backends": ["sink"],
    }
    done = drain(queue, config, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "old-backend name no backend of the config (backends: sink)" in done.stderr
    assert (queue / "old-backend").is_dir()  # nothing touched
    missing = drain(tmp_path / "nowhere", config, tmp_path)
    assert missing.returncode == 2 and "no such directory" in missing.stderr
