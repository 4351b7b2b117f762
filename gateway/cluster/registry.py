"""This replica's heartbeat: every heartbeat interval it writes its record to Redis (a hash, and
its member in the fleet's sorted set, scored by when it was seen) and reads back how many replicas
are live, which the quota fallback divides by. On a graceful stop it deletes both.

What the record reports comes in as callables from the wiring (app.py), so this layer imports
nothing above it. The record's format is read back by fleet.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from gateway import __version__
from gateway.cluster.fleet import LIVE_INTERVALS
from gateway.cluster.link import ClusterLink, cancel

log = logging.getLogger("otlp_gateway")


def record_ttl(interval: float) -> int:
    """Seconds a record outlives its last heartbeat: a replica that stopped stays visible (stale)
    for a while."""
    return max(60, math.ceil(30 * interval))


class ReplicaRegistry:
    def __init__(
        self,
        link: ClusterLink,
        *,
        listen: Sequence[str],
        admin: str,
        digest: Callable[[], str],
        queue_bytes: Callable[[], int],
        accepted_items: Callable[[], float],  # counts since start; the record has their rates
        refused_requests: Callable[[], float],
        quota_mode: Callable[[], str] | None = None,
    ) -> None:
        self.link = link
        self.id = link.replica
        self.interval = link.config.heartbeat_interval
        self.listen = ",".join(listen)
        self.admin = admin
        self._digest = digest
        self._queue_bytes = queue_bytes
        self._accepted = accepted_items
        self._refused = refused_requests
        self._quota_mode = quota_mode
        self.started = time.time()
        self.live_replicas = 1  # as last read, this one included; 1 until Redis answers
        self._last: tuple[float, float, float] | None = None  # (time, accepted, refused)
        self._task: asyncio.Task[None] | None = None

    @property
    def quota_mode(self) -> str:
        """ "shared" while quotas come from Redis, "local" while they are this replica's share."""
        if self._quota_mode is not None:
            return self._quota_mode()
        return "shared" if self.link.up else "local"

    def _rates(self, now: float) -> tuple[float, float]:
        accepted, refused = self._accepted(), self._refused()
        last, self._last = self._last, (now, accepted, refused)
        if last is None or now <= last[0]:
            return 0.0, 0.0
        elapsed = now - last[0]
        return (accepted - last[1]) / elapsed, (refused - last[2]) / elapsed

    def record(self, now: float) -> dict[str, str]:
        accepted, refused = self._rates(now)
        return {
            "id": self.id,
            "listen": self.listen,
            "admin": self.admin,
            "version": __version__,
            "config_digest": self._digest(),
            "started": repr(self.started),
            "seen": repr(now),
            "queue_bytes": str(int(self._queue_bytes())),
            "accepted_per_second": f"{accepted:.3f}",
            "refused_per_second": f"{refused:.3f}",
            "quota_mode": self.quota_mode,
        }

    async def beat(self) -> bool:
        """Write the record and read the live count (one transaction); False if Redis did not
        answer (the live count stays as last read)."""
        now = time.time()
        record = self.record(now)
        key, members = self.link.key("replica", self.id), self.link.key("replicas")
        ttl = record_ttl(self.interval)
        since = now - LIVE_INTERVALS * self.interval

        async def write(r: aioredis.Redis) -> int:
            async with r.pipeline(transaction=True) as p:
                p.hset(key, mapping=record)  # type: ignore[arg-type]  # str values are fine
                p.expire(key, ttl)
                p.zadd(members, {self.id: now})
                p.zcount(members, since, "+inf")
                return int((await p.execute())[-1])

        live = await self.link.call(write)
        if live is None:
            return False
        self.live_replicas = max(1, live)
        return True

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except Exception:  # a bug: logged, and the next heartbeat tries again
                log.exception("cluster heartbeat failed")

    async def stop(self) -> None:
        """Stop heartbeating and delete this replica's record: it leaves the fleet at once
        instead of turning stale."""
        await cancel(self._task)
        self._task = None
        key, members = self.link.key("replica", self.id), self.link.key("replicas")

        async def remove(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=True) as p:
                p.delete(key)
                p.zrem(members, self.id)
                await p.execute()

        await self.link.call(remove)
