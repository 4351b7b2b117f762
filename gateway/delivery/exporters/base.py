from __future__ import annotations

import email.utils
import logging
import time
from typing import Any, Protocol

from gateway.delivery.batch import Batch
from gateway.telemetry import metrics


class ExportError(Exception):
    """A failed export. `retryable` follows the OTLP rules for the status the backend gave."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        too_large: bool = False,
        invalid: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.too_large = too_large  # the backend refused the request for its size
        # The backend refused the request's content (HTTP 400, gRPC INVALID_ARGUMENT, or the
        # statuses servers answer for a body they cannot decode): some of its items may be
        # good, so the pipeline splits it and sends the parts.
        self.invalid = invalid


class Exporter(Protocol):
    async def export(self, batch: Batch) -> None:
        """Send the batch; raise ExportError when the backend did not take it."""
        ...

    async def aclose(self) -> None: ...


log = logging.getLogger("otlp_gateway.export")


def log_partial_success(backend: str, batch: Batch, rejected: int, message: str) -> None:
    """OTLP partial success: the backend took the request but rejected some items. Not retried
    (the spec says clients must not); logged with what the backend said."""
    if rejected:
        metrics.REJECTED_ITEMS.labels(backend, batch.signal.name).inc(rejected)
    if rejected or message:
        log.warning(
            "backend %s partially rejected a %s batch of tenant %s: %s rejected: %s",
            backend,
            batch.signal.name,
            batch.tenant,
            rejected,
            message,
        )


def log_partial_success_message(backend: str, batch: Batch, response: Any) -> None:
    """The same, from a decoded Export*ServiceResponse."""
    if not response.HasField("partial_success"):
        return
    ps = response.partial_success
    rejected = next(
        (getattr(ps, f.name) for f in ps.DESCRIPTOR.fields if f.name.startswith("rejected")), 0
    )
    log_partial_success(backend, batch, int(rejected), str(ps.error_message))


def gzip_encoding(level: int) -> tuple[str, int]:
    """The Batch.encoded key of the payload gzipped at `level`: the body of an http/protobuf
    export and the message of a grpc one alike."""
    return ("gzip", level)


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
