"""`otlp-gateway serve --listen HOST:PORT (repeatable) --admin HOST:PORT|off`: they replace the
config's (or the embedded default's) addresses, are checked as the config's are (exit code 2),
and an address that cannot be bound fails the start before the banner says it listens, naming
the address, its role and what to do (exit code 1, no traceback)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.cli import run_cli, serve_flags
from tests.support.peers import free_port

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def taken(port: int | None = None) -> Iterator[int]:
    """A port another program listens on."""
    port = free_port() if port is None else port
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        yield port


def config_file(tmp: Path, **extra: Any) -> dict[str, Any]:
    """A config with its own (free) addresses, which the flags are to replace; written to
    tmp/gateway.yaml."""
    config = {
        "listen": [f"127.0.0.1:{free_port()}"],
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "backends": {"archive": {"protocol": "file", "path": str(tmp / "data")}},
        "service_backends": ["archive"],
        **extra,
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    return config


def answers(address: str, path: str = "/healthz") -> bool:
    try:
        httpx.get(f"http://{address}{path}", timeout=1)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.parametrize("source", ["config", "embedded"])
def test_flags_replace_the_addresses(tmp_path: Path, source: str) -> None:
    config = config_file(tmp_path) if source == "config" else None
    args = ["--config", "gateway.yaml"] if config else ["--data-dir", "data"]
    with serve_flags(tmp_path, *args) as gw:
        assert httpx.get(gw.admin_url + "/readyz", timeout=5).status_code == 200
        banner = gw.log()
        assert f"listening on 127.0.0.1:{gw.grpc_port}, 127.0.0.1:{gw.http_port}\n" in banner
        assert f"Status page and admin API: {gw.admin_url}/" in banner
        if config is not None:  # the config's own addresses are not served
            assert not answers(config["listen"][0])
            assert not answers(config["admin"]["listen"])


def test_admin_off(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    with serve_flags(tmp_path, "--config", "gateway.yaml", admin=False) as gw:
        assert not answers(config["admin"]["listen"])
        assert "Status page" not in gw.log()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--listen", "4317"], "--listen: '4317' is not host:port (for example 0.0.0.0:4317)"),
        (
            ["--listen", "127.0.0.1:70000"],
            "--listen: '127.0.0.1:70000' is not host:port (for example 0.0.0.0:4317)",
        ),
        (
            ["--listen", "127.0.0.1:24317", "--listen", "127.0.0.1:24317"],
            "--listen: 127.0.0.1:24317 is given twice",
        ),
        (
            ["--admin", "localhost"],
            "--admin: 'localhost' is not host:port (for example 0.0.0.0:4317) or off",
        ),
        (
            ["--listen", "127.0.0.1:24317", "--admin", "127.0.0.1:24317"],
            "--admin: port 24317 is also an OTLP listener; give the admin its own",
        ),
        (
            ["--listen", "127.0.0.1:9464"],
            "--listen: port 9464 is the admin listener's (127.0.0.1:9464); pick another, or move "
            "the admin listener with --admin HOST:PORT (or --admin off)",
        ),
    ],
)
def test_flags_are_checked_like_the_config(tmp_path: Path, flags: list[str], message: str) -> None:
    """Refused before anything is bound, with the embedded default as with a config file."""
    config_file(tmp_path, admin={})  # the default admin address, as the embedded default's
    for source in (["--data-dir", "data"], ["--config", "gateway.yaml"]):
        done = run_cli(tmp_path, "serve", *source, *flags)
        assert done.returncode == 2, done.stderr
        assert done.stderr == f"otlp-gateway: {message}\n"
        assert done.stdout == ""


@pytest.mark.parametrize("role", ["admin", "OTLP"])
def test_a_port_in_use_fails_before_the_banner(tmp_path: Path, role: str) -> None:
    config_file(tmp_path)
    free = f"127.0.0.1:{free_port()}"
    with taken() as port:
        busy = f"127.0.0.1:{port}"
        if role == "admin":
            flags = ["--listen", free, "--admin", busy]
            hint = "pass --admin HOST:PORT or set admin.listen"
        else:  # the first listener is bound, the second is not
            flags = ["--listen", free, "--listen", busy, "--admin", "off"]
            hint = "pass --listen HOST:PORT or set listen"
        for source in (["--data-dir", "data"], ["--config", "gateway.yaml"]):
            done = run_cli(tmp_path, "serve", *source, *flags)
            assert done.returncode == 1, done.stderr
            assert done.stderr == (
                f"otlp-gateway: cannot listen on {busy} ({role}): address already in use; {hint}\n"
            )
            assert done.stdout == ""  # no banner


def test_with_workers_a_port_in_use_fails_before_the_banner(tmp_path: Path) -> None:
    """The parent keeps no socket of its own with `workers: N`, but checks every address first:
    here worker 1's admin listener (the admin port + 1) is taken."""
    admin = next(p for p in iter(free_port, None) if _free(p + 1))
    with taken(admin + 1):
        config_file(tmp_path, workers=2, admin={"listen": f"127.0.0.1:{admin}"})
        done = run_cli(tmp_path, "serve", "--config", "gateway.yaml")
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"otlp-gateway: cannot listen on 127.0.0.1:{admin + 1} (admin): address already in use; "
        "pass --admin HOST:PORT or set admin.listen "
        "(worker i's admin listener is on its port + i)\n"
    )
    assert done.stdout == ""


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
