"""The fleet as one view: every replica's heartbeat record read back from Redis, each classed
live or stale, and whether the live ones serve the same config (registry.py writes the records).

A replica is live while its last heartbeat is at most 3 heartbeat intervals old, and stale after
that for as long as its record has not expired. Config drift: the live replicas serve more than
one config digest; the one most of them serve is the fleet's, the others drift from it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import redis.asyncio as aioredis

from gateway.cluster.link import ClusterLink
from gateway.config.model import GatewayConfig
from gateway.telemetry import metrics

log = logging.getLogger("otlp_gateway")

MAX_REPLICAS = 500  # read per view, newest heartbeats first: a bound on one admin call's work
LIVE_INTERVALS = 3  # heartbeats a live replica may miss
LIVE, STALE = "live", "stale"
REDIS_DOWN = "Redis unreachable: quotas are local shares"

# what differs between replicas of one config file without being a different config: their
# ports (`listen`, `admin`) and where the file was read from (LoadedConfig's origin, warnings)
_NOT_DIGESTED = frozenset({"listen", "admin"})


def config_digest(config: GatewayConfig) -> str:
    """12 hex chars naming the config a replica serves: sha256 of its repr without `listen`,
    `admin` and `origin`, so replicas started from one file agree even on different ports."""
    kept = tuple(
        (f.name, getattr(config, f.name))
        for f in fields(GatewayConfig)
        if f.name not in _NOT_DIGESTED
    )
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Replica:
    """One heartbeat record, as read."""

    id: str
    listen: str = ""
    admin: str = ""
    version: str = ""
    config_digest: str = ""
    started: float = 0.0
    seen: float = 0.0
    queue_bytes: int = 0
    accepted_per_second: float = 0.0
    refused_per_second: float = 0.0
    quota_mode: str = ""
    state: str = LIVE  # LIVE or STALE
    is_self: bool = False
    drift: bool = False  # live, and serving a config other than the fleet's

    @property
    def live(self) -> bool:
        return self.state == LIVE


@dataclass(frozen=True, slots=True)
class FleetView:
    """The fleet as one read of Redis found it (no replicas when Redis did not answer)."""

    name: str
    self_id: str
    heartbeat_interval: float
    replicas: tuple[Replica, ...]  # this process first, then by id
    redis_up: bool
    redis_down_since: float | None
    last_error: str  # "" while Redis answers
    fleet_digest: str  # the digest most live replicas serve; "" with none live
    not_listed: int = 0  # members beyond MAX_REPLICAS
    read_at: float = 0.0

    @property
    def live(self) -> tuple[Replica, ...]:
        return tuple(r for r in self.replicas if r.live)

    @property
    def stale(self) -> tuple[Replica, ...]:
        return tuple(r for r in self.replicas if not r.live)

    @property
    def drifted(self) -> tuple[Replica, ...]:
        return tuple(r for r in self.replicas if r.drift)

    @property
    def quota_mode(self) -> str:
        """This replica's: shared while Redis answers, its local share of each quota if not."""
        return "shared" if self.redis_up else "local"

    def warnings(self) -> list[str]:
        """One sentence per thing an operator should look at, most urgent first."""
        out: list[str] = []
        if not self.redis_up:
            since = time.strftime("%H:%M:%S", time.localtime(self.redis_down_since or 0))
            why = f" ({self.last_error})" if self.last_error else ""
            out.append(f"{REDIS_DOWN} (since {since}{why})")
        if self.drifted:
            by_digest: dict[str, list[str]] = {}
            for r in self.drifted:
                by_digest.setdefault(r.config_digest or "none", []).append(r.id)
            others = "; ".join(f"{d}: {', '.join(ids)}" for d, ids in sorted(by_digest.items()))
            agree = sum(1 for r in self.live if not r.drift)
            out.append(
                f"config drift: {agree} of {len(self.live)} live replicas serve config "
                f"{self.fleet_digest}, others differ ({others}); give every replica the same "
                "config file"
            )
        if self.stale:
            after = LIVE_INTERVALS * self.heartbeat_interval
            ids = ", ".join(r.id for r in self.stale)
            out.append(
                f"{len(self.stale)} stale replica{'s' if len(self.stale) > 1 else ''} "
                f"(no heartbeat for over {after:g} s; stopped or cut off from Redis): {ids}"
            )
        return out


