"""A tenant's quota shared by every replica, taken from Redis in leases.

Redis holds one token bucket per tenant and dimension (items, bytes), refilled at the quota's rate
from Redis's own clock. A replica never asks Redis on a request's path: each tenant has a local
pool per dimension that requests take from, and a background task tops the pools up from the
shared buckets. A lease is sized from the replica's recent demand (LEASE_SECONDS of it, bounded by
a share of the capacity), so the replicas with the load get the capacity and idle ones hold little
(they give back what they no longer need).

When Redis does not answer, each pool is topped up from a local bucket at the quota divided by
the replicas last seen live instead, until a probe finds Redis answering again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis

from gateway.cluster.link import ClusterLink, cancel
from gateway.config.model import QuotaConfig
from gateway.telemetry import metrics

log = logging.getLogger("otlp_gateway")

SHARED, LOCAL = "shared", "local"

TICK = 0.05  # seconds between top-up rounds when no pool ran low
MIN_GAP = 0.01  # at most one round per MIN_GAP, however often pools run low
LEASE_SECONDS = 0.15  # a pool is sized to this much of the replica's recent demand ...
MAX_SHARE = 0.25  # ... but at most this share of the capacity (unless one request needs more)
MIN_SHARE = 0.05  # an idle replica keeps this share, so a tenant's first request fits
DEMAND_TAU = 0.5  # seconds: how fast the demand estimate follows the load
GIVE_BACK = 2.0  # a pool holding more than this x its target returns the excess

# KEYS[1]: the bucket, a hash {tokens, at}. ARGV: rate, capacity, ask (< 0: give back), TTL ms.
# Refilled from Redis's TIME, so replicas' clocks do not matter; grants whole tokens, up to the
# ask. An expired key is a full bucket (TTL: the time to fill one), which is what it would be.
LEASE_SCRIPT = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local ask = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
elseif now > at then
  tokens = math.min(capacity, tokens + (now - at) * rate)
end
local grant
if ask >= 0 then
  grant = math.max(0, math.min(ask, math.floor(tokens)))
  tokens = tokens - grant
else
  grant = ask
  tokens = math.min(capacity, tokens - ask)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
  'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return grant
"""


class Pool:
    """One dimension of one tenant's quota on this replica: tokens leased from the shared bucket
    (or, in fallback, from `local`), and what requests asked for since the last round."""

    __slots__ = (
        "asked",
        "biggest",
        "capacity",
        "demand",
        "key",
        "local",
        "low",
        "rate",
        "tokens",
    )

    def __init__(self, key: str, rate: float, burst_seconds: float) -> None:
        self.key = key
        self.rate = rate
        self.capacity = max(rate * burst_seconds, 1.0)
        self.tokens = 0.0
        self.asked = 0  # since the last round
        self.biggest = 0.0  # the largest single ask lately (decays)
        self.demand = 0.0  # asked per second, smoothed
        self.low = 0.0  # below this many tokens a request wakes the top-up task
        self.local: tuple[float, float] | None = None  # fallback bucket: (tokens, at)

    def target(self) -> float:
        """How many tokens this replica should hold: LEASE_SECONDS of its demand, within
        [MIN_SHARE, MAX_SHARE] of the capacity, and at least the largest recent request."""
        want = min(self.demand * LEASE_SECONDS, self.capacity * MAX_SHARE)
        return max(want, min(self.biggest, self.capacity), self.capacity * MIN_SHARE, 1.0)

    def observe(self, elapsed: float) -> None:
        """Fold what was asked since the last round into the demand estimate."""
        if elapsed <= 0:
            return
        weight = 1.0 - math.exp(-elapsed / DEMAND_TAU)
        self.demand += (self.asked / elapsed - self.demand) * weight
        self.asked = 0
        self.biggest *= math.exp(-elapsed / (4 * DEMAND_TAU))

    def want(self) -> float:
        """Tokens to ask for (> 0), give back (< 0), or 0 for nothing to do this round."""
        target = self.target()
        self.low = target / 2
        if self.tokens < self.low:  # below the low-water mark
            return math.ceil(target - self.tokens)
        if self.tokens > target * GIVE_BACK:
            return -math.floor(self.tokens - target)
        return 0

    def take_local(self, ask: float, share: float, now: float) -> float:
        """Grant up to `ask` from the fallback bucket at `share` of the rate."""
        rate, capacity = self.rate * share, max(self.capacity * share, 1.0)
        tokens, at = self.local if self.local is not None else (capacity, now)
        tokens = min(capacity, tokens + (now - at) * rate)
        grant = max(0.0, min(ask, math.floor(tokens))) if ask >= 0 else ask
        self.local = (min(capacity, tokens - grant), now)
        return grant


