"""Deep validation: every item of a request decoded before it is acknowledged, as a strict backend
decodes it, so that what the gateway accepts a backend does not refuse as malformed.

The ingress wire walk checks a request's structure down to its items and skips the items by
length (tens of microseconds for 512 spans); decoding every item costs about 1 us per span, about
half of what forwarding a span costs. So it runs when the config asks for it (`validate: full`),
or, with `validate: auto` (the default), for a tenant whose data a backend refused as invalid in
the last SUSPECT_SECONDS: that tenant's next malformed requests get 400 at the door, where its
client sees them, and tenants that send well-formed data pay nothing. What a backend refused
was already split off and dropped by the pipeline, so the good data merged with it is delivered
either way.

Nested attribute values stay bytes (spans.shadow): valid OTLP nested deeper than protobuf's
decoder allows (100 levels) is not refused for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError, Message

from gateway.otlp import spans
from gateway.otlp.signals import SIGNALS, Signal

log = logging.getLogger("otlp_gateway.validate")

SUSPECT_SECONDS = 600.0  # how long a tenant's requests are decoded after a backend refusal

_TYPES: dict[str, type[Message]] = {
    s.name: spans.shadow(s.request_type.DESCRIPTOR.full_name) for s in SIGNALS
}


class Malformed(ValueError):
    """An item of the request cannot be decoded."""


def check(signal: Signal, payload: bytes) -> None:
    """Decode every item of `payload` (an export request of `signal` that passed the wire walk);
    Malformed when one cannot be decoded."""
    try:
        _TYPES[signal.name].FromString(payload)
    except DecodeError:
        raise Malformed(
            f"the request holds {signal.item_name} that cannot be decoded (corrupt wire format "
            "inside an item, or a string that is not UTF-8); backends refuse such data: fix the "
            "exporter that sent it"
        ) from None


class Validation:
    """Which tenants' requests are decoded in full before they are acknowledged."""

    def __init__(self, mode: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode  # config.VALIDATE_MODES; a reload may change it
        self._clock = clock
        self._until: dict[str, float] = {}  # suspect tenant -> end of its suspicion

    def suspect(self, tenant: str) -> None:
        """A backend refused some of `tenant`'s data as invalid (called by the pipeline)."""
        if self.mode != "auto":
            return
        now = self._clock()
        if self._until.get(tenant, 0.0) <= now:
            log.warning(
                "validating every request of tenant %s for the next %.0f minutes: a backend "
                "refused some of its data as invalid (validate: auto)",
                tenant,
                SUSPECT_SECONDS / 60,
            )
        self._until[tenant] = now + SUSPECT_SECONDS

    def wanted(self, tenant: str) -> bool:
        if self.mode == "full":
            return True
        if not self._until:  # the common case: nobody is suspect
            return False
        until = self._until.get(tenant)
        if until is None:
            return False
        if until > self._clock() and self.mode == "auto":
            return True
        del self._until[tenant]
        return False

    def suspects(self) -> list[str]:
        """Tenants whose requests are decoded in full now (for the status page and logs)."""
        now = self._clock()
        return sorted(t for t, until in self._until.items() if until > now)
