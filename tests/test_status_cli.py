"""The commands around the admin API as a new user meets them: the banner prints `status` and
`tail` the way this shell runs them (`uv run --frozen --no-dev otlp-gateway ...` from a clone,
plain `otlp-gateway ...` when installed), `status` without a key says how to give one,
`status | head` ends quietly, and `--version`."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.cli import command_prefix
from gateway.tenancy import keys
from tests.support.peers import Gateway, Sink, free_port, run_gateway, wait_ready, wait_until

pytestmark = pytest.mark.timeout(120)

VENV = Path(sys.prefix)  # the environment the tests (and the gateways they start) run in
IN_CLONE = "uv run --frozen --no-dev"  # as README's first command runs it


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A uv project with its environment: pyproject.toml, .venv/bin/otlp-gateway."""
    root = tmp_path / "clone"
    (root / "sub").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'otlp-gateway'\n")
    executable(root / ".venv" / "bin" / "otlp-gateway")
    return root


def test_prefix_under_uv_run_in_the_project(project: Path) -> None:
    # `uv run` puts the environment's bin/ first on PATH and sets $UV
    env = {"UV": "/opt/uv/bin/uv", "PATH": f"{project}/.venv/bin{os.pathsep}/nonexistent"}
    venv = str(project / ".venv")
    assert command_prefix(env, venv, cwd=project) == f"{IN_CLONE} otlp-gateway"
    assert command_prefix(env, venv, cwd=project / "sub") == f"{IN_CLONE} otlp-gateway"
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    assert command_prefix(env, venv, cwd=elsewhere) == (
        f"{IN_CLONE} --project {project} otlp-gateway"
    )


def test_prefix_when_the_command_is_on_path(project: Path, tmp_path: Path) -> None:
    venv_bin = f"{project}/.venv/bin"
    # a pip install into an activated environment, or the container image (ENV PATH=...)
    assert command_prefix({"PATH": venv_bin}, str(project / ".venv")) == "otlp-gateway"
    site = tmp_path / "site"
    executable(site / "bin" / "otlp-gateway")
    assert command_prefix({"PATH": str(site / "bin")}, str(site)) == "otlp-gateway"
    # installed on the user's PATH as well: `uv run` is not needed to find it
    user_bin = executable(tmp_path / "home" / "bin" / "otlp-gateway").parent
    env = {"UV": "/opt/uv/bin/uv", "PATH": f"{venv_bin}{os.pathsep}{user_bin}"}
    assert command_prefix(env, str(project / ".venv"), cwd=project) == "otlp-gateway"


def test_prefix_when_nothing_runs_it_by_name(tmp_path: Path) -> None:
    # no uv project, not on PATH (`python -m gateway` from an environment never put on PATH)
    prefix = command_prefix({"PATH": "/nonexistent"}, str(tmp_path))
    assert prefix == f"{shlex.quote(sys.executable)} -m gateway"


def serve_embedded(grpc_port: int, http_port: int, admin_port: int) -> list[str]:
    """`serve` with the embedded default, its data in ./data, on these ports."""
    return [
        *(sys.executable, "-m", "gateway", "serve", "--data-dir", "data"),
        *("--listen", f"127.0.0.1:{grpc_port}", "--listen", f"127.0.0.1:{http_port}"),
        *("--admin", f"127.0.0.1:{admin_port}"),
    ]


def _uv() -> str | None:
    return os.environ.get("UV") or shutil.which("uv")


