"""Wires the layers together: ingress (OTLP/HTTP, gRPC, gRPC-web, Connect) -> auth -> pipeline ->
exporters, and the admin listener that watches them. The only module that knows all of them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable

from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.admin.app import AdminAPI, admin_app
from gateway.admin.health import GrpcHealth, Readiness
from gateway.analysis.background import span_analysis
from gateway.analysis.red_export import RedExport
from gateway.analysis.tail import TailHub
from gateway.cluster.fleet import Fleet, config_digest
from gateway.cluster.link import ClusterLink, replica_id
from gateway.cluster.quota import LOCAL, QuotaLeases
from gateway.cluster.registry import ReplicaRegistry
from gateway.config import DEFAULT_TENANT, GatewayConfig, Runtime
from gateway.delivery.batch import Batch
from gateway.delivery.pipeline import Pipeline
from gateway.ingress.connect import RPCService
from gateway.ingress.early import EarlyRefusal
from gateway.ingress.grpc import GrpcExport, is_grpc_proto
from gateway.ingress.guard import Lane, RefuseEarly
from gateway.ingress.http import OTLPHTTPEndpoint
from gateway.ingress.intake import Intake
from gateway.ingress.lane import OTLPLane
from gateway.ingress.limits import InFlight
from gateway.ingress.notfound import NotFound
from gateway.otlp import offload
from gateway.otlp.signals import METRICS, SIGNALS
from gateway.otlp.validate import Validation
from gateway.reload import Reloader
from gateway.telemetry import metrics
from gateway.telemetry.periodic import Periodic
from gateway.telemetry.recent import RecentErrors
from gateway.telemetry.self_telemetry import SelfTelemetry
from gateway.tenancy.tenants import TenantRegistry

log = logging.getLogger("otlp_gateway")

# Headers browsers may send and read on Connect and gRPC-web calls.
_CORS_ALLOW = (
    "content-type",
    "authorization",
    "x-api-key",
    "connect-protocol-version",
    "connect-timeout-ms",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
    "content-encoding",
    "accept-encoding",
)
_CORS_EXPOSE = ("grpc-status", "grpc-message", "grpc-status-details-bin", "retry-after")


class GatewayApp:
    """The ASGI app every listener serves: requests that arrive on the admin listener's port go
    to the admin app, all others (and the lifespan) to the OTLP app."""

    def __init__(
        self,
        main: Starlette,
        admin: Starlette,
        admin_port: int | None,
        tail: TailHub,
    ) -> None:
        self.main = main
        self.admin = admin
        self.admin_port = admin_port
        self.tail = tail
        self.refuse_early: RefuseEarly | None = None
        self.lane: Lane | None = None
        # OTLP/HTTP paths served without Starlette's middleware and router (their layers were
        # ~5% of a small request); empty when a middleware (CORS) must see every request
        self.direct: dict[str, ASGIApp] = {}
        self.grpc_direct: dict[str, ASGIApp] = {}  # gRPC Export paths: the same for gRPC calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and self.admin_port is not None:
            server = scope.get("server")
            if server is not None and server[1] == self.admin_port:
                await self.admin(scope, receive, send)
                return
        if scope["type"] == "http":
            endpoint = self.direct.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
            export = self.grpc_direct.get(scope["path"])
            if export is not None and is_grpc_proto(scope):
                await export(scope, receive, send)
                return
        await self.main(scope, receive, send)

    def stopping(self) -> None:
        """Called when the server is told to stop, before it waits for open requests: ends the
        streams that would otherwise hold the shutdown up (live tails)."""
        self.tail.close()


def create_app(config: GatewayConfig, runtime: Runtime) -> GatewayApp:
    # What the layers share is made here and handed to them: the recent-errors ring, and the
    # thread that decodes spans for RED metrics and the tail.
    recent = RecentErrors()
    analysis = span_analysis()
    pipeline = Pipeline(config.backends, config.retry, runtime.worker, recent)
    tail = TailHub(analysis)
    validation = Validation(config.validate)
    # a backend refusing a tenant's data as invalid makes its next requests validated in full
    pipeline.on_invalid = validation.suspect
    # With `cluster`: the link to the fleet's Redis, quotas leased from it, and the heartbeat.
    # A change of the section takes effect at restart (reload.py says so).
    link: ClusterLink | None = None
    leases: QuotaLeases | None = None
    registry: ReplicaRegistry | None = None
    if config.cluster is not None:
        link = ClusterLink(config.cluster, replica_id(runtime.worker))
        leases = QuotaLeases(link, lambda: registry.live_replicas if registry else 1)
    intake = Intake(TenantRegistry(config, leases=leases), pipeline, tail, validation, recent)
    reloader = Reloader(config, intake, pipeline, runtime, recent)
    if link is not None and leases is not None:
        registry = _replica_registry(
            link, leases, config, runtime, lambda: reloader.config, pipeline
        )

    # Metrics the gateway makes (tenants' RED metrics, its own) go through the pipeline as
    # batches of metrics, like any accepted request.
    async def submit_metrics(tenant: str, payload: bytes, items: int, to: tuple[str, ...]) -> None:
        await pipeline.submit(Batch(METRICS, payload, items, tenant), to)

    red_export = RedExport(lambda: intake.registry.tenants.values(), submit_metrics)
    own = SelfTelemetry(lambda: reloader.config.self_telemetry, submit_metrics, runtime.worker)
    exports = [Periodic("red-export", red_export.tick), Periodic("self-telemetry", own.tick)]
    readiness = Readiness(pipeline.problems, pipeline.warnings)
    metrics.set_build_info(__version__, config.server)

    # one budget for every transport, with a share per tenant and a pause limit per body
    limits = config.limits
    inflight = InFlight(limits.max_inflight_bytes, limits.inflight_share, limits.body_timeout)
    routes: list[BaseRoute] = []
    direct: dict[str, ASGIApp] = {}
    grpc_direct: dict[str, ASGIApp] = {}
    lane_http: dict[str, OTLPHTTPEndpoint] = {}
    lane_grpc: dict[str, GrpcExport] = {}
    for signal in SIGNALS:
        endpoint = OTLPHTTPEndpoint(signal, intake, config.limits, inflight)
        routes.append(Route(signal.http_path, endpoint))
        direct[signal.http_path] = lane_http[signal.http_path] = endpoint
        rpc = RPCService(signal, intake, config.limits, inflight)
        routes.append(Mount(rpc.path, app=rpc))
        grpc_direct[rpc.path + "/Export"] = lane_grpc[rpc.path + "/Export"] = rpc.grpc
    grpc_health = GrpcHealth(readiness)  # on every listener, for gRPC probes on the OTLP port
    routes.append(Mount(grpc_health.path, app=grpc_health))

    middleware = []
    if config.cors.allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors.allowed_origins),
                allow_methods=["POST", "OPTIONS"],
                allow_headers=list(_CORS_ALLOW + config.cors.allowed_headers),
                expose_headers=list(_CORS_EXPOSE),
                max_age=7200,
            )
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        unbind_metrics = metrics.bind_app(pipeline.queue_readings, lambda: inflight.bytes)
        await pipeline.start()
        # What loading made (modules, protobuf descriptors, config) lives as long as the process.
        # Frozen, it is left out of full collections, which otherwise stop the event loop for
        # 20-35 ms each under load (the p99 at half load).
        gc.collect()
        gc.freeze()
        metrics.CONFIG_LOADED.set(time.time())
        log.info("forwarding to %s", ", ".join(config.service_backends) or "no service backends")
        if config.tenants is None:
            log.warning(
                "no tenants configured: the gateway runs open, every request is accepted "
                "without a key as tenant %r",
                DEFAULT_TENANT,
            )
        else:
            log.info("%d tenants: %s", len(config.tenants), ", ".join(config.tenants))
        watcher = asyncio.get_running_loop().create_task(reloader.watch())
        for export in exports:
            export.start()
        unbind_cluster: Callable[[], None] | None = None
        if link is not None and leases is not None and registry is not None:
            # the first heartbeat and leases before the first request (bounded by the timeout)
            await asyncio.gather(registry.start(), leases.start())
            unbind_cluster = metrics.bind_cluster(
                lambda: metrics.ClusterReading(
                    link.up, leases.mode == LOCAL, registry.live_replicas
                )
            )
        try:
            yield
        finally:
            # The server has stopped taking connections and finished in-flight requests.
            watcher.cancel()
            for export in exports:  # a last export each, which the pipeline then drains
                await export.stop()
            await pipeline.shutdown(reloader.config.shutdown_timeout)
            if link is not None and leases is not None and registry is not None:
                await leases.stop()
                await registry.stop()  # leaves the fleet: its record is deleted
                await link.close()
            if unbind_cluster is not None:
                unbind_cluster()
            analysis.close()
            offload.shutdown()
            unbind_metrics()

    main = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={404: NotFound().handle},  # a wrong path: what the right ones are
    )
    fleet = None
    if link is not None:  # the one link of this replica (made above with the shared quotas)
        fleet = Fleet(link, link.replica, link.config.heartbeat_interval)
    api = AdminAPI(lambda: reloader.config, intake, pipeline, tail, recent, fleet=fleet)
    exports.extend(api.periodic)  # the fleet gauges' light read, on the loop with the exports
    admin = admin_app(api, readiness)
    port = admin_port(config, runtime.worker)
    gateway = GatewayApp(main, admin, port, tail)
    if not middleware:
        gateway.direct, gateway.grpc_direct = direct, grpc_direct
        # small exports are taken whole by the server's protocol, without an ASGI task
        gateway.lane = OTLPLane(lane_http, lane_grpc, port)
    # for the HTTP/2 server: refuses keyless OTLP streams before they cost an app task
    gateway.refuse_early = EarlyRefusal(intake, port)
    return gateway


def _replica_registry(
    link: ClusterLink,
    leases: QuotaLeases,
    config: GatewayConfig,
    runtime: Runtime,
    current: Callable[[], GatewayConfig],
    pipeline: Pipeline,
) -> ReplicaRegistry:
    """The heartbeat, reading what it reports from the layers above it."""
    port = admin_port(config, runtime.worker)
    admin = "" if config.admin.listen is None else config.admin.listen.rpartition(":")[0]
    digests: dict[int, str] = {}  # per config object: a reload makes a new one

    def digest() -> str:
        cfg = current()
        if id(cfg) not in digests:
            digests.clear()
            digests[id(cfg)] = config_digest(cfg)
        return digests[id(cfg)]

    return ReplicaRegistry(
        link,
        listen=config.listen,
        admin="" if port is None else f"{admin}:{port}",
        digest=digest,
        queue_bytes=lambda: sum(r.bytes for r in pipeline.queue_readings()),
        accepted_items=lambda: _total(metrics.ACCEPTED_ITEMS),
        refused_requests=lambda: _total(metrics.REQUESTS, lambda s: s != "accepted"),
        quota_mode=lambda: leases.mode,
    )


def _total(counter: Counter, outcome: Callable[[str], bool] | None = None) -> float:
    """A counter's sum over its labels (those whose `outcome` label passes the test)."""
    return sum(
        s.value
        for family in counter.collect()
        for s in family.samples
        if s.name.endswith("_total") and (outcome is None or outcome(s.labels.get("outcome", "")))
    )


def admin_port(config: GatewayConfig, worker: int | None) -> int | None:
    """Worker i of several serves its admin listener on the configured port + i."""
    port = config.admin.port
    return None if port is None else port + (worker or 0)
