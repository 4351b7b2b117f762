"""The fleet as one view: replicas of one cluster write heartbeat records into a shared Redis, and
any of them shows every replica, live or stale, and whether they serve the same config.

Against a real redis-server on a free port: records written straight into Redis for the drift,
stale, expired and bounded cases (read by gateway/cluster/fleet.py in process), then real
`otlp-gateway serve` processes answering ListReplicas over Connect and `otlp-gateway status`
printing the fleet, with Redis up, with Redis unreachable and without a cluster at all."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway import config as config_mod
from gateway._gen.otlp_gateway.admin.v1 import admin_pb2 as pb
from gateway._gen.otlp_gateway.admin.v1.admin_connect import AdminServiceClientSync
from gateway.cluster.fleet import MAX_REPLICAS, REDIS_DOWN, Fleet, FleetView, config_digest
from gateway.cluster.link import ClusterLink
from gateway.config.model import ClusterConfig
from gateway.telemetry import metrics
from tests.support.fleet import cluster_name, keys_of
from tests.support.fleet import put_replica as put
from tests.support.peers import Gateway, free_port, run_gateway, wait_until
from tests.support.redis import RedisServer

pytestmark = pytest.mark.timeout(180)

ADMIN_KEY = "fleet-" + secrets.token_hex(8)
OTHER_DIGEST = "0123456789ab"


# ---------------------------------------------------------------------------------------------
# Redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def db(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


def read_view(redis_url: str, name: str, self_id: str, interval: float) -> FleetView:
    async def read() -> FleetView:
        link = ClusterLink(ClusterConfig(redis=redis_url, name=name, timeout=1.0), self_id)
        try:
            return await Fleet(link, self_id, interval).replicas()
        finally:
            await link.close()

    return asyncio.run(asyncio.wait_for(read(), 20))


def gauge(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


# ---------------------------------------------------------------------------------------------
# The view, read in process


def test_live_stale_drift_and_expired_members(redis_url: str, db: redis.Redis) -> None:
    name, now = cluster_name(), time.time()
    put(db, name, "a", seen=now, digest="aaaaaaaaaaaa", queue_bytes=2048, accepted=12.5)
    put(db, name, "b", seen=now - 2.5, digest="aaaaaaaaaaaa", refused=0.5, quota_mode="local")
    put(db, name, "c", seen=now - 1, digest=OTHER_DIGEST)
    put(db, name, "d", seen=now - 3.5, digest="dddddddddddd")  # missed more than 3 heartbeats
    db.zadd(keys_of(name).key("replicas"), {"gone": now - 200})  # its record has expired

    view = read_view(redis_url, name, self_id="b", interval=1.0)

    assert view.redis_up and view.last_error == ""
    assert [r.id for r in view.replicas] == ["b", "a", "c", "d"]  # this process first
    assert [r.state for r in view.replicas] == ["live", "live", "live", "stale"]
    assert [r.is_self for r in view.replicas] == [True, False, False, False]
    # the live replicas serve two configs: most serve the fleet's, c drifts; stale d is not
    # counted (what it served no longer matters)
    assert view.fleet_digest == "aaaaaaaaaaaa"
    assert [r.id for r in view.drifted] == ["c"]
    a = view.replicas[1]
    assert (a.queue_bytes, a.accepted_per_second, a.refused_per_second) == (2048, 12.5, 0.0)
    assert (a.version, a.quota_mode) == ("9.9.9", "shared")
    assert a.started == pytest.approx(now - 100)
    assert view.replicas[0].quota_mode == "local"
    # the member without a record is left out, and taken out of the set
    assert db.zscore(keys_of(name).key("replicas"), "gone") is None
    assert db.zcard(keys_of(name).key("replicas")) == 4
    drift, stale = view.warnings()
    assert "config drift: 2 of 3 live replicas serve config aaaaaaaaaaaa" in drift
    assert f"{OTHER_DIGEST}: c" in drift
    assert stale.startswith("1 stale replica (no heartbeat for over 3 s") and stale.endswith(": d")
    assert gauge("otlp_gateway_fleet_replicas", state="live") == 3
    assert gauge("otlp_gateway_fleet_replicas", state="stale") == 1
    assert gauge("otlp_gateway_fleet_config_drift") == 1


def test_one_config_no_drift_and_a_tie_goes_to_this_replicas(
    redis_url: str, db: redis.Redis
) -> None:
    name, now = cluster_name(), time.time()
    put(db, name, "x", seen=now, digest="bbbbbbbbbbbb")
    put(db, name, "y", seen=now, digest="bbbbbbbbbbbb")
    view = read_view(redis_url, name, self_id="x", interval=2.0)
    assert view.fleet_digest == "bbbbbbbbbbbb" and not view.drifted and not view.warnings()
    assert gauge("otlp_gateway_fleet_config_drift") == 0
    assert gauge("otlp_gateway_fleet_replicas", state="stale") == 0

    put(db, name, "y", seen=now, digest="ffffffffffff")  # one against one: this replica's wins
    view = read_view(redis_url, name, self_id="x", interval=2.0)
    assert view.fleet_digest == "bbbbbbbbbbbb"
    assert [r.id for r in view.drifted] == ["y"]


def test_the_view_is_bounded(redis_url: str, db: redis.Redis) -> None:
    name, now = cluster_name(), time.time()
    extra = 7
    for i in range(MAX_REPLICAS + extra):
        put(db, name, f"r{i:04d}", seen=now - i * 0.001, digest="cccccccccccc")
    view = read_view(redis_url, name, self_id="r0000", interval=2.0)
    assert len(view.replicas) == MAX_REPLICAS and view.not_listed == extra
    assert view.replicas[0].id == "r0000"  # the newest heartbeats are the ones read


def test_redis_unreachable(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    view = read_view(dead, cluster_name(), self_id="me", interval=1.0)
    assert not view.redis_up and view.replicas == ()
    assert view.redis_down_since is not None and view.redis_down_since <= time.time()
    assert view.last_error  # what the client said
    assert view.quota_mode == "local"
    (warning,) = view.warnings()
    assert warning.startswith(REDIS_DOWN + " (since ")


def test_config_digest_leaves_ports_and_origin_out(tmp_path: Path) -> None:
    def load(text: str) -> config_mod.LoadedConfig:
        path = tmp_path / f"{secrets.token_hex(4)}.yaml"
        path.write_text(text)
        return config_mod.load(path)

    base = "backends: {b: {protocol: file, path: ./out}}\nservice_backends: [b]\n"
    one = load(base + "listen: ['127.0.0.1:1000']\nadmin: {listen: '127.0.0.1:1001'}\n")
    two = load(base + "listen: ['127.0.0.1:2000', '127.0.0.1:2001']\n")
    other = load(base + "retry: {max_elapsed: 1m}\n")
    assert one.origin != two.origin  # two files
    digest = config_digest(one)
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert config_digest(two) == digest
    assert config_digest(other) != digest


# ---------------------------------------------------------------------------------------------
# The admin API, the command and /metrics of real gateways


def replicas(gw: Gateway) -> pb.ListReplicasResponse:
    client = AdminServiceClientSync(gw.admin_url, send_compression=None)
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    return client.list_replicas(pb.ListReplicasRequest(), headers=headers, timeout_ms=10_000)


def status(gw: Gateway) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--admin", gw.admin_url, "--key", ADMIN_KEY],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def fleet_block(out: str) -> list[str]:
    """`status`'s fleet block: its lines from `fleet:` on."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("fleet: ")]
    assert len(starts) == 1, out
    return lines[starts[0] :]


