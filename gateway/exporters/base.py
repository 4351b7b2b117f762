from __future__ import annotations

import email.utils
import time
from typing import Protocol

from ..batch import Batch


class ExportError(Exception):
    """A failed export. `retryable` follows the OTLP rules for the status the backend gave."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        too_large: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.too_large = too_large  # the backend refused the request for its size


class Exporter(Protocol):
    async def export(self, batch: Batch) -> None:
        """Send the batch; raise ExportError when the backend did not take it."""
        ...

    async def aclose(self) -> None: ...


def render_headers(templates: dict[str, str], tenant: str) -> dict[str, str]:
    return {k: v.replace("{tenant}", tenant) for k, v in templates.items()}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delay-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
