"""`otlp-gateway drain`: deliver what a removed replica left in its durable queue directory.

A replica scaled away keeps its volume; what it had acknowledged and not yet delivered is still
in `queue.directory` there. This opens every queue found in that directory (`<backend>` and
`<backend>@<tenant>`, also under `worker-<i>/` when the replica ran several worker processes)
with the backends of the config, delivers with the pipeline's own destinations (the same merge,
retry, split and drop rules as `serve`), and stops once every queue is empty or the deadline has
passed; what is not delivered by then stays on disk for a later drain. No listener is opened.

Retries go on until the deadline (the config's retry.max_elapsed when that is longer): the
operator chose how long to wait for a backend, and a batch given up on would be lost for good.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.config import BackendConfig, GatewayConfig, QueueConfig
from gateway.config.reader import seconds
from gateway.delivery.pipeline import Destination, make_queue
from gateway.delivery.queues import DurableQueue
from gateway.delivery.spool import QUARANTINE_DIR, SpoolError, count_quarantined
from gateway.telemetry.recent import RecentErrors

log = logging.getLogger("otlp_gateway.drain")

WORKER_DIR = re.compile(r"^worker-(\d+)$")


class DrainError(Exception):
    """The drain cannot start: what is wrong and what to do. `status`: 2 when the directory or
    the config is wrong, 1 when a queue cannot be opened (in use, unreadable)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def duration(text: str) -> float:
    """Seconds from `5m`, `30s`, `500ms`, `1h` or a number of seconds (--timeout)."""
    result = seconds(text)
    if result is None or result <= 0:
        raise ValueError(f"--timeout must be a duration such as 30s or 5m, got {text!r}")
    return result


@dataclass(frozen=True)
class FoundQueue:
    """A queue directory, and the backend (and tenant) its name says it belongs to."""

    directory: Path
    backend: BackendConfig  # with its queue pointed at the drained directory
    tenant: str | None
    worker: int | None

    @property
    def label(self) -> str:
        name = self.backend.name if self.tenant is None else f"{self.backend.name}[{self.tenant}]"
        return name if self.worker is None else f"{name} (worker {self.worker})"


def find_queues(root: Path, config: GatewayConfig) -> list[FoundQueue]:
    """Every queue directory under `root` (and its `worker-<i>/`), matched to the config's
    backends by the name the pipeline gives it (make_queue). Raises DrainError for a directory
    no backend of the config would have made."""
    if not root.is_dir():
        raise DrainError(f"--queue-dir {root}: no such directory")
    # every backend as a durable queue under `root`: where make_queue puts its directories
    backends = {
        name: dataclasses.replace(
            b, queue=QueueConfig(durable=True, directory=str(root), max_bytes=b.queue.max_bytes)
        )
        for name, b in config.backends.items()
    }
    places: list[tuple[Path, int | None]] = [(root, None)]
    for sub in sorted(root.iterdir()):
        m = WORKER_DIR.match(sub.name)
        if m and sub.is_dir():
            places.append((sub, int(m.group(1))))
    found: list[FoundQueue] = []
    unknown: list[str] = []
    for place, worker in places:
        for sub in sorted(place.iterdir()):
            if not sub.is_dir() or sub.name.startswith("."):
                continue
            if worker is None and WORKER_DIR.match(sub.name):
                continue  # a worker process's queues: a place of its own
            match = _match(sub, backends, worker)
            if match is None:
                unknown.append(str(sub.relative_to(root)))
            else:
                found.append(match)
    if unknown:
        raise DrainError(
            f"{root}: the queue directories {', '.join(unknown)} name no backend of the config "
            f"(backends: {', '.join(sorted(config.backends)) or 'none'}); drain with the config "
            "the replica ran, or point --queue-dir at its queue.directory (which holds one "
            "directory per backend)"
        )
    return found


def _match(
    directory: Path, backends: dict[str, BackendConfig], worker: int | None
) -> FoundQueue | None:
    for backend in backends.values():
        own = _queue_dir(backend, None, worker)
        if directory == own:
            return FoundQueue(directory, backend, None, worker)
        prefix = own.name + "@"
        tenant = directory.name[len(prefix) :] if directory.name.startswith(prefix) else ""
        if tenant and _queue_dir(backend, tenant, worker) == directory:
            return FoundQueue(directory, backend, tenant, worker)
    return None