def scrape(gw: Gateway, name: str, **labels: str) -> float | None:
    text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return s.value
    return None


def gateway_config(**extra: Any) -> dict[str, Any]:
    return {
        "backends": {"local": {"protocol": "file", "path": "./out"}},
        "service_backends": ["local"],
        "admin": {"api_key": ADMIN_KEY},
        **extra,
    }


def served_digest(tmp_path: Path, gw: Gateway) -> str:
    """The config digest of the file run_gateway wrote for `gw`, as the gateway computes it."""
    return config_digest(config_mod.load(tmp_path / f"gateway-{gw.grpc_port}.yaml"))


def self_id(gw: Gateway) -> str:
    return f"{socket.gethostname()}:{gw.proc.pid}"


def test_without_a_cluster_the_fleet_is_this_process(tmp_path: Path) -> None:
    with run_gateway(tmp_path, gateway_config()) as gw:
        answer = replicas(gw)
        assert not answer.cluster.configured and not answer.warnings
        (me,) = answer.replicas
        assert me.id == self_id(gw) and me.is_self and not me.drift
        assert me.state == pb.REPLICA_STATE_LIVE and me.quota_mode == "local"
        assert me.config_digest == served_digest(tmp_path, gw) == answer.fleet_config_digest
        assert me.listen == f"127.0.0.1:{gw.grpc_port},127.0.0.1:{gw.http_port}"
        assert me.admin == f"127.0.0.1:{gw.admin_port}"
        block = fleet_block(status(gw))
        assert block[0] == "fleet: no cluster configured (this process alone; quotas are its own)"
        assert block[2].startswith(f"{me.id} (this)") and " live " in block[2]
        assert len(block) == 3