class SharedQuota:
    """Items/s and bytes/s of one tenant for the fleet; `admit` takes from the local pools only
    (the same contract as gateway/tenancy/quota.py Quota)."""

    __slots__ = ("bytes", "items", "leases", "tenant")

    def __init__(self, leases: QuotaLeases, tenant: str, config: QuotaConfig) -> None:
        self.leases = leases
        self.tenant = tenant
        link = leases.link
        burst = config.burst_seconds
        ips, bps = config.items_per_second, config.bytes_per_second
        self.items = Pool(link.key("quota", tenant, "items"), ips, burst) if ips else None
        self.bytes = Pool(link.key("quota", tenant, "bytes"), bps, burst) if bps else None

    def admit(self, items: int, size: int) -> float:
        """Take the request's cost and return 0, or take nothing and return the seconds to wait
        (at the rate in force: the shared one, or this replica's share in fallback)."""
        wait = 0.0
        pool = self.items
        if pool is not None:
            pool.asked += items
            if items > pool.biggest:
                pool.biggest = items
            short = min(items, pool.capacity) - pool.tokens  # a huge request needs a full pool
            if short > 0:
                wait = short / (pool.rate * self.leases.share)
        pool = self.bytes
        if pool is not None:
            pool.asked += size
            if size > pool.biggest:
                pool.biggest = size
            short = min(size, pool.capacity) - pool.tokens
            if short > 0:
                wait = max(wait, short / (pool.rate * self.leases.share))
        if wait > 0:
            self.leases.wake(self)
            # the pool is topped up at the next round at the earliest
            return max(wait, TICK)
        low = False
        if self.items is not None:
            self.items.tokens -= items
            low = self.items.tokens < self.items.low
        if self.bytes is not None:
            self.bytes.tokens -= size
            low = low or self.bytes.tokens < self.bytes.low
        if low:
            self.leases.wake(self)
        return 0.0

    def pools(self) -> tuple[Pool, ...]:
        return tuple(p for p in (self.items, self.bytes) if p is not None)


