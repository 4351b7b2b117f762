"""Helpers of the fault tests (tests/test_faults.py) and bench/durable_throughput.py: requests
whose spans have unique names, a sink that counts every name delivered (and can be slow or
refuse), and a bounded load generator that records the outcome of every request.

Every request carries unique span names `<tag>:<seq>:<i>`; the load generator records which
requests got 200 (OK on gRPC) and the sink counts every span name it was given, so a test can
say exactly what was acknowledged, delivered, duplicated and lost."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tests.support.peers import Gateway, Sink, wait_until

TRACE_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

# ---------------------------------------------------------------------------------------------
# Requests with unique ids


def trace_request(tag: str, seq: int, spans: int, pad: int = 0) -> bytes:
    """An export request whose spans are named `<tag>:<seq>:<i>`; `pad` bytes of attribute per
    span make it larger."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add(key="service.name")
    kv.value.string_value = "faults"
    out = rs.scope_spans.add().spans
    filler = ("x" * pad) if pad else ""
    for i in range(spans):
        span = out.add(name=f"{tag}:{seq}:{i}")
        span.trace_id = uuid.uuid4().bytes
        span.span_id = os.urandom(8)
        span.start_time_unix_nano = time.time_ns()
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
        a = span.attributes.add(key="seq")
        a.value.int_value = seq
        if pad:
            b = span.attributes.add(key="pad")
            b.value.string_value = filler
    return req.SerializeToString()


def seq_of(name: str) -> int:
    return int(name.split(":")[1])


# ---------------------------------------------------------------------------------------------
# A sink that counts span names, can be slow (per request and per byte) and records attempts


