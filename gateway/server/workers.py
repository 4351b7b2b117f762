"""Several worker processes on the same ports (`workers: N`): each binds its own SO_REUSEPORT
sockets, so the kernel spreads connections over them, and each has its own pipeline, queues and
durable spool (`<queue directory>/worker-<i>/`), so nothing is shared and nothing is locked.

The parent only supervises: it forwards SIGTERM/SIGINT (graceful shutdown) and SIGHUP (reload)
to the workers and starts a worker again, with the same index and so the same spool, when one
dies. Worker i's admin listener is the configured admin port + i.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import CannotListen

log = logging.getLogger("otlp_gateway.workers")

# A worker that dies is started again after RESTART_DELAY, doubled at each death in a row up to
# RESTART_DELAY_MAX (a port taken by another program is not freed by trying every second); one
# that lived HEALTHY_AFTER seconds starts the count again.
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
HEALTHY_AFTER = 60.0
_TICK = 0.2  # how often the parent looks for a dead worker while one waits for its restart
_REASON_MAX = 1000  # bytes of a worker's last words the parent reads


# Serves worker `index` until it is told to stop (the server's serve, handed in by it: as
# uvicorn's Multiprocess takes its target, so this module needs nothing of the server's).
Target = Callable[[int], None]


@dataclass
class _Worker:
    """What the parent knows of worker `index` across its restarts."""

    index: int
    delay: float = RESTART_DELAY  # before the next start, if it dies now
    reason: str | None = None  # why it last died, as last logged
    started: float = 0.0  # monotonic
    pid: int = 0
    last_words: int = -1  # the read end of the pipe its failure is told through


def _run_worker(worker: _Worker, target: Target, last_words: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    index, code, reason = worker.index, 0, ""
    try:
        target(index)
    except CannotListen as exc:  # taken since the parent checked it: said without a traceback
        code, reason = 1, str(exc)
    except BaseException as exc:
        code, reason = 1, f"{type(exc).__name__}: {exc}"
        if reason != worker.reason:  # the traceback once, not at every restart
            log.exception("worker %d failed", index)
    finally:
        with contextlib.suppress(OSError):
            os.write(last_words, reason.encode()[:_REASON_MAX])
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def supervise(workers: int, target: Target) -> None:
    """Run `target(index)` for each index below `workers`, each in a process of its own; start
    one that dies again, later each time it keeps dying, and say why when that changes."""
    table = [_Worker(index) for index in range(workers)]
    children: dict[int, _Worker] = {}  # pid -> worker
    due: dict[int, float] = {}  # index -> when it is started again
    stopping = False

    def start(worker: _Worker) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            for other in table:  # the other workers' pipes are the parent's to read
                if other.last_words >= 0:
                    os.close(other.last_words)
            _run_worker(worker, target, write)
        os.close(write)
        os.set_blocking(read, False)  # read once it exited; never wait on a grandchild
        worker.pid, worker.started, worker.last_words = pid, time.monotonic(), read
        children[pid] = worker
        log.info("worker %d started (pid %d)", worker.index, pid)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for worker in table:
        start(worker)
    while children or (due and not stopping):
        if due and not stopping:
            now = time.monotonic()
            for index in [i for i, when in due.items() if when <= now]:
                del due[index]
                start(table[index])
            pid, status = _wait(block=False)
            if pid <= 0:  # none ended (or none is running): look again in a moment
                time.sleep(_TICK)
                continue
        else:
            pid, status = _wait(block=True)
            if pid < 0:
                break
        if pid not in children:
            continue
        worker = children.pop(pid)
        reason = _last_words(worker) or _describe(status)
        if stopping:
            log.info("worker %d stopped", worker.index)
            continue
        if time.monotonic() - worker.started >= HEALTHY_AFTER:  # it served a while: news
            worker.delay, worker.reason = RESTART_DELAY, None
        if reason != worker.reason:
            log.error(
                "worker %d (pid %d) died (%s); starting it again in %gs, and later each time "
                "it keeps dying (up to %gs apart)",
                worker.index,
                pid,
                reason,
                worker.delay,
                RESTART_DELAY_MAX,
            )
        else:
            log.debug("worker %d (pid %d) died again (%s)", worker.index, pid, reason)
        worker.reason = reason
        due[worker.index] = time.monotonic() + worker.delay
        worker.delay = min(worker.delay * 2, RESTART_DELAY_MAX)


def _wait(*, block: bool) -> tuple[int, int]:
    """A child that ended: (pid, status); (0, 0) when none has (not blocking), (-1, 0) when
    there are no children."""
    while True:
        try:
            return os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return -1, 0
        except InterruptedError:
            continue


def _last_words(worker: _Worker) -> str:
    """What the worker said of its failure before it exited ("" if nothing: a signal, a crash)."""
    try:
        data = os.read(worker.last_words, _REASON_MAX)
    except OSError:
        data = b""
    finally:
        os.close(worker.last_words)
        worker.last_words = -1
    return data.decode(errors="replace")


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