@pytest.fixture
def gateway_with_banner(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """`serve` with the embedded default on free ports, in an environment like the user's: run
    by `uv run` from a clone (PATH has the environment's bin/ only because uv put it there), or
    installed (that bin/ is on the user's PATH). The banner is in the gateway's log; the
    environment is the user's shell's, to run the printed commands in."""
    how: str = request.param
    user_path = os.pathsep.join(["/usr/bin", "/bin"])
    env = {k: v for k, v in os.environ.items() if k not in ("UV", "OTLP_GATEWAY_ADMIN_KEY")}
    if how == "uv":
        uv = _uv()
        if uv is None or not (VENV.parent / "pyproject.toml").is_file():
            pytest.skip("the tests do not run from a uv project environment")
        env |= {"UV": uv, "PATH": os.pathsep.join([str(VENV / "bin"), str(Path(uv).parent)])}
        env["PATH"] += os.pathsep + user_path
    else:
        env["PATH"] = os.pathsep.join([str(VENV / "bin"), user_path])
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            serve_embedded(grpc_port, http_port, admin_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    gw = Gateway(proc, grpc_port, http_port, log_path, admin_port)
    try:
        wait_ready(gw)
        yield gw, env
    finally:
        gw.stop()


@pytest.mark.parametrize("gateway_with_banner", ["uv", "installed"], indirect=True)
def test_the_banner_commands_run_as_printed(
    gateway_with_banner: tuple[Gateway, dict[str, str]], tmp_path: Path
) -> None:
    gw, env = gateway_with_banner
    if "UV" in env:  # started from outside the clone: uv is told where the project is
        command = f"{IN_CLONE} --project {shlex.quote(str(VENV.parent))} otlp-gateway"
    else:
        command = "otlp-gateway"
    where = f"--admin {gw.admin_url} --data-dir data"
    banner = gw.log()
    assert f"in a terminal:\n  {command} status {where}\n" in banner, banner
    assert f"\n  {command} tail --tenant dev {where}\n" in banner, banner

    line = next(x.strip() for x in banner.splitlines() if x.strip().startswith(command + " status"))
    done = subprocess.run(
        shlex.split(line), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "local-files (service-wide)" in done.stdout and "dev" in done.stdout


def test_status_without_a_key_says_how_to_give_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OTLP_GATEWAY_ADMIN_KEY"}
    for args, where in (([], "./otlp-data"), (["--data-dir", "my data"], "'my data'")):
        for command in (["status"], ["tail", "--tenant", "dev"]):
            done = subprocess.run(
                [sys.executable, "-m", "gateway", *command, "--admin", "http://127.0.0.1:9", *args],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env=env,
                timeout=60,
            )
            assert done.returncode == 2
            assert done.stderr == (
                "otlp-gateway: no admin key: pass --key KEY (the key set as admin.api_key), set "
                "$OTLP_GATEWAY_ADMIN_KEY, or pass --data-dir DIR, the data directory of a gateway "
                f"started without --config (it keeps its key in DIR/admin-api-key; {where} has "
                "none)\n"
            )


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`otlp-gateway status | head -1`: the reader is gone before status writes."""
    admin_port = free_port()
    proc = subprocess.Popen(
        serve_embedded(free_port(), free_port(), admin_port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{admin_port}"
        assert wait_until(lambda: _ready(url), 30)
        read, write = os.pipe()
        os.close(read)  # as `head` exits: every write into the pipe fails
        status = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--admin", url, "--data-dir", "data"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        os.close(write)
    finally:
        proc.terminate()
        proc.wait(30)
    assert status.stderr == ""  # no BrokenPipeError traceback, nor "Exception ignored"
    assert status.returncode == 1


def _rows(status: str) -> dict[str, list[str]]:
    """`status`'s backend table: the cells of each queue's row, by its QUEUE column."""
    lines = status.split("\n\n")[0].splitlines()
    cells = [re.split(r" {2,}", line.strip()) for line in lines if line.startswith("per ")]
    return {row[1]: row for row in cells}


def test_status_shows_each_tenants_own_queue(tmp_path: Path) -> None:
    """Two tenants on one per-tenant backend (`{tenant}` in its headers), which then stops: each
    tenant's queue row shows that tenant's items, the numbers /metrics has."""
    alpha, beta, admin_key = keys.new_key(), keys.new_key(), "admin-" + uuid.uuid4().hex
    with contextlib.ExitStack() as backend:
        sink = backend.enter_context(Sink().running())
        config = {
            "backends": {
                "per": {
                    "protocol": "http/protobuf",
                    "endpoint": sink.endpoint,
                    "headers": {"X-Scope-OrgID": "{tenant}"},
                }
            },
            "service_backends": ["per"],
            "tenants": {
                name: {"api_keys": [keys.config_entry(k)]}
                for name, k in (("alpha", alpha), ("beta", beta))
            },
            "admin": {"api_key": admin_key},
            "retry": {"initial_interval": "50ms", "max_interval": "100ms", "max_elapsed": "1s"},
        }
        with run_gateway(tmp_path, config) as gw:
            for key, sizes in ((alpha, [6, 6, 6]), (beta, [1])):
                for n in sizes:
                    assert export(gw, key, n) == 200
            assert sink.wait_items("traces", 19) == 19
            backend.close()  # the backend stops: what is sent now is dropped after the retries
            for key, sizes in ((alpha, [2, 2]), (beta, [3])):
                for n in sizes:
                    assert export(gw, key, n) == 200
            dropped = "otlp_gateway_dropped_items_total"
            assert wait_until(lambda: metric(gw, dropped, backend="per") == 7, 30)
            cli = [sys.executable, "-m", "gateway"]
            status = subprocess.run(
                [*cli, "status", "--admin", gw.admin_url, "--key", admin_key],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert status.returncode == 0, status.stderr
            rows = _rows(status.stdout)
            exported = "otlp_gateway_exported_items_total"
            for tenant, own in (("alpha", (18, 4)), ("beta", (1, 3))):
                from_metrics = (
                    metric(gw, exported, backend="per", tenant=tenant),
                    metric(gw, dropped, backend="per", tenant=tenant),
                )
                assert from_metrics == own
                assert tuple(int(x) for x in rows[tenant][-2:]) == own, status.stdout
                assert rows[tenant][3:5] == ["0", "0 B / 64.0 MiB"]  # nothing left queued


def export(gw: Gateway, key: str, spans: int) -> int:
    """`spans` spans in one OTLP/HTTP request with `key`; the status code."""
    batch = [
        Span(trace_id=uuid.uuid4().bytes, span_id=uuid.uuid4().bytes[:8], name=f"op-{i}")
        for i in range(spans)
    ]
    body = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=batch)])]
    ).SerializeToString()
    headers = {"content-type": "application/x-protobuf", "authorization": f"Bearer {key}"}
    return httpx.post(gw.http_endpoint + "/v1/traces", content=body, headers=headers).status_code


def metric(gw: Gateway, name: str, **labels: str) -> int:
    """The sum of the samples of `name` whose labels include `labels`."""
    text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    return int(
        sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        )
    )


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout == f"otlp-gateway {__version__}\n"
