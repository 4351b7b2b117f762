"""The answer to a request for a path that is no endpoint (`/v1/trace`, `/` from a signal endpoint
set without its path, a status page asked for on the OTLP port): a 404 that lists the paths that
exist, in the request's own terms (JSON, gRPC UNIMPLEMENTED, else plain text), and a log line,
throttled per path. Installed as the OTLP app's Starlette handler of 404, so the router's own
matching (a trailing slash redirected) is unchanged.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.errors import GrpcCode
from gateway.ingress.grpc import send_grpc
from gateway.ingress.guard import LOG_INTERVAL, LogThrottle
from gateway.otlp.signals import SIGNALS
from gateway.telemetry.logs import escape

log = logging.getLogger("otlp_gateway.ingress")

HTTP_PATHS = tuple(s.http_path for s in SIGNALS)
GRPC_PATHS = tuple(s.rpc_path for s in SIGNALS)
ENDPOINTS = (
    f"OTLP/HTTP exports are POST {', '.join(HTTP_PATHS)} (OTEL_EXPORTER_OTLP_ENDPOINT is the base "
    "URL, the SDK appends the path; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and the other per-signal "
    f"variables are the full URL, with it); OTLP/gRPC calls {', '.join(GRPC_PATHS)}; the status "
    "page and /metrics are on the admin listener's port (admin.listen, 9464 by default)"
)
ADMIN_PATHS = ("/metrics", "/healthz", "/readyz")  # the admin listener's, and GET /
_SHOWN = 100  # characters of a path echoed in an answer or a log line
_PATHS_LOGGED = 100  # distinct paths logged on their own per interval; beyond, as one
_OTHER = "(other paths)"


_GRPC_METHOD = re.compile(r"/[A-Za-z_][\w.]*\.[A-Za-z_]\w*/[A-Za-z_]\w*")


def _hint(method: str, path: str) -> str:
    if path in ADMIN_PATHS or (path == "/" and method in ("GET", "HEAD")):
        return " (that is on the admin listener's port)"
    if path == "/":  # a per-signal endpoint variable without its path
        return " (a per-signal endpoint variable is the full URL: add /v1/traces or the like)"
    for known in HTTP_PATHS:
        if path.endswith(known):  # an endpoint variable with the path, the SDK appending it again
            return f" (did you mean {known}? OTEL_EXPORTER_OTLP_ENDPOINT is the base URL)"
    if len(path) <= _SHOWN:  # difflib's cost grows with the product of the lengths
        near = difflib.get_close_matches(path, HTTP_PATHS + GRPC_PATHS, n=1, cutoff=0.8)
        if near:
            return f" (did you mean {near[0]}?)"
    return ""


def message(method: str, path: str) -> str:
    """What a request for `path` is told: that it is no endpoint, the nearest one, and them all."""
    shown = escape(path[:_SHOWN]) + ("..." if len(path) > _SHOWN else "")
    return f"{method} {shown} is not an endpoint of this gateway{_hint(method, path)}. {ENDPOINTS}"


class _GrpcUnimplemented(Response):
    """gRPC's answer, with the status in trailers (a body-less response ends with an empty DATA
    frame, which gRPC clients refuse after trailers-only headers)."""

    def __init__(self, text: str) -> None:
        super().__init__(status_code=200)
        self.text = text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_grpc(send, code=int(GrpcCode.UNIMPLEMENTED), text=self.text)


def _left_out(path: str, count: int, interval: float) -> None:
    log.info(
        "answered %d more requests for %s with 404 in the last %.0fs",
        count,
        path,
        interval,
        extra={"fields": {"event": "not_found", "path": path, "suppressed": count}},
    )


class NotFound:
    """The OTLP app's 404 handler (`exception_handlers={404: NotFound().handle}`)."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._interval = interval
        # LogThrottle keeps a key until its interval ends, and paths are the client's to choose:
        # a fresh throttle per interval, and at most _PATHS_LOGGED keys in one, bound it.
        self._throttle = LogThrottle[str](_left_out, interval, burst=1)
        self._since = time.monotonic()
        self._paths: set[str] = set()

    async def handle(self, request: Request, exc: Exception) -> Response:
        scope = request.scope
        method: str = escape(scope.get("method", "GET")[:16])
        path: str = scope.get("path", "/")
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        text = message(method, path)
        self._log(method, path, content_type, scope)
        # gRPC's own answer only for a gRPC method's path (/package.Service/Method); a gRPC
        # content type on any other path is no gRPC call, and a 200 would read as accepted
        if content_type.startswith("application/grpc") and _GRPC_METHOD.fullmatch(path):
            if not content_type.startswith("application/grpc-web") and (
                "http.response.trailers" in scope.get("extensions", {})
            ):
                return _GrpcUnimplemented(text)
            # gRPC-web, or gRPC where trailers cannot be sent: the status in the headers
            return Response(
                status_code=200,
                media_type=content_type,
                headers={
                    "grpc-status": str(int(GrpcCode.UNIMPLEMENTED)),
                    "grpc-message": quote(text, safe=" "),
                },
            )
        if content_type == "application/json":
            if "connect-protocol-version" in request.headers:  # Connect's error shape
                return JSONResponse({"code": "unimplemented", "message": text}, 404)
            return JSONResponse({"code": int(GrpcCode.UNIMPLEMENTED), "message": text}, 404)
        return PlainTextResponse(text + "\n", 404)

    def _log(self, method: str, path: str, content_type: str, scope: Scope) -> None:
        now = time.monotonic()
        if now - self._since >= self._interval:
            self._throttle = LogThrottle[str](_left_out, self._interval, burst=1)
            self._since = now
            self._paths.clear()
        key = path[:_SHOWN]
        if key not in self._paths:
            if len(self._paths) < _PATHS_LOGGED:
                self._paths.add(key)
            else:
                key = _OTHER
        if not self._throttle.admit(key):
            return
        client = scope.get("client")
        peer = client[0] if client else ""
        log.info(
            "answered %s %s with 404: no such endpoint (a client's exporter points at a wrong "
            "URL; OTLP/HTTP paths are %s)",
            method,
            key,
            ", ".join(HTTP_PATHS),
            extra={
                "fields": {
                    "event": "not_found",
                    "method": method,
                    "path": key,
                    "content_type": content_type[:_SHOWN],
                    "peer": peer,
                }
            },
        )
