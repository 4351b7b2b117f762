"""The seam between the protocol front ends and the pipeline: what every transport calls, first
with the request's headers (before the body is read), then with the validated body, and with
every refusal. Intake counts and logs what comes in, so every transport is counted alike."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from prometheus_client import Counter

from gateway.analysis import background
from gateway.analysis.tail import TailHub
from gateway.delivery.batch import Batch
from gateway.delivery.pipeline import Pipeline, queue_full
from gateway.errors import GatewayError, InvalidRequest, Throttled, Unavailable
from gateway.ingress import limits
from gateway.ingress.guard import LogThrottle
from gateway.otlp import offload, wire
from gateway.otlp.signals import TRACES, Signal
from gateway.otlp.validate import Malformed, Validation
from gateway.telemetry import metrics
from gateway.telemetry.recent import RecentErrors
from gateway.tenancy.tenants import Tenant, TenantRegistry

log = logging.getLogger("otlp_gateway.intake")

_AUTH = frozenset({"unauthenticated", "permission_denied"})


def _refusals_left_out(key: tuple[str, str], count: int, interval: float) -> None:
    reason, tenant = key
    log.info(
        "refused %d more requests (%s, tenant %s) in the last %.0fs",
        count,
        reason,
        tenant,
        interval,
        extra={
            "fields": {"event": "refused", "tenant": tenant, "reason": reason, "suppressed": count}
        },
    )


def text_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """An ASGI scope's headers as text (names are lower case already)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}


def count_items(signal: Signal, data: bytes, what: str = "body") -> int:
    """The items of a request, validating its wire format on the way; InvalidRequest when
    `what` (the body, the message) is not the signal's Export request."""
    try:
        return wire.count_items(signal, data)
    except wire.WireError as exc:
        raise not_a_request(signal, what, exc) from None


async def count_items_off_loop(signal: Signal, data: bytes, what: str = "body") -> int:
    """count_items for a body of offload.PROCESS_MIN_BYTES or more: counted in the decode
    worker process (upb holds the GIL while it parses, ~20 ms per MiB of tiny entries)."""
    try:
        return await offload.count_items(signal, data)
    except wire.WireError as exc:
        raise not_a_request(signal, what, exc) from None
    except offload.WorkerLost as exc:
        raise Unavailable(f"{exc}; retry", retry_after=1.0) from None


def not_a_request(signal: Signal, what: str, exc: Exception) -> InvalidRequest:
    return InvalidRequest(
        f"the {what} is not a valid protobuf {signal.request_type.__name__} ({exc})"
    )


class _Counts:
    """The counters of one (tenant, signal, transport), looked up once, not per request. What
    requests add is summed in plain integers and handed to the counters once per turn of the
    event loop (five locked increments a request were ~7% of a 1-span request's CPU); /metrics
    is read in a later turn, so it never misses any."""

    __slots__ = (
        "accepted",
        "accepted_bytes",
        "accepted_items",
        "pending",
        "received_bytes",
        "received_items",
    )

    def __init__(self, tenant: str, signal: str, transport: str) -> None:
        labels = (tenant, signal, transport)
        self.received_items: Counter = metrics.RECEIVED_ITEMS.labels(*labels)
        self.received_bytes: Counter = metrics.RECEIVED_BYTES.labels(*labels)
        self.accepted_items: Counter = metrics.ACCEPTED_ITEMS.labels(*labels)
        self.accepted: Counter = metrics.REQUESTS.labels(*labels, "accepted")
        self.accepted_bytes: Counter = metrics.ACCEPTED_BYTES.labels(*labels)
        # received items, received bytes, accepted requests, accepted items, accepted bytes
        self.pending: list[int] | None = None  # None: nothing to hand over

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None:
            return
        counters = (
            self.received_items,
            self.received_bytes,
            self.accepted,
            self.accepted_items,
            self.accepted_bytes,
        )
        for counter, amount in zip(counters, pending, strict=True):
            if amount:
                counter.inc(amount)


