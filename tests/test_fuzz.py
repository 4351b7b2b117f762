"""A short fuzz run (bench/fuzz.py): a few thousand mutated requests on every transport against a
real gateway with keys, drop rules, RED metrics, a live tail and a counting sink."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fuzz

pytestmark = pytest.mark.timeout(240)


def test_short_fuzz_run(tmp_path: Path) -> None:
    result = fuzz.run(requests=3000, concurrency=12, max_seconds=60, seed=11, tmp=tmp_path)
    summary = {k: v for k, v in result.items() if k != "by_transport_status"}
    assert result["requests_sent"] >= 1000, summary  # bounded in time on a busy machine
    assert result["five_xx"] == 0, result["by_transport_status"]
    assert result["tracebacks_in_log"] == 0
    assert result["gateway_alive"] and result["tail_alive"], summary
    assert result["tail_rows"] > 0
    assert result["rss_end_mib"] - result["rss_start_mib"] < 100, summary
    # Every acknowledged item is accounted for: forwarded (all of it arrived) or dropped by rule.
    assert result["acked_uncounted"] == 0, result["acked_uncounted_examples"]
    assert result["acked_items_client"] == (
        result["accepted_items_gateway"] + result["dropped_by_rule"]
    ), summary
    assert result["sink_items"] == result["accepted_items_gateway"], summary
    assert result["sink_uncountable"] == 0
    transports = {key.split(" ", 1)[0] for key in result["by_transport_status"]}
    assert transports == set(fuzz.TRANSPORTS)
