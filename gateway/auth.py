"""Who sent a request. Without tenants configured the gateway runs open: every request belongs to
the default tenant."""

from __future__ import annotations

from collections.abc import Mapping

from .config import DEFAULT_TENANT


class OpenAuth:
    """No keys: every request is the default tenant's."""

    def authenticate(self, headers: Mapping[str, str]) -> str:
        return DEFAULT_TENANT
