"""gateway.config: the example config, interpolation, sizes and durations, and errors that name the
file, the line and the dotted key; the `check` command."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    ConfigError,
    embedded_default,
    load,
    parse,
)
from gateway.config.parse import _check_routes as check_routes
from gateway.tenancy import keys
from tests.support.peers import ROOT

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def _yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _error(text: str, env: dict[str, str] | None = None, source: str = "gw.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse(_yaml(text), source, env={} if env is None else env)
    return str(info.value)


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(_yaml(text).splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the config")


# ---------------------------------------------------------------------------------------------
# The example config


EXAMPLE = """
listen: ["0.0.0.0:4317", "0.0.0.0:4318"]
limits:
  max_request_bytes: 16MiB
  max_body_bytes: 8MiB
backends:
  central:
    protocol: http/protobuf
    endpoint: "http://lgtm:4318"
    compression: gzip
    headers: {X-Scope-OrgID: "{tenant}", Authorization: "Bearer ${CENTRAL_TOKEN}"}
    timeout: 10s
  archive: {protocol: file, path: ./otlp-data, rotate_bytes: 100MiB, max_files: 10}
service_backends: [central, archive]
retry: {initial_interval: 500ms, max_interval: 30s, max_elapsed: 5m}
shutdown_timeout: 10s
timeout_keep_alive: 75s
"""


def test_example_config_parses() -> None:
    config = parse(_yaml(EXAMPLE), "gateway.yaml", env={"CENTRAL_TOKEN": "s3cret"})
    assert config.listen == ("0.0.0.0:4317", "0.0.0.0:4318")
    assert config.limits.max_request_bytes == 16 * MiB
    assert config.limits.max_body_bytes == 8 * MiB
    assert set(config.backends) == {"central", "archive"}
    central = config.backends["central"]
    assert central.name == "central"
    assert central.protocol == "http/protobuf"
    assert central.endpoint == "http://lgtm:4318"
    assert central.compression == "gzip"
    assert central.headers == {"X-Scope-OrgID": "{tenant}", "Authorization": "Bearer s3cret"}
    assert central.timeout == 10.0
    archive = config.backends["archive"]
    assert archive.protocol == "file"
    assert archive.path == "./otlp-data"
    assert archive.rotate_bytes == 100 * MiB
    assert archive.max_files == 10
    assert archive.compression == "none"  # the file backend's default
    assert config.service_backends == ("central", "archive")
    assert config.retry.initial_interval == 0.5
    assert config.retry.max_interval == 30.0
    assert config.retry.max_elapsed == 300.0
    assert config.shutdown_timeout == 10.0
    assert config.timeout_keep_alive == 75.0
    assert config.source == "gateway.yaml"


def test_example_from_the_brief_with_only_max_request_bytes() -> None:
    config = parse(
        _yaml(
            """
            listen: ["127.0.0.1:4317", "127.0.0.1:4318"]
            limits: {max_request_bytes: 16MiB}
            backends:
              central:
                protocol: http/protobuf
                endpoint: http://mimir:4318
                headers: {X-Scope-OrgID: "{tenant}"}
              archive: {protocol: file, path: /var/lib/otlp}
            service_backends: [central, archive]
            """
        ),
        env={},
    )
    assert config.limits.max_request_bytes == 16 * MiB
    assert config.limits.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert config.backends["central"].headers == {"X-Scope-OrgID": "{tenant}"}
    assert config.backends["archive"].path == "/var/lib/otlp"


def test_empty_config_is_all_defaults() -> None:
    config = parse("", "empty.yaml", env={})
    assert config.limits.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES == 16 * MiB
    assert config.limits.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 16 * MiB
    assert config.backends == {}
    assert config.service_backends == ()
    assert config.tls is None
    assert config.validate == "auto"


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(_yaml(EXAMPLE))
    config = load(path, env={"CENTRAL_TOKEN": "t"})
    assert config.source == str(path)
    assert config.backends["central"].headers["Authorization"] == "Bearer t"
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(tmp_path / "missing.yaml", env={})


# ---------------------------------------------------------------------------------------------
# ${VAR} interpolation


def test_interpolation() -> None:
    text = """
    backends:
      central:
        protocol: ${PROTO}
        endpoint: "http://${HOST}:${PORT:-4318}"
        headers:
          Authorization: "Bearer ${TOKEN}"
          X-Empty-Default: "[${UNSET:-}]"
          X-Dollar: "cost: $$5 ${CURRENCY:-EUR}"
          X-Default-With-Colon: "${UNSET:-http://a:1/b}"
        concurrency: ${CONC:-8}
        timeout: ${TIMEOUT:-500ms}
      archive: {protocol: file, path: "${DATA_DIR:-/tmp/otlp}/archive"}
    limits: {max_request_bytes: "${MAX:-1MiB}"}
    service_backends: ["${FIRST:-central}", archive]
    """
    env = {"PROTO": "http/json", "HOST": "collector", "TOKEN": "abc$def", "CURRENCY": "USD"}
    config = parse(_yaml(text), env=env)
    central = config.backends["central"]
    assert central.protocol == "http/json"
    assert central.endpoint == "http://collector:4318"
    assert central.headers == {
        "Authorization": "Bearer abc$def",  # a value is not interpolated again
        "X-Empty-Default": "[]",
        "X-Dollar": "cost: $5 USD",
        "X-Default-With-Colon": "http://a:1/b",
    }
    assert central.concurrency == 8  # "8" from the default, converted
    assert central.timeout == 0.5
    assert config.backends["archive"].path == "/tmp/otlp/archive"
    assert config.limits.max_request_bytes == MiB
    assert config.service_backends == ("central", "archive")

    config = parse(_yaml(text), env={**env, "PORT": "9999", "CONC": "2", "MAX": "2MiB"})
    assert config.backends["central"].endpoint == "http://collector:9999"
    assert config.backends["central"].concurrency == 2
    assert config.limits.max_request_bytes == 2 * MiB


def test_interpolation_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTLP_GW_TEST_TOKEN", "from-env")
    config = parse(
        _yaml(
            """
            backends:
              b:
                protocol: http/protobuf
                endpoint: "http://x:1"
                headers: {A: "${OTLP_GW_TEST_TOKEN}"}
            """
        )
    )
    assert config.backends["b"].headers == {"A": "from-env"}


def test_missing_variable_names_key_and_line() -> None:
    text = """
    listen: ["127.0.0.1:4317"]
    backends:
      central:
        protocol: http/protobuf
        endpoint: "http://lgtm:4318"
        headers:
          Authorization: "Bearer ${CENTRAL_TOKEN}"
    """
    message = _error(text, source="gateway.yaml")
    line = _line_of(text, "CENTRAL_TOKEN")
    assert message.startswith(f"gateway.yaml:{line}: ")
    assert "backends.central.headers.Authorization" in message
    assert "CENTRAL_TOKEN" in message and "not set" in message


def test_missing_variable_in_a_list_item() -> None:
    text = """
    listen:
      - "127.0.0.1:4317"
      - "${HTTP_LISTEN}"
    """
    message = _error(text)
    assert message.startswith(f"gw.yaml:{_line_of(text, 'HTTP_LISTEN')}: listen[1]: ")
    assert "HTTP_LISTEN" in message


# ---------------------------------------------------------------------------------------------
# Errors: file:LINE and the dotted key path


BAD_CONFIGS = {
    "unknown-top-level-key": (
        """
        listen: ["127.0.0.1:4317"]
        limitz:
          max_request_bytes: 1MiB
        """,
        "limitz:",
        "limitz",
        "unknown key",
    ),
    "unknown-limits-key": (
        """
        limits:
          max_request_bytes: 1MiB
          max_requests_bytes: 1MiB
        """,
        "max_requests_bytes",
        "limits.max_requests_bytes",
        "unknown key",
    ),
    "unknown-backend-key": (
        """
        backends:
          central:
            protocol: http/protobuf
            endpoint: "http://x:4318"
            endpiont: "http://y:4318"
        """,
        "endpiont",
        "backends.central.endpiont",
        "unknown key",
    ),
    "bad-protocol": (
        """
        backends:
          central:
            protocol: htp
            endpoint: "http://x:4318"
        """,
        "htp",
        "backends.central.protocol",
        "must be one of grpc, http/protobuf, http/json, file; got 'htp'",
    ),
    "undefined-service-backend": (
        """
        backends:
          central: {protocol: http/protobuf, endpoint: "http://x:4318"}
        service_backends:
          - central
          - nowhere
        """,
        "nowhere",
        "service_backends[1]",
        "no backend named 'nowhere'",
    ),
    "undefined-service-backend-flow": (
        """
        backends:
          central: {protocol: http/protobuf, endpoint: "http://x:4318"}
        service_backends: [central, nowhere]
        """,
        "nowhere",
        "service_backends[1]",
        "no backend named 'nowhere'",
    ),
    "listen-not-host-port": (
        """
        listen: ["localhost"]
        """,
        "localhost",
        "listen",
        "is not host:port",
    ),
    "listen-port-out-of-range": (
        """
        server: uvicorn
        listen: ["127.0.0.1:70000"]
        """,
        "70000",
        "listen",
        "is not host:port",
    ),
    "listen-no-host": (
        """
        listen: [":4317"]
        """,
        ":4317",
        "listen",
        "is not host:port",
    ),
    "bad-size": (
        """
        limits:
          max_request_bytes: 16 parsecs
        """,
        "parsecs",
        "limits.max_request_bytes",
        "must be a size in bytes",
    ),
    "negative-size": (
        """
        limits:
          max_body_bytes: -5
        """,
        "-5",
        "limits.max_body_bytes",
        "must be a size",
    ),
    "zero-size": (
        """
        limits:
          max_body_bytes: 0
        """,
        "max_body_bytes",
        "limits.max_body_bytes",
        "more than 0",
    ),
    "bad-queue-size": (
        """
        backends:
          b:
            protocol: http/protobuf
            endpoint: "http://x:4318"
            queue: {max_bytes: lots}
        """,
        "lots",
        "backends.b.queue.max_bytes",
        "must be a size",
    ),
    "bad-duration": (
        """
        retry:
          initial_interval: 5 fortnights
        """,
        "fortnights",
        "retry.initial_interval",
        "must be a duration",
    ),
    "bad-backend-timeout": (
        """
        backends:
          b:
            protocol: http/protobuf
            endpoint: "http://x:4318"
            timeout: 3d
        """,
        "3d",
        "backends.b.timeout",
        "must be a duration",
    ),
    "negative-duration": (
        """
        shutdown_timeout: -1
        """,
        "shutdown_timeout",
        "shutdown_timeout",
        "must be a duration",
    ),
    "endpoint-not-url": (
        """
        backends:
          b: {protocol: grpc, endpoint: "lgtm:4317"}
        """,
        "lgtm",
        "backends.b.endpoint",
        "must be a URL",
    ),
    "missing-endpoint": (
        """
        backends:
          b:
            protocol: http/json
        """,
        "b:",
        "backends.b.endpoint",
        "is required",
    ),
    "unquoted-tenant-placeholder": (
        """
        backends:
          b:
            protocol: http/protobuf
            endpoint: "http://x:4318"
            headers: {X-Scope-OrgID: {tenant}}
        """,
        "X-Scope-OrgID",
        "backends.b.headers.X-Scope-OrgID",
        "must be a string",
    ),
    "bad-compression": (
        """
        backends:
          b:
            protocol: http/protobuf
            endpoint: "http://x:4318"
            compression: brotli
        """,
        "brotli",
        "backends.b.compression",
        "must be one of none, gzip",
    ),
    "client-on-grpc": (
        """
        backends:
          b: {protocol: grpc, endpoint: "http://x:4317", client: httpx}
        """,
        "client",
        "backends.b.client",
        "http/* backends only",
    ),
    "pyqwest-cannot-skip-verification": (
        """
        backends:
          b:
            protocol: http/protobuf
            endpoint: "https://x:4318"
            tls: {insecure: true}
            client: pyqwest
        """,
        "client",
        "backends.b.client",
        "use client: httpx with tls.insecure",
    ),
    "bad-server": (
        """
        server: gunicorn
        """,
        "gunicorn",
        "server",
        "must be one of uvicorn, hypercorn",
    ),
    "bad-validate": (
        """
        validate: sometimes
        """,
        "sometimes",
        "validate",
        "must be one of auto, full, wire",
    ),
    "duplicate-key": (
        """
        limits: {max_request_bytes: 1MiB}
        limits: {max_request_bytes: 2MiB}
        """,
        "2MiB",
        "limits",
        "appears twice",
    ),
    "section-not-a-mapping": (
        """
        listen: ["127.0.0.1:4317"]
        retry: 5s
        """,
        "retry",
        "retry",
        "must be a mapping",
    ),
    "self-telemetry-unknown-backend": (
        """
        backends:
          central: {protocol: http/protobuf, endpoint: "http://x:4318"}
        self_telemetry:
          backend: centrl
        """,
        "centrl",
        "self_telemetry.backend",
        "no backend named 'centrl'; defined backends: central",
    ),
    "self-telemetry-without-backend": (
        """
        self_telemetry:
          interval: 15s
        """,
        "self_telemetry:",
        "self_telemetry.backend",
        "is required",
    ),
    "self-telemetry-bad-interval": (
        """
        backends:
          central: {protocol: http/protobuf, endpoint: "http://x:4318"}
        self_telemetry: {backend: central, interval: often}
        """,
        "often",
        "self_telemetry.interval",
        "must be a duration such as 10s, 500ms or 5m, got 'often'",
    ),
    "self-telemetry-interval-too-short": (
        """
        backends:
          central: {protocol: http/protobuf, endpoint: "http://x:4318"}
        self_telemetry:
          backend: central
          interval: 100ms
        """,
        "100ms",
        "self_telemetry.interval",
        "must be a duration of at least 1s such as 15s or 60s, got '100ms'",
    ),
    "self-telemetry-bad-tenant": (
        """
        backends:
          central: {protocol: http/protobuf, endpoint: "http://x:4318"}
        self_telemetry:
          backend: central
          tenant: "ops team"
        """,
        "ops team",
        "self_telemetry.tenant",
        "must be a name of letters, digits",
    ),
    "red-export-interval-too-short": (
        """
        tenants:
          acme:
            red_metrics:
              export: true
              export_interval: 0.5
        """,
        "export_interval",
        "tenants.acme.red_metrics.export_interval",
        "must be a duration of at least 1s",
    ),
    "red-export-interval-without-export": (
        """
        tenants:
          acme:
            red_metrics:
              export_interval: 15s
        """,
        "export_interval",
        "tenants.acme.red_metrics.export_interval",
        "has no effect without export: true",
    ),
    "red-export-without-a-metrics-route": (
        """
        backends:
          tempo: {protocol: grpc, endpoint: "http://tempo:4317"}
        tenants:
          acme:
            signal_backends: {traces: [tempo]}
            red_metrics:
              export: true
        """,
        "export: true",
        "tenants.acme.red_metrics.export",
        "tenant acme's metrics go to no backend, so its RED metrics would go nowhere",
    ),
}


@pytest.mark.parametrize(
    ("text", "needle", "key", "problem"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys()
)
def test_bad_config_names_file_line_and_key(text: str, needle: str, key: str, problem: str) -> None:
    message = _error(text, source="conf/gateway.yaml")
    line = _line_of(text, needle)
    assert message.startswith(f"conf/gateway.yaml:{line}: {key}: "), message
    assert problem in message


def test_missing_protocol_is_required() -> None:
    message = _error(
        """
        backends:
          b:
            endpoint: "http://x:4318"
        """
    )
    assert re.match(r"^gw\.yaml:\d+: backends\.b\.protocol: is required", message), message


def test_not_yaml_names_the_line() -> None:
    text = """
    listen: ["127.0.0.1:4317"
    limits: {}
    """
    message = _error(text)
    assert re.match(r"^gw\.yaml:\d+: not valid YAML", message), message


def test_top_level_not_a_mapping() -> None:
    assert _error("- a\n- b\n").startswith("gw.yaml:1: top level: must be a mapping")


# ---------------------------------------------------------------------------------------------
# Sizes and durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("16MiB", 16 * MiB),
        ("16 MiB", 16 * MiB),
        ("16mib", 16 * MiB),
        ("16Mi", 16 * MiB),
        ("4MB", 4_000_000),
        ("4M", 4_000_000),
        ("512KiB", 512 * 1024),
        ("512kb", 512_000),
        ("1GiB", 1024**3),
        ("1.5MiB", 3 * MiB // 2),
        ("100B", 100),
        ("16777216", 16 * MiB),
        (16777216, 16 * MiB),
        (1, 1),
    ],
)
def test_sizes(value: object, expected: int) -> None:
    # the same value as a quoted string and as a plain YAML scalar
    text = f"""limits: {{max_request_bytes: "{value}", max_body_bytes: {value}}}\n"""
    config = parse(text, env={})
    assert config.limits.max_request_bytes == expected
    assert config.limits.max_body_bytes == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("10", 10.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("250MS", 0.25),
    ],
)
def test_durations(value: str, expected: float) -> None:
    config = parse(
        _yaml(
            f"""
            retry: {{initial_interval: {value}, max_interval: "{value}"}}
            shutdown_timeout: {value}
            backends:
              b: {{protocol: http/protobuf, endpoint: "http://x:1", timeout: {value}}}
            """
        ),
        env={},
    )
    assert config.retry.initial_interval == pytest.approx(expected)
    assert config.retry.max_interval == pytest.approx(expected)
    assert config.shutdown_timeout == pytest.approx(expected)
    assert config.backends["b"].timeout == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# The `check` command


def _check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CENTRAL_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**environ, **(env or {})},
    )


def test_check_good_config(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(_yaml(EXAMPLE))
    result = _check(path, {"CENTRAL_TOKEN": "x"})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert str(path) in result.stdout
    assert result.stderr == ""


def test_check_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    text = _yaml(
        """
        listen: ["127.0.0.1:4317"]
        backends:
          central:
            protocol: htp
            endpoint: "http://x:4318"
        """
    )
    path.write_text(text)
    result = _check(path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}:4: backends.central.protocol: must be one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_missing_variable(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_yaml(EXAMPLE))
    result = _check(path)  # without CENTRAL_TOKEN in the environment
    assert result.returncode == 2
    assert "backends.central.headers.Authorization" in result.stderr
    assert "CENTRAL_TOKEN" in result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = _check(tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "cannot read" in result.stderr


# ---------------------------------------------------------------------------------------------
# Where the data goes: a file that sends it nowhere is refused, a backend nothing uses is a warning


NO_ROUTE = "a config that routes nowhere would acknowledge every request and drop it"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("listen: ['127.0.0.1:4317']\n", "no backend is defined"),
        ("backends: {}\ntenants: {t: {}}\n", "no backend is defined"),
        (
            "backends:\n  a: {protocol: file, path: ./a}\n  b: {protocol: file, path: ./b}\n",
            "nothing routes to a backend",
        ),
        (  # tenants without backends of their own, and no service_backends
            "backends: {a: {protocol: file, path: ./a}}\ntenants: {t: {}}\n",
            "nothing routes to a backend",
        ),
    ],
)
def test_check_refuses_a_config_that_routes_nowhere(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    result = _check(path)
    assert result.returncode == 2, NO_ROUTE
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"otlp-gateway: {path}: {problem}"), lines[0]
    assert "acknowledged and dropped" in lines[0]
    assert "`backends:`" in lines[0] and "service_backends" in lines[0]
    with pytest.raises(ConfigError, match=problem):
        load(path, env={})
    parse(text, env={})  # the document itself reads; only a config to serve is refused


def test_check_warns_about_a_backend_nothing_routes_to(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    text = _yaml(
        """
        backends:
          central: {protocol: grpc, endpoint: "http://lgtm:4317"}
          forgotten: {protocol: file, path: ./otlp-data}
        service_backends: [central]
        """
    )
    path.write_text(text)
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok (2 backends" in result.stdout
    assert result.stderr == (
        f"config warning: {path}:3: backends.forgotten: nothing routes to this backend, so it "
        "receives no data; name it in service_backends or in a tenant's backends or "
        "signal_backends, or remove it\n"
    )


def test_a_backend_routed_by_a_tenant_only_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = _yaml(
        """
        backends:
          own: {protocol: file, path: ./own}
          logs: {protocol: file, path: ./logs}
          spare: {protocol: file, path: ./spare}
        tenants:
          acme: {backends: [own], signal_backends: {logs: [logs]}}
          globex: {}
        """
    )
    config = parse(text, "gw.yaml", env={})
    assert config.warnings == (
        "gw.yaml:4: backends.spare: nothing routes to this backend, so it receives no data; "
        "name it in service_backends or in a tenant's backends or signal_backends, or remove it",
    )
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with caplog.at_level(logging.WARNING, "otlp_gateway.config"):
        loaded = load(path, env={})
    assert loaded.warnings == (config.warnings[0].replace("gw.yaml", str(path)),)
    assert caplog.records == []  # the caller says them: `check` prints, `serve` logs them
    assert parse(EXAMPLE, env={"CENTRAL_TOKEN": "x"}).warnings == ()


def test_red_export_and_self_telemetry() -> None:
    config = parse(
        _yaml(
            """
            backends:
              central: {protocol: http/protobuf, endpoint: "http://lgtm:4318"}
              ops: {protocol: http/protobuf, endpoint: "http://ops:4318"}
            service_backends: [central]
            self_telemetry: {backend: ops}
            tenants:
              acme: {red_metrics: {export: true, export_interval: 15s}}
              globex: {red_metrics: true}
            """
        ),
        "gw.yaml",
        env={},
    )
    assert config.warnings == ()  # ops is used: the gateway's own metrics go there
    assert config.self_telemetry is not None
    assert (config.self_telemetry.interval, config.self_telemetry.tenant) == (60.0, "otlp-gateway")
    assert config.tenants is not None
    acme, globex = config.tenants["acme"].red_metrics, config.tenants["globex"].red_metrics
    assert acme is not None and (acme.export, acme.export_interval) == (True, 15.0)
    assert globex is not None and (globex.export, globex.export_interval) == (False, 60.0)
    assert parse("", env={}).self_telemetry is None


def test_cluster_section() -> None:
    text = """
        backends: {a: {protocol: file, path: /tmp/x}}
        service_backends: [a]
        cluster: {redis: "redis://:${REDIS_PASSWORD}@redis:6379/0", name: prod-eu}
        """
    config = parse(_yaml(text), "gw.yaml", env={"REDIS_PASSWORD": "s3cret"})
    assert config.cluster is not None
    assert config.cluster.redis == "redis://:s3cret@redis:6379/0"
    assert (config.cluster.name, config.cluster.timeout) == ("prod-eu", 0.25)
    assert config.cluster.heartbeat_interval == 2.0
    assert parse("", env={}).cluster is None  # no section: replicas share nothing
    # the URL may carry a password: the error names its scheme only
    bad = _error(text.replace("redis://:", "http://user:"), {"REDIS_PASSWORD": "s3cret"})
    assert "cluster.redis" in bad and "s3cret" not in bad and "'http'" in bad
    assert "cluster.name" in _error(text.replace("prod-eu", '"a b"'), {"REDIS_PASSWORD": "x"})
    assert "cluster.redis" in _error("cluster: {name: x}")


def test_the_embedded_default_routes_to_its_file_backend(tmp_path: Path) -> None:
    config = embedded_default(str(tmp_path), keys.digest("k"), None)
    assert config.service_backends == ("local-files",)
    check_routes(config)  # what load() would refuse, it passes
    check_routes(embedded_default(str(tmp_path)))  # open (no dev key), too


# ---------------------------------------------------------------------------------------------
# limits: the per-tenant share of the in-flight budget and the slow-client timeouts


def test_limits_share_and_timeouts() -> None:
    defaults = parse("").limits
    assert defaults.inflight_share == defaults.max_inflight_bytes // 2
    assert defaults.body_timeout == 30.0 and defaults.header_timeout == 30.0
    fraction = parse(
        _yaml(
            """
            limits: {max_inflight_bytes: 64MiB, max_inflight_share: 0.25, body_timeout: 2s,
                     header_timeout: 500ms}
            """
        )
    ).limits
    assert fraction.inflight_share == 16 * MiB
    assert fraction.body_timeout == 2.0 and fraction.header_timeout == 0.5
    size = parse("limits: {max_inflight_bytes: 64MiB, max_inflight_share: 8MiB}").limits
    assert size.inflight_share == 8 * MiB
    assert parse("limits: {max_inflight_share: 1}").limits.inflight_share == 256 * MiB


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("limits:\n  max_inflight_share: 1.5\n", "limits.max_inflight_share", "a fraction"),
        ("limits:\n  max_inflight_share: lots\n", "limits.max_inflight_share", "a size"),
        ("limits:\n  body_timeout: 0s\n", "limits.body_timeout", "above 0"),
        ("limits:\n  header_timeout: soon\n", "limits.header_timeout", "a duration"),
    ],
)
def test_bad_limits_name_file_line_and_key(text: str, key: str, problem: str) -> None:
    message = _error(text, source="gw.yaml")
    assert message.startswith(f"gw.yaml:2: {key}: "), message
    assert problem in message


# ---------------------------------------------------------------------------------------------
# Names and header values that could forge a line (a log line, a header downstream)


@pytest.mark.parametrize("name", ["alpha\n", "alpha\r", "al\npha", "alpha\x1b", "alpha\u2028"])
def test_tenant_names_with_control_characters_are_refused(name: str) -> None:
    text = f"tenants:\n  {name!r}: {{api_keys: []}}\n".replace("'", '"')
    message = _error(text)
    assert message.startswith("gw.yaml:2: tenants."), message
    assert "tenant names are letters, digits" in message
    assert not any(c in message for c in "\n\r\x1b\u2028")


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\x00b", "a\x1bb", "a\x7f"])
def test_header_values_with_control_characters_are_refused(value: str) -> None:
    text = _yaml(
        """
        backends:
          central:
            protocol: http/protobuf
            endpoint: "http://lgtm:4318"
            headers: {Authorization: "Bearer ${TOKEN}"}
        """
    )
    message = _error(text, env={"TOKEN": value})
    assert message.startswith("gw.yaml:5: backends.central.headers.Authorization: "), message
    assert "control character" in message
    assert "\n" not in message and "\r" not in message


def test_header_names_must_be_tokens() -> None:
    text = 'backends:\n  b: {protocol: grpc, endpoint: "http://x:4317", headers: {"a b": v}}\n'
    message = _error(text)
    assert message.startswith("gw.yaml:2: backends.b.headers.a b: "), message
    assert "not a valid header name" in message


def test_header_values_with_tabs_and_unicode_are_fine() -> None:
    text = 'backends:\n  b: {protocol: grpc, endpoint: "http://x:4317", headers: {A: "x\\ty é"}}\n'
    assert parse(text).backends["b"].headers == {"A": "x\ty é"}


def test_check_refuses_a_header_from_the_environment_with_crlf(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(_yaml(EXAMPLE))
    result = _check(path, {"CENTRAL_TOKEN": "secret\r\nX-Injected: 1"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    where = f"{path}:{_line_of(EXAMPLE, 'headers:')}: backends.central.headers.Authorization"
    assert where in lines[0]


def test_check_refuses_a_tenant_name_with_a_newline(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text('tenants:\n  "alpha\\n": {api_keys: []}\n')
    result = _check(path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{path}:2: tenants.alpha\\n: tenant names are" in lines[0]
