"""The admin listener: /metrics, /healthz, /readyz and the gRPC health service (no key), the
admin API (otlp_gateway.admin.v1.AdminService, Connect / gRPC / gRPC-web) and the status page
(admin key). It reads what the other layers expose; it changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.rpc import error_details_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway._gen.otlp_gateway.admin.v1 import admin_pb2 as pb
from gateway._gen.otlp_gateway.admin.v1.admin_connect import AdminServiceASGIApplication
from gateway.admin.health import GrpcHealth, HealthzEndpoint, Readiness, ReadyzEndpoint
from gateway.admin.history import History, gateway_readings, interval_from_env, sum_by
from gateway.analysis.tail import TailHub
from gateway.cluster.fleet import LIVE, Fleet, FleetView, Replica, config_digest
from gateway.cluster.link import replica_id
from gateway.config import KEY_PREFIX, GatewayConfig
from gateway.delivery.pipeline import Pipeline
from gateway.ingress.guard import FailureLimiter, retry_after
from gateway.ingress.intake import Intake
from gateway.otlp import spans
from gateway.telemetry import metrics
from gateway.telemetry.periodic import Periodic
from gateway.telemetry.recent import RecentErrors
from gateway.tenancy import keys

STATIC = Path(__file__).parent / "static"
ROWS_PER_MESSAGE = 500

NO_ADMIN_KEY = (
    "the admin API is off: set admin.api_key in the config (for example "
    'api_key: "${ADMIN_KEY}") and reload'
)
WRONG_ADMIN_KEY = "missing or wrong admin key: send `authorization: Bearer <admin key>`"


def _admin_digest(configured: str) -> bytes:
    if configured.startswith(KEY_PREFIX):
        return bytes.fromhex(configured.removeprefix(KEY_PREFIX))
    return hashlib.sha256(configured.encode()).digest()


def _peer_address(client: str | None) -> str:
    """The client's address without its port ("10.0.0.7:51234" -> "10.0.0.7")."""
    if not client:
        return ""
    host = client.rpartition(":")[0] or client
    return host.strip("[]")


