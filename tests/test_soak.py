"""A long-lived SDK gRPC exporter with 32 concurrent exports sees zero failed exports over 50,000
requests against the default server (bench/grpc_soak.py; bench/README.md has the measurements
that chose the default)."""

from __future__ import annotations

import json
import sys

from gateway.config import GatewayConfig
from tests.support.cli import run
from tests.support.peers import ROOT


def test_sdk_grpc_exporter_50k_exports_no_failures() -> None:
    server = GatewayConfig().server
    out = run(
        [
            sys.executable, str(ROOT / "bench" / "grpc_soak.py"),
            "--server", server, "--client", "sdk",
            "--requests", "50000", "--concurrency", "32", "--max-seconds", "240",
        ],
        timeout=300,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["truncated"] is False, result
    assert (result["success"], result["failure"]) == (50_000, 0), result
    assert result["other_outcomes"] == {}, result
    assert result["gateway_alive_at_end"], result