def test_a_cluster_with_drift_and_a_stale_replica(
    tmp_path: Path, redis_url: str, db: redis.Redis
) -> None:
    name = cluster_name()
    cluster = {"redis": redis_url, "name": name, "heartbeat_interval": "500ms"}
    with run_gateway(tmp_path, gateway_config(cluster=cluster)) as gw:
        ours, now = served_digest(tmp_path, gw), time.time()
        # two replicas serving this gateway's config, one another config, one stopped
        put(db, name, "peer-1", seen=now + 30, digest=ours, queue_bytes=5 * 1024, accepted=40.0)
        put(db, name, "peer-2", seen=now + 30, digest=ours)
        put(db, name, "peer-3", seen=now + 30, digest=OTHER_DIGEST, version="9.9.8")
        put(db, name, "peer-4", seen=now - 60, digest=ours)

        answer = replicas(gw)
        c = answer.cluster
        assert (c.configured, c.name, c.redis_up, c.redis_down_since) == (True, name, True, 0)
        assert c.heartbeat_interval_seconds == 0.5
        rows = {r.id: r for r in answer.replicas}
        assert set(rows) == {self_id(gw), "peer-1", "peer-2", "peer-3", "peer-4"}
        assert answer.replicas[0].id == self_id(gw) and answer.replicas[0].is_self
        assert answer.fleet_config_digest == ours
        assert [r.id for r in answer.replicas if r.drift] == ["peer-3"]
        assert rows["peer-4"].state == pb.REPLICA_STATE_STALE
        assert rows["peer-1"].queue_bytes == 5 * 1024 and rows["peer-1"].accepted_per_second == 40
        assert rows[self_id(gw)].quota_mode == "shared"
        drift, stale = answer.warnings
        assert drift.startswith(f"config drift: 3 of 4 live replicas serve config {ours}")
        assert f"{OTHER_DIGEST}: peer-3" in drift
        assert stale.startswith("1 stale replica (no heartbeat for over 1.5 s")
        assert stale.endswith(": peer-4")

        block = fleet_block(status(gw))
        assert block[0] == f"fleet: cluster '{name}', Redis up, 4 live, 1 stale"
        table = {line.split()[0]: line for line in block[2:] if not line.startswith("WARNING")}
        assert set(table) == set(rows)
        assert f"{OTHER_DIGEST} DRIFT" in table["peer-3"] and "9.9.8" in table["peer-3"]
        assert " STALE " in table["peer-4"] and "5.0 KiB" in table["peer-1"]
        warnings = [line for line in block if line.startswith("WARNING: ")]
        assert len(warnings) == 2 and "config drift" in warnings[0] and "peer-4" in warnings[1]

        # the gauges follow without anyone asking (a read every heartbeat interval)
        db.delete(keys_of(name).key("replica", "peer-3"))
        assert wait_until(lambda: scrape(gw, "otlp_gateway_fleet_config_drift") == 0, 10)
        assert scrape(gw, "otlp_gateway_fleet_replicas", state="stale") == 1


