"""A counting OTLP/HTTP sink that decodes what it receives (the fuzzer and hostile tests)."""

from __future__ import annotations

import collections
import contextlib
import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.otlp import wire
from gateway.otlp.signals import BY_NAME
from tests.support.peers import free_port, serve_in_thread


@dataclass
class CountingSink:
    port: int = field(default_factory=free_port)
    items: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: int = 0
    uncountable: int = 0
    keep: bool = False  # keep every body received (tests look at what arrived)
    bodies: list[tuple[str, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = dict(scope["headers"])
        if headers.get(b"content-encoding") == b"gzip":
            body = gzip.decompress(body)
        signal = scope["path"].rsplit("/", 1)[-1]
        try:
            n = wire.count_items(BY_NAME[signal], body)
        except (KeyError, wire.WireError):
            with self._lock:
                self.uncountable += 1
        else:
            with self._lock:
                self.items[signal] += n
                self.requests += 1
                if self.keep:
                    self.bodies.append((signal, body))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-protobuf")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def total(self) -> int:
        with self._lock:
            return sum(self.items.values())

    def wait_total(self, n: int, timeout: float = 15.0) -> int:
        """The total once it reached `n` (or `timeout` passed), after a moment for stragglers."""
        deadline = time.monotonic() + timeout
        while self.total() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        return self.total()

    @contextlib.contextmanager
    def running(self) -> Iterator[CountingSink]:
        with serve_in_thread(self, self.port):
            yield self