def _locked_out(seconds: int) -> ConnectError:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromTimedelta(timedelta(seconds=seconds))
    return ConnectError(
        Code.RESOURCE_EXHAUSTED,
        f"too many wrong admin keys from this address; retry after {seconds}s "
        "(the wait grows with every further wrong key)",
        details=[info],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why an admin call was refused; `retry_after` (seconds) when the peer is locked out."""

    error: ConnectError
    retry_after: int | None = None


# The same refusals on the plain HTTP endpoints (GET /api/history), with Connect's JSON error body.
_HTTP_STATUS = {
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
}


class AdminAPI:
    """otlp_gateway.admin.v1.AdminService."""

    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        intake: Intake,
        pipeline: Pipeline,
        tail: TailHub,
        recent: RecentErrors,
        *,
        fleet: Fleet | None = None,
    ) -> None:
        self._config = config  # the config in use (it changes on reload)
        self._recent = recent
        self._intake = intake
        self._pipeline = pipeline
        self._tail = tail
        self._failures = FailureLimiter()
        self.history = History(gateway_readings(intake, pipeline), interval_from_env())
        self.fleet = fleet  # None without a `cluster` section: this process is the whole fleet
        self._self_id = fleet.self_id if fleet is not None else replica_id()
        self._started = time.time()
        # a light read of the fleet every heartbeat interval, so the fleet gauges on /metrics
        # stay current with no status page open; run on the event loop with the app's other
        # periodic tasks (the admin listener has no lifespan of its own to start it in)
        self.periodic: list[Periodic] = []
        if fleet is not None:
            self.periodic.append(Periodic("fleet-view", self._read_fleet, every=fleet.interval))

    async def _read_fleet(self, final: bool) -> None:
        if self.fleet is not None and not final:
            await self.fleet.replicas()

    def start(self) -> None:
        """Keep the charts' history from now on, if the admin listener (its only reader) is on."""
        if self._config().admin.listen is not None:
            self.history.start()

    async def history_endpoint(self, request: Request) -> Response:
        """GET /api/history: the charts' points (gateway/admin/history.py), as JSON."""
        client = request.client
        peer = f"{client.host}:{client.port}" if client else None
        refusal = self.check_key(request.headers.get, peer)
        if refusal is not None:
            e = refusal.error
            return JSONResponse(
                {"code": e.code.value, "message": e.message},
                status_code=_HTTP_STATUS.get(e.code, 403),
                headers={
                    "cache-control": "no-store",
                    **({"retry-after": str(refusal.retry_after)} if refusal.retry_after else {}),
                },
            )
        return JSONResponse(self.history.snapshot(), headers={"cache-control": "no-store"})

    def check_key(self, headers: Callable[[str], str | None], client: str | None) -> Refusal | None:
        """None when `headers` carry the admin key; else why not. `client` is the peer's
        "address:port": its address has one budget of wrong keys for every admin call."""
        configured = self._config().admin.api_key
        if not configured:
            return Refusal(ConnectError(Code.PERMISSION_DENIED, NO_ADMIN_KEY))
        # Guessing the key: after a few failures a peer waits, longer after each further one,
        # and its attempts meanwhile are not checked (a right key too, until the wait is over).
        peer = _peer_address(client)
        wait = self._failures.wait(peer)
        if wait > 0:
            metrics.ADMIN_AUTH_FAILURES.labels("locked_out").inc()
            seconds = retry_after(wait)
            return Refusal(_locked_out(seconds), seconds)
        _, key = keys.credentials({k: headers(k) or "" for k in ("authorization", "x-api-key")})
        presented = hashlib.sha256((key or "").encode()).digest()
        if key is None or not hmac.compare_digest(presented, _admin_digest(configured)):
            metrics.ADMIN_AUTH_FAILURES.labels("unauthenticated").inc()
            self._failures.failed(peer)
            return Refusal(ConnectError(Code.UNAUTHENTICATED, WRONG_ADMIN_KEY))
        self._failures.succeeded(peer)
        return None

    def _authorize(self, ctx: RequestContext[Any, Any]) -> None:
        refusal = self.check_key(ctx.request_headers().get, ctx.client_address())
        if refusal is not None:
            if refusal.retry_after is not None:
                ctx.response_headers()["retry-after"] = str(refusal.retry_after)
            raise refusal.error

    async def list_tenants(
        self, request: pb.ListTenantsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListTenantsResponse:
        self._authorize(ctx)
        registry = self._intake.registry
        accepted = sum_by(metrics.ACCEPTED_ITEMS, "tenant")
        refused = {
            tenant: total for tenant, total in sum_by(metrics.REQUESTS, "tenant").items() if tenant
        }
        accepted_requests = sum_by(metrics.REQUESTS, "tenant", outcome="accepted")
        out = pb.ListTenantsResponse(open=registry.open)
        for name, tenant in registry.tenants.items():
            c = tenant.config
            routes = {b for s in tenant.signals for b in tenant.routes[s]}
            own = sorted(routes - set(self._config().service_backends))
            out.tenants.append(
                pb.Tenant(
                    name=name,
                    api_keys=len(c.api_keys),
                    backends=own,
                    resource_attributes=dict(c.attributes),
                    red_metrics=tenant.red is not None,
                    drop_rules=len(c.drop),
                    quota_items_per_second=c.quota.items_per_second or 0.0,
                    quota_bytes_per_second=c.quota.bytes_per_second or 0.0,
                    accepted_items=int(accepted.get(name, 0)),
                    refused_requests=int(refused.get(name, 0) - accepted_requests.get(name, 0)),
                )
            )
        return out

    async def list_backends(
        self, request: pb.ListBackendsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListBackendsResponse:
        self._authorize(ctx)
        config = self._config()
        exported = sum_by(metrics.EXPORTED_ITEMS, "backend")
        dropped = sum_by(metrics.DROPPED_ITEMS, "backend")
        readings = self._pipeline.queue_readings()
        destinations = list(self._pipeline.destinations.values())
        out = pb.ListBackendsResponse()
        for name, b in self._pipeline.backends.items():
            mine = [d for d in destinations if d.config.name == name]
            failing = [d for d in mine if d.last_error_time]
            latest = max(failing, key=lambda d: d.last_error_time, default=None)
            backend = pb.Backend(
                name=name,
                protocol=b.protocol,
                endpoint=b.path if b.protocol == "file" else b.endpoint,
                service_wide=name in config.service_backends,
                state=(
                    pb.BACKEND_STATE_RETRYING
                    if any(d.retrying for d in mine)
                    else pb.BACKEND_STATE_UP
                ),
                last_error=latest.last_error or "" if latest is not None else "",
                last_error_time=latest.last_error_time if latest is not None else 0.0,
                durable=b.queue.durable,
                exported_items=int(exported.get(name, 0)),
                dropped_items=int(dropped.get(name, 0)),
            )
            # a per-tenant queue's items are that tenant's; the shared queue's, every tenant's
            exported_by = sum_by(metrics.EXPORTED_ITEMS, "tenant", backend=name)
            dropped_by = sum_by(metrics.DROPPED_ITEMS, "tenant", backend=name)
            for r in readings:
                if r.backend == name:
                    backend.queues.append(
                        pb.Queue(
                            tenant=r.tenant,
                            batches=r.batches,
                            bytes=r.bytes,
                            max_bytes=r.max_bytes,
                            oldest_age_seconds=r.oldest_age,
                            exported_items=int(
                                exported_by.get(r.tenant, 0) if r.tenant else backend.exported_items
                            ),
                            dropped_items=int(
                                dropped_by.get(r.tenant, 0) if r.tenant else backend.dropped_items
                            ),
                        )
                    )
            out.backends.append(backend)
        return out

    async def list_recent_errors(
        self, request: pb.ListRecentErrorsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListRecentErrorsResponse:
        self._authorize(ctx)
        return pb.ListRecentErrorsResponse(
            errors=[
                pb.RecentError(
                    time=e.time,
                    kind=e.kind,
                    tenant=e.tenant,
                    backend=e.backend,
                    signal=e.signal,
                    message=e.message,
                )
                for e in self._recent.newest_first()
            ]
        )

    async def list_replicas(
        self, request: pb.ListReplicasRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListReplicasResponse:
        self._authorize(ctx)
        config = self._config()
        if self.fleet is None:
            me = self._this_replica(config, "local")
            return pb.ListReplicasResponse(
                cluster=pb.Cluster(configured=False, redis_up=False),
                replicas=[_replica_pb(me)],
                fleet_config_digest=me.config_digest,
            )
        view = await self.fleet.replicas()
        replicas = list(view.replicas)
        if not any(r.is_self for r in replicas):
            # Redis is down, or this replica has not written its first heartbeat yet: it is
            # known here all the same
            me = self._this_replica(config, view.quota_mode)
            drift = bool(view.fleet_digest) and me.config_digest != view.fleet_digest
            replicas.insert(0, dataclasses.replace(me, drift=drift))
        return pb.ListReplicasResponse(
            cluster=_cluster_pb(view),
            replicas=[_replica_pb(r) for r in replicas],
            fleet_config_digest=view.fleet_digest,
            not_listed=view.not_listed,
            warnings=view.warnings(),
        )

    def _this_replica(self, config: GatewayConfig, quota_mode: str) -> Replica:
        """This process's row, from what it knows itself (its rates: the charts' last point)."""
        history = self.history.snapshot()
        return Replica(
            id=self._self_id,
            listen=",".join(config.listen),
            admin=config.admin.listen or "",
            version=__version__,
            config_digest=config_digest(config),
            started=self._started,
            seen=time.time(),
            queue_bytes=sum(r.bytes for r in self._pipeline.queue_readings()),
            accepted_per_second=_latest(history["tenants"], "accepted_items"),
            refused_per_second=_latest(history["tenants"], "refused_requests"),
            quota_mode=quota_mode,
            state=LIVE,
            is_self=True,
        )

    async def tail(
        self, request: pb.TailRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.TailResponse]:
        self._authorize(ctx)
        tenants = self._intake.registry.tenants
        if request.tenant not in tenants:
            raise ConnectError(
                Code.NOT_FOUND,
                f"no tenant {request.tenant!r}; tenants: {', '.join(tenants) or 'none'}",
            )
        with self._tail.watch(request.tenant, request.service) as watcher:
            # An empty first message sends the response headers at once: the caller knows it is
            # watching (connect-python sends headers with the first message, not before).
            yield pb.TailResponse()
            async for rows, skipped in watcher.rows():
                shown = []
                for r in rows:
                    try:
                        shown.append(_row(request.tenant, r))
                    except (ValueError, TypeError):  # a value the row cannot hold: skip the row
                        skipped += 1
                for start in range(0, max(1, len(shown)), ROWS_PER_MESSAGE):
                    yield pb.TailResponse(
                        rows=shown[start : start + ROWS_PER_MESSAGE],
                        skipped=skipped if start == 0 else 0,
                    )


_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(spans.AccessRow))  # AccessRow's, but tenant


def _row(tenant: str, row: spans.AccessRow) -> pb.AccessRow:
    return pb.AccessRow(tenant=tenant, **{name: getattr(row, name) for name in _ROW_FIELDS})


_REPLICA_STATE = {LIVE: pb.REPLICA_STATE_LIVE}


def _replica_pb(r: Replica) -> pb.Replica:
    return pb.Replica(
        id=r.id,
        listen=r.listen,
        admin=r.admin,
        version=r.version,
        config_digest=r.config_digest,
        started=r.started,
        seen=r.seen,
        queue_bytes=r.queue_bytes,
        accepted_per_second=r.accepted_per_second,
        refused_per_second=r.refused_per_second,
        quota_mode=r.quota_mode,
        state=_REPLICA_STATE.get(r.state, pb.REPLICA_STATE_STALE),
        is_self=r.is_self,
        drift=r.drift,
    )


def _cluster_pb(view: FleetView) -> pb.Cluster:
    return pb.Cluster(
        configured=True,
        name=view.name,
        redis_up=view.redis_up,
        redis_down_since=view.redis_down_since or 0.0,
        last_error=view.last_error,
        heartbeat_interval_seconds=view.heartbeat_interval,
    )


def _latest(group: dict[str, dict[str, list[float | None]]], series: str) -> float:
    """The sum over a chart group's names of each one's last point of `series`."""
    total = 0.0
    for values in group.values():
        points = values.get(series) or []
        total += next((v for v in reversed(points) if v is not None), 0.0)
    return total


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _status_page(request: Request) -> Response:
    return FileResponse(STATIC / "status.html", headers={"cache-control": "no-store"})


class _Forward:
    """Mount target that hands the request on unchanged (connect-python routes by full path)."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def admin_app(api: AdminAPI, readiness: Readiness) -> Starlette:
    service = AdminServiceASGIApplication(api, read_max_bytes=64 * 1024)
    api.start()
    grpc_health = GrpcHealth(readiness)
    routes = [
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/healthz", HealthzEndpoint(), methods=["GET", "HEAD"]),
        Route("/readyz", ReadyzEndpoint(readiness), methods=["GET", "HEAD"]),
        Route("/", _status_page, methods=["GET"]),
        Route("/api/history", api.history_endpoint, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC, check_dir=False)),
        Mount(service.path, app=_Forward(service)),
        Mount(grpc_health.path, app=grpc_health),
    ]
    return Starlette(routes=routes)
