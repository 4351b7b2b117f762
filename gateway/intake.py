"""The seam between the protocol front ends and the pipeline: what every transport calls once it
has a validated request body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from .batch import Batch
from .signals import Signal


class Authenticator(Protocol):
    def authenticate(self, headers: Mapping[str, str]) -> str:
        """Return the tenant, or raise Unauthenticated/PermissionDenied."""
        ...


class Sink(Protocol):
    def submit(self, batch: Batch) -> None: ...


class Intake:
    def __init__(self, auth: Authenticator, sink: Sink) -> None:
        self.auth = auth
        self._sink = sink

    def accept(self, signal: Signal, payload: bytes, items: int, tenant: str) -> None:
        """Hand a request to the pipeline; raises a GatewayError when it cannot be taken."""
        self._sink.submit(Batch(signal, payload, items, tenant))
