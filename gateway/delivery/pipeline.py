"""Routing and delivery: every batch goes to each of its destinations' queues; each destination
has its own queue, workers and retry, so one slow or failing backend never holds back another.

A destination is a backend, or a backend and a tenant when the backend's headers name the tenant
(`{tenant}`): then each tenant has its own queue, and one tenant's failures (a 401 or 429 for its
org id) never hold back another's data.

Per destination: queue -> merge (merge.py) -> retry (retry.py) -> timeout -> send (the exporter
does the sending and its own timeout); accounting.py counts and logs what happens. A batch is
accepted only when every destination has room for it and, with durable queues, once it is on disk
in every one of them; otherwise the client is told to come back later (429 / RESOURCE_EXHAUSTED
with a retry delay) and nothing is enqueued, so a client's retry does not duplicate data into the
destinations that did have room.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from gateway.config import BackendConfig, RetryConfig
from gateway.delivery.accounting import DeliveryTelemetry
from gateway.delivery.batch import Batch
from gateway.delivery.exporters import Exporter, ExportError, create_exporter
from gateway.delivery.merge import MergeMemo, Run, halves, piece, tally
from gateway.delivery.queues import DurableQueue, MemoryQueue, Queue
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.spool import SpoolClosed, SpoolError, SpoolFull
from gateway.errors import Throttled, Unavailable
from gateway.otlp import split
from gateway.telemetry import metrics
from gateway.telemetry.recent import RecentErrors

log = logging.getLogger("otlp_gateway.pipeline")

# What a client is told to wait when a destination queue is full.
FULL_QUEUE_RETRY_AFTER = 1.0

Key = tuple[str, str | None]
# Exports smaller than this wait `batch_linger` for more to merge (a 512-span request is ~245 KB:
# large requests are sent as soon as they are taken)
LINGER_BELOW_BYTES = 64 * 1024  # (backend, tenant when the backend's headers name the tenant)


def queue_full(backend: str) -> Throttled:
    """The refusal of a request the queue of `backend` has no room for."""
    return Throttled(
        f"the queue for backend {backend} is full; retry after {FULL_QUEUE_RETRY_AFTER:.0f}s",
        retry_after=FULL_QUEUE_RETRY_AFTER,
        reason="queue_full",
    )


def _dir_name(backend: str, tenant: str | None) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", backend)
    return safe if tenant is None else f"{safe}@{tenant}"


def queue_base(config: BackendConfig, worker: int | None = None) -> Path:
    """The directory a backend's durable queues live under; each worker process has its own."""
    base = Path(config.queue.directory)
    return base if worker is None else base / f"worker-{worker}"


def make_queue(config: BackendConfig, tenant: str | None, worker: int | None = None) -> Queue:
    q = config.queue
    if q.durable:
        directory = queue_base(config, worker) / _dir_name(config.name, tenant)
        return DurableQueue(directory, q.max_bytes)
    return MemoryQueue(q.max_bytes)


# Splitting a request of this size or more at the wire level takes milliseconds (80 ms for a
# 16 MiB request of one resource): done in a worker thread, off the event loop.
_SPLIT_OFF_LOOP_BYTES = 1024 * 1024


async def _halves_off_loop(parts: list[Batch]) -> tuple[list[Batch], list[Batch]] | None:
    if len(parts) == 1 and len(parts[0].payload) >= _SPLIT_OFF_LOOP_BYTES:
        return await asyncio.to_thread(halves, parts)
    return halves(parts)


class _Done:
    """Delivered, or dropped (counted and logged)."""


class _TooLarge:
    """Refused as too large (413): the caller sends it in smaller parts."""


_DELIVERED, _DROPPED, _TOO_LARGE = _Done(), _Done(), _TooLarge()
_Outcome = _Done | _TooLarge | ExportError  # an ExportError: refused as invalid

# How far _isolate bisects a batch refused as invalid: levels in a row in which the backend took
# no part (it refuses everything: 1 + 2 + 4 + 8 attempts), and attempts in all.
STALLED_LEVELS = 3
MAX_ISOLATE_ATTEMPTS = 64


