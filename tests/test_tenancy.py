"""Tenancy's pure logic, in process and on a fake clock: quota buckets, key parsing and the
refusal a key's form gets. The same behaviour through a running gateway is tested in
test_tenants.py."""

from __future__ import annotations

import base64

import pytest

from gateway.config import parse
from gateway.errors import Unauthenticated
from gateway.otlp.signals import TRACES
from gateway.tenancy import keys
from gateway.tenancy.quota import Quota, TokenBucket
from gateway.tenancy.tenants import MISSING_KEY, WRONG_KEY, TenantRegistry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- quota --------------------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=100, burst_seconds=2, now=0.0)
    assert bucket.capacity == 200
    assert bucket.wait_for(200, now=0.0) == 0.0
    bucket.take(200)
    assert bucket.wait_for(50, now=0.0) == pytest.approx(0.5)
    assert bucket.wait_for(50, now=0.25) == pytest.approx(0.25)  # 25 tokens back
    assert bucket.wait_for(50, now=0.5) == 0.0
    assert bucket.wait_for(500, now=100.0) == 0.0  # never above its capacity, and


def test_a_cost_above_the_capacity_needs_a_full_bucket_not_forever() -> None:
    bucket = TokenBucket(rate=10, burst_seconds=1, now=0.0)
    bucket.take(10)
    assert bucket.wait_for(1_000_000, now=0.0) == pytest.approx(1.0)
    assert bucket.wait_for(1_000_000, now=1.0) == 0.0


def test_a_tiny_rate_still_admits_one_item() -> None:
    assert TokenBucket(rate=0.1, burst_seconds=1, now=0.0).capacity == 1.0


def test_quota_takes_both_costs_or_nothing() -> None:
    clock = FakeClock()
    quota = Quota(items_per_second=100, bytes_per_second=1000, burst_seconds=1, clock=clock)
    assert quota.admit(items=50, size=900) == 0.0
    # items would fit (50 left), bytes would not (100 left): refused, and nothing is taken
    wait = quota.admit(items=10, size=500)
    assert wait == pytest.approx(0.4)
    assert quota.items is not None and quota.items.tokens == 50
    assert quota.bytes is not None and quota.bytes.tokens == 100
    clock.now += wait + 1e-9  # (floating point: exactly `wait` may leave 1e-14 s to go)
    assert quota.admit(items=10, size=500) == 0.0


def test_quota_waits_for_the_slower_bucket() -> None:
    clock = FakeClock()
    quota = Quota(items_per_second=10, bytes_per_second=1_000_000, burst_seconds=1, clock=clock)
    assert quota.admit(items=10, size=1) == 0.0
    assert quota.admit(items=5, size=1) == pytest.approx(0.5)


def test_quota_with_one_limit_ignores_the_other() -> None:
    clock = FakeClock()
    quota = Quota(items_per_second=None, bytes_per_second=100, burst_seconds=1, clock=clock)
    assert quota.items is None
    assert quota.admit(items=10**9, size=100) == 0.0
    assert quota.admit(items=1, size=1) == pytest.approx(0.01)


# -- keys ---------------------------------------------------------------------------------------


def test_new_keys_are_distinct_prefixed_and_stored_as_digests() -> None:
    a, b = keys.new_key(), keys.new_key()
    assert a != b and a.startswith("otlpgw_") and len(a) > 40
    entry = keys.config_entry(a)
    assert entry.startswith("sha256:") and a not in entry
    assert entry == "sha256:" + keys.digest(a) and len(keys.digest(a)) == 64


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer k1"}, (None, "k1")),
        ({"authorization": "bearer   k1  "}, (None, "k1")),
        ({"authorization": basic("acme", "k1")}, ("acme", "k1")),
        ({"authorization": basic("", "k1")}, (None, "k1")),
        ({"authorization": basic("acme", "")}, (None, None)),
        ({"authorization": "Basic not-base64!"}, (None, None)),
        ({"authorization": "Basic " + base64.b64encode(b"\xff:k").decode()}, (None, None)),
        ({"x-api-key": " k2 "}, (None, "k2")),
        ({"authorization": "Bearer k1", "x-api-key": "k2"}, (None, "k1")),
        ({"authorization": "Bearer"}, (None, None)),
        ({"authorization": "basic"}, (None, None)),
        ({"authorization": "Token k1"}, (None, None)),
        ({"authorization": "Token k1", "x-api-key": "k2"}, (None, "k2")),
        # a key without its scheme (OTEL_EXPORTER_OTLP_HEADERS=authorization=<key>)
        ({"authorization": "k1"}, (None, "k1")),
        ({"authorization": " k1 "}, (None, "k1")),
        ({"authorization": "k1", "x-api-key": "k2"}, (None, "k1")),
        ({"authorization": "", "x-api-key": "k2"}, (None, "k2")),
        ({}, (None, None)),
    ],
)
def test_credentials_from_headers(
    headers: dict[str, str], expected: tuple[str | None, str | None]
) -> None:
    assert keys.credentials(headers) == expected


@pytest.mark.parametrize(
    ("authorization", "other"),
    [
        ("Token k1", True),
        ("ApiKey  k1", True),
        ("Bearer k1", False),
        ("BASIC abc", False),
        ("k1", False),  # a bare key: accepted as one
        ("Bearer", False),
        ("", False),
    ],
)
def test_other_scheme(authorization: str, other: bool) -> None:
    assert keys.other_scheme({"authorization": authorization}) is other


def _registry(key: str) -> TenantRegistry:
    config = parse(
        f"backends: {{f: {{protocol: file, path: ./x}}}}\nservice_backends: [f]\n"
        f"tenants: {{acme: {{api_keys: ['{keys.config_entry(key)}']}}}}\n",
        env={},
    )
    return TenantRegistry(config)


def test_a_bare_key_authenticates_and_another_scheme_gets_a_hint() -> None:
    key = keys.new_key()
    registry = _registry(key)
    assert registry.authenticate({"authorization": key}, TRACES).name == "acme"
    assert registry.authenticate({"authorization": f"Bearer {key}"}, TRACES).name == "acme"
    with pytest.raises(Unauthenticated) as info:
        registry.authenticate({"authorization": f"Token {key}"}, TRACES)
    assert 'use "authorization: Bearer <key>"' in info.value.message
    assert key not in info.value.message
    with pytest.raises(Unauthenticated) as info:
        registry.authenticate({"authorization": keys.new_key()}, TRACES)  # a bare wrong key
    assert info.value.message == WRONG_KEY
    with pytest.raises(Unauthenticated) as info:
        registry.authenticate({}, TRACES)
    assert info.value.message == MISSING_KEY


def test_client_headers_env_is_percent_encoded() -> None:
    assert keys.client_headers_env("k") == "authorization=Bearer%20k"
