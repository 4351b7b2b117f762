"""The seam between the protocol front ends and the pipeline: what every transport calls, first
with the request's headers (before the body is read), then with the validated body."""

from __future__ import annotations

from collections.abc import Mapping

from .batch import Batch
from .pipeline import Pipeline
from .signals import Signal
from .tenants import Directory, Tenant


class Intake:
    def __init__(self, directory: Directory, pipeline: Pipeline) -> None:
        self.directory = directory  # replaced whole on a config reload
        self._pipeline = pipeline

    def admit(self, signal: Signal, headers: Mapping[str, str]) -> Tenant:
        """Authenticate; raises Unauthenticated / PermissionDenied."""
        return self.directory.authenticate(headers, signal)

    async def accept(self, signal: Signal, payload: bytes, items: int, tenant: Tenant) -> None:
        """Hand a request to the pipeline; raises a GatewayError when it cannot be taken."""
        payload, items = tenant.prepare(signal, payload, items)
        batch = Batch(signal, payload, items, tenant.name)
        await self._pipeline.submit(batch, tenant.routes[signal.name])
