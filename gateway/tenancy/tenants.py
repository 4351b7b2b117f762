"""Who sent a request, and what that tenant's data goes through: API key -> tenant in one step,
allowed signals, quota, drop rules, enrichment and routes.

A TenantRegistry is built from one config and never changes; a reload builds a new one (keeping
the quota buckets of tenants whose quota did not change) and swaps it in. With `cluster`, quotas
are the fleet's (gateway/cluster/quota.py), taken in leases from Redis.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

from gateway.analysis.red import RedMetrics
from gateway.cluster.quota import QuotaLeases, SharedQuota
from gateway.config import DEFAULT_TENANT, GatewayConfig, TenantConfig
from gateway.errors import (
    InvalidRequest,
    PermissionDenied,
    RequestTooLarge,
    Throttled,
    Unauthenticated,
    too_large_message,
)
from gateway.otlp import offload, spans
from gateway.otlp.signals import SIGNALS, Signal
from gateway.otlp.wire import WireError
from gateway.tenancy import keys
from gateway.tenancy.drop import DropFilter
from gateway.tenancy.enrich import ResourceEnricher
from gateway.tenancy.quota import Admits, Quota

log = logging.getLogger("otlp_gateway.tenants")

MISSING_KEY = (
    "missing API key: send `authorization: Bearer <key>` (OTEL_EXPORTER_OTLP_HEADERS="
    "authorization=Bearer%20<key>) or `x-api-key: <key>`"
)
WRONG_KEY = "the API key is not valid (mistyped, or revoked); ask the gateway's operators for one"
OTHER_SCHEME = (
    "the authorization header has a scheme other than Bearer or Basic; "
    'use "authorization: Bearer <key>" (OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<key>) '
    'or "x-api-key: <key>"'
)


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


class Tenant:
    def __init__(
        self,
        config: TenantConfig,
        service_backends: tuple[str, ...],
        drop: DropFilter | None,
        quota: Admits | None,
        red: RedMetrics | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.signals = frozenset(config.signals)
        self.routes = {
            s.name: _unique(
                service_backends + config.backends + config.signal_backends.get(s.name, ())
            )
            for s in SIGNALS
        }
        # Every tenant's resources get tenant.id, the open mode's `default` too: a client cannot
        # claim another tenant's name downstream.
        self.enricher = ResourceEnricher(config.name, config.attributes)
        self.drop = drop
        self.quota = quota
        self.max_request_bytes = config.quota.max_request_bytes
        self.digests = tuple(bytes.fromhex(d) for d in config.api_keys)
        self.red = red  # RED metrics from spans, when the tenant opted in

    def check_signal(self, signal: Signal) -> None:
        if signal.name not in self.signals:
            error = PermissionDenied(
                f"tenant {self.name} may not send {signal.name}; "
                f"allowed: {', '.join(sorted(self.signals))}"
            )
            error.tenant = self.name
            raise error

    async def prepare(self, signal: Signal, payload: bytes, items: int) -> tuple[bytes, int]:
        """Apply the tenant's quota, drop rules and enrichment; return what to forward.
        Raises a GatewayError (InvalidRequest for what the rules or enrichment cannot read)."""
        if self.max_request_bytes is not None and len(payload) > self.max_request_bytes:
            raise RequestTooLarge(too_large_message("the request", self.max_request_bytes))
        if self.quota is not None:
            wait = self.quota.admit(items, len(payload))
            if wait > 0:
                raise Throttled(
                    f"tenant {self.name} is over its rate quota; retry after {wait:.1f}s",
                    retry_after=wait,
                    reason="quota",
                )
        if self.drop is not None and self.drop.applies(signal):
            try:
                if len(payload) >= offload.MIN_BYTES:  # on a thread, not the event loop
                    payload, dropped = await offload.run(self.drop.apply, signal, payload)
                else:
                    payload, dropped = self.drop.apply(signal, payload)
            except spans.UndecodableError as exc:
                raise InvalidRequest(
                    f"the request cannot go through tenant {self.name}'s drop rules: {exc}; "
                    "fix the exporter that sent it"
                ) from None
            items -= dropped
        if items:
            try:
                payload = self.enricher.apply(signal, payload)
            except WireError as exc:
                raise InvalidRequest(
                    f"a resource in the request is not valid protobuf ({exc}); "
                    "fix the exporter that sent it"
                ) from None
        return payload, items


class TenantRegistry:
    def __init__(
        self,
        config: GatewayConfig,
        previous: TenantRegistry | None = None,
        leases: QuotaLeases | None = None,  # shared quotas; a reload keeps the previous one's
    ) -> None:
        self.open = config.tenants is None
        if leases is None and previous is not None:
            leases = previous.leases
        self.leases: QuotaLeases | None = leases
        shared: dict[str, SharedQuota] = {}
        global_rules = list(config.drop)
        old = previous.tenants if previous is not None else {}
        tenant_configs = (
            {DEFAULT_TENANT: TenantConfig(name=DEFAULT_TENANT)}
            if config.tenants is None
            else config.tenants
        )
        self.tenants: dict[str, Tenant] = {}
        self._by_digest: dict[bytes, Tenant] = {}
        self._by_key: dict[str, Tenant] = {}  # keys that matched before: no hash to compute
        for name, tc in tenant_configs.items():
            rules = global_rules + list(tc.drop)
            quota: Admits | None = None
            q = tc.quota
            if q.items_per_second or q.bytes_per_second:
                prev = old.get(name)
                if prev is not None and prev.quota is not None and prev.config.quota == q:
                    quota = prev.quota  # unchanged by the reload: keep the bucket's state
                elif self.leases is not None:
                    quota = self.leases.quota(name, q)
                else:
                    quota = Quota(q.items_per_second, q.bytes_per_second, q.burst_seconds)
                if isinstance(quota, SharedQuota):
                    shared[name] = quota
            red = None
            if tc.red_metrics is not None:
                prev = old.get(name)
                if (
                    prev is not None
                    and prev.red is not None
                    and prev.config.red_metrics == tc.red_metrics
                ):
                    red = prev.red  # keeps its series count across the reload
                else:
                    red = RedMetrics(name, tc.red_metrics.span_kinds, tc.red_metrics.max_series)
            tenant = Tenant(
                tc,
                config.service_backends,
                DropFilter(rules) if rules else None,
                quota,
                red=red,
            )
            self.tenants[name] = tenant
            for digest in tenant.digests:
                self._by_digest[digest] = tenant
        if self.leases is not None:
            self.leases.track(shared)  # the pools to top up are this registry's from now on

    def authenticate(self, headers: Mapping[str, str], signal: Signal) -> Tenant:
        """The tenant a request's key belongs to; raises Unauthenticated / PermissionDenied."""
        if self.open:
            return self.tenants[DEFAULT_TENANT]
        named, key = keys.credentials(headers)
        if key is None:
            raise Unauthenticated(OTHER_SCHEME if keys.other_scheme(headers) else MISSING_KEY)
        tenant = self._by_key.get(key)
        if tenant is not None and (named is None or named == tenant.name):
            tenant.check_signal(signal)  # a key seen before: no hashing (~2 us a request)
            return tenant
        presented = bytes.fromhex(keys.digest(key))
        tenant = self._by_digest.get(presented)
        # Keys are compared as SHA-256 digests (the lookup cannot leak a key's characters); the
        # final comparison is constant-time all the same.
        if tenant is None or not any(hmac.compare_digest(presented, d) for d in tenant.digests):
            raise Unauthenticated(WRONG_KEY)
        if named is not None and named != tenant.name:
            raise Unauthenticated(WRONG_KEY)
        # Only keys that matched are remembered, so the table holds at most one entry per
        # configured key; a registry is never changed (a reload makes a new one, forgetting
        # revoked keys). Looking a presented key up leaks nothing: the dict compares hashes
        # (randomized per process) and compares strings only when they are equal.
        self._by_key[key] = tenant
        tenant.check_signal(signal)
        return tenant