def _queue_dir(backend: BackendConfig, tenant: str | None, worker: int | None) -> Path:
    queue = make_queue(backend, tenant, worker)
    assert isinstance(queue, DurableQueue)
    return queue.directory


@dataclass
class Outcome:
    queue: FoundQueue
    found_batches: int = 0
    delivered_items: int = 0
    dropped_items: int = 0
    left_batches: int = 0
    left_bytes: int = 0
    quarantined: int = 0


async def drain(config: GatewayConfig, root: Path, timeout: float) -> list[Outcome]:
    """Deliver every queue under `root` until it is empty or `timeout` seconds have passed;
    what each queue had, delivered, dropped, and has left."""
    found = find_queues(root, config)
    retry = dataclasses.replace(config.retry, max_elapsed=max(config.retry.max_elapsed, timeout))
    recent = RecentErrors()
    opened: list[tuple[Outcome, DurableQueue, Destination]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        for q in found:
            queue = make_queue(q.backend, q.tenant, q.worker)
            assert isinstance(queue, DurableQueue)
            try:
                await queue.open()
            except SpoolError as exc:
                raise DrainError(
                    f"{exc} (drain only the queue of a replica that is gone)",
                    status=1,
                ) from exc
            destination = Destination(q.label, q.backend, retry, queue, recent)
            opened.append((Outcome(q, found_batches=queue.depth), queue, destination))
        for outcome, queue, destination in opened:  # every queue opened: start delivering
            if queue.depth:
                log.info("%s: %d batches to deliver", outcome.queue.label, queue.depth)
                destination.start()
        # Destination.drain: deliver what is queued, then stop; at the deadline, cancel (what
        # was in hand stays on disk, not acknowledged)
        await asyncio.gather(*(d.drain(deadline) for _, _, d in opened))
    finally:
        for outcome, queue, destination in opened:
            outcome.delivered_items = destination.delivered_items
            outcome.dropped_items = destination.dropped_items
            outcome.left_batches = queue.spool.unacked_records
            outcome.left_bytes = queue.spool.unacked_bytes
            await queue.close()
            outcome.quarantined = count_quarantined(queue.directory)
    return [o for o, _, _ in opened]


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def run(config: GatewayConfig, root: Path, timeout: float) -> int:
    """The command: drain, print what happened per queue; 0 when every queue is empty, 1 when
    the deadline passed with data left (or a queue could not be opened), 2 when the directory
    does not fit the config."""
    try:
        outcomes = asyncio.run(drain(config, root, timeout))
    except DrainError as exc:
        print(f"otlp-gateway drain: {exc}", file=sys.stderr)
        return exc.status
    if not outcomes:
        print(f"{root}: no queues: nothing to drain")
        return 0
    left = [o for o in outcomes if o.left_batches]
    for o in outcomes:
        line = (
            f"{o.queue.label}: {o.found_batches} batches found, {o.delivered_items} items delivered"
        )
        if o.dropped_items:
            line += f", {o.dropped_items} dropped (refused by the backend: see the log)"
        if o.left_batches:
            line += f", {o.left_batches} batches ({_size(o.left_bytes)}) left"
        if o.quarantined:
            line += (
                f"; {o.quarantined} records in {o.queue.directory / QUARANTINE_DIR} could not be "
                "delivered: look at them before deleting the volume"
            )
        print(f"{line}  [{o.queue.directory}]")
    if left:
        what = "; ".join(
            f"{o.queue.label}: {o.left_batches} batches ({_size(o.left_bytes)}) in "
            f"{o.queue.directory}"
            for o in left
        )
        print(
            f"otlp-gateway drain: the deadline ({timeout:g}s) passed with data left: {what}. "
            "It stays on disk: run drain again once the backend takes data (the log says why "
            "it did not), or with a longer --timeout",
            file=sys.stderr,
        )
        return 1
    print(f"{root}: every queue is empty")
    return 0
