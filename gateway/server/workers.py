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

from gateway.errors import CannotListen

log = logging.getLogger("otlp_gateway.workers")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again


# Serves worker `index` until it is told to stop (the server's serve, handed in by it: as
# uvicorn's Multiprocess takes its target, so this module needs nothing of the server's).
Target = Callable[[int], None]


def _run_worker(index: int, target: Target) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    code = 0
    try:
        target(index)
    except CannotListen as exc:  # taken since the parent checked it: said without a traceback
        log.error("worker %d: %s", index, exc)
        code = 1
    except BaseException:
        log.exception("worker %d failed", index)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def supervise(workers: int, target: Target) -> None:
    """Run `target(index)` for each index below `workers`, each in a process of its own."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            _run_worker(index, target)
        children[pid] = index
        log.info("worker %d started (pid %d)", index, pid)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for index in range(workers):
        start(index)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        index = children.pop(pid)
        if stopping:
            log.info("worker %d stopped", index)
            continue
        log.error(
            "worker %d (pid %d) died (%s); starting it again",
            index,
            pid,
            _describe(status),
        )
        time.sleep(RESTART_DELAY)
        if not stopping:
            start(index)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
