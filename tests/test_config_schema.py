"""gateway.config's schema, in process: the value objects' fields are the keys, their defaults the
defaults, their metadata the conversions; where a config came from and how this process serves it
(Runtime) stay out of the config, and a reload keeps the fields the command line pinned."""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_mod
from gateway.config import (
    AdminConfig,
    BackendConfig,
    ConfigError,
    ConfigSource,
    GatewayConfig,
    Limits,
    QueueConfig,
    QuotaConfig,
    Runtime,
    SchemaField,
    Spec,
    TenantConfig,
    embedded_default,
    load,
    parse,
    schema,
)
from gateway.config import model as config_model
from gateway.ingress.intake import Intake
from gateway.reload import Reloader
from gateway.telemetry.recent import RecentErrors
from gateway.tenancy.tenants import TenantRegistry

pytestmark = pytest.mark.timeout(10)

MiB = 1024 * 1024
# load() refuses a file that sends data nowhere
ROUTED = "backends: {files: {protocol: file, path: ./otlp-data}}\nservice_backends: [files]\n"
NOT_SCHEMAS = (Spec, SchemaField, ConfigSource, Runtime)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, "gw.yaml", env={})
    return str(info.value)


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls) if f.name not in ("name", "origin"))


def test_every_field_has_a_kind() -> None:
    """A field whose annotation does not say how to read it says so in its metadata (schema()
    raises TypeError otherwise)."""
    classes = [c for c in vars(config_mod).values() if isinstance(c, type) and is_dataclass(c)]
    classes = [c for c in classes if c.__module__ == config_model.__name__ and c not in NOT_SCHEMAS]
    assert {GatewayConfig, BackendConfig, TenantConfig, QuotaConfig} < set(classes)
    for cls in classes:
        assert all(f.kind for f in schema(cls).values())
    for cls in (BackendConfig, TenantConfig):
        assert schema(cls)["name"].kind == "not_a_key"


def test_defaults_come_from_the_dataclasses() -> None:
    config = parse("", env={})
    for f in fields(GatewayConfig):
        assert getattr(config, f.name) == getattr(GatewayConfig(), f.name), f.name
    config = parse(
        "backends: {b: {protocol: grpc, endpoint: 'http://x:4317'}}\ntenants: {t: {}}\n", env={}
    )
    assert config.backends["b"] == BackendConfig(
        name="b", protocol="grpc", endpoint="http://x:4317"
    )
    assert config.tenants == {"t": TenantConfig(name="t")}


def test_an_unknown_key_names_file_line_key_and_the_dataclass_fields() -> None:
    assert _error("listen: ['127.0.0.1:4317']\nlimitz: {}\n") == (
        f"gw.yaml:2: limitz: unknown key; expected one of: {_keys(GatewayConfig)}"
    )
    assert _error("limits:\n  max_body_bytes: 1MiB\n  max_bodi_bytes: 1MiB\n") == (
        f"gw.yaml:3: limits.max_bodi_bytes: unknown key; expected one of: {_keys(Limits)}"
    )
    text = "backends:\n  b:\n    protocol: grpc\n    name: b\n"
    assert _error(text) == (
        f"gw.yaml:4: backends.b.name: unknown key; expected one of: {_keys(BackendConfig)}"
    )
    assert "name" not in _keys(BackendConfig) and "origin" not in _keys(GatewayConfig)


def test_sizes_durations_and_choices_as_the_metadata_says() -> None:
    config = parse(
        "limits: {max_body_bytes: 4MB, max_request_bytes: 2MiB, body_timeout: 500ms}\n"
        "shutdown_timeout: 2m\n"
        "tenants: {t: {quota: {bytes_per_second: 1KiB, items_per_second: 5}}}\n",
        env={},
    )
    assert config.limits.max_body_bytes == 4_000_000
    assert config.limits.max_request_bytes == 2 * MiB
    assert config.limits.body_timeout == 0.5
    assert config.shutdown_timeout == 120.0
    assert config.tenants is not None
    quota = config.tenants["t"].quota
    assert quota == QuotaConfig(bytes_per_second=1024.0, items_per_second=5.0)
    assert isinstance(quota.bytes_per_second, float)  # a size read into a float field
    assert quota.max_request_bytes is None  # an optional size, absent
    assert _error("log: {format: xml}\n") == (
        "gw.yaml:1: log.format: must be one of text, json; got 'xml'"
    )
    assert _error("limits:\n  header_timeout: 0\n") == (
        "gw.yaml:2: limits.header_timeout: must be a duration above 0 such as 30s, got 0.0"
    )
    assert _error("workers: 0\n") == "gw.yaml:1: workers: must be a whole number >= 1, got 0"


