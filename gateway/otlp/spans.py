"""Reading spans and log records out of export requests, for the features that need to look
inside: drop rules, RED metrics and the live tail (access-log rows). Forwarding never decodes;
these do, one item at a time, and only for tenants that asked for them (drop rules, RED) or
while someone watches (tail)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from gateway.otlp.signals import SIGNALS
from gateway.otlp.wire import WireError, encode_varint, read_varint, skip_scalar

KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUS = {Status.STATUS_CODE_UNSET: "unset", Status.STATUS_CODE_OK: "ok"}
ERROR = Status.STATUS_CODE_ERROR

# Semantic-convention names, current first, then the older ones SDKs still send.
_METHOD = ("http.request.method", "http.method")
_ROUTE = ("http.route", "url.path", "http.target")
_STATUS_CODE = ("http.response.status_code", "http.status_code")


@dataclass(frozen=True, slots=True)
class AccessRow:
    time_unix_nano: int
    service: str
    span_name: str
    kind: str
    status: str
    status_message: str
    duration_ms: float
    http_method: str
    http_route: str
    http_status: int
    trace_id: str
    span_id: str


class UndecodableError(ValueError):
    """The items of a request cannot be decoded: corrupt wire format inside an item, or a string
    that is not UTF-8 (the forwarding path never looks that deep, so it let them through)."""


# Valid OTLP may nest AnyValues (arrays, key-value lists) to any depth, and upb refuses more
# than 100 levels of messages. The features that decode only read the top level of a value, so
# they decode with a copy of the schema in which AnyValue's array_value and kvlist_value are
# plain bytes: the depth is bounded (request -> resource -> scope -> span -> event -> attribute
# -> value), nested values are never parsed, and a re-encoded request carries them unchanged.
_NESTED = frozenset({"array_value", "kvlist_value"})


def _shadow_pool(*roots: FileDescriptor) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        for message in proto.message_type:
            if message.name == "AnyValue" and proto.package == "opentelemetry.proto.common.v1":
                for f in message.field:
                    if f.name in _NESTED:
                        f.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                        f.ClearField("type_name")
        pool.Add(proto)
        added.add(file.name)

    for root in roots:
        add(root)
    return pool


_POOL = _shadow_pool(*(cast(FileDescriptor, s.request_type.DESCRIPTOR.file) for s in SIGNALS))


def shadow(full_name: str) -> type[Message]:
    """The message type `full_name` of the OTLP schema with nested AnyValues kept as bytes."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


_RESOURCE = shadow("opentelemetry.proto.resource.v1.Resource")
# The item of each signal that is decoded: ScopeSpans.spans and ScopeLogs.log_records are both
# field 2 of field 2 (scopes) of field 1 (entries) of the request; Resource is field 1 of an entry.
ITEMS: dict[str, type[Message]] = {
    "traces": shadow("opentelemetry.proto.trace.v1.Span"),
    "logs": shadow("opentelemetry.proto.logs.v1.LogRecord"),
}

# Positions in a payload: (start of the field's tag, start of its value, end of its value).
Span3 = tuple[int, int, int]


def _undecodable(signal: str, detail: object) -> UndecodableError:
    return UndecodableError(
        f"its {signal} cannot be decoded (corrupt wire format inside an item, or a string "
        f"that is not UTF-8): {detail}"
    )


PAUSE_EVERY = 128  # items decoded between two offers of the GIL to the event loop


def _pauser() -> Callable[[], None]:
    """A function to call once per item: off the main thread (where the event loop runs) it
    gives the GIL away every PAUSE_EVERY items. Otherwise the loop thread gets it back only
    every switch interval (5 ms), several times per request it serves; with this its requests
    take about as long as without the decoding going on."""
    if threading.current_thread() is threading.main_thread():
        return lambda: None
    count = 0

    def pause() -> None:
        nonlocal count
        count += 1
        if count >= PAUSE_EVERY:
            count = 0
            time.sleep(0)

    return pause


