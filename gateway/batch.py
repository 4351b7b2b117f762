"""The unit of data that flows from ingress through the pipeline to the exporters."""

from __future__ import annotations

from dataclasses import dataclass

from .signals import Signal


@dataclass(frozen=True, slots=True)
class Batch:
    """One export request: protobuf bytes exactly as they will be forwarded, never mutated."""

    signal: Signal
    payload: bytes  # a serialized Export<Signal>ServiceRequest
    items: int  # spans, metric data points, log records or profiles
    tenant: str
