"""The unit of data that flows from ingress through the pipeline to the exporters."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from gateway.otlp.signals import Signal


@dataclass(frozen=True, slots=True)
class Batch:
    """One export request: protobuf bytes exactly as they will be forwarded, never mutated."""

    signal: Signal
    payload: bytes  # a serialized Export<Signal>ServiceRequest
    items: int  # spans, metric data points, log records or profiles
    tenant: str
    # What exporters made of the payload (gzip at a level, JSON), kept with the batch: the
    # destinations of a fan-out share one batch object (memory queues), and a retry sends the
    # same batch again, so each encoding is made once.
    encodings: dict[Hashable, bytes] = field(default_factory=dict, compare=False, repr=False)

    def encoded(self, key: Hashable, make: Callable[[bytes], bytes]) -> bytes:
        """`make(payload)`, made once per batch and key (the key names the encoding and its
        settings)."""
        got = self.encodings.get(key)
        if got is None:
            got = self.encodings[key] = make(self.payload)
        return got