def test_a_durable_queue_defaults_to_the_durable_size() -> None:
    config = parse(
        "queue: {durable: true}\n"
        "backends:\n"
        "  a: {protocol: grpc, endpoint: 'http://x:1'}\n"
        "  b: {protocol: grpc, endpoint: 'http://x:1', queue: {durable: false}}\n",
        env={},
    )
    assert config.queue == QueueConfig(durable=True, max_bytes=1024 * MiB)
    assert config.backends["a"].queue == config.queue
    assert config.backends["b"].queue == QueueConfig()


def test_where_it_came_from_is_not_configuration(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(ROUTED + "workers: 2\n")
    loaded = load(path, env={})
    assert loaded.origin == ConfigSource(str(path), path=str(path))
    assert loaded.source == str(path)
    assert parse(ROUTED + "workers: 2\n", "other.yaml", env={}) == loaded  # other origin
    assert parse("", "x.yaml", env={}).origin == ConfigSource("x.yaml")
    assert embedded_default().origin == ConfigSource("<embedded default>")
    names = {f.name for f in fields(GatewayConfig)}
    assert not names & {"worker", "pinned", "source", "path", "origin"}


class _Pipeline:
    """Takes what a reload hands the pipeline."""

    def __init__(self) -> None:
        self.backends: Any = None

    def reconfigure(self, backends: Any, retry: Any) -> None:
        self.backends = backends


def _reloader(config: GatewayConfig, runtime: Runtime) -> Reloader:
    pipeline: Any = _Pipeline()
    return Reloader(
        config, Intake(TenantRegistry(config), pipeline), pipeline, runtime, RecentErrors()
    )


def test_a_reload_keeps_the_pinned_fields(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(ROUTED + "shutdown_timeout: 1s\n")
    loaded = load(path, env={})
    admin = AdminConfig(listen="127.0.0.1:9999")
    # as `serve --tls-cert` does with tls: set on the command line, pinned
    config = replace(loaded, admin=admin, shutdown_timeout=7.0)
    reloader = _reloader(config, Runtime(loaded.origin, pinned=("admin",), worker=1))
    path.write_text(
        ROUTED + "shutdown_timeout: 3s\nadmin: {listen: '127.0.0.1:9000'}\nvalidate: full\n"
    )
    assert reloader.reload("test")
    assert reloader.config.admin == admin  # pinned: kept
    assert reloader.config.shutdown_timeout == 3.0  # not pinned: the file's
    assert reloader.config.validate == "full"
    assert reloader.runtime.worker == 1  # a reload replaces the config, never the runtime


def test_no_file_no_reload() -> None:
    reloader = _reloader(embedded_default(), Runtime(ConfigSource("<embedded default>")))
    assert not reloader.reload("SIGHUP")


def test_a_reload_to_a_config_without_a_backend_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(ROUTED)
    loaded = load(path, env={})
    reloader = _reloader(loaded, Runtime(loaded.origin))
    registry = reloader._intake.registry
    path.write_text("shutdown_timeout: 3s\n")  # the backend removed
    assert not reloader.reload("test")
    assert (reloader.config, reloader.failures) == (loaded, 1)
    assert reloader._intake.registry is registry  # the previous config keeps serving
    path.write_text(ROUTED + "shutdown_timeout: 3s\n")
    assert reloader.reload("test")
    assert reloader.config.shutdown_timeout == 3.0
