"""Wires the layers together: ingress (OTLP/HTTP, gRPC, gRPC-web, Connect) -> auth -> pipeline ->
exporters. The only module that knows all of them."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route

from .auth import OpenAuth
from .config import GatewayConfig
from .exporters import create_exporter
from .http_ingress import OTLPHTTPEndpoint
from .intake import Intake
from .pipeline import Destination, Pipeline
from .rpc_ingress import RPCService
from .signals import SIGNALS

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


def build_pipeline(config: GatewayConfig) -> Pipeline:
    destinations = {
        name: Destination(
            name,
            functools.partial(create_exporter, backend),
            max_bytes=backend.queue_max_bytes,
            concurrency=backend.concurrency,
            retry=config.retry,
        )
        for name, backend in config.backends.items()
    }
    return Pipeline(destinations, config.service_backends)


def create_app(config: GatewayConfig) -> Starlette:
    pipeline = build_pipeline(config)
    intake = Intake(OpenAuth(), pipeline)

    routes: list[BaseRoute] = []
    for signal in SIGNALS:
        routes.append(Route(signal.http_path, OTLPHTTPEndpoint(signal, intake, config.limits)))
        rpc = RPCService(signal, intake, config.limits)
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
        log.info(
            "forwarding to %s",
            ", ".join(config.service_backends) or "no backends (data is dropped)",
        )
        try:
            yield
        finally:
            # The server has stopped taking connections and finished in-flight requests.
            await pipeline.shutdown(config.shutdown_timeout)

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.pipeline = pipeline
    return app
