"""Errors the gateway answers a client with, each carrying its OTLP/HTTP status and gRPC code.

Ingress modules translate these into their protocol's shape at the boundary; nothing below the
ingress knows about HTTP responses or trailers.
"""

from __future__ import annotations

from enum import IntEnum


class GrpcCode(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class GatewayError(Exception):
    http_status = 500
    grpc_code = GrpcCode.INTERNAL
    reason = "internal"  # the bounded label a refusal is counted and logged under
    tenant: str | None = None  # set when the refusal came after the tenant was known

    def __init__(
        self, message: str, *, retry_after: float | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        if reason is not None:
            self.reason = reason


class InvalidRequest(GatewayError):
    http_status = 400
    grpc_code = GrpcCode.INVALID_ARGUMENT
    reason = "invalid"


class RequestTooLarge(GatewayError):
    http_status = 413
    grpc_code = GrpcCode.RESOURCE_EXHAUSTED  # without RetryInfo: clients do not retry
    reason = "too_large"


class UnsupportedMediaType(GatewayError):
    http_status = 415
    grpc_code = GrpcCode.INVALID_ARGUMENT
    reason = "unsupported_media_type"


class Unauthenticated(GatewayError):
    http_status = 401
    grpc_code = GrpcCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDenied(GatewayError):
    http_status = 403
    grpc_code = GrpcCode.PERMISSION_DENIED
    reason = "permission_denied"


class Throttled(GatewayError):
    """Retryable overload: 429 + Retry-After / RESOURCE_EXHAUSTED + RetryInfo."""

    http_status = 429
    grpc_code = GrpcCode.RESOURCE_EXHAUSTED
    reason = "throttled"


class Unavailable(GatewayError):
    """Retryable: the gateway cannot take data right now (e.g. shutting down)."""

    http_status = 503
    grpc_code = GrpcCode.UNAVAILABLE
    reason = "unavailable"


def too_large_message(what: str, cap: int) -> str:
    return (
        f"{what} is larger than the limit of {cap} bytes; send smaller batches "
        f"(for example lower the SDK's max export batch size)"
    )


class CannotListen(Exception):
    """A listener's address cannot be bound (in use, not an address of this host, a privileged
    port). Not a client's error: the process cannot start serving; the command says what to do."""

    def __init__(self, address: str, role: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} ({role}): {reason}")
        self.address = address
        self.role = role  # "OTLP" or "admin"
        self.reason = reason
