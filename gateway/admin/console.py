"""`otlp-gateway status` and `otlp-gateway tail`: the admin API in a terminal."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from gateway._gen.otlp_gateway.admin.v1 import admin_pb2 as pb
from gateway._gen.otlp_gateway.admin.v1.admin_connect import AdminServiceClientSync
from gateway.config import DEFAULT_ADMIN_LISTEN
from gateway.telemetry import logs

ADMIN_KEY_FILE = "admin-api-key"  # where the embedded default keeps its admin key (cli.py)
DEFAULT_ADMIN_URL = f"http://{DEFAULT_ADMIN_LISTEN}"


def admin_key(given: str | None, data_dir: str) -> str | None:
    """--key, else $OTLP_GATEWAY_ADMIN_KEY, else the embedded default's key file."""
    if given:
        return given
    env = os.environ.get("OTLP_GATEWAY_ADMIN_KEY")
    if env:
        return env
    path = Path(data_dir) / ADMIN_KEY_FILE
    if path.is_file():
        return path.read_text().strip() or None
    return None


def _client(url: str) -> AdminServiceClientSync:
    return AdminServiceClientSync(url.rstrip("/"), send_compression=None)


def _headers(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


_STATE = {pb.BACKEND_STATE_UP: "up", pb.BACKEND_STATE_RETRYING: "RETRYING"}


def _readiness(url: str) -> dict[str, list[str]]:
    """The /readyz verdict (no key needed): problems and warnings; empty when unreachable
    (the admin API calls report that)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=5) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:  # 503 carries the verdict too
        body = exc.read()
    except (OSError, ValueError):
        return {}
    try:
        verdict = json.loads(body)
    except ValueError:
        return {}
    return verdict if isinstance(verdict, dict) else {}


def status(url: str, key: str | None, out: TextIO = sys.stdout) -> int:
    client = _client(url)
    headers = _headers(key)
    try:
        backends = client.list_backends(pb.ListBackendsRequest(), headers=headers).backends
        tenants = client.list_tenants(pb.ListTenantsRequest(), headers=headers)
        errors = client.list_recent_errors(pb.ListRecentErrorsRequest(), headers=headers).errors
        fleet = _replicas(client, headers)
    except ConnectError as exc:
        print(
            f"otlp-gateway: the admin API at {url} said: {exc.code.value}: {exc.message}",
            file=sys.stderr,
        )
        return 1
    verdict = _readiness(url)
    for problem in verdict.get("problems") or []:
        out.write(f"NOT READY: {problem}\n")
    for warning in verdict.get("warnings") or []:
        out.write(f"WARNING: {warning}\n")
    if verdict.get("problems") or verdict.get("warnings"):
        out.write("\n")
    rows = [["BACKEND", "QUEUE", "STATE", "BATCHES", "BYTES", "OLDEST", "EXPORTED", "DROPPED"]]
    for b in backends:
        for q in b.queues or [pb.Queue()]:
            # a tenant's queue shows that tenant's items; the shared one (or none), the backend's
            exported, dropped = (
                (q.exported_items, q.dropped_items)
                if q.tenant
                else (b.exported_items, b.dropped_items)
            )
            rows.append(
                [
                    b.name + (" (service-wide)" if b.service_wide else ""),
                    (q.tenant or "shared") + (" durable" if b.durable else ""),
                    _STATE.get(b.state, "?"),
                    str(q.batches),
                    f"{_size(q.bytes)} / {_size(q.max_bytes)}",
                    f"{q.oldest_age_seconds:.1f}s",
                    str(exported),
                    str(dropped),
                ]
            )
    _table(rows, out)
    for b in backends:
        if b.last_error:
            when = time.strftime("%H:%M:%S", time.localtime(b.last_error_time))
            out.write(f"  {b.name}: last error at {when}: {b.last_error}\n")
    out.write("\n")
    if tenants.open:
        out.write("tenants: none configured (open mode: every request is tenant default)\n")
    else:
        rows = [["TENANT", "KEYS", "OWN BACKENDS", "ACCEPTED ITEMS", "REFUSED REQUESTS"]]
        for t in tenants.tenants:
            rows.append(
                [
                    t.name,
                    str(t.api_keys),
                    ", ".join(t.backends) or "-",
                    str(t.accepted_items),
                    str(t.refused_requests),
                ]
            )
        _table(rows, out)
    out.write(f"\n{len(errors)} recent errors")
    for e in errors[:5]:
        when = time.strftime("%H:%M:%S", time.localtime(e.time))
        who = " ".join(x for x in (e.tenant, e.backend, e.signal) if x)
        out.write(f"\n  {when} {e.kind} {who}: {e.message}")
    out.write("\n")
    if fleet is not None:
        out.write("\n")
        _fleet(fleet, out)
    return 0


def _replicas(
    client: AdminServiceClientSync, headers: dict[str, str]
) -> pb.ListReplicasResponse | None:
    """The fleet; None from a gateway too old to know ListReplicas."""
    try:
        return client.list_replicas(pb.ListReplicasRequest(), headers=headers)
    except ConnectError as exc:
        if exc.code == Code.UNIMPLEMENTED:
            return None
        raise


_REPLICA_STATE = {pb.REPLICA_STATE_LIVE: "live", pb.REPLICA_STATE_STALE: "STALE"}


def _rate(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def _fleet(fleet: pb.ListReplicasResponse, out: TextIO) -> None:
    """One row per replica, then a line for each thing to look at (Redis, drift, stale)."""
    c = fleet.cluster
    if not c.configured:
        out.write("fleet: no cluster configured (this process alone; quotas are its own)\n")
    else:
        live = sum(1 for r in fleet.replicas if r.state == pb.REPLICA_STATE_LIVE)
        stale = len(fleet.replicas) - live
        redis = "Redis up" if c.redis_up else "REDIS DOWN"
        more = f", {fleet.not_listed} more not listed" if fleet.not_listed else ""
        out.write(f"fleet: cluster {c.name!r}, {redis}, {live} live, {stale} stale{more}\n")
    rows = [["REPLICA", "STATE", "VERSION", "CONFIG", "QUEUE", "ACCEPTED/S", "REFUSED/S", "QUOTAS"]]
    for r in fleet.replicas:
        rows.append(
            [
                logs.escape(r.id) + (" (this)" if r.is_self else ""),
                _REPLICA_STATE.get(r.state, "?"),
                logs.escape(r.version) or "-",
                (logs.escape(r.config_digest) or "-") + (" DRIFT" if r.drift else ""),
                _size(r.queue_bytes),
                _rate(r.accepted_per_second),
                _rate(r.refused_per_second),
                logs.escape(r.quota_mode) or "-",
            ]
        )
    _table(rows, out)
    for warning in fleet.warnings:
        out.write(f"WARNING: {logs.escape(warning)}\n")


def format_row(row: pb.AccessRow) -> str:
    seconds, nanos = divmod(row.time_unix_nano, 1_000_000_000)
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1_000_000:03d}Z"
    # every field may hold what a client sent: escaped, so no escape sequence reaches the terminal
    method, route = logs.escape(row.http_method), logs.escape(row.http_route)
    http = " ".join(x for x in (method, route, str(row.http_status or "")) if x)
    service = logs.escape(row.service)
    line = (
        f"{when} {service} {row.kind:<8} {row.status:<5} {row.duration_ms:>9.1f}ms "
        f"{row.span_name!r}"
    )
    if http:
        line += f" [{http}]"
    if row.status_message:
        line += f" {row.status_message!r}"
    return line


def tail(
    url: str,
    key: str | None,
    tenant: str,
    service: str = "",
    out: TextIO = sys.stdout,
    limit: int | None = None,
) -> int:
    """Print the tenant's spans as they arrive (until interrupted, or `limit` rows)."""
    client = _client(url)
    printed = 0
    try:
        stream: Iterable[pb.TailResponse] = client.tail(
            pb.TailRequest(tenant=tenant, service=service), headers=_headers(key)
        )
        for message in stream:
            if message.skipped:
                out.write(
                    f"... {message.skipped} spans skipped (reading too slowly, or not decodable)\n"
                )
            for row in message.rows:
                out.write(format_row(row) + "\n")
                printed += 1
                if limit is not None and printed >= limit:
                    out.flush()
                    return 0
            out.flush()
    except ConnectError as exc:
        print(
            f"otlp-gateway: the admin API at {url} said: {exc.code.value}: {exc.message}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
