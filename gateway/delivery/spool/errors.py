"""What the spool raises; each says whether the caller's client should retry."""

from __future__ import annotations


class SpoolError(Exception):
    """The spool cannot take or keep a record right now; the caller answers with a retryable
    status (HTTP 503 / gRPC UNAVAILABLE)."""


class SpoolFull(SpoolError):
    """The spool holds `max_bytes` (or the disk is full): refuse the request with a retryable
    status (429 / RESOURCE_EXHAUSTED with a retry delay); nothing was written."""


class RecordTooLarge(ValueError):
    """A single record is larger than the spool's `max_bytes`: it can never be taken (not
    retryable; configure max_bytes above the largest request)."""


class SpoolClosed(SpoolError):
    """The spool was closed."""


class SpoolUnavailable(SpoolError):
    """The spool directory cannot be used (raised by `Spool.open`)."""