class _Mode(enum.Enum):
    """How far a destination's workers go on."""

    RUN = "run"
    RETIRE = "retire"  # a new Destination takes over the queue: finish the batches in hand
    DRAIN = "drain"  # shutdown: deliver what is queued, then stop


class Destination:
    """The workers that deliver one queue's batches with one backend config. On a reload that
    changes the backend, a new Destination takes over the same queue."""

    def __init__(
        self,
        name: str,
        config: BackendConfig,
        retry: RetryConfig,
        queue: Queue,
        recent: RecentErrors,
        merges: MergeMemo | None = None,
        on_invalid: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._merges = merges or MergeMemo()
        # told the tenant whose data the backend refused as invalid (gateway/otlp/validate.py)
        self._on_invalid = on_invalid
        self.config = config
        self.retry = retry  # Pipeline compares it on a reload
        self._retry_policy = RetryPolicy.from_config(retry)
        self.queue = queue
        self._telemetry = DeliveryTelemetry(name, config.name, recent)
        self._exporter: Exporter | None = None  # made in start(): it binds to the running loop
        self._workers: list[asyncio.Task[None]] = []
        self._idle: set[asyncio.Task[None] | None] = set()
        self._forming = asyncio.Lock()  # held while a worker takes a run and lingers
        self._mode = _Mode.RUN
        self._in_hand_items = 0  # taken from the queue, not yet delivered or dropped
        self.retrying = False  # the last attempt failed and a retry is pending

    # What the admin listener shows, kept by the telemetry.

    @property
    def delivered_items(self) -> int:
        return self._telemetry.delivered_items

    @property
    def dropped_items(self) -> int:
        return self._telemetry.dropped_items

    @property
    def last_error(self) -> str | None:
        return self._telemetry.last_error

    @property
    def last_error_time(self) -> float:
        """Unix seconds; 0 before any error."""
        return self._telemetry.last_error_time

    def start(self) -> None:
        self._exporter = create_exporter(self.config)
        self._workers = [
            asyncio.create_task(self._work(), name=f"export-{self.name}-{i}")
            for i in range(self.config.concurrency)
        ]

    def _should_stop(self) -> bool:
        return self._mode is _Mode.RETIRE or (self._mode is _Mode.DRAIN and self.queue.depth == 0)

    async def _work(self) -> None:
        """A worker: take, merge, deliver, acknowledge, until stopped. It survives anything one
        batch does: an exception is logged and counted, the batch is put aside (a durable
        queue's quarantine) and the worker goes on with the next."""
        me = asyncio.current_task()
        carry: list[tuple[int, Batch]] = []
        while True:
            try:
                if not await self._step(me, carry):
                    return
            except SpoolClosed:
                return
            except Exception as exc:  # a bug must not stop this destination
                self._telemetry.worker_error(exc)
                await asyncio.sleep(0.1)  # should the error repeat, do not spin

    def _set_aside(self, run: Run, exc: BaseException) -> None:
        """Batches whose delivery raised: a durable queue keeps them in its quarantine, a memory
        queue cannot (dropped, counted as unexpected)."""
        reason = f"its delivery failed unexpectedly ({exc!r})"
        for token, part in zip(run.tokens, run.parts, strict=True):
            self.queue.quarantine(token, reason, part)
            self._in_hand_items -= part.items
            if not self.queue.durable:
                self._telemetry.drop(part, "unexpected", f"unexpected error: {exc!r}")

    async def _step(self, me: asyncio.Task[None] | None, carry: list[tuple[int, Batch]]) -> bool:
        """Take a batch (and what merges with it), deliver, acknowledge. False: stop."""
        if carry:  # what did not merge with this worker's last run starts its next one
            token, batch = carry.pop()
            run = Run(token, batch, self.config.batch_max_bytes)
            self._gather(run, carry)
        else:
            # One run forms at a time (deliveries overlap): what arrives while it lingers joins
            # it, instead of starting a run in each idle worker (4 small exports where 1 would
            # do). Never with a carried batch in hand: that waits for nothing.
            async with self._forming:
                if self._should_stop():
                    return False
                self._idle.add(me)
                try:
                    token, batch = await self.queue.get()
                finally:
                    self._idle.discard(me)
                self._in_hand_items += batch.items
                # Merge what is already queued for the same signal and tenant. What does not
                # merge starts the next run.
                run = Run(token, batch, self.config.batch_max_bytes)
                self._gather(run, carry)
                if not carry and run.size < LINGER_BELOW_BYTES and self.config.batch_linger > 0:
                    # A small export waits a moment for more small requests to ride along: one
                    # export of many costs a fraction of many exports (gzip, a request to the
                    # backend). The clients were answered when their requests were queued:
                    # this delays delivery, never an acknowledgement.
                    await asyncio.sleep(self.config.batch_linger)
                    self._gather(run, carry)
        try:
            await self._deliver_parts(run.parts)
        except Exception as exc:
            self._set_aside(run, exc)
            raise
        for t, part in zip(run.tokens, run.parts, strict=True):
            self.queue.ack(t)  # only now: a cancelled delivery stays queued (on disk)
            self._in_hand_items -= part.items
        return True

    def _gather(self, run: Run, carry: list[tuple[int, Batch]]) -> None:
        """Add to `run` what is queued now and merges with it; the first that does not merge
        goes to `carry`."""
        while run.has_room():
            nxt = self.queue.get_nowait()
            if nxt is None:
                return
            self._in_hand_items += nxt[1].items
            if not run.take(*nxt):
                carry.append(nxt)
                return

    async def _deliver_parts(self, parts: list[Batch]) -> None:
        first = parts[0]
        if len(parts) == 1 and len(first.payload) > self.config.batch_max_bytes:
            # one request over the backend's batch size: send it in pieces (split off the
            # event loop: milliseconds for a request of several MiB)
            pieces = await asyncio.to_thread(
                split.split, first.signal, first.payload, self.config.batch_max_bytes
            )
            for p in pieces:
                await self._deliver_group([piece(first, p)])
            return
        await self._deliver_group(parts)

    async def _deliver_group(self, parts: list[Batch]) -> None:
        """Deliver the requests `parts` as one batch. Refused as too large (413): send the
        requests it was made of, a single one in halves. Refused as invalid (400): find and
        drop what the backend refuses on its own, deliver the rest (_isolate)."""
        batch = parts[0] if len(parts) == 1 else self._merges.merge(parts)
        outcome = await self._deliver(batch)
        if outcome is _TOO_LARGE:
            if len(parts) > 1:
                for part in parts:
                    await self._deliver_group([part])
                return
            pair = await _halves_off_loop([batch])
            if pair is None:  # a single item the backend will not take
                self._telemetry.drop(
                    batch,
                    "too_large",
                    "the backend refuses it as too large, and it holds one item",
                )
                return
            for half in pair:
                await self._deliver_group(half)
        elif isinstance(outcome, ExportError):
            await self._isolate(parts, batch, outcome)

    async def _isolate(self, parts: list[Batch], batch: Batch, refusal: ExportError) -> None:
        """The backend refused `batch` (made of `parts`) as invalid: one bad request or item
        must not cost the good ones merged with it. Bisect, level by level: first along the
        requests that were merged, then inside a request with the wire-level splitter down to
        single items; halves the backend takes are delivered, refused ones are halved again,
        a refused single item is dropped. One bad item costs about 2 log2(n) attempts. A
        backend that refuses everything is given up on after STALLED_LEVELS levels in which
        nothing was taken (15 attempts), or MAX_ISOLATE_ATTEMPTS in all; what is left then is
        dropped. Ends with one log line."""
        level = [parts]
        attempts = 1
        stalled = 0
        delivered_items = 0
        dropped: list[Batch] = []
        gave_up = False
        while level:
            refused: list[list[Batch]] = []
            took = False
            for group in level:
                pair = await _halves_off_loop(group)
                if pair is None:  # a single item: the backend refuses it on its own
                    dropped.append(tally(group))
                    continue
                for half in pair:
                    if attempts >= MAX_ISOLATE_ATTEMPTS:
                        gave_up = True
                        dropped.append(tally(half))
                        continue
                    attempts += 1
                    part = half[0] if len(half) == 1 else self._merges.merge(half)
                    outcome = await self._deliver(part)
                    if outcome is _DELIVERED:
                        delivered_items += part.items
                        took = True
                    elif outcome is _TOO_LARGE:
                        await self._deliver_group(half)  # smaller parts still fit
                        took = True
                    else:
                        refused.append(half)
            stalled = 0 if took else stalled + 1
            if stalled >= STALLED_LEVELS or attempts >= MAX_ISOLATE_ATTEMPTS:
                gave_up = gave_up or bool(refused)
                dropped.extend(tally(g) for g in refused)
                break
            level = refused
        items = 0
        for d in dropped:
            items += d.items
            self._telemetry.count_drop(d, "permanent_error")
        reason = (
            f"permanent error: {refusal}; the backend refused a batch of {batch.items} "
            f"{batch.signal.item_name} ({len(parts)} requests) as invalid, so it was split: "
            f"{delivered_items} delivered, {items} in {len(dropped)} parts refused on their own "
            f"({attempts} attempts)"
        )
        if gave_up:
            reason += "; gave up splitting further: the backend refused too many of the parts"
        elif dropped and self._on_invalid is not None:
            self._on_invalid(batch.tenant)
        self._telemetry.report_drop(batch, items, reason)

    async def _deliver(self, batch: Batch) -> _Outcome:
        """Deliver with the OTLP retry rules. Returns _TOO_LARGE when the backend refused the
        batch as too large and the ExportError when it refused its content as invalid (the
        caller splits it); otherwise it is _DELIVERED or _DROPPED (counted and logged)."""
        backoff = self._retry_policy.start()
        attempt = 0
        assert self._exporter is not None
        while True:
            attempt += 1
            if attempt > 1:
                self._telemetry.retried(batch)
            began = time.monotonic()
            try:
                await self._exporter.export(batch)
            except ExportError as exc:
                self._telemetry.failed(batch, exc, time.monotonic() - began)
                if exc.too_large:
                    return _TOO_LARGE
                if exc.invalid and not exc.retryable:
                    self.retrying = False
                    return exc
                if not exc.retryable:
                    self.retrying = False
                    self._telemetry.drop(batch, "permanent_error", f"permanent error: {exc}")
                    return _DROPPED
                decision = backoff.next(exc.retry_after)
                if decision.wait is None:
                    self._telemetry.drop(
                        batch,
                        "retries_exhausted",
                        f"gave up after {attempt} attempts in {decision.elapsed:.0f}s: {exc}",
                    )
                    return _DROPPED
                self.retrying = True
                self._telemetry.retrying(batch, attempt, decision.wait, exc)
                await asyncio.sleep(decision.wait)
            except Exception as exc:  # an exporter bug must not kill the worker
                self._telemetry.crashed(batch, exc)
                return _DROPPED
            else:
                self._telemetry.exported(batch, time.monotonic() - began)
                self.retrying = False
                return _DELIVERED

    def _cancel_idle(self) -> None:
        for task in list(self._idle):
            if task is not None:
                task.cancel()

    async def _stop(self, deadline: float) -> int:
        """Wait for the workers until `deadline` (loop time), then cancel them. Returns the items
        they held when cancelled."""
        if self._should_stop():
            self._cancel_idle()  # waiting for a batch that will not come
        lost = 0
        if self._workers:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            _, pending = await asyncio.wait(self._workers, timeout=timeout)
            if pending:
                lost = self._in_hand_items
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self._exporter is not None:
            await self._exporter.aclose()
        return lost

    async def retire(self, deadline: float) -> None:
        """Hand the queue over: finish the batches in hand (up to `deadline`), take no more."""
        self._mode = _Mode.RETIRE
        lost = await self._stop(deadline)
        if lost and not self.queue.durable:
            self._telemetry.lost_at_stop(lost, "in delivery at the deadline")

    async def drain(self, deadline: float) -> None:
        """Shutdown: deliver what is queued until `deadline`, then stop. A durable queue keeps
        what is left for the next start."""
        self._mode = _Mode.DRAIN
        lost = await self._stop(deadline)
        if not self.queue.durable:
            lost += self.queue.pending_items()
            if lost:
                self._telemetry.lost_at_stop(lost, "not delivered by the deadline")
        elif self.queue.depth:
            log.info(
                "backend %s: %d queued batches stay on disk for the next start",
                self.name,
                self.queue.depth,
            )


class Pipeline:
    """Routes accepted batches to the destinations named for them."""

    def __init__(
        self,
        backends: Mapping[str, BackendConfig],
        retry: RetryConfig,
        worker: int | None = None,
        recent: RecentErrors | None = None,
    ) -> None:
        self.worker = worker  # the worker process's index when there are several
        self.recent = recent or RecentErrors()  # export failures and drops are noted here
        self.backends: dict[str, BackendConfig] = self._own(backends)
        self._per_tenant = self._tenant_split(self.backends)
        self.retry = retry
        self.destinations: dict[Key, Destination] = {}
        self._queues: dict[Key, Queue] = {}
        self._opening: dict[Key, asyncio.Future[Destination]] = {}
        self._accepting = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._merges = MergeMemo()
        # called with a tenant whose data a backend refused as invalid (app.py wires it)
        self.on_invalid: Callable[[str], None] | None = None

    def _own(self, backends: Mapping[str, BackendConfig]) -> dict[str, BackendConfig]:
        """The backends as this process uses them: with several workers, each writes file
        backends into its own subdirectory (two processes never append to one file)."""
        if self.worker is None:
            return dict(backends)
        sub = f"worker-{self.worker}"
        return {
            name: replace(b, path=str(Path(b.path) / sub)) if b.protocol == "file" else b
            for name, b in backends.items()
        }

    @staticmethod
    def per_tenant(config: BackendConfig) -> bool:
        return any("{tenant}" in v for v in config.headers.values())

    @classmethod
    def _tenant_split(cls, backends: Mapping[str, BackendConfig]) -> frozenset[str]:
        """The backends that get a queue per tenant."""
        return frozenset(name for name, c in backends.items() if cls.per_tenant(c))

    async def start(self) -> None:
        for name, config in self.backends.items():
            if not self.per_tenant(config):
                await self._open((name, None))
            elif config.queue.durable:  # replay the tenants' queues left on disk
                base = queue_base(config, self.worker)
                prefix = _dir_name(name, None) + "@"
                if base.is_dir():
                    for sub in sorted(base.iterdir()):
                        if sub.name.startswith(prefix) and sub.is_dir():
                            await self._open((name, sub.name[len(prefix) :]))
        self._accepting = True

    async def _open(self, key: Key) -> Destination:
        name, tenant = key
        config = self.backends[name]
        queue = self._queues.get(key)
        if queue is None:
            queue = make_queue(config, tenant, self.worker)
            try:
                await queue.open()
            except SpoolError as exc:
                raise Unavailable(f"the queue of backend {name} cannot be opened: {exc}") from exc
            self._queues[key] = queue
        label = name if tenant is None else f"{name}[{tenant}]"
        d = Destination(label, config, self.retry, queue, self.recent, self._merges, self._invalid)
        d.start()
        self.destinations[key] = d
        self._merges.update(d.queue for d in self.destinations.values())
        return d

    async def _open_once(self, key: Key) -> Destination:
        opening = self._opening.get(key)
        if opening is None:  # one opener per key; concurrent requests wait for it
            opening = asyncio.ensure_future(self._open(key))
            self._opening[key] = opening
            opening.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(opening)

    def reconfigure(self, backends: Mapping[str, BackendConfig], retry: RetryConfig) -> None:
        """Take a new set of backends. Unchanged ones carry on. A changed one gets new workers and
        exporter on the same queue, so nothing queued is dropped; the old workers finish the
        batches in hand. A removed one delivers what it has queued, then closes."""
        old_backends, self.backends, self.retry = self.backends, self._own(backends), retry
        self._per_tenant = self._tenant_split(self.backends)
        loop = asyncio.get_running_loop()
        for key, d in list(self.destinations.items()):
            name = key[0]
            config = self.backends.get(name)
            if config is not None and config == d.config and retry == d.retry:
                continue
            if config is not None and config.queue != old_backends[name].queue:
                log.warning("backend %s: queue settings change at the next restart", name)
            deadline = loop.time() + d.retry.max_elapsed
            if config is None or self.per_tenant(config) != (key[1] is not None):
                # removed, or its queues are now split or joined differently: deliver, then close
                del self.destinations[key]
                self._later(self._close_removed(key, d, deadline))
                continue
            replacement = Destination(
                d.name, config, retry, d.queue, self.recent, self._merges, self._invalid
            )
            replacement.start()
            self.destinations[key] = replacement
            self._later(d.retire(deadline))
        self._merges.update(d.queue for d in self.destinations.values())

    async def _close_removed(self, key: Key, d: Destination, deadline: float) -> None:
        await d.drain(deadline)
        queue = self._queues.pop(key, None)
        if queue is not None:
            await queue.close()

    def _later(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def full(self, targets: Iterable[str], tenant: str, size: int) -> str | None:
        """The backend among `targets` whose queue has no room for `size` more bytes now, if
        any: lets a request that submit() would refuse be refused from its head, before its body
        is read and decoded (what overload costs). submit() checks again."""
        for name in targets:
            d = self.destinations.get((name, tenant if name in self._per_tenant else None))
            if d is not None and not d.queue.has_room(size):
                return d.name
        return None

    async def submit(self, batch: Batch, targets: Iterable[str]) -> None:
        """Accept a batch for delivery to the named backends, or raise Throttled/Unavailable
        (both retryable). Returns once the batch is in every queue (on disk, when durable)."""
        if not self._accepting:
            raise Unavailable(
                "the gateway is shutting down; retry against another replica", retry_after=1.0
            )
        if batch.items == 0:
            return
        destinations = []
        for name in targets:
            key: Key = (name, batch.tenant if name in self._per_tenant else None)
            d = self.destinations.get(key)
            destinations.append(d if d is not None else await self._open_once(key))
        size = len(batch.payload)
        # No await from here until every queue has the batch: the room checked is the room used.
        for d in destinations:
            if not d.queue.has_room(size):
                raise queue_full(d.name)
        durable = []
        try:
            for d in destinations:
                pending = d.queue.submit(batch)
                if pending is not None:
                    durable.append(pending)
            if durable:
                await asyncio.gather(*durable)
        except SpoolFull as exc:
            raise Throttled(
                f"{exc}", retry_after=FULL_QUEUE_RETRY_AFTER, reason="queue_full"
            ) from None
        except SpoolError as exc:
            raise Unavailable(
                f"could not store the batch durably: {exc}", retry_after=1.0, reason="storage"
            ) from None

    async def shutdown(self, timeout: float) -> None:
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.gather(*(d.drain(deadline) for d in self.destinations.values()))
        retiring = list(self._retiring)
        if retiring:  # retired destinations get the same deadline as the rest
            _, pending = await asyncio.wait(retiring, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for queue in self._queues.values():
            await queue.close()

    def _invalid(self, tenant: str) -> None:
        if self.on_invalid is not None:
            self.on_invalid(tenant)

    # -- what operators see -------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    def queue_readings(self) -> list[metrics.QueueReading]:
        return [
            metrics.QueueReading(
                backend=name,
                tenant=tenant or "",
                batches=d.queue.depth,
                bytes=d.queue.queued_bytes,
                max_bytes=d.queue.max_bytes,
                oldest_age=d.queue.oldest_age(),
                quarantined=d.queue.quarantined,
            )
            for (name, tenant), d in list(self.destinations.items())
        ]

    async def problems(self) -> list[str]:
        """Why the pipeline cannot take data now; empty when it can. Durable queues are probed
        with a real write, off the event loop."""
        if not self._accepting:
            return ["the pipeline is not accepting (starting or shutting down)"]
        found: list[str] = []
        for queue in list(self._queues.values()):
            if queue.durable:
                problem = await asyncio.to_thread(queue.problem)
            else:
                problem = queue.problem()
            if problem is not None:
                found.append(problem)
        return found

    async def warnings(self) -> list[str]:
        """What an operator must look at although the pipeline takes and delivers data:
        queue records in quarantine (counted on disk, off the event loop)."""
        found: list[str] = []
        for queue in list(self._queues.values()):
            if queue.durable:
                warning = await asyncio.to_thread(queue.warning)
                if warning is not None:
                    found.append(warning)
        return found