class Intake:
    def __init__(
        self,
        registry: TenantRegistry,
        pipeline: Pipeline,
        tail: TailHub | None = None,
        validation: Validation | None = None,
        recent: RecentErrors | None = None,
    ) -> None:
        self.registry = registry  # replaced whole on a config reload
        self.recent = recent if recent is not None else RecentErrors()  # refusals are noted here
        # A client that sends refused request after request (a wrong key in a loop, a
        # reconnecting attacker) would otherwise write a line per request.
        self._refusal_log = LogThrottle[tuple[str, str]](_refusals_left_out)
        # which tenants' requests get every item decoded before they are acknowledged
        self.validation = validation if validation is not None else Validation("wire")
        self._pipeline = pipeline
        # the tail's analysis thread is RED's too (gateway/analysis/background.py)
        self.tail = tail if tail is not None else TailHub()
        self._counts: dict[tuple[str, str, str], _Counts] = {}
        self._unflushed: list[_Counts] = []  # counts with a pending sum, flushed once per turn

    def admit(
        self,
        signal: Signal,
        headers: Mapping[str, str],
        inflight: limits.InFlight,
        charge: bool = True,
    ) -> Tenant:
        """Who is sending, and whether there is room for a request now, from the headers alone:
        raises Unauthenticated / PermissionDenied, then Throttled while `inflight` is full.
        With `charge`, the request's bytes held from now on in this task are the tenant's (the
        lane, which has no task of its own, passes the tenant to InFlight.hold instead)."""
        tenant = self.registry.authenticate(headers, signal)
        if inflight.full:
            busy = Throttled(inflight.busy_message(), retry_after=1.0, reason="busy")
            busy.tenant = tenant.name
            raise busy
        if not self.registry.open:
            # A tenant past its share of the budget waits; the others are still served.
            if inflight.over_share(tenant.name):
                message = inflight.share_message(tenant.name)
                busy = Throttled(message, retry_after=1.0, reason="busy")
                busy.tenant = tenant.name
                raise busy
            if charge:
                inflight.charge_to(tenant.name)
        # A queue with no room for the body refuses it now, before it is read and decoded.
        length = headers.get("content-length", "")
        if length.isdigit():
            backend = self._pipeline.full(tenant.routes[signal.name], tenant.name, int(length))
            if backend is not None:
                full = queue_full(backend)
                full.tenant = tenant.name
                raise full
        return tenant

    def _counters(self, tenant: str, signal: str, transport: str) -> _Counts:
        key = (tenant, signal, transport)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = _Counts(tenant, signal, transport)
        return counts

    def _pending(self, counts: _Counts) -> list[int]:
        """The sums `counts` collects this turn of the event loop."""
        pending = counts.pending
        if pending is None:
            pending = counts.pending = [0, 0, 0, 0, 0]
            if not self._unflushed:
                asyncio.get_running_loop().call_soon(self._flush)
            self._unflushed.append(counts)
        return pending

    def _flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, []
        for counts in unflushed:
            counts.flush()

    async def accept(
        self, signal: Signal, payload: bytes, items: int, tenant: Tenant, transport: str
    ) -> None:
        """Hand a request to the pipeline; raises a GatewayError when it cannot be taken."""
        name = tenant.name
        counts = self._counters(name, signal.name, transport)
        sums = self._pending(counts)
        sums[0] += items
        sums[1] += len(payload)
        try:
            if self.validation.wanted(name):
                await self._validate(signal, payload)
            forwarded, kept = await tenant.prepare(signal, payload, items)
            if kept < items:
                metrics.DROPPED_ITEMS.labels(name, signal.name, "", "drop_rule").inc(items - kept)
            await self._pipeline.submit(
                Batch(signal, forwarded, kept, name), tenant.routes[signal.name]
            )
        except GatewayError as error:
            error.tenant = name
            metrics.REFUSED_ITEMS.labels(name, signal.name, transport, error.reason).inc(items)
            raise
        # Queued: from here on nothing may fail the request (a client retry would duplicate
        # what is queued). RED metrics and the tail decode on a worker thread, later.
        sums = self._pending(counts)  # again: a turn may have ended while this waited
        sums[2] += 1
        sums[3] += kept
        sums[4] += len(forwarded)
        if signal is TRACES and kept:
            try:
                if tenant.red is not None:
                    if len(forwarded) <= background.INLINE_BYTES:
                        tenant.red.observe(forwarded)  # ~1 ms at most: not worth a thread
                    else:
                        self.tail.analysis.later(len(forwarded), tenant.red.observe, forwarded)
                if self.tail.watching(name):
                    self.tail.publish(name, forwarded, kept)
            except Exception:  # a bug here must not turn an accepted request into a 500
                log.exception("span analysis of an accepted request failed")

    @staticmethod
    async def _validate(signal: Signal, payload: bytes) -> None:
        try:
            await offload.validate(signal, payload)
        except Malformed as exc:
            raise InvalidRequest(str(exc)) from None
        except offload.WorkerLost as exc:
            raise Unavailable(f"{exc}; retry", retry_after=1.0) from None

    def refused(self, signal: Signal, transport: str, error: GatewayError) -> None:
        """Count every refused request; log it (never the key), but at most one line per
        (reason, tenant) and interval, and then one with the count of those left out."""
        tenant = error.tenant or metrics.UNKNOWN_TENANT
        metrics.REQUESTS.labels(tenant, signal.name, transport, error.reason).inc()
        if error.reason in _AUTH:
            metrics.AUTH_FAILURES.labels(transport, error.reason).inc()
        if not self._refusal_log.admit((error.reason, tenant)):
            return
        self.recent.note(
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
