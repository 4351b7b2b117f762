"""Routing and delivery: every batch goes to each of its destinations' queues; each destination
has its own queue, workers and retry, so one slow or failing backend never holds back another.

Per destination: queue -> retry -> timeout -> send (the exporter does the sending and its own
timeout). A batch is accepted only when every destination has room for it; otherwise the client is
told to come back later (429 / RESOURCE_EXHAUSTED with a retry delay) and nothing is enqueued, so a
client's retry does not duplicate data into the destinations that did have room.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping

from .batch import Batch
from .config import BackendConfig, RetryConfig
from .errors import Throttled, Unavailable
from .exporters import Exporter, ExportError, create_exporter

log = logging.getLogger("otlp_gateway.pipeline")

# What a client is told to wait when a destination queue is full.
FULL_QUEUE_RETRY_AFTER = 1.0


class Destination:
    """One backend's queue and delivery workers."""

    def __init__(
        self,
        name: str,
        exporter_factory: Callable[[], Exporter],
        *,
        max_bytes: int,
        concurrency: int,
        retry: RetryConfig,
        config: BackendConfig,
    ) -> None:
        self.name = name
        self.config = config
        self.retry = retry
        # Exporters are made in start(): their clients bind to the running event loop.
        self._exporter_factory = exporter_factory
        self._exporter: Exporter | None = None
        self._max_bytes = max_bytes
        self._concurrency = concurrency
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        self._queued_bytes = 0  # queued and in delivery
        self._delivering_items = 0
        self._workers: list[asyncio.Task[None]] = []
        self.delivered_items = 0
        self.dropped_items = 0
        self.last_error: str | None = None

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def has_room(self, size: int) -> bool:
        # An empty queue takes any batch, so one batch larger than max_bytes is not refused forever.
        return self._queued_bytes == 0 or self._queued_bytes + size <= self._max_bytes

    def put(self, batch: Batch) -> None:
        self._queued_bytes += len(batch.payload)
        self._queue.put_nowait(batch)

    def start(self) -> None:
        self._exporter = self._exporter_factory()
        self._workers = [
            asyncio.create_task(self._work(), name=f"export-{self.name}-{i}")
            for i in range(self._concurrency)
        ]

    async def _work(self) -> None:
        while (batch := await self._queue.get()) is not None:
            self._delivering_items += batch.items
            try:
                await self._deliver(batch)
            finally:
                self._delivering_items -= batch.items
                self._queued_bytes -= len(batch.payload)

    def take_queued(self) -> list[Batch]:
        """Remove and return the batches not yet being delivered (for a replacement destination)."""
        taken = []
        while not self._queue.empty():
            batch = self._queue.get_nowait()
            if batch is not None:
                taken.append(batch)
                self._queued_bytes -= len(batch.payload)
        return taken

    async def _deliver(self, batch: Batch) -> None:
        started = time.monotonic()
        delay = self.retry.initial_interval
        attempt = 0
        while True:
            attempt += 1
            assert self._exporter is not None
            try:
                await self._exporter.export(batch)
            except ExportError as exc:
                self.last_error = str(exc)
                elapsed = time.monotonic() - started
                if not exc.retryable:
                    self._drop(batch, f"permanent error: {exc}")
                    return
                wait = (
                    exc.retry_after
                    if exc.retry_after is not None
                    else delay * random.uniform(0.5, 1.5)
                )
                if elapsed + wait > self.retry.max_elapsed:
                    self._drop(batch, f"gave up after {attempt} attempts in {elapsed:.0f}s: {exc}")
                    return
                log.info(
                    "backend %s: attempt %d for %d %s failed, retrying in %.1fs: %s",
                    self.name,
                    attempt,
                    batch.items,
                    batch.signal.item_name,
                    wait,
                    exc,
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.retry.max_interval)
            except Exception as exc:  # an exporter bug must not kill the worker
                log.exception("backend %s: unexpected export failure", self.name)
                self._drop(batch, f"unexpected error: {exc!r}")
                return
            else:
                self.delivered_items += batch.items
                self.last_error = None
                return

    def _drop(self, batch: Batch, reason: str) -> None:
        self.dropped_items += batch.items
        log.error(
            "backend %s: dropped %d %s of tenant %s: %s",
            self.name,
            batch.items,
            batch.signal.item_name,
            batch.tenant,
            reason,
        )

    async def drain(self, deadline: float) -> None:
        """Stop taking new work once the queue is empty, deliver what is queued until `deadline`
        (a loop.time() value), then cancel what is left."""
        for _ in self._workers:
            self._queue.put_nowait(None)  # each worker stops when it reaches one
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        left = 0
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=timeout)
            left += self._delivering_items  # in delivery (retrying) when the deadline came
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        left += sum(b.items for b in self.take_queued())
        if left:
            log.error(
                "backend %s: %d items not delivered by the deadline were lost", self.name, left
            )
        if self._exporter is not None:
            await self._exporter.aclose()


