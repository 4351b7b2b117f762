"""The worker process that takes the request work too big for the event loop's process
(`python -m gateway.otlp.decodeworker`, started and spoken to by gateway/otlp/offload.py):
converting large OTLP/JSON bodies to protobuf, and validating and counting large protobuf bodies.

Requests and answers are frames on stdin / stdout: a header of one byte and a 4-byte big-endian
length, then that many bytes. A request's byte is the signal's index in signals.SIGNALS plus one
of the operations (JSON: OTLP/JSON -> protobuf; CANONICAL: protobuf's canonical JSON, as Connect
sends it, -> protobuf; COUNT: validate protobuf; VALIDATE: decode every item, validate.check)
and its bytes the body. An answer's byte is OK,
its bytes the item count (8 bytes, big-endian) followed, for the JSON operations, by the protobuf
request; or INVALID, its bytes the UTF-8 message of the error. The process ends when stdin closes.
"""

from __future__ import annotations

import signal
import struct
import sys
from typing import BinaryIO

HEADER = struct.Struct(">BI")
COUNT_SIZE = 8
OK = 0
INVALID = 1
JSON = 0x00
CANONICAL = 0x40
COUNT = 0x80
VALIDATE = 0xC0
_OPERATIONS = JSON | CANONICAL | COUNT | VALIDATE


def read_frame(stream: BinaryIO) -> tuple[int, bytes] | None:
    """One frame, or None at the end of the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    kind, size = HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return kind, payload


def main() -> int:
    # The gateway handles SIGINT and SIGTERM; the worker ends when its stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from gateway.otlp.jsonpb import OTLPJSONError, canonical_json_to_proto, json_to_proto
    from gateway.otlp.signals import SIGNALS
    from gateway.otlp.validate import Malformed, check
    from gateway.otlp.wire import WireError, count_items

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (frame := read_frame(stdin)) is not None:
        kind, body = frame
        signal_ = SIGNALS[kind & ~_OPERATIONS]
        operation = kind & _OPERATIONS
        try:
            if operation == VALIDATE:
                check(signal_, body)
                proto, items = b"", 0
            elif operation == COUNT:
                proto = b""
                items = count_items(signal_, body)
            else:
                convert = canonical_json_to_proto if operation == CANONICAL else json_to_proto
                proto = convert(signal_, body)
                items = count_items(signal_, proto)
            answer = [items.to_bytes(COUNT_SIZE, "big"), proto]
            status = OK
        except (OTLPJSONError, WireError, Malformed) as exc:
            answer, status = [str(exc).encode()], INVALID
        del body
        stdout.write(HEADER.pack(status, sum(map(len, answer))))
        for part in answer:
            stdout.write(part)
        stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