def test_redis_unreachable_is_said(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cluster = {"redis": dead, "name": cluster_name(), "timeout": "200ms"}
    with run_gateway(tmp_path, gateway_config(cluster=cluster)) as gw:
        answer = replicas(gw)
        c = answer.cluster
        assert c.configured and not c.redis_up and c.redis_down_since > 0 and c.last_error
        (me,) = answer.replicas
        assert me.is_self and me.quota_mode == "local" and me.state == pb.REPLICA_STATE_LIVE
        (warning,) = answer.warnings
        assert warning.startswith(REDIS_DOWN)
        block = fleet_block(status(gw))
        assert block[0].startswith(f"fleet: cluster '{c.name}', REDIS DOWN, 1 live, 0 stale")
        assert block[-1].startswith(f"WARNING: {REDIS_DOWN}")


def test_real_replicas_see_each_other(tmp_path: Path) -> None:
    """Three `otlp-gateway serve` replicas of one cluster, heartbeating: one started from another
    config drifts; killed, it turns stale; one stopped gracefully leaves the fleet at once."""
    interval = 0.3
    with RedisServer() as server, contextlib.ExitStack() as stack:
        cluster = {"redis": server.url, "name": cluster_name(), "heartbeat_interval": "300ms"}
        one = stack.enter_context(run_gateway(tmp_path, gateway_config(cluster=cluster)))
        two = stack.enter_context(run_gateway(tmp_path, gateway_config(cluster=cluster)))
        other = gateway_config(cluster=cluster, retry={"max_elapsed": "1m"})
        three = stack.enter_context(run_gateway(tmp_path, other))
        ids = [self_id(gw) for gw in (one, two, three)]
        ours = served_digest(tmp_path, one)
        assert served_digest(tmp_path, two) == ours != served_digest(tmp_path, three)

        answer = replicas(one)
        assert [r.id for r in answer.replicas] == [ids[0], *sorted(ids[1:])]
        rows = {r.id: r for r in answer.replicas}
        assert all(r.state == pb.REPLICA_STATE_LIVE for r in rows.values())
        assert [r.is_self for r in answer.replicas] == [True, False, False]
        assert answer.fleet_config_digest == ours
        assert [r.id for r in answer.replicas if r.drift] == [ids[2]]
        assert rows[ids[1]].listen == f"127.0.0.1:{two.grpc_port},127.0.0.1:{two.http_port}"
        assert rows[ids[1]].admin == f"127.0.0.1:{two.admin_port}"
        assert {r.quota_mode for r in rows.values()} == {"shared"}
        assert rows[ids[2]].config_digest == served_digest(tmp_path, three)
        # the same fleet from another replica: its own row first
        assert [r.id for r in replicas(two).replicas] == [ids[1], ids[0], ids[2]]
        assert scrape(one, "otlp_gateway_fleet_config_drift") == 1

        three.proc.kill()  # no goodbye: its record stays, and turns stale
        three.proc.wait(10)

        def stale() -> pb.ListReplicasResponse | None:
            a = replicas(one)
            return a if any(r.state == pb.REPLICA_STATE_STALE for r in a.replicas) else None

        answer = wait_until(stale, 10 * interval + 5)
        rows = {r.id: r for r in answer.replicas}
        assert rows[ids[2]].state == pb.REPLICA_STATE_STALE and not rows[ids[2]].drift
        (warning,) = answer.warnings  # a stale replica's config is no drift
        assert warning.startswith("1 stale replica") and warning.endswith(ids[2])
        block = fleet_block(status(one))
        assert block[0].endswith(", Redis up, 2 live, 1 stale")
        assert block[-1] == f"WARNING: {warning}"
        assert wait_until(lambda: scrape(one, "otlp_gateway_fleet_config_drift") == 0, 10)
        assert scrape(one, "otlp_gateway_fleet_replicas", state="stale") == 1

        assert two.stop() == 0  # a graceful stop deletes its record
        assert [r.id for r in replicas(one).replicas] == [ids[0], ids[2]]