@dataclass
class FaultSink(Sink):
    """Sink (OTLP/HTTP protobuf) that counts every span name delivered (answered 200), records
    every attempt (also refused ones) with its time, and can be slow: `delay` seconds per request,
    and `bandwidth` bytes/s of decompressed body, served one request at a time (a backend that
    forwards at most `bandwidth`)."""

    delay: float = 0.0
    bandwidth: float | None = None
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    first_seen: dict[str, float] = field(default_factory=dict)  # answered 200 (first time)
    first_arrival: dict[str, float] = field(default_factory=dict)  # that request's arrival
    # (monotonic time, status answered, the request seqs the attempt carried)
    attempts: list[tuple[float, int, frozenset[int]]] = field(default_factory=list)
    requests_ok: int = 0
    bytes_ok: int = 0
    _bw_lock: Any = None
    _server_cm: Any = None

    async def _handle(self, request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # the gateway was killed while sending
            return Response(status_code=400)
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        arrived = time.monotonic()
        msg = ExportTraceServiceRequest.FromString(body)
        names = [s.name for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans]
        status = self.status
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.bandwidth:
            if self._bw_lock is None:
                self._bw_lock = asyncio.Lock()
            async with self._bw_lock:
                await asyncio.sleep(len(body) / self.bandwidth)
        seqs = frozenset(seq_of(n) for n in names if n.count(":") == 2)
        with self._lock:
            self.attempts.append((arrived, status, seqs))
            if status == 200:
                now = time.monotonic()
                self.requests_ok += 1
                self.bytes_ok += len(body)
                for n in names:
                    self.counts[n] += 1
                    if n not in self.first_seen:
                        self.first_seen[n] = now
                        self.first_arrival[n] = arrived
        if status != 200:
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            return Response(status_code=status, headers=headers)
        return Response(b"", media_type="application/x-protobuf")

    def start(self) -> None:
        """Serve (again) on the same port; stop() ends it: a backend that is down and back."""
        self._server_cm = self.running()
        self._server_cm.__enter__()

    def stop(self) -> None:
        cm, self._server_cm = self._server_cm, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def missing(self, names: set[str]) -> set[str]:
        with self._lock:
            return {n for n in names if n not in self.counts}

    def duplicates(self, tag: str) -> int:
        with self._lock:
            return sum(c - 1 for n, c in self.counts.items() if c > 1 and n.startswith(tag + ":"))

    def delivered_names(self, tag: str) -> set[str]:
        with self._lock:
            return {n for n in self.counts if n.startswith(tag + ":")}


@contextlib.contextmanager
def fault_sink(**kwargs: Any) -> Iterator[FaultSink]:
    sink = FaultSink(**kwargs)
    with sink.running():  # yields the sink itself, typed as the base class
        yield sink


# ---------------------------------------------------------------------------------------------
# Load generator


@dataclass
class Outcome:
    sent: float
    done: float
    status: int | str  # HTTP status, gRPC code name, or "error:<type>"
    retry_after: str | None = None
    retry_info: bool = False


class Load:
    """Threads posting OTLP requests (a few spans each, unique names) to a gateway: OTLP/HTTP
    protobuf with httpx, optionally some threads over gRPC. Bounded by `max_requests` and
    `max_seconds`; `rate` (requests/s over all threads) paces it, else as fast as answered."""

    def __init__(
        self,
        gw: Gateway,
        tag: str,
        *,
        threads: int = 4,
        grpc_threads: int = 0,
        spans: int = 5,
        pad: int = 0,
        rate: float | None = None,
        max_requests: int = 100_000,
        max_seconds: float = 60.0,
        timeout: float = 10.0,
        first_seq: int = 0,
    ) -> None:
        self.gw, self.tag, self.spans, self.pad = gw, tag, spans, pad
        self.rate, self.max_requests, self.max_seconds = rate, max_requests, max_seconds
        self.timeout = timeout
        self.results: dict[int, Outcome] = {}
        self.in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._first_seq = first_seq
        self._seq = itertools.count(first_seq)
        self._stop = threading.Event()
        n = threads + grpc_threads
        self._threads = [
            threading.Thread(
                target=self._run_grpc if k >= threads else self._run_http,
                args=(k, n),
                daemon=True,
                name=f"load-{tag}-{k}",
            )
            for k in range(n)
        ]

    def __enter__(self) -> Load:
        self._started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def wait(self) -> None:
        """Wait until the bounds end the load."""
        for t in self._threads:
            t.join(self.max_seconds + self.timeout + 5)
        self.stop()

    def _next(self, k: int, n: int, i: int) -> int | None:
        """The next seq, after pacing; None when the load is over."""
        if self._stop.is_set() or time.monotonic() - self._started > self.max_seconds:
            return None
        if self.rate:
            due = self._started + (i * n + k) / self.rate
            pause = due - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                return None
        seq = next(self._seq)
        return seq if seq - self._first_seq < self.max_requests else None

    def _begin(self) -> float:
        with self._in_flight_lock:
            self.in_flight += 1
        return time.monotonic()

    def _end(self, seq: int, outcome: Outcome) -> None:
        self.results[seq] = outcome
        with self._in_flight_lock:
            self.in_flight -= 1

    def _run_http(self, k: int, n: int) -> None:
        url = self.gw.http_endpoint + "/v1/traces"
        headers = {"content-type": "application/x-protobuf"}
        with httpx.Client(timeout=self.timeout) as client:
            for i in itertools.count():
                seq = self._next(k, n, i)
                if seq is None:
                    return
                body = trace_request(self.tag, seq, self.spans, self.pad)
                sent = self._begin()
                try:
                    r = client.post(url, content=body, headers=headers)
                    outcome = Outcome(
                        sent, time.monotonic(), r.status_code, r.headers.get("retry-after")
                    )
                except httpx.HTTPError as exc:
                    outcome = Outcome(sent, time.monotonic(), f"error:{type(exc).__name__}")
                self._end(seq, outcome)
                if outcome.status != 200:
                    self._stop.wait(0.01)  # no busy loop against a dead or refusing gateway

    def _run_grpc(self, k: int, n: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.gw.grpc_port}") as channel:
            call = channel.unary_unary(TRACE_PATH)
            for i in itertools.count():
                seq = self._next(k, n, i)
                if seq is None:
                    return
                body = trace_request(self.tag, seq, self.spans, self.pad)
                sent = self._begin()
                try:
                    call(body, timeout=self.timeout)
                    outcome = Outcome(sent, time.monotonic(), "OK")
                except grpc.RpcError as exc:
                    outcome = Outcome(
                        sent, time.monotonic(), exc.code().name, retry_info=_has_retry_info(exc)
                    )
                self._end(seq, outcome)
                if outcome.status != "OK":
                    self._stop.wait(0.01)

    # -- accounting -----------------------------------------------------------------------

    def acked_seqs(self) -> set[int]:
        return {s for s, o in list(self.results.items()) if o.status in (200, "OK")}

    def acked_names(self) -> set[str]:
        return {f"{self.tag}:{s}:{i}" for s in self.acked_seqs() for i in range(self.spans)}

    def statuses(self) -> collections.Counter[int | str]:
        return collections.Counter(o.status for o in list(self.results.values()))


def _has_retry_info(error: grpc.RpcError) -> bool:
    trailers = dict(error.trailing_metadata() or ())
    raw = trailers.get("grpc-status-details-bin")
    if raw is None:
        return False
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info) and info.retry_delay.ToTimedelta().total_seconds() > 0:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Accounting and configs


def wait_delivered(sink: FaultSink, names: set[str], timeout: float) -> set[str]:
    """Wait until the sink has every name; returns what is still missing. Then a short pause
    so that stragglers (duplicates) are counted too."""
    wait_until(lambda: not sink.missing(names), timeout, interval=0.2)
    time.sleep(0.3)
    return sink.missing(names)


def backend(sink: Sink, **extra: Any) -> dict[str, Any]:
    return {"protocol": "http/protobuf", "endpoint": sink.endpoint, **extra}


def new_tag(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"
