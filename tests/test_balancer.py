"""deploy/haproxy/haproxy.cfg in front of three real replicas (`otlp-gateway serve`, one config
file, each on its own free ports), with HAProxy started here on free ports and stopped by PID.

(a) One OpenTelemetry SDK gRPC exporter (one channel, one connection to HAProxy) spreads its calls
over every replica: HAProxy balances per request, not per connection.
(b) A replica told to stop (SIGTERM) under a steady stream of exports: every span whose export was
acknowledged reaches the sink exactly once, and HAProxy takes the replica out.

How spans are counted in (b): every span has a unique name; an export's names count as
acknowledged when `export()` returned SUCCESS (the SDK's own retries included). The sink must hold
each acknowledged name exactly once (a retried export whose first attempt was in fact taken would
show as a duplicate: none is allowed), and nothing it was not sent."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.parser import text_string_to_metric_families

from tests.support.balancer import Balancer, haproxy
from tests.support.cli import spawn_serve, wait_started
from tests.support.peers import (
    Gateway,
    Sink,
    wait_until,
)
from tests.support.sdkspans import named_spans

REPLICAS = 3


@contextlib.contextmanager
def replicas(tmp: Path, sink: Sink, n: int) -> Iterator[list[Gateway]]:
    """`n` gateways from one config file, each with its own OTLP and admin port (flags)."""
    config = tmp / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
                "service_backends": ["sink"],
                "shutdown_timeout": "10s",
            }
        )
    )
    gateways: list[Gateway] = []
    try:
        for _ in range(n):
            gateways.append(spawn_serve(tmp, "--config", str(config)))
        for gw in gateways:  # started together, waited for in turn
            wait_started(gw)
        yield gateways
    finally:
        for gw in gateways:
            gw.stop()


@pytest.fixture
def fleet(tmp_path: Path, sink: Sink) -> Iterator[tuple[list[Gateway], Balancer]]:
    with replicas(tmp_path, sink, REPLICAS) as gateways, haproxy(tmp_path, gateways) as lb:
        yield gateways, lb


def accepted_calls(gw: Gateway) -> int:
    """Export requests the replica acknowledged, from its /metrics."""
    text = httpx.get(f"{gw.admin_url}/metrics", timeout=5).text
    return int(
        sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "otlp_gateway_requests_total" and s.labels.get("outcome") == "accepted"
        )
    )


def test_one_grpc_connection_is_spread_over_every_replica(
    fleet: tuple[list[Gateway], Balancer], sink: Sink
) -> None:
    gateways, lb = fleet
    calls = 60
    before = [accepted_calls(gw) for gw in gateways]  # the start-up probes
    connections = int(lb.frontend()["conn_tot"])  # wait_for_port's
    exporter = OTLPSpanExporter(endpoint=lb.endpoint, insecure=True, timeout=10)
    try:
        for i in range(calls):
            assert exporter.export(named_spans(f"spread-{i}", 1)) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    per_replica = [accepted_calls(gw) - b for gw, b in zip(gateways, before, strict=True)]
    print(f"calls per replica: {per_replica} of {calls}")
    assert sum(per_replica) == calls
    assert all(n >= calls * 0.2 for n in per_replica), per_replica
    # one client connection carried every call
    assert int(lb.frontend()["conn_tot"]) == connections + 1
    assert sink.wait_items("traces", calls) == calls


def test_a_stopping_replica_loses_no_acknowledged_span(
    fleet: tuple[list[Gateway], Balancer], sink: Sink
) -> None:
    gateways, lb = fleet
    per_export = 5
    acked: list[str] = []
    failed: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        exporter = OTLPSpanExporter(endpoint=lb.endpoint, insecure=True, timeout=10)
        try:
            i = 0
            while not stop.is_set():
                spans = named_spans(f"steady-{i}", per_export)
                names = [s.name for s in spans]
                if exporter.export(spans) == SpanExportResult.SUCCESS:
                    acked.extend(names)
                else:
                    failed.extend(names)
                i += 1
                time.sleep(0.01)
        finally:
            exporter.shutdown()

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        assert wait_until(lambda: len(acked) >= 100 * per_export, timeout=20)
        victim = gateways[1]
        victim.proc.send_signal(signal.SIGTERM)
        # HAProxy sees the admin listener go: two failed checks, 2 s apart
        assert wait_until(lambda: lb.servers()["gw2"]["status"].startswith("DOWN"), timeout=10)
        assert victim.proc.wait(20) == 0, victim.log()
        sessions_when_down = int(lb.servers()["gw2"]["stot"])
        before = len(acked)
        assert wait_until(lambda: len(acked) >= before + 100 * per_export, timeout=20)
        assert int(lb.servers()["gw2"]["stot"]) == sessions_when_down  # nothing more to it
    finally:
        stop.set()
        sender.join(30)
    assert not failed, f"{len(failed)} spans not acknowledged"
    wait_until(lambda: len(set(sink.span_names("steady-"))) >= len(acked), timeout=15)
    time.sleep(0.2)  # stragglers (duplicates) arrive before the count
    received = Counter(sink.span_names("steady-"))
    missing = set(acked) - set(received)
    duplicated = {name: n for name, n in received.items() if n > 1}
    servers = lb.servers()
    print(
        f"{len(acked)} spans acknowledged in {len(acked) // per_export} exports, "
        f"{len(missing)} missing, {sum(duplicated.values()) - len(duplicated)} duplicates; "
        f"haproxy: "
        + ", ".join(
            f"{name} {s['status']} stot={s['stot']} econ={s['econ']} wretr={s['wretr']} "
            f"wredis={s['wredis']}"
            for name, s in sorted(servers.items())
        )
    )
    assert not missing, f"{len(missing)} acknowledged spans never arrived: {sorted(missing)[:5]}"
    assert not duplicated, f"duplicates: {sorted(duplicated)[:5]}"
    assert set(received) == set(acked)
