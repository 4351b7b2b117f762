"""API keys: made here, stored only as SHA-256 digests, read from the request's headers.

A key is 32 random bytes, URL-safe base64, with a prefix that secret scanners can match. The config
holds `sha256:<hex digest>`; a presented key is hashed and looked up. Nothing here ever logs or
returns a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping

KEY_TOKEN_PREFIX = "otlpgw_"
CONFIG_PREFIX = "sha256:"


def new_key() -> str:
    return KEY_TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def config_entry(key: str) -> str:
    """What goes into `tenants.<name>.api_keys`."""
    return CONFIG_PREFIX + digest(key)


def client_headers_env(key: str) -> str:
    """The OTEL_EXPORTER_OTLP_HEADERS value for a key (values are percent-encoded there)."""
    return f"authorization=Bearer%20{key}"


# Schemes read from `authorization`; a lone word that is not one of them is a key sent without
# its scheme (`authorization=<key>` in OTEL_EXPORTER_OTLP_HEADERS, a common slip).
_SCHEMES = ("bearer", "basic")


def credentials(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(tenant named by the client, key) from `authorization: Bearer <key>`,
    `authorization: Basic base64(<tenant>:<key>)`, `authorization: <key>` (one word, no scheme)
    or `x-api-key: <key>`."""
    auth = headers.get("authorization", "").strip()
    scheme, space, value = auth.partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and value:
        return None, value
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        tenant, sep, key = decoded.partition(":")
        return (tenant or None, key) if sep and key else (None, None)
    if auth and not space and scheme not in _SCHEMES:
        return None, auth
    key = headers.get("x-api-key", "").strip()
    return None, key or None


def other_scheme(headers: Mapping[str, str]) -> bool:
    """Whether `authorization` holds a scheme other than Bearer and Basic, with a value (`Token
    <key>`): a key in a form that is not accepted, which deserves a hint rather than "missing"."""
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    return bool(value.strip()) and scheme.lower() not in _SCHEMES
