from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.peers import Sink

# The programs some tests drive, which scripts/test.sh installs (Debian packages). A test whose
# program the script could not install is skipped, naming it: the script lists those programs in
# OTLP_GATEWAY_TESTS_MISSING. Run any other way, a missing program fails the test as it is.
NEEDS: dict[str, tuple[str, ...]] = {
    "tests/test_status_page.py": ("chromium",),
    "tests/test_status_page.py::test_status_page_shows_the_fleet": ("chromium", "redis-server"),
    "tests/test_hostile_delivery.py::"
    "test_an_undecodable_queue_record_is_quarantined_and_the_queue_goes_on": ("chromium",),
    "tests/test_bench_smoke.py": ("wrk", "h2load"),
    "tests/test_cluster_quota.py": ("redis-server", "haproxy"),
    "tests/test_fleet_view.py": ("redis-server",),
    "tests/test_balancer.py": ("haproxy",),
}
PACKAGES = {
    "chromium": "chromium",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "redis-server": "redis-server",
    "haproxy": "haproxy",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = set(os.environ.get("OTLP_GATEWAY_TESTS_MISSING", "").split())
    if not missing:
        return
    for item in items:
        for prefix, tools in NEEDS.items():
            absent = [t for t in tools if t in missing]
            if absent and (item.nodeid + "[").startswith((prefix + "::", prefix + "[")):
                hint = " ".join(PACKAGES[t] for t in absent)
                reason = f"not installed: {', '.join(absent)} (apt-get install -y {hint})"
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink().running() as s:
        yield s
