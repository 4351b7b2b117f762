"""Log set-up: readable text lines, or one JSON object per line for log pipelines.

Structured fields travel as `extra={"fields": {...}}`; the text format appends them as
key=value, the JSON format merges them into the object. Nothing here ever sees a key: callers
log tenants by name only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: a value holding one
# could end a text log line and forge the next, or rewrite a terminal (ESC).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return _ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape(value: object) -> str:
    """`value` as text on one line: control characters as \\n, \\r, \\t, \\xNN, \\uNNNN."""
    text = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(_escape_char, text) if _CONTROL.search(text) else text


class TextFormatter(logging.Formatter):
    """One record, one line: the message and every field value are escaped (they may hold what
    a client sent); only a traceback, appended by the logging module, spans lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        # A trailing newline (uvicorn's "Exception in ASGI application\n") ends the line anyway.
        record.message = escape(message.rstrip("\r\n"))
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{escape(k)}={escape(v)}" for k, v in fields.items())
        return line


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # One line per export from the HTTP client library would drown the gateway's own lines.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
