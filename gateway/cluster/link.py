"""The connection to the fleet's Redis, and whether it answers. Every call goes through
ClusterLink.call, which bounds it by the configured timeout and maps Redis's errors to "down":
a replica never waits on Redis longer than that, and never fails a request because of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config.model import ClusterConfig

log = logging.getLogger("otlp_gateway")
T = TypeVar("T")
KEY_ROOT = "otlp-gateway"


def replica_id(worker: int | None = None) -> str:
    """This process's name in the fleet: host and pid (and the worker index with `workers: N`),
    unique while it lives and readable on the status page."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if worker is None else f"{base}/w{worker}"


class ClusterLink:
    def __init__(self, config: ClusterConfig, replica: str) -> None:
        self.config = config
        self.replica = replica
        self.prefix = f"{KEY_ROOT}:{config.name}:"
        # no retries inside the client: a failed call is answered by falling back at once
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            config.redis,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            retry_on_timeout=False,
        )
        self.up = False  # until the first call answers
        self.answered = False  # ever: the first answer is not a recovery
        self.down_since: float | None = time.time()
        self.last_error = "not connected yet"

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """op(client) within the timeout; None (and the link marked down) when Redis fails."""
        try:
            result = await asyncio.wait_for(op(self.client), self.config.timeout * 2)
        except (TimeoutError, RedisError, OSError) as exc:
            self._down(exc)
            return None
        if not self.up:
            self.up = True
            self.down_since = None
            again = " again" if self.answered else ""
            self.answered = True
            log.info("cluster %s: Redis answers; quotas are shared%s", self.config.name, again)
        return result

    def _down(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.up or self.down_since is None:
            log.warning(
                "cluster %s: Redis does not answer (%s); each replica uses its share of the "
                "quotas until it does",
                self.config.name,
                self.last_error,
            )
        self.up = False
        if self.down_since is None:
            self.down_since = time.time()

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # a connection that is already gone
            await self.client.aclose()


async def cancel(task: asyncio.Task[object] | None) -> None:
    """Cancel `task` and wait until it has ended. Asked again until it ends: on Python 3.11 a
    cancellation that arrives as an inner asyncio.wait_for (every call to Redis) completes is
    lost, and the task would run on."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if task is not None and not task.cancelled():
        with contextlib.suppress(BaseException):  # its outcome was logged where it happened
            task.result()
