"""Hot reload of the config file, against a real gateway process: keys rotated and revoked without
a restart (file polling and SIGHUP), invalid configs refused while the old one keeps serving,
tenants and backends added, queued data kept across reloads, and a long-lived gRPC exporter that
sees no failure while the config changes under it.

Each test runs its own gateway and rewrites the config file run_gateway wrote
(`gateway-<grpc port>.yaml`), atomically, so a poll never sees half a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.tenancy import keys
from tests.support.peers import Gateway, Sink, wait_until
from tests.support.tenants import (
    bearer,
    exact,
    items_of,
    new_tag,
    nothing,
    post,
    run_tenant_gateway,
    simple_spans,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# Helpers


def config_path(tmp_path: Path, gw: Gateway) -> Path:
    return tmp_path / f"gateway-{gw.grpc_port}.yaml"


def full_config(gw: Gateway, config: dict[str, Any]) -> dict[str, Any]:
    return {"listen": [f"127.0.0.1:{gw.grpc_port}", f"127.0.0.1:{gw.http_port}"], **config}


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rewrite(tmp_path: Path, gw: Gateway, config: dict[str, Any]) -> str:
    text = yaml.safe_dump(full_config(gw, config))
    write_text(config_path(tmp_path, gw), text)
    return text


def log_count(gw: Gateway, needle: str) -> int:
    return gw.log().count(needle)


@contextlib.contextmanager
def expect_log(gw: Gateway, needle: str, timeout: float = 5.0) -> Iterator[None]:
    """Wait, after the block, until the gateway has logged `needle` once more than before it."""
    before = log_count(gw, needle)
    yield
    assert wait_until(lambda: log_count(gw, needle) > before, timeout), gw.log()[-3000:]


def tenant(*api_keys: str, **extra: Any) -> dict[str, Any]:
    return {"api_keys": [keys.config_entry(k) for k in api_keys], **extra}


def base_config(sink: Sink, *api_keys: str, reload_interval: str = "200ms") -> dict[str, Any]:
    return {
        "reload_interval": reload_interval,
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["sink"],
        "tenants": {"acme": tenant(*api_keys)},
    }


def status(gw: Gateway, key: str, tag: str, n: int = 1) -> int:
    return post(gw, "traces", simple_spans(tag, n), bearer(key)).status_code


# ---------------------------------------------------------------------------------------------
# (1) key rotation


def test_rotate_and_revoke_keys_by_file_change(tmp_path: Path, sink: Sink) -> None:
    k1, k2 = keys.new_key(), keys.new_key()
    tag = new_tag()
    with run_tenant_gateway(tmp_path, base_config(sink, k1)) as gw:
        pid = gw.proc.pid
        assert status(gw, k1, tag) == 200
        assert status(gw, k2, tag) == 401

        started = time.monotonic()
        with expect_log(gw, "config reloaded (file changed)"):
            rewrite(tmp_path, gw, base_config(sink, k1, k2))
        assert time.monotonic() - started < 3
        assert status(gw, k2, tag, 2) == 200
        assert status(gw, k1, tag, 3) == 200

        with expect_log(gw, "config reloaded (file changed)"):
            rewrite(tmp_path, gw, base_config(sink, k2))
        assert status(gw, k1, tag) == 401  # revoked
        assert status(gw, k2, tag, 4) == 200

        assert gw.proc.poll() is None and gw.proc.pid == pid  # no restart
        for _, res, _ in exact(sink, "traces", tag, 1 + 2 + 3 + 4):
            assert [v for k, v in res if k == "tenant.id"] == ["acme"]
        assert "refused, still serving" not in gw.log()  # no reload was refused


def test_rotate_and_revoke_keys_by_sighup(tmp_path: Path, sink: Sink) -> None:
    k1, k2 = keys.new_key(), keys.new_key()
    tag = new_tag()
    with run_tenant_gateway(tmp_path, base_config(sink, k1, reload_interval="0")) as gw:
        assert status(gw, k1, tag) == 200

        rewrite(tmp_path, gw, base_config(sink, k1, k2, reload_interval="0"))
        time.sleep(0.8)  # no polling with reload_interval 0: nothing changes until SIGHUP
        assert status(gw, k2, tag) == 401
        with expect_log(gw, "config reloaded (SIGHUP)"):
            gw.proc.send_signal(signal.SIGHUP)
        assert status(gw, k2, tag, 2) == 200
        assert status(gw, k1, tag, 3) == 200

        rewrite(tmp_path, gw, base_config(sink, k2, reload_interval="0"))
        with expect_log(gw, "config reloaded (SIGHUP)"):
            gw.proc.send_signal(signal.SIGHUP)
        assert status(gw, k1, tag) == 401
        assert status(gw, k2, tag, 4) == 200

        assert gw.proc.poll() is None
        exact(sink, "traces", tag, 1 + 2 + 3 + 4)
        assert "config reloaded (file changed)" not in gw.log()


# ---------------------------------------------------------------------------------------------
# (2) invalid configs are refused


def test_invalid_config_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, sink: Sink
) -> None:
    k2, k3 = keys.new_key(), keys.new_key()
    tag = new_tag()
    with run_tenant_gateway(tmp_path, base_config(sink, k2)) as gw:
        path = config_path(tmp_path, gw)
        assert status(gw, k2, tag) == 200

        # bad YAML, on a known line; it also lists k3
        good = yaml.safe_dump(full_config(gw, base_config(sink, k2, k3)))
        lines = good.splitlines()
        bad_yaml = "\n".join([*lines, "oops: key: value", ""])
        with expect_log(gw, "refused"):
            write_text(path, bad_yaml)
        log = gw.log()
        assert (
            f"config reload (file changed) refused, still serving the previous config: "
            f"{path}:{len(lines) + 1}: not valid YAML" in log
        ), log[-2000:]
        assert status(gw, k2, tag, 2) == 200
        assert status(gw, k3, tag) == 401

        # valid YAML, but acme names a backend that does not exist
        unknown = base_config(sink, k3)
        unknown["tenants"]["acme"]["backends"] = ["nope"]
        with expect_log(gw, "refused"):
            text = rewrite(tmp_path, gw, unknown)
        line = text.splitlines().index("    - nope") + 1
        log = gw.log()
        assert (
            f"refused, still serving the previous config: {path}:{line}: "
            f"tenants.acme.backends[0]: no backend named 'nope'" in log
        ), log[-2000:]
        assert status(gw, k2, tag, 3) == 200  # nothing of the refused config was applied
        assert status(gw, k3, tag) == 401

        # SIGHUP with the invalid file: refused the same way
        with expect_log(gw, "config reload (SIGHUP) refused"):
            gw.proc.send_signal(signal.SIGHUP)
        assert status(gw, k2, tag, 4) == 200

        # and a valid file after that is taken
        with expect_log(gw, "config reloaded (file changed)"):
            rewrite(tmp_path, gw, base_config(sink, k3))
        assert status(gw, k3, tag, 5) == 200
        assert status(gw, k2, tag) == 401
        assert gw.proc.poll() is None
        exact(sink, "traces", tag, 1 + 2 + 3 + 4 + 5)


# ---------------------------------------------------------------------------------------------
# (3) tenants, backends and queued data


def test_new_tenant_and_backend_by_reload(tmp_path: Path, sink: Sink) -> None:
    ka, kg = keys.new_key(), keys.new_key()
    tag = new_tag()
    with Sink().running() as globex_sink, run_tenant_gateway(tmp_path, base_config(sink, ka)) as gw:
        assert status(gw, kg, tag) == 401
        config = base_config(sink, ka)
        config["backends"]["globex-own"] = {
            "protocol": "http/json",
            "endpoint": globex_sink.endpoint,
            "headers": {"X-Scope-OrgID": "{tenant}"},
        }
        config["tenants"]["globex"] = tenant(
            kg, backends=["globex-own"], attributes={"org.region": "eu"}
        )
        with expect_log(gw, "config reloaded (file changed): 2 tenants, 2 backends"):
            rewrite(tmp_path, gw, config)
        assert status(gw, kg, tag, 3) == 200
        assert status(gw, ka, tag, 2) == 200

        for headers, res, _ in exact(globex_sink, "traces", tag, 3):
            assert headers["x-scope-orgid"] == "globex"
            assert [v for k, v in res if k in ("tenant.id", "org.region")] == ["globex", "eu"]
        got = exact(sink, "traces", tag, 5)
        assert sorted(dict(res)["tenant.id"] for _, res, _ in got) == ["acme"] * 2 + ["globex"] * 3


def _queue_config(
    down: Sink, *api_keys: str, version: str, shutdown_timeout: str
) -> dict[str, Any]:
    return {
        "reload_interval": "200ms",
        "shutdown_timeout": shutdown_timeout,
        "retry": {"initial_interval": "100ms", "max_interval": "300ms", "max_elapsed": "1m"},
        "backends": {
            "flaky": {
                "protocol": "http/protobuf",
                "endpoint": down.endpoint,
                "headers": {"X-Version": version},
            }
        },
        "service_backends": ["flaky"],
        "tenants": {"acme": tenant(*api_keys)},
    }


def test_queue_of_an_unchanged_backend_is_kept(tmp_path: Path) -> None:
    """The backend is down across a reload that leaves it unchanged. A replaced destination would
    get only shutdown_timeout (1 s) to drain; the data arrives after 3 s, so the queue was kept."""
    k1, k2 = keys.new_key(), keys.new_key()
    tag = new_tag()
    with Sink(status=503).running() as down:
        config = _queue_config(down, k1, version="1", shutdown_timeout="1s")
        with run_tenant_gateway(tmp_path, config) as gw:
            assert status(gw, k1, tag, 5) == 200
            time.sleep(0.3)  # the batch is in delivery, being retried
            with expect_log(gw, "config reloaded (file changed)"):
                rewrite(
                    tmp_path, gw, _queue_config(down, k1, k2, version="1", shutdown_timeout="1s")
                )
            assert status(gw, k2, tag, 3) == 200
            time.sleep(3)
            assert items_of(down, "traces", tag) == []
            down.status = 200
            got = exact(down, "traces", tag, 5 + 3)
            assert {h["x-version"] for h, _, _ in got} == {"1"}
            assert "lost" not in gw.log()
            assert "dropped" not in gw.log()


def test_changed_backend_drains_what_was_queued(tmp_path: Path) -> None:
    """A header of the backend changes while it is down: what was queued before goes out from the
    old destination (old header), what comes after from the new one."""
    k1 = keys.new_key()
    before, after = new_tag(), new_tag()
    with Sink(status=503).running() as down:
        config = _queue_config(down, k1, version="1", shutdown_timeout="20s")
        with run_tenant_gateway(tmp_path, config) as gw:
            assert status(gw, k1, before, 5) == 200
            assert status(gw, k1, before, 2) == 200
            time.sleep(0.3)
            with expect_log(gw, "config reloaded (file changed)"):
                rewrite(tmp_path, gw, _queue_config(down, k1, version="2", shutdown_timeout="20s"))
            assert status(gw, k1, after, 4) == 200
            time.sleep(1)
            nothing(down, before)
            down.status = 200
            old = exact(down, "traces", before, 5 + 2)
            new = exact(down, "traces", after, 4)
            assert {h["x-version"] for h, _, _ in old} == {"1"}
            assert {h["x-version"] for h, _, _ in new} == {"2"}
            assert "lost" not in gw.log()


# ---------------------------------------------------------------------------------------------
# (4) connections survive reloads


def _client_ports(server_port: int) -> set[int]:
    """Local ports of the established TCP connections to 127.0.0.1:server_port (grpcio's socket
    is an IPv6 one with a v4-mapped address)."""
    remotes = (f"0100007F:{server_port:04X}", f"0000000000000000FFFF00000100007F:{server_port:04X}")
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if state == "01" and remote in remotes:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def _spans(tag: str, n: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"test.tag": tag}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("reload-test")
    for i in range(n):
        with tracer.start_as_current_span(f"{tag}-{i}"):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_long_lived_grpc_exporter_sees_no_failure_across_reloads(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    caplog.set_level(logging.WARNING)
    k1, k2 = keys.new_key(), keys.new_key()
    tag = new_tag()
    batch = _spans(tag, 5)
    results: list[SpanExportResult] = []
    stop = threading.Event()

    with Sink().running() as second, run_tenant_gateway(tmp_path, base_config(sink, k1)) as gw:
        exporter = OTLPSpanExporter(
            endpoint=gw.grpc_endpoint, insecure=True, timeout=10, headers=bearer(k1)
        )

        def export_loop() -> None:
            while not stop.is_set():
                results.append(exporter.export(batch))
                time.sleep(0.01)

        thread = threading.Thread(target=export_loop, daemon=True)
        thread.start()
        try:
            assert wait_until(lambda: len(results) >= 20, 10)
            connections = _client_ports(gw.grpc_port)
            assert len(connections) == 1

            # a new key and a new backend (the tenant's data now also goes there)
            config = base_config(sink, k1, k2)
            config["backends"]["second"] = {
                "protocol": "http/protobuf",
                "endpoint": second.endpoint,
            }
            config["tenants"]["acme"]["backends"] = ["second"]
            n = len(results)
            with expect_log(gw, "config reloaded (file changed)"):
                rewrite(tmp_path, gw, config)
            assert wait_until(lambda: len(results) >= n + 20, 10)
            # SIGHUP with the same file
            n = len(results)
            with expect_log(gw, "config reloaded (SIGHUP)"):
                gw.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: len(results) >= n + 20, 10)
            # the service backend changes (a header): its destination is replaced
            config["backends"]["sink"]["headers"] = {"X-Changed": "yes"}
            n = len(results)
            with expect_log(gw, "config reloaded (file changed)"):
                rewrite(tmp_path, gw, config)
            assert wait_until(lambda: len(results) >= n + 20, 10)
        finally:
            stop.set()
            thread.join(15)
        assert _client_ports(gw.grpc_port) == connections  # the same single connection
        exporter.shutdown()

        assert results.count(SpanExportResult.SUCCESS) == len(results), results
        total = 5 * len(results)
        exact(sink, "traces", tag, total)
        assert 0 < len(items_of(second, "traces", tag)) < total
        warnings = [r for r in caplog.records if r.name.startswith("opentelemetry")]
        assert warnings == []  # no transient error, no retry
        assert re.search(r"refused, still|Traceback|ERROR", gw.log()) is None, gw.log()[-3000:]