class Fleet:
    """Reads the fleet's replicas from Redis through `link` (`self_id` is this process)."""

    def __init__(self, link: ClusterLink, self_id: str, interval: float) -> None:
        self.link = link
        self.self_id = self_id
        self.interval = interval
        self.last: FleetView | None = None  # the latest read, for the metrics and the status

    async def replicas(self, now: float | None = None) -> FleetView:
        """One read of the fleet: two round trips (the members, then every member's record),
        plus one to drop members whose record has expired."""
        link = self.link
        members_key = link.key("replicas")

        async def members(r: aioredis.Redis) -> list[Any]:
            async with r.pipeline(transaction=False) as p:
                p.zrevrange(members_key, 0, MAX_REPLICAS - 1)  # newest heartbeat first
                p.zcard(members_key)
                return list(await p.execute())

        listed = await link.call(members)
        if listed is None:
            return self._read(self._down(now))
        ids = [_text(m) for m in listed[0]]
        not_listed = max(0, int(listed[1]) - len(ids))

        async def records(r: aioredis.Redis) -> list[Any]:
            async with r.pipeline(transaction=False) as p:
                for replica in ids:
                    p.hgetall(link.key("replica", replica))
                return list(await p.execute())

        hashes = await link.call(records) if ids else []
        if hashes is None:
            return self._read(self._down(now))
        expired = [i for i, h in zip(ids, hashes, strict=True) if not h]
        if expired:  # the replica stopped long ago (its record expired) without saying so
            await link.call(lambda r: r.zrem(members_key, *expired))
        now = time.time() if now is None else now
        found = [
            _replica(i, h, now, self.interval, self.self_id)
            for i, h in zip(ids, hashes, strict=True)
            if h
        ]
        return self._read(self._view(found, now, not_listed))

    def _view(self, found: Sequence[Replica], now: float, not_listed: int) -> FleetView:
        fleet = _majority([r for r in found if r.live], self.self_id)
        marked = [replace(r, drift=r.live and r.config_digest != fleet) for r in found]
        replicas = tuple(sorted(marked, key=lambda r: (not r.is_self, r.id)))
        return FleetView(
            name=self.link.config.name,
            self_id=self.self_id,
            heartbeat_interval=self.interval,
            replicas=replicas,
            redis_up=True,
            redis_down_since=None,
            last_error="",
            fleet_digest=fleet,
            not_listed=not_listed,
            read_at=now,
        )

    def _down(self, now: float | None) -> FleetView:
        return FleetView(
            name=self.link.config.name,
            self_id=self.self_id,
            heartbeat_interval=self.interval,
            replicas=(),
            redis_up=False,
            redis_down_since=self.link.down_since,
            last_error=self.link.last_error,
            fleet_digest="",
            read_at=time.time() if now is None else now,
        )

    def _read(self, view: FleetView) -> FleetView:
        self.last = view
        if view.redis_up:  # while Redis is down the gauges keep what was last known
            metrics.FLEET_REPLICAS.labels(LIVE).set(len(view.live))
            metrics.FLEET_REPLICAS.labels(STALE).set(len(view.stale))
            metrics.FLEET_CONFIG_DRIFT.set(1 if view.drifted else 0)
        return view


def _majority(live: Sequence[Replica], self_id: str) -> str:
    """The digest most live replicas serve; a tie goes to this process's, then the smallest."""
    counts = Counter(r.config_digest for r in live)
    if not counts:
        return ""
    mine = next((r.config_digest for r in live if r.id == self_id), None)
    return min(counts, key=lambda d: (-counts[d], d != mine, d))


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _float(record: Mapping[str, str], name: str) -> float:
    try:
        value = float(record.get(name, "") or 0.0)
    except ValueError:  # a record from another version, or damaged: shown, with a 0
        return 0.0
    return value if value == value else 0.0  # NaN


def _replica(
    replica: str, raw: Mapping[Any, Any], now: float, interval: float, self_id: str
) -> Replica:
    record = {_text(k): _text(v) for k, v in raw.items()}
    seen = _float(record, "seen")
    return Replica(
        id=record.get("id") or replica,
        listen=record.get("listen", ""),
        admin=record.get("admin", ""),
        version=record.get("version", ""),
        config_digest=record.get("config_digest", ""),
        started=_float(record, "started"),
        seen=seen,
        queue_bytes=max(0, int(_float(record, "queue_bytes"))),
        accepted_per_second=_float(record, "accepted_per_second"),
        refused_per_second=_float(record, "refused_per_second"),
        quota_mode=record.get("quota_mode", ""),
        state=LIVE if now - seen <= LIVE_INTERVALS * interval else STALE,
        is_self=replica == self_id,
    )
