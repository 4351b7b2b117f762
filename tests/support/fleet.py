"""Heartbeat records written straight into a real Redis, as a replica of the fleet writes them
(gateway/cluster/registry.py), for the fleet view's drift and stale cases."""

from __future__ import annotations

import secrets

import redis

from gateway.cluster.link import ClusterLink
from gateway.config.model import ClusterConfig


def cluster_name() -> str:
    """A fleet of the test's own in a shared Redis (its keys carry the name)."""
    return "t" + secrets.token_hex(4)


def keys_of(name: str) -> ClusterLink:
    """A link only to name keys as the gateway does (it never connects)."""
    return ClusterLink(ClusterConfig(redis="redis://127.0.0.1:1/0", name=name), "-")


def put_replica(
    db: redis.Redis,
    name: str,
    replica: str,
    *,
    seen: float,
    digest: str,
    queue_bytes: int = 0,
    accepted: float = 0.0,
    refused: float = 0.0,
    quota_mode: str = "shared",
    version: str = "9.9.9",
) -> None:
    """A heartbeat record: its hash (expiring in 60 s), and its member in the sorted set."""
    k = keys_of(name)
    record = {
        "id": replica,
        "listen": "127.0.0.1:14317,127.0.0.1:14318",
        "admin": "127.0.0.1:19464",
        "version": version,
        "config_digest": digest,
        "started": str(seen - 100),
        "seen": str(seen),
        "queue_bytes": str(queue_bytes),
        "accepted_per_second": str(accepted),
        "refused_per_second": str(refused),
        "quota_mode": quota_mode,
    }
    with db.pipeline() as p:
        p.hset(k.key("replica", replica), mapping=record)  # type: ignore[arg-type]
        p.expire(k.key("replica", replica), 60)
        p.zadd(k.key("replicas"), {replica: seen})
        p.execute()
