"""The last errors worth a look (refusals, export failures, drops, reload failures), kept in a
small ring for the admin API and the status page."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

SIZE = 100


@dataclass(frozen=True, slots=True)
class RecentError:
    time: float  # Unix seconds
    kind: str  # "refused", "export", "dropped" or "reload"
    message: str
    tenant: str = ""
    backend: str = ""
    signal: str = ""


_ring: collections.deque[RecentError] = collections.deque(maxlen=SIZE)


def note(kind: str, message: str, *, tenant: str = "", backend: str = "", signal: str = "") -> None:
    _ring.append(RecentError(time.time(), kind, message, tenant, backend, signal))


def newest_first() -> list[RecentError]:
    return list(reversed(_ring))
