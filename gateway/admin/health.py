"""Health: /healthz (alive), /readyz (can take data), and the standard gRPC health service
(grpc.health.v1.Health/Check) so Kubernetes `grpc:` probes and grpc-health-probe work.

The gRPC service is two one-field messages, so it is answered here on the wire rather than
through generated code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from starlette.types import Receive, Scope, Send

from gateway.errors import GrpcCode
from gateway.ingress import limits
from gateway.ingress.grpc import frame, send_grpc, unframe
from gateway.otlp import wire
from gateway.otlp.signals import SIGNALS

GRPC_SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING = 1, 2
# Check answers for the whole gateway ("") and for each OTLP service by name.
KNOWN_SERVICES = frozenset({""} | {s.service for s in SIGNALS})
_CACHE_SECONDS = 1.0  # probes may be frequent; the storage check writes and syncs a file

Problems = Callable[[], Awaitable[list[str]]]


async def _none() -> list[str]:
    return []


class Readiness:
    """The readiness verdict, computed at most once a second: problems (not ready: 503,
    NOT_SERVING) and warnings (ready, but something needs the operator: queue records in
    quarantine). A warning does not make the gateway unready: it takes and delivers data, and
    taking it out of a load balancer would not bring the quarantined data back, only turn one bad
    record into an outage of the replica."""

    def __init__(self, problems: Problems, warnings: Problems = _none) -> None:
        self._problems = problems
        self._warnings = warnings
        self._at = -_CACHE_SECONDS
        self._last: list[str] = []
        self._last_warnings: list[str] = []

    async def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._at >= _CACHE_SECONDS:
            self._last = await self._problems()
            self._last_warnings = await self._warnings()
            self._at = time.monotonic()

    async def problems(self) -> list[str]:
        await self._refresh()
        return self._last

    async def warnings(self) -> list[str]:
        await self._refresh()
        return self._last_warnings


async def _plain(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HealthzEndpoint:
    """Alive: the event loop answers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _plain(send, 200, b"ok\n", b"text/plain; charset=utf-8")


class ReadyzEndpoint:
    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problems = await self._readiness.problems()
        warnings = await self._readiness.warnings()
        verdict: dict[str, object] = {"ready": not problems, "problems": problems}
        if warnings:  # only when there are: the answer of a healthy gateway stays as it was
            verdict["warnings"] = warnings
        body = json.dumps(verdict).encode() + b"\n"
        await _plain(send, 503 if problems else 200, body, b"application/json")


class GrpcHealth:
    """grpc.health.v1.Health: Check answers SERVING or NOT_SERVING; Watch is not offered."""

    path = "/" + GRPC_SERVICE

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if not content_type.startswith(b"application/grpc"):
            await _plain(send, 415, b"gRPC only: content-type application/grpc\n", b"text/plain")
            return
        try:
            body = await limits.read_body(receive, 64 * 1024)
        except (limits.TooLarge, limits.ClientGone, limits.BodyTimeout):
            await send_grpc(
                send, code=GrpcCode.INVALID_ARGUMENT, text="the request is too large or incomplete"
            )
            return
        method = scope["path"].rsplit("/", 1)[-1]
        if method != "Check":
            await send_grpc(
                send,
                code=GrpcCode.UNIMPLEMENTED,
                text=f"{GRPC_SERVICE}/{method} is not offered; use Check",
            )
            return
        service = _service_name(body)
        if service is None:
            await send_grpc(
                send, code=GrpcCode.INVALID_ARGUMENT, text="the body is not a HealthCheckRequest"
            )
            return
        if service not in KNOWN_SERVICES:
            await send_grpc(send, code=GrpcCode.NOT_FOUND, text=f"unknown service {service!r}")
            return
        status = NOT_SERVING if await self._readiness.problems() else SERVING
        await send_grpc(send, frame(bytes([0x08, status])))  # field 1 (status), varint


def _service_name(body: bytes) -> str | None:
    """HealthCheckRequest.service from one uncompressed gRPC frame; None when malformed."""
    try:
        flag, message = unframe(body)
    except ValueError:
        return None
    if flag != 0:
        return None
    pos, end, service = 0, len(message), ""
    try:
        while pos < end:
            key, pos = wire.read_varint(message, pos, end)
            field, wtype = key >> 3, key & 7
            if wtype == 2:
                size, pos = wire.read_varint(message, pos, end)
                if pos + size > end:
                    return None
                if field == 1:
                    service = message[pos : pos + size].decode("utf-8")
                pos += size
            else:
                pos = wire.skip_scalar(message, pos, end, wtype)
    except (wire.WireError, UnicodeDecodeError):
        return None
    return service