class Pipeline:
    """Routes accepted batches to the destinations named for them."""

    def __init__(self, backends: Mapping[str, BackendConfig], retry: RetryConfig) -> None:
        self.destinations: dict[str, Destination] = {}
        self._accepting = False
        self._started = False
        self._retiring: set[asyncio.Task[None]] = set()
        self.reconfigure(backends, retry)

    @staticmethod
    def _destination(config: BackendConfig, retry: RetryConfig) -> Destination:
        return Destination(
            config.name,
            functools.partial(create_exporter, config),
            max_bytes=config.queue_max_bytes,
            concurrency=config.concurrency,
            retry=retry,
            config=config,
        )

    def reconfigure(self, backends: Mapping[str, BackendConfig], retry: RetryConfig) -> None:
        """Take a new set of backends: unchanged ones keep their queue; changed or removed ones
        deliver what they have queued in the background and then close."""
        new: dict[str, Destination] = {}
        for name, config in backends.items():
            old = self.destinations.get(name)
            if old is not None and old.config == config and old.retry == retry:
                new[name] = old
                continue
            new[name] = self._destination(config, retry)
            if self._started:
                new[name].start()
            if old is not None:  # what the old one had not started on goes out the new way
                for batch in old.take_queued():
                    new[name].put(batch)
        retired = [d for name, d in self.destinations.items() if new.get(name) is not d]
        self.destinations = new
        for d in retired:
            task = asyncio.get_running_loop().create_task(self._retire(d))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, destination: Destination) -> None:
        # What it is delivering keeps its full retry budget; a shutdown cuts it short.
        deadline = asyncio.get_running_loop().time() + destination.retry.max_elapsed
        await destination.drain(deadline)

    async def start(self) -> None:
        for d in self.destinations.values():
            d.start()
        self._started = True
        self._accepting = True

    def submit(self, batch: Batch, targets: Iterable[str]) -> None:
        """Accept a batch for delivery to the named backends, or raise Throttled/Unavailable
        (both retryable)."""
        if not self._accepting:
            raise Unavailable(
                "the gateway is shutting down; retry against another replica", retry_after=1.0
            )
        if batch.items == 0:
            return
        destinations = [self.destinations[name] for name in targets]
        size = len(batch.payload)
        for d in destinations:
            if not d.has_room(size):
                raise Throttled(
                    f"the queue for backend {d.name} is full; retry after "
                    f"{FULL_QUEUE_RETRY_AFTER:.0f}s",
                    retry_after=FULL_QUEUE_RETRY_AFTER,
                )
        for d in destinations:
            d.put(batch)

    async def shutdown(self, timeout: float) -> None:
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        retiring = list(self._retiring)
        await asyncio.gather(*(d.drain(deadline) for d in self.destinations.values()))
        if retiring:  # retired destinations get the same deadline as the rest
            _, pending = await asyncio.wait(retiring, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
