"""The last errors worth a look (refusals, export failures, drops, reload failures), kept in a
small ring for the admin API and the status page. One ring per app: the app makes it and hands it
to the layers that note errors."""

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


class RecentErrors:
    def __init__(self, size: int = SIZE) -> None:
        self._ring: collections.deque[RecentError] = collections.deque(maxlen=size)

    def note(
        self, kind: str, message: str, *, tenant: str = "", backend: str = "", signal: str = ""
    ) -> None:
        self._ring.append(RecentError(time.time(), kind, message, tenant, backend, signal))

    def newest_first(self) -> list[RecentError]:
        return list(reversed(self._ring))
