"""A task that runs a coroutine every so often on the event loop, and once more when stopped: the
clock of the periodic OTLP metric exports (RED metrics, self-telemetry)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("otlp_gateway.periodic")


class Periodic:
    """`tick(final)` every `every` seconds from start() until stop(), which lets a running tick
    finish (a submit is never cancelled half done) and then calls tick(True): what was counted
    since the last export is sent before the pipeline drains. A tick that raises is logged and
    the next one runs as usual."""

    def __init__(
        self, name: str, tick: Callable[[bool], Awaitable[None]], every: float = 0.5
    ) -> None:
        self.name = name
        self.every = every
        self._tick = tick
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await task
        await self._safe(final=True)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.every)
            if not self._stopping.is_set():
                await self._safe(final=False)

    async def _safe(self, final: bool) -> None:
        try:
            await self._tick(final)
        except Exception:  # a bug must not end the exports, nor the shutdown
            log.exception("%s: a periodic export failed", self.name)