def _parse(message_type: type[Message], data: memoryview) -> Any:
    return message_type.FromString(data)  # type: ignore[arg-type]  # upb takes any buffer


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, tag start, value start, value end) of every length-delimited field of the
    message buf[pos:end], in order; other fields are skipped. Raises WireError."""
    while pos < end:
        start = pos
        tag, pos = read_varint(buf, pos, end)
        if tag & 7 == 2:
            size, pos = read_varint(buf, pos, end)
            stop = pos + size
            if stop > end:
                raise WireError("length runs past the end of the message")
            yield tag >> 3, start, pos, stop
            pos = stop
        else:
            pos = skip_scalar(buf, pos, end, tag & 7)


def _resource(buf: bytes, pos: int, end: int) -> Any:
    """The Resource of the entry buf[pos:end] (its occurrences merged, as protobuf does)."""
    parts = [buf[a:b] for field, _, a, b in _fields(buf, pos, end) if field == 1]
    return _RESOURCE.FromString(parts[0] if len(parts) == 1 else b"".join(parts))


def entries(payload: bytes, signal: str = "traces") -> Iterator[tuple[Any, Iterator[Any]]]:
    """(resource, items) per entry of an export request of `signal` (traces or logs). Items are
    decoded one at a time as they are iterated (read them before the next entry): the event loop
    (when this runs on a worker thread) waits at most for one item's parse, and memory holds one
    item, never the whole request (16 MiB of empty spans are 8 million of them). Nested values
    stay bytes. Raises UndecodableError, also while iterating the items."""
    item_type = ITEMS[signal]
    view = memoryview(payload)
    pause = _pauser()

    def items(pos: int, end: int) -> Iterator[Any]:
        try:
            for sf, _, spos, send in _fields(payload, pos, end):
                if sf == 2:
                    for f, _, a, b in _fields(payload, spos, send):
                        if f == 2:
                            pause()
                            yield _parse(item_type, view[a:b])
        except (WireError, DecodeError) as exc:
            raise _undecodable(signal, exc) from None

    try:
        for field, _, pos, end in _fields(payload, 0, len(payload)):
            if field == 1:
                yield _resource(payload, pos, end), items(pos, end)
    except (WireError, DecodeError) as exc:
        raise _undecodable(signal, exc) from None


def filter_items(
    payload: bytes, signal: str, drop: Callable[[Any, Any], bool]
) -> tuple[bytes, int]:
    """The request without the items for which drop(item, resource) is true, and how many were
    dropped. Everything else is kept byte for byte (only length prefixes are rewritten), and
    items are decoded one at a time, like `entries`. Raises UndecodableError."""
    item_type = ITEMS[signal]
    view = memoryview(payload)
    pause = _pauser()
    out: list[bytes | memoryview] = []
    copied = 0  # payload[copied:] is still to be copied
    dropped = 0
    try:
        for field, start, pos, end in _fields(payload, 0, len(payload)):
            if field != 1:
                continue
            resource = _resource(payload, pos, end)
            entry: list[bytes | memoryview] = []
            entry_copied = pos
            entry_changed = False
            for sf, sstart, spos, send in _fields(payload, pos, end):
                if sf != 2:
                    continue
                scope: list[bytes | memoryview] = []
                scope_copied = spos
                for f, istart, a, b in _fields(payload, spos, send):
                    pause()
                    if f == 2 and drop(_parse(item_type, view[a:b]), resource):
                        scope.append(view[scope_copied:istart])
                        scope_copied = b
                        dropped += 1
                if scope:  # something dropped: this scope is rewritten
                    scope.append(view[scope_copied:send])
                    body = b"".join(scope)
                    entry.append(view[entry_copied:sstart])
                    entry.append(b"\x12" + encode_varint(len(body)) + body)
                    entry_copied = send
                    entry_changed = True
            if entry_changed:
                entry.append(view[entry_copied:end])
                body = b"".join(entry)
                out.append(view[copied:start])
                out.append(b"\x0a" + encode_varint(len(body)) + body)
                copied = end
    except (WireError, DecodeError) as exc:
        raise _undecodable(signal, exc) from None
    if not dropped:
        return payload, 0
    out.append(view[copied:])
    return b"".join(out), dropped


def service_name(resource: Any) -> str:
    """service.name of a resource; "unknown_service" when it has none, as the SDKs default it."""
    for kv in resource.attributes:
        if kv.key == "service.name":
            return str(kv.value.string_value) or "unknown_service"
    return "unknown_service"


def by_service(payload: bytes) -> Iterator[tuple[str, Iterator[Any]]]:
    """(service.name, spans) per resource of a trace request. Raises UndecodableError."""
    for resource, spans in entries(payload, "traces"):
        yield service_name(resource), spans


def http_status(value: Any) -> int:
    """An HTTP status code from an attribute value (int or digits), 0 when it is not one: a
    span may say -1 or 2**63, and a row must still be shown."""
    if value.int_value:
        code = int(value.int_value)
    else:
        text = value.string_value
        code = int(text) if 0 < len(text) <= 3 and text.isascii() and text.isdigit() else 0
    return code if 0 < code < 1000 else 0


def _http(span: Any) -> tuple[str, str, int]:
    method = route = ""
    status = 0
    for kv in span.attributes:
        key = kv.key
        if key in _METHOD and not method:
            method = kv.value.string_value
        elif key in _ROUTE and not route:
            route = kv.value.string_value
        elif key in _STATUS_CODE and not status:
            status = http_status(kv.value)
    return method, route, status


MAX_ROWS = 10_000  # rows made of one payload; a watcher is told how many more it skipped


def access_rows(payload: bytes, limit: int = MAX_ROWS) -> list[AccessRow]:
    """One row per span, the first `limit` of them; raises UndecodableError."""
    rows: list[AccessRow] = []
    for service, spans in by_service(payload):
        for span in spans:
            if len(rows) >= limit:
                return rows
            method, route, status_code = _http(span)
            code = span.status.code
            rows.append(
                AccessRow(
                    time_unix_nano=span.start_time_unix_nano,
                    service=service,
                    span_name=span.name,
                    kind=KINDS[span.kind] if 0 <= span.kind < len(KINDS) else "unspecified",
                    status="error" if code == ERROR else _STATUS.get(code, "unset"),
                    status_message=span.status.message,
                    duration_ms=max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
                    http_method=method,
                    http_route=route,
                    http_status=status_code,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                )
            )
    return rows
