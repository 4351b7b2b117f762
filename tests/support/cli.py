"""Child processes of the tests: the `otlp-gateway serve` command with a config file and flags
(`serve`) or with address flags (`serve_flags`), and `run`, a command run to its end that fails
the test with the child's output."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config as config_mod
from tests.support.peers import Gateway, free_port, wait_ready


def admin_off(config: dict[str, Any]) -> dict[str, Any]:
    """The config's `admin` section with its listener on a free port unless the config gives one,
    so that the gateway never takes the default port (a gateway started from the README, or one
    of a concurrent test run, may hold it)."""
    try:
        config_mod.parse("admin: {listen: '127.0.0.1:9'}")
    except config_mod.ConfigError:  # no admin listener in this version
        return {}
    admin = dict(config.get("admin") or {})
    admin.setdefault("listen", f"127.0.0.1:{free_port()}")
    return {"admin": admin}


@contextlib.contextmanager
def serve(
    tmp: Path,
    config: dict[str, Any],
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    tls: bool = True,
) -> Iterator[Gateway]:
    """`python -m gateway serve --config FILE ARGS...` on two free ports (the config's `listen`
    is replaced), with `env` added to the environment."""
    grpc_port, http_port = free_port(), free_port()
    config = {
        **config,
        **admin_off(config),
        "listen": [f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"],
    }
    path = tmp / f"gateway-{grpc_port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp / f"gateway-{grpc_port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={**os.environ, **(env or {})},
        )
    gw = Gateway(proc, grpc_port, http_port, log_path)
    try:
        try:
            wait_ready(gw, tls=tls)
        except TimeoutError:
            raise RuntimeError(f"gateway did not start:\n{gw.log()}") from None
        yield gw
    finally:
        gw.stop()


def spawn_serve(tmp: Path, *args: str, admin: bool | None = True) -> Gateway:
    """`serve ARGS --listen P1 --listen P2 [--admin P3 | off]` on free ports, started and not
    waited for: `--admin` on a free port (admin True), `off` (False), or not given (None: as
    ARGS or the config say)."""
    grpc_port, http_port = free_port(), free_port()
    admin_port = free_port() if admin else None
    flags = [] if admin is None else ["--admin", f"127.0.0.1:{admin_port}" if admin else "off"]
    log_path = tmp / f"serve-{http_port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "serve", *args),
                *("--listen", f"127.0.0.1:{grpc_port}", "--listen", f"127.0.0.1:{http_port}"),
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    return Gateway(proc, grpc_port, http_port, log_path, admin_port)


def wait_started(gw: Gateway) -> None:
    """Until the gateway answers; its output in the error when it does not."""
    try:
        wait_ready(gw)
    except TimeoutError:
        raise RuntimeError(f"gateway did not start:\n{gw.log()}") from None


@contextlib.contextmanager
def serve_flags(tmp: Path, *args: str, admin: bool | None = True) -> Iterator[Gateway]:
    """spawn_serve, waited for, stopped at the end."""
    gw = spawn_serve(tmp, *args, admin=admin)
    try:
        wait_started(gw)
        yield gw
    finally:
        gw.stop()


def run_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` in `tmp`, run to its end (60 s at most), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=60,
    )


def run(args: Sequence[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(args)` to its end, its output captured as text. A non-zero exit or a
    timeout fails the test with the end of the child's stdout and stderr: a bare
    CalledProcessError would not say why the child failed."""
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(_report(args, f"still running after {timeout:g} s", e.stdout, e.stderr))
    if proc.returncode != 0:
        pytest.fail(_report(args, f"exited {proc.returncode}", proc.stdout, proc.stderr))
    return proc


def _report(args: Sequence[str], what: str, *outputs: str | bytes | None) -> str:
    text = [f"{' '.join(map(str, args))}: {what}"]
    for name, out in zip(("stdout", "stderr"), outputs, strict=True):
        if isinstance(out, bytes):  # what a timeout had captured so far
            out = out.decode(errors="replace")
        text += [f"--- {name} (end):", (out or "")[-4000:]]
    return "\n".join(text)