class QuotaLeases:
    """The background task that keeps every tenant's pools topped up, from Redis while it
    answers (mode "shared") or from local buckets at quota / live replicas ("local")."""

    def __init__(self, link: ClusterLink, live_replicas: Callable[[], int]) -> None:
        self.link = link
        self.live_replicas = live_replicas  # from the heartbeat's last read; at least 1
        self.mode = SHARED
        self.share = 1.0  # the part of each quota's rate this replica may use now
        self.quotas: dict[str, SharedQuota] = {}
        self._wake = asyncio.Event()
        self._low: set[SharedQuota] = set()  # ran low since the last round
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[list[Any] | None] | None = None
        self._next_probe = 0.0
        self._last = time.monotonic()
        self._next_sweep = self._last + TICK
        self._outcomes = {
            o: metrics.CLUSTER_LEASES.labels(o)
            for o in ("granted", "partial", "empty", "returned", "failed")
        }

    def quota(self, tenant: str, config: QuotaConfig) -> SharedQuota:
        return SharedQuota(self, tenant, config)

    def track(self, quotas: Mapping[str, SharedQuota]) -> None:
        """The quotas of the tenant registry in use (a reload hands in its new set)."""
        self.quotas = dict(quotas)
        self._low.update(self.quotas.values())  # new tenants' pools are empty: fill them now
        self._wake.set()

    def wake(self, quota: SharedQuota) -> None:
        """`quota` ran low: a round for it now (not a sweep of every tenant)."""
        self._low.add(quota)
        self._wake.set()

    async def start(self) -> None:
        """One round now (a tenant's first requests find their pools filled), then the task."""
        await self.round()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="quota-leases")

    async def stop(self) -> None:
        """Stop the top-ups and give what the pools still hold back to the shared buckets (the
        server has stopped taking requests), so the other replicas can use it."""
        await cancel(self._task)
        await cancel(self._probe)
        self._task = self._probe = None
        if self.mode != SHARED:
            return
        held = [p for q in self.quotas.values() for p in q.pools() if p.tokens >= 1]
        asks = [(p, float(-math.floor(p.tokens))) for p in held]
        if asks and (grants := await self._lease(asks)) is not None:
            self._grant(asks, grants)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            sweep = False
            try:
                async with asyncio.timeout(max(0.0, self._next_sweep - started)):
                    await self._wake.wait()
            except TimeoutError:
                sweep = True
            self._wake.clear()
            sweep = sweep or time.monotonic() >= self._next_sweep  # also under constant wakes
            try:
                await self.round(sweep)
            except Exception:  # a bug: logged, and the pools are topped up again next round
                log.exception("quota leases: a top-up round failed")
            # Jittered: replicas whose rounds fell into step would otherwise find the shared
            # bucket in the same order every time, the first one taking what had come in.
            rest = MIN_GAP * random.uniform(0.5, 1.5) - (time.monotonic() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def round(self, sweep: bool = True) -> None:
        """Top up (or give back) the pools that need it: on a sweep (every TICK) every tenant's,
        with the demand folded in first; else those that ran low since the last round."""
        now = time.monotonic()
        if sweep:
            elapsed, self._last = now - self._last, now
            self._next_sweep = now + TICK
            self._low.clear()
            pools = [p for q in self.quotas.values() for p in q.pools()]
            for pool in pools:
                pool.observe(elapsed)
        else:
            low, self._low = self._low, set()
            pools = [p for q in low for p in q.pools()]
        asks = [(pool, ask) for pool in pools if (ask := pool.want())]
        if self.mode == SHARED:
            if not asks:
                return
            grants = await self._lease(asks)
            if grants is not None:
                self._grant(asks, grants)
                return
            self._fall_back()
        self._local_round(asks, now)

    def _local_round(self, asks: list[tuple[Pool, float]], now: float) -> None:
        """Fallback: grant from the local buckets, and probe Redis every heartbeat interval (or
        as soon as the heartbeat found it answering) without holding the local top-ups up."""
        self.share = 1.0 / max(1, self.live_replicas())
        for pool, ask in asks:
            pool.tokens += pool.take_local(ask, self.share, now)
        probe_due = now >= self._next_probe or self.link.up
        if self._probe is None and probe_due:
            self._probe = asyncio.get_running_loop().create_task(self._lease([]))
            self._next_probe = now + self.link.config.heartbeat_interval
        elif self._probe is not None and self._probe.done():
            answered = self._probe.result() is not None
            self._probe = None
            if answered:
                self._recover()

    async def _lease(self, asks: list[tuple[Pool, float]]) -> list[Any] | None:
        """One round trip: every ask of this round in one pipeline (a probe asks for nothing)."""

        async def call(r: aioredis.Redis) -> list[Any]:
            async with r.pipeline(transaction=False) as p:
                if not asks:
                    p.ping()
                for pool, ask in asks:
                    ttl = math.ceil(pool.capacity / pool.rate * 1000) + 1000
                    p.eval(
                        LEASE_SCRIPT, 1, pool.key, repr(pool.rate), repr(pool.capacity), ask, ttl
                    )
                return list(await p.execute())

        result = await self.link.call(call)
        if result is None and asks:
            self._outcomes["failed"].inc(len(asks))
        return result

    def _grant(self, asks: list[tuple[Pool, float]], grants: list[Any]) -> None:
        for (pool, ask), granted in zip(asks, grants, strict=True):
            got = float(granted)
            pool.tokens += got if ask > 0 else ask  # given back: gone from the pool either way
            outcome = (
                "returned"
                if ask < 0
                else "granted"
                if got >= ask
                else "partial"
                if got > 0
                else "empty"
            )
            self._outcomes[outcome].inc()

    def _fall_back(self) -> None:
        self.mode = LOCAL
        self.share = 1.0 / max(1, self.live_replicas())
        self._next_probe = time.monotonic() + self.link.config.heartbeat_interval
        for q in self.quotas.values():
            for pool in q.pools():
                pool.local = None  # a fresh bucket at the share (full, as a new quota's is)
        log.warning(
            "cluster %s: quotas fall back to this replica's share (1/%d of each) until Redis "
            "answers again",
            self.link.config.name,
            self.live_replicas(),
        )

    def _recover(self) -> None:
        self.mode = SHARED
        self.share = 1.0
        log.info("cluster %s: quotas are shared through Redis again", self.link.config.name)
