"""Work done after a request was acknowledged, off the event loop: RED metrics and the live
tail's decoding of a tenant's spans (a 16 MiB request takes a second or more to go through).

One worker thread: it decodes one item at a time (gateway/otlp/spans.py), so the event loop, which
shares the GIL with it in `sys.getswitchinterval()` slices, waits at most for one item's parse.
What waits for the thread is bounded in bytes: past `max_pending_bytes` the work is skipped and
counted, so it can neither grow memory nor slow intake, and it never fails a request (it runs
after the acknowledgement; errors are logged).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.telemetry import metrics

log = logging.getLogger("otlp_gateway.background")

T = TypeVar("T")
MiB = 1024 * 1024
# Below this a request's decode is quicker inline (about 1 ms for RED metrics at 64 KiB) than
# the hand-off to a thread.
INLINE_BYTES = 64 * 1024


class Background:
    """One worker thread; `max_pending_bytes` bounds the payloads waiting for it."""

    def __init__(self, name: str, max_pending_bytes: int) -> None:
        self.name = name
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:  # made on first use: most gateways never decode spans
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        return self._executor

    def _reserve(self, size: int) -> bool:
        with self._lock:
            if self.pending_bytes + size > self.max_pending_bytes:
                metrics.BACKGROUND_SKIPPED.labels(self.name).inc()
                return False
            self.pending_bytes += size
            return True

    def _release(self, size: int) -> None:
        with self._lock:
            self.pending_bytes -= size

    def later(self, size: int, fn: Callable[[bytes], object], payload: bytes) -> bool:
        """Queue fn(payload), which holds `size` bytes until it has run, unless that would pass
        `max_pending_bytes` (then False: skipped). Errors are logged, never raised."""
        if not self._reserve(size):
            return False

        def job() -> None:
            try:
                fn(payload)
            except Exception:  # a bug must neither kill the worker nor reach a client
                log.exception("%s: work on an accepted request failed", self.name)
            finally:
                self._release(size)

        self._pool().submit(job)
        return True

    async def run(self, size: int, fn: Callable[[bytes], T], payload: bytes) -> T | None:
        """fn(payload) on the thread, awaited; None when it was skipped (over the bound)."""
        if not self._reserve(size):
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, payload)
        finally:
            self._release(size)

    def close(self) -> None:
        """Stop the thread (at the app's shutdown); work still waiting is dropped."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def span_analysis() -> Background:
    """The thread RED metrics and the tail share (RED's series bookkeeping then has a single
    writer off the loop), with at most 64 MiB of payloads waiting. The app makes one."""
    return Background("span-analysis", max_pending_bytes=64 * MiB)
