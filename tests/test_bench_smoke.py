"""A short run of the forwarding benchmark (bench/run.py --smoke): the gateway and rotel, OTLP/HTTP
and gRPC, the gateway's fan-out and durable modes. Checks the harness end to end: every cell ran,
the sink received exactly the spans each contender acknowledged (and, from the gateway, every one
with tenant.id), the JSON is well-formed. No timing assertions: the numbers of a smoke run mean
nothing. On ports of its own (--base-port), not bench/run.py's default 4600-4621. Needs wrk and
h2load (scripts/test.sh installs them: `apt-get install -y wrk nghttp2-client`) and 2 cores."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest

from bench.procs import TOOLS, Ports
from tests.support.cli import run
from tests.support.peers import ROOT, free_ports

SPANS = 512
REQUESTS = 24  # bench/run.py --smoke-requests default


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the benchmark pins to 2 cores")
def test_bench_smoke(tmp_path: Path) -> None:
    # a missing tool is skipped (tests/conftest.py) only when scripts/test.sh could not install it
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"not installed: {missing}; run `bash scripts/test.sh`, which installs them"
    run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--contenders",
            "gateway-uvicorn,rotel",
            "--results-dir",
            str(tmp_path),
            "--base-port",
            str(free_ports(Ports.SPAN)),
        ],
        timeout=240,
        cwd=ROOT,
    )
    [result_file] = tmp_path.glob("smoke-*.json")
    data = json.loads(result_file.read_text())
    assert result_file.with_suffix(".md").read_text().count("\n| ") == 6

    meta = data["meta"]
    assert meta["request"] == {"spans": SPANS, "bytes": 244_943, "attributes_per_span": 10}
    assert {"otlp-gateway", "rotel", "python", "wrk", "h2load"} <= set(meta["versions"])

    cells = {(r["contender"], r["transport"], r["variant"]): r for r in data["runs"]}
    assert set(cells) == {
        ("gateway-uvicorn", "http", "single"),
        ("gateway-uvicorn", "grpc", "single"),
        ("gateway-uvicorn", "http", "fanout"),
        ("gateway-uvicorn", "http", "durable"),
        ("rotel", "http", "single"),
        ("rotel", "grpc", "single"),
    }
    for (contender, transport, variant), r in cells.items():
        where = f"{contender} {transport} {variant}"
        # the measured part sends an exact number of requests and waits for every answer
        assert r["sent_spans"] == REQUESTS * SPANS, where
        assert r["acked_spans"] == r["sent_spans"], where
        assert r["failed_requests"] == 0, where
        # ... and every acknowledged span reached every backend, once
        backends = 2 if variant == "fanout" else 1
        assert r["delivered_per_backend"] == [r["acked_spans"]] * backends, where
        assert r["sink_errors"] == 0, where
        if contender.startswith("gateway"):
            assert r["untagged_spans"] == 0, where
        # the timed warm-up (wrk / h2load -D) ran: nothing acknowledged was lost
        warm = r["warmup"]
        assert warm["acked_spans"] > 0, where
        assert warm["acked_spans"] <= warm["delivered_spans"] <= warm["sent_spans"], where
        assert r["exit_code"] == 0, where
        assert r["cpu_s"] >= 0 and r["idle_rss_mib"] > 0 and r["peak_rss_mib"] > 0, where
        if variant == "single":
            half = r["half_load"]
            assert half["samples"] > 0 and half["failed_requests"] == 0, where
            assert math.isfinite(half["p50_ms"]) and math.isfinite(half["p99_ms"]), where

    summary = {(o["contender"], o["transport"], o["variant"]): o for o in data["summary"]}
    assert set(summary) == set(cells)
    assert summary[("rotel", "http", "single")]["ratio_to_rotel"] in (1.0, None)
    assert summary[("gateway-uvicorn", "http", "durable")]["rotel_reference"] == "single"
