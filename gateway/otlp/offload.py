"""Heavy request work off the event loop: a small pool of worker threads, and one worker process
for large OTLP/JSON bodies.

Converting OTLP/JSON (json_format: ~85 ms per 529 KB) or inflating zstd (a 6 KB bomb takes
~20-170 ms to reach the 16 MiB cap, a body of a million empty frames ~200-400 ms) would hold the
event loop, and every tenant's requests and the probes with it.

- zstd releases the GIL: a thread is enough (`run`).
- JSON does not fit in a thread once it is large: json.loads holds the GIL for its whole parse
  (~30 ms per MiB), and the millions of objects a 16 MiB document becomes make the garbage
  collector pause every thread for 100-200 ms, so a 15 MiB body stalled the loop ~250-450 ms
  even from a thread. Bodies from PROCESS_MIN_BYTES up are converted in a worker process
  (`json_to_proto`, gateway/otlp/decodeworker.py); smaller ones (an SDK's 512-span export is
  ~0.5 MB) in a thread.
- upb holds the GIL while it parses, and a 16 MiB protobuf body of tiny entries (millions of
  empty spans, or unknown fields inside a scope entry) takes it 50-300 ms: protobuf bodies from
  PROCESS_MIN_BYTES up are validated and counted in the worker process too (`count_items`).

Two threads and one process: more would only let one client's bodies take more of the machine.
Requests waiting for a worker hold their bytes in the in-flight budget, which bounds the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.otlp import decodeworker, wire
from gateway.otlp import jsonpb as otlpjson
from gateway.otlp import validate as validate_
from gateway.otlp.jsonpb import OTLPJSONError
from gateway.otlp.signals import SIGNALS, Signal

T = TypeVar("T")

THREADS = 2
# Bodies at least this large are worth a trip to a thread (~50-100 us) for work linear in them.
MIN_BYTES = 64 * 1024
# Bodies at least this large are converted (JSON) or counted (protobuf) in the worker process: a
# few ms of copying there and back, against ~30 ms of GIL held by json.loads per MiB and the
# collector's pauses, or upb's ~20 ms per MiB of tiny entries.
PROCESS_MIN_BYTES = 1024 * 1024


class WorkerLost(Exception):
    """The worker process died (killed, out of memory) while decoding a request."""


_threads: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    global _threads
    if _threads is None:
        _threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="otlp-decode")
    return _threads


async def run(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in a worker thread; its exception is raised here."""
    return await asyncio.get_running_loop().run_in_executor(_thread_pool(), fn, *args)


class _Worker:
    """One `python -m gateway.otlp.decodeworker` process, one request at a time, started on first
    use and again after it died. Its pipes are written and read by one thread of its own (pipe I/O
    releases the GIL), so the event loop only waits for the answer, and nothing of the process
    belongs to an event loop (tests run one loop after another)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def ask(self, kind: int, body: bytes) -> tuple[int, bytes]:
        """(status, answer) for one request frame."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="otlp-decode-pipe")
        loop = asyncio.get_running_loop()
        # In a box the thread empties: the executor's work item keeps its arguments until the
        # thread gets round to dropping it, which may be after the answer was used, and the
        # body must not outlive the request (up to 16 MiB each).
        return await loop.run_in_executor(self._thread, self._ask, kind, [body])

    def _ask(self, kind: int, box: list[bytes]) -> tuple[int, bytes]:
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            body = box.pop()
            proc.stdin.write(decodeworker.HEADER.pack(kind, len(body)))
            proc.stdin.write(body)
            proc.stdin.flush()
            del body  # written: nothing of this thread holds the request while it waits
            header = proc.stdout.read(decodeworker.HEADER.size)
            if len(header) < decodeworker.HEADER.size:
                raise EOFError
            status, size = decodeworker.HEADER.unpack(header)
            answer = proc.stdout.read(size)
            if len(answer) < size:
                raise EOFError
            return status, answer
        except (OSError, EOFError):
            self._stop()
            raise WorkerLost("the process decoding the request exited") from None

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.otlp.decodeworker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def close(self) -> None:
        self._stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)


_worker = _Worker()


async def json_to_proto(signal: Signal, body: bytes, *, canonical: bool = False) -> bytes:
    """otlpjson.json_to_proto (canonical: otlpjson.canonical_json_to_proto), off the event loop
    from MIN_BYTES up: in a thread, and from PROCESS_MIN_BYTES up in the worker process.
    OTLPJSONError as there; WorkerLost if the process died."""
    return (await json_to_counted_proto(signal, body, canonical=canonical))[0]


async def json_to_counted_proto(
    signal: Signal, body: bytes, *, canonical: bool = False
) -> tuple[bytes, int | None]:
    """json_to_proto, and the protobuf's item count when the worker process made it (None when
    the conversion ran here: count it with wire.count_items)."""
    convert = otlpjson.canonical_json_to_proto if canonical else otlpjson.json_to_proto
    if len(body) < MIN_BYTES:
        return convert(signal, body), None
    if len(body) < PROCESS_MIN_BYTES:
        return await run(convert, signal, body), None
    operation = decodeworker.CANONICAL if canonical else decodeworker.JSON
    status, answer = await _worker.ask(SIGNALS.index(signal) | operation, body)
    if status != decodeworker.OK:
        raise OTLPJSONError(answer.decode(errors="replace"))
    n = decodeworker.COUNT_SIZE
    return answer[n:], int.from_bytes(answer[:n], "big")


async def count_items(signal: Signal, data: bytes) -> int:
    """wire.count_items, in the worker process from PROCESS_MIN_BYTES up: upb holds the GIL while
    it parses, and a large body of tiny entries takes it ~200-300 ms (and ~300 MiB) there.
    WireError as there; WorkerLost if the process died."""
    if len(data) < PROCESS_MIN_BYTES:
        return wire.count_items(signal, data)
    status, answer = await _worker.ask(SIGNALS.index(signal) | decodeworker.COUNT, data)
    if status != decodeworker.OK:
        raise wire.WireError(answer.decode(errors="replace"))
    return int.from_bytes(answer, "big")


# Decoding every item costs more than counting them: 1 MiB of empty spans took ~40-70 ms.
VALIDATE_PROCESS_MIN_BYTES = 256 * 1024


async def validate(signal: Signal, data: bytes) -> None:
    """validate.check (every item decoded), in the worker process from
    VALIDATE_PROCESS_MIN_BYTES up: upb holds the GIL while it parses. validate.Malformed as
    there; WorkerLost if the process died."""
    if len(data) < VALIDATE_PROCESS_MIN_BYTES:
        validate_.check(signal, data)
        return
    status, answer = await _worker.ask(SIGNALS.index(signal) | decodeworker.VALIDATE, data)
    if status != decodeworker.OK:
        raise validate_.Malformed(answer.decode(errors="replace"))


def shutdown() -> None:
    """Stop the workers (they also stop when this process exits: the JSON worker at the end of
    its stdin)."""
    global _threads
    threads, _threads = _threads, None
    if threads is not None:
        threads.shutdown(wait=False, cancel_futures=True)
    _worker.close()
