"""Hot reload: on SIGHUP or when the config file changes, tenants, keys, routes and backends are
replaced without dropping connections or queued data. An invalid new config is refused: the old
one keeps serving, and the error is logged and counted."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from gateway import config as config_mod
from gateway.config import ConfigError, GatewayConfig, Runtime
from gateway.delivery.pipeline import Pipeline
from gateway.ingress.intake import Intake
from gateway.telemetry import metrics
from gateway.telemetry.recent import RecentErrors
from gateway.tenancy.tenants import TenantRegistry

log = logging.getLogger("otlp_gateway.reload")

C = TypeVar("C", bound=GatewayConfig)

# Keys that only take effect at start.
_RESTART_KEYS = (
    "listen",
    "tls",
    "limits",
    "cors",
    "server",
    "event_loop",
    "timeout_keep_alive",
    "log",
    "workers",
    "cluster",  # the link to Redis, the shared quotas and the heartbeat are made at start
)


def log_warnings(warnings: tuple[str, ...]) -> None:
    """A loaded config's warnings (config.warnings), one log line each, in the log's format."""
    for warning in warnings:
        logging.getLogger("otlp_gateway.config").warning(
            "config warning: %s",
            warning,
            extra={"fields": {"event": "config_warning"}},
        )


def keep_pinned(new: C, old: GatewayConfig, pinned: tuple[str, ...]) -> C:
    """`new` with the fields the command line set (`pinned`: "tls", or a section's field as
    "admin.listen") as they are in `old`."""
    for name in pinned:
        section, _, field = name.partition(".")
        value = getattr(old, section)
        if field:
            value = replace(getattr(new, section), **{field: getattr(value, field)})
        new = replace(new, **{section: value})
    return new


class Reloader:
    def __init__(
        self,
        config: GatewayConfig,
        intake: Intake,
        pipeline: Pipeline,
        runtime: Runtime,
        recent: RecentErrors,
    ) -> None:
        self.config = config
        self._recent = recent  # a refused reload is noted here
        self.runtime = runtime  # the file to re-read (origin.path), the fields to keep (pinned)
        self._intake = intake
        self._pipeline = pipeline
        self._fingerprint = self._read_fingerprint()
        self.reloads = 0
        self.failures = 0

    def _read_fingerprint(self) -> bytes | None:
        if self.runtime.origin.path is None:
            return None
        try:
            return hashlib.sha256(Path(self.runtime.origin.path).read_bytes()).digest()
        except OSError:
            return None

    def reload(self, why: str) -> bool:
        path = self.runtime.origin.path
        if path is None:
            log.warning("%s: no config file to reload (running the embedded default)", why)
            return False
        self._fingerprint = self._read_fingerprint()
        try:
            new = config_mod.load(path)
        except ConfigError as exc:
            self.failures += 1
            metrics.RELOADS.labels("failed").inc()
            self._recent.note(
                "reload", f"refused ({why}), the previous config keeps serving: {exc}"
            )
            log.error("config reload (%s) refused, still serving the previous config: %s", why, exc)
            return False
        log_warnings(new.warnings)
        new = keep_pinned(new, self.config, self.runtime.pinned)
        for key in _RESTART_KEYS:
            if getattr(new, key) != getattr(self.config, key):
                log.warning("config reload (%s): a change of %r takes effect at restart", why, key)
        if new.admin.listen != self.config.admin.listen:
            log.warning(
                "config reload (%s): a change of 'admin.listen' takes effect at restart", why
            )
        self._pipeline.reconfigure(new.backends, new.retry)
        self._intake.registry = TenantRegistry(new, previous=self._intake.registry)
        self._intake.validation.mode = new.validate
        self.config = new
        self.reloads += 1
        metrics.RELOADS.labels("ok").inc()
        metrics.CONFIG_LOADED.set(time.time())
        tenants = "open (no tenants)" if new.tenants is None else f"{len(new.tenants)} tenants"
        log.info("config reloaded (%s): %s, %d backends", why, tenants, len(new.backends))
        return True

    async def watch(self) -> None:
        """Reload on SIGHUP and whenever the file's content changes (polled)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        try:
            while True:
                interval = self.config.reload_interval  # a reload may change it
                await asyncio.sleep(interval if interval > 0 else 1.0)
                if interval <= 0 or self.runtime.origin.path is None:
                    continue  # SIGHUP only
                current = self._read_fingerprint()
                if current is not None and current != self._fingerprint:
                    self.reload("file changed")
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
