"""The `file` backend: OTLP/JSON lines, one file per signal, rotated by size.

`<path>/<signal>.jsonl` is the file being written; when it passes `rotate_bytes` it is renamed to
`<signal>-<UTC time to the microsecond>.jsonl`; at most `max_files` rotated files are kept
per signal.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from gateway.config import BackendConfig
from gateway.delivery.batch import Batch
from gateway.delivery.exporters.base import ExportError
from gateway.delivery.exporters.jsonenc import encoded as json_encoded


class FileExporter:
    def __init__(self, config: BackendConfig) -> None:
        self._dir = Path(config.path)
        self._rotate_bytes = config.rotate_bytes
        self._max_files = config.max_files
        self._files: dict[str, IO[bytes]] = {}
        self._lock = asyncio.Lock()

    async def export(self, batch: Batch) -> None:
        # a conversion of up to seconds: in the conversion pool, in pieces
        line = await json_encoded(batch, None) + b"\n"
        async with self._lock:  # one writer per file keeps lines whole
            try:
                await asyncio.to_thread(self._write, batch.signal.name, line)
            except OSError as exc:
                raise ExportError(f"cannot write to {self._dir}: {exc}", retryable=True) from exc

    def _write(self, signal: str, line: bytes) -> None:
        f = self._files.get(signal)
        if f is None:
            self._dir.mkdir(parents=True, exist_ok=True)
            f = self._files[signal] = open(self._dir / f"{signal}.jsonl", "ab")  # noqa: SIM115
        last = f.tell() + len(line) >= self._rotate_bytes
        if last:
            # Rotated before the line that fills it is written, through the open file: a reader
            # that sees the line sees the rotation done too.
            self._rotate(signal)
        f.write(line)
        f.flush()
        if last:
            f.close()
            del self._files[signal]

    def _rotate(self, signal: str) -> None:
        # Fixed-width UTC stamps to the microsecond: names sort by age, and a name is never reused.
        when = datetime.now(UTC)
        while True:
            target = self._dir / f"{signal}-{when:%Y%m%dT%H%M%S.%fZ}.jsonl"
            if not target.exists():
                break
            when += timedelta(microseconds=1)
        # The oldest go first, so that no reader ever sees more than max_files rotated files.
        rotated = sorted(self._dir.glob(f"{signal}-*.jsonl"))
        for old in rotated[: max(0, len(rotated) + 1 - self._max_files)]:
            old.unlink(missing_ok=True)
        os.replace(self._dir / f"{signal}.jsonl", target)

    async def aclose(self) -> None:
        async with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
