"""The seam between the protocol front ends and the pipeline: what every transport calls, first
with the request's headers (before the body is read), then with the validated body, and with
every refusal. Intake counts and logs what comes in, so every transport is counted alike."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from prometheus_client import Counter

from . import limits, metrics, recent, wire
from .batch import Batch
from .errors import GatewayError, InvalidRequest, Throttled
from .pipeline import Pipeline
from .signals import TRACES, Signal
from .tail import TailHub
from .tenants import Directory, Tenant

log = logging.getLogger("otlp_gateway.intake")

_AUTH = frozenset({"unauthenticated", "permission_denied"})


def text_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """An ASGI scope's headers as text (names are lower case already)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}


def count_items(signal: Signal, data: bytes, what: str = "body") -> int:
    """The items of a request, validating its wire format on the way; InvalidRequest when
    `what` (the body, the message) is not the signal's Export request."""
    try:
        return wire.count_items(signal, data)
    except wire.WireError as exc:
        raise InvalidRequest(
            f"the {what} is not a valid protobuf {signal.request_type.__name__} ({exc})"
        ) from None


class _Counts:
    """The counters of one (tenant, signal, transport), looked up once, not per request."""

    __slots__ = ("accepted", "accepted_bytes", "accepted_items", "received_bytes", "received_items")

    def __init__(self, tenant: str, signal: str, transport: str) -> None:
        labels = (tenant, signal, transport)
        self.received_items: Counter = metrics.RECEIVED_ITEMS.labels(*labels)
        self.received_bytes: Counter = metrics.RECEIVED_BYTES.labels(*labels)
        self.accepted_items: Counter = metrics.ACCEPTED_ITEMS.labels(*labels)
        self.accepted_bytes: Counter = metrics.ACCEPTED_BYTES.labels(*labels)
        self.accepted: Counter = metrics.REQUESTS.labels(*labels, "accepted")


class Intake:
    def __init__(
        self, directory: Directory, pipeline: Pipeline, tail: TailHub | None = None
    ) -> None:
        self.directory = directory  # replaced whole on a config reload
        self._pipeline = pipeline
        self.tail = tail if tail is not None else TailHub()
        self._counts: dict[tuple[str, str, str], _Counts] = {}

    def admit(
        self, signal: Signal, headers: Mapping[str, str], inflight: limits.InFlight
    ) -> Tenant:
        """Who is sending, and whether there is room for a request now, from the headers alone:
        raises Unauthenticated / PermissionDenied, then Throttled while `inflight` is full."""
        tenant = self.directory.authenticate(headers, signal)
        if inflight.full:
            busy = Throttled(inflight.busy_message(), retry_after=1.0, reason="busy")
            busy.tenant = tenant.name
            raise busy
        return tenant

    def _counters(self, tenant: str, signal: str, transport: str) -> _Counts:
        key = (tenant, signal, transport)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = _Counts(tenant, signal, transport)
        return counts

    async def accept(
        self, signal: Signal, payload: bytes, items: int, tenant: Tenant, transport: str
    ) -> None:
        """Hand a request to the pipeline; raises a GatewayError when it cannot be taken."""
        name = tenant.name
        counts = self._counters(name, signal.name, transport)
        counts.received_items.inc(items)
        counts.received_bytes.inc(len(payload))
        try:
            forwarded, kept = tenant.prepare(signal, payload, items)
            if kept < items:
                metrics.DROPPED_ITEMS.labels(name, signal.name, "", "drop_rule").inc(items - kept)
            await self._pipeline.submit(
                Batch(signal, forwarded, kept, name), tenant.routes[signal.name]
            )
        except GatewayError as error:
            error.tenant = name
            metrics.REFUSED_ITEMS.labels(name, signal.name, transport, error.reason).inc(items)
            raise
        counts.accepted.inc()
        counts.accepted_items.inc(kept)
        counts.accepted_bytes.inc(len(forwarded))
        if signal is TRACES and kept:
            if tenant.red is not None:
                tenant.red.observe(forwarded)
            if self.tail.watching(name):
                self.tail.publish(name, forwarded, kept)

    def refused(self, signal: Signal, transport: str, error: GatewayError) -> None:
        """Count and log a refused request (one log line each; never the key)."""
        tenant = error.tenant or metrics.UNKNOWN_TENANT
        metrics.REQUESTS.labels(tenant, signal.name, transport, error.reason).inc()
        if error.reason in _AUTH:
            metrics.AUTH_FAILURES.labels(transport, error.reason).inc()
        recent.note(
            "refused",
            f"{error.http_status} {error.reason}: {error.message}",
            tenant=error.tenant or "",
            signal=signal.name,
        )
        log.info(
            "refused a %s request: %s",
            signal.name,
            error.message,
            extra={
                "fields": {
                    "event": "refused",
                    "tenant": tenant,
                    "signal": signal.name,
                    "transport": transport,
                    "reason": error.reason,
                    "http_status": error.http_status,
                    "grpc_code": int(error.grpc_code),
                }
            },
        )
