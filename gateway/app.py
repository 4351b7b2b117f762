"""Wires the layers together: ingress (OTLP/HTTP, gRPC, gRPC-web, Connect) -> auth -> pipeline ->
exporters. The only module that knows all of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route

from .config import DEFAULT_TENANT, GatewayConfig
from .http_ingress import OTLPHTTPEndpoint
from .intake import Intake
from .limits import InFlight
from .pipeline import Pipeline
from .reload import Reloader
from .rpc_ingress import RPCService
from .signals import SIGNALS
from .tenants import Directory

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


def create_app(config: GatewayConfig) -> Starlette:
    pipeline = Pipeline(config.backends, config.retry)
    intake = Intake(Directory(config), pipeline)
    reloader = Reloader(config, intake, pipeline)

    inflight = InFlight(config.limits.max_inflight_bytes)  # one budget for every transport
    routes: list[BaseRoute] = []
    for signal in SIGNALS:
        endpoint = OTLPHTTPEndpoint(signal, intake, config.limits, inflight)
        routes.append(Route(signal.http_path, endpoint))
        rpc = RPCService(signal, intake, config.limits, inflight)
        routes.append(Mount(rpc.path, app=rpc))

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
        await pipeline.start()
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
        try:
            yield
        finally:
            # The server has stopped taking connections and finished in-flight requests.
            watcher.cancel()
            await pipeline.shutdown(reloader.config.shutdown_timeout)

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.pipeline = pipeline
    app.state.reloader = reloader
    return app
