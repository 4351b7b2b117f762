"""The `otlp-gateway serve` command run as a subprocess with a config file and flags."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from gateway import config as config_mod
from tests.support.peers import Gateway, free_port, wait_ready


def admin_off() -> dict[str, Any]:
    """Keeps the gateway's admin listener off the default port, so that gateways of concurrent
    test runs do not compete for it."""
    try:
        config_mod.parse("admin: {listen: '127.0.0.1:9'}")
    except config_mod.ConfigError:  # no admin listener in this version
        return {}
    return {"admin": {"listen": f"127.0.0.1:{free_port()}"}}


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
        **admin_off(),
        **config,
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
