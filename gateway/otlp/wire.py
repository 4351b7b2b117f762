"""Validates the structure of an OTLP export request down to its items and counts them, without
decoding the items themselves.

Protobuf bodies are forwarded as the bytes that arrived; count_items is the only look inside them
on the hot path. It checks every tag, wire type and length on the levels it walks (request,
resource, scope, and for metrics the metric), so garbage and truncated bodies are refused; the
items themselves are skipped by length. upb does the work on a shallow schema; a Python walk with
budgets decides what upb's result cannot (unknown fields), and without budgets it is the
reference the tests hold the fast path to.
"""

from __future__ import annotations

import sys
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from gateway.otlp.signals import Signal

_LEN = 2


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at buf[pos:end] and the position after it."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise WireError("varint longer than 10 bytes")


def skip_scalar(buf: bytes, pos: int, end: int, wtype: int) -> int:
    """Skip the value of a non-length-delimited field of wire type `wtype` starting at pos."""
    if wtype == 0:
        return read_varint(buf, pos, end)[1]
    if wtype == 1:
        pos += 8
    elif wtype == 5:
        pos += 4
    else:  # groups (3, 4) do not occur in OTLP; 6 and 7 are invalid
        raise WireError(f"unsupported wire type {wtype}")
    if pos > end:
        raise WireError("field runs past the end of the message")
    return pos


# The fast path: upb (protobuf's C parser) parses the request with a *shallow* schema built from
# the signal's item path, in which the items are plain bytes fields; it checks the same structure
# as _walk (tags, wire types, lengths on the walked levels) about ten times faster, and the items
# are never parsed. Every other field the walked levels know (resource, scope, schema_url, a
# metric's name, ...) is declared too, as opaque bytes or a plain number, so only a truly unknown
# field, or a known one sent with another wire type, is kept by upb as an unknown field.
#
# Unknown fields are found without materialising them (an UnknownFieldSet of millions of entries
# took seconds and ~700 MiB): once they are discarded, the message re-encodes to exactly the
# input's length only if there were none. The shallow schema is chosen so that re-encoding never
# makes anything longer (a duplicate of a singular scalar is dropped, numbers are unsigned so none
# grows to ten bytes), hence equal lengths prove there was no unknown field; it is proto2, so a
# field sent with its default value (an empty `dictionary`, `is_monotonic: false`) is re-encoded.
# Otherwise (unknown fields, or an encoding that is valid but not minimal) the Python walk decides,
# with a budget: MAX_UNKNOWN_FIELDS unknown fields and MAX_WALK_FIELDS fields in all.

# Unknown fields allowed at the walked levels (request, resource, scope, metric) of one request.
MAX_UNKNOWN_FIELDS = 1000
# Fields the Python walk visits (items included) before it gives up; it runs only for requests with
# unknown fields or a non-minimal encoding, and this keeps it to a few tens of milliseconds.
MAX_WALK_FIELDS = 100_000
# Messages above the items (resource, scope, metric entries) a request may hold: counting visits
# each of them in Python.
MAX_CONTAINERS = 100_000
_TOO_MANY_CONTAINERS = (
    f"more than {MAX_CONTAINERS} resource, scope or metric entries in one request; "
    "send smaller batches"
)
# Fields the Python walk of the levels above the items' messages may visit (see _prewalk).
MAX_PREWALK_FIELDS = 50_000
_TOO_MANY_FIELDS = (
    f"more than {MAX_PREWALK_FIELDS} fields in the request, resource and scope entries of one "
    "request; send smaller batches"
)

_FDP = descriptor_pb2.FieldDescriptorProto
# Wire type of each protobuf field type (groups never occur in OTLP).
_WIRE_TYPES = {
    _FDP.TYPE_DOUBLE: 1,
    _FDP.TYPE_FIXED64: 1,
    _FDP.TYPE_SFIXED64: 1,
    _FDP.TYPE_FLOAT: 5,
    _FDP.TYPE_FIXED32: 5,
    _FDP.TYPE_SFIXED32: 5,
    _FDP.TYPE_STRING: _LEN,
    _FDP.TYPE_BYTES: _LEN,
    _FDP.TYPE_MESSAGE: _LEN,
}
_SHALLOW_TYPES = {
    0: _FDP.TYPE_UINT64,
    1: _FDP.TYPE_FIXED64,
    5: _FDP.TYPE_FIXED32,
    2: _FDP.TYPE_BYTES,
}
_REPEATED = 8  # flag next to the wire type in _known_fields


def _known_fields(signal: Signal) -> tuple[dict[int, int], ...]:
    """Per walked level: every field number the real OTLP messages of that level define, with its
    wire type, plus _REPEATED for a repeated one (for metrics, the data kinds gauge, sum, ... share
    one level). A number two messages of a level define differently is left out (unknown)."""
    levels: list[dict[int, int]] = []
    descriptors: list[Any] = [signal.request_type.DESCRIPTOR]
    for depth, wanted in enumerate(signal.item_path):
        known: dict[int, int] = {}
        clash: set[int] = set()
        following = []
        for message in descriptors:
            for f in message.fields:
                wtype = _WIRE_TYPES.get(f.type, 0)
                if f.is_repeated and wtype != _LEN:
                    continue  # packed or not: left unknown (none at these levels today)
                kind = wtype | (_REPEATED if f.is_repeated else 0)
                if known.setdefault(f.number, kind) != kind:
                    clash.add(f.number)
                if f.number in wanted and depth < len(signal.item_path) - 1:
                    following.append(f.message_type)
        for number in clash:
            del known[number]
        levels.append(known)
        descriptors = following
    return tuple(levels)


_known: dict[str, tuple[dict[int, int], ...]] = {}
_shallow: dict[str, type[Message]] = {}


def known_fields(signal: Signal) -> tuple[dict[int, int], ...]:
    levels = _known.get(signal.name)
    if levels is None:
        levels = _known[signal.name] = _known_fields(signal)
    return levels


def _shallow_type(signal: Signal) -> type[Message]:
    cls = _shallow.get(signal.name)
    if cls is not None:
        return cls
    package = f"otlp_gateway.shallow.{signal.name}"
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"otlp_gateway/shallow/{signal.name}.proto", package=package, syntax="proto2"
    )
    last = len(signal.item_path) - 1
    for depth, (wanted, known) in enumerate(
        zip(signal.item_path, known_fields(signal), strict=True)
    ):
        message = fdp.message_type.add(name=f"L{depth}")
        for number in sorted(set(known) | wanted):
            field = message.field.add(name=f"f{number}", number=number)
            if number in wanted and depth < last:
                field.label = _FDP.LABEL_REPEATED
                field.type = _FDP.TYPE_MESSAGE
                field.type_name = f".{package}.L{depth + 1}"
            elif number in wanted:
                field.label = _FDP.LABEL_REPEATED
                field.type = _FDP.TYPE_BYTES
            else:
                # Length-delimited fields are all kept as repeated bytes: a message field sent
                # twice (what enrich.py forwards: a second `resource` per entry) re-encodes to
                # the same length, so a request from an upstream gateway stays on this path. A
                # scalar sent twice is kept once (re-encoded shorter: the walk decides).
                wtype = known[number] & 7
                repeated = known[number] & _REPEATED or wtype == _LEN
                field.label = _FDP.LABEL_REPEATED if repeated else _FDP.LABEL_OPTIONAL
                field.type = _SHALLOW_TYPES[wtype]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.L0"))
    _shallow[signal.name] = cls
    return cls


class _Budget:
    """What the checked walk may still visit, and what it says when that is used up."""

    __slots__ = ("fields", "too_many", "unknown")

    def __init__(self, fields: int, too_many: str, unknown: int = MAX_UNKNOWN_FIELDS) -> None:
        self.fields = fields
        self.too_many = too_many
        self.unknown = unknown


def _checked_walk(
    buf: bytes,
    pos: int,
    end: int,
    path: tuple[frozenset[int], ...],
    known: tuple[dict[int, int], ...],
    depth: int,
    budget: _Budget,
    stop: int,
) -> int:
    """_walk with budgets: refuses more than MAX_UNKNOWN_FIELDS unknown fields at the walked
    levels and gives up after budget.fields fields, so its time is bounded whatever the input.
    Messages at depth `stop` are skipped by length (and count nothing)."""
    wanted = path[depth]
    level_known = known[depth]
    last = depth == len(path) - 1
    descend = depth + 1 < stop
    count = 0
    while pos < end:
        budget.fields -= 1
        if budget.fields < 0:
            raise WireError(budget.too_many)
        tag, pos = read_varint(buf, pos, end)
        field = tag >> 3
        wtype = tag & 7
        if field == 0:
            raise WireError("field number 0")
        if field not in wanted and (level_known.get(field, -1) & 7) != wtype:
            budget.unknown -= 1
            if budget.unknown < 0:
                raise WireError(
                    f"more than {MAX_UNKNOWN_FIELDS} unknown fields at the request, resource "
                    "and scope levels"
                )
        if wtype == _LEN:
            size, pos = read_varint(buf, pos, end)
            after = pos + size
            if after > end:
                raise WireError("length runs past the end of the message")
            if field in wanted:
                if last:
                    count += 1
                elif descend:
                    count += _checked_walk(buf, pos, after, path, known, depth + 1, budget, stop)
            pos = after
        elif field in wanted:
            raise WireError(f"field {field} has wire type {wtype}, expected a message")
        else:
            pos = skip_scalar(buf, pos, end, wtype)
    if pos != end:
        raise WireError("field runs past the end of the message")
    return count


def walk_count(signal: Signal, data: bytes) -> int:
    """count_items in Python, without budgets: the reference the fast path is tested against."""
    budget = _Budget(sys.maxsize, "", unknown=sys.maxsize)
    path = signal.item_path
    return _checked_walk(data, 0, len(data), path, known_fields(signal), 0, budget, len(path))


def checked_walk_count(signal: Signal, data: bytes) -> int:
    """The Python walk with budgets: what count_items falls back to."""
    budget = _Budget(
        MAX_WALK_FIELDS,
        f"more than {MAX_WALK_FIELDS} fields in a request with unknown fields or a non-minimal "
        "encoding; send smaller batches",
    )
    path = signal.item_path
    return _checked_walk(data, 0, len(data), path, known_fields(signal), 0, budget, len(path))


# Levels walked in Python before upb sees a request: those above the messages that hold the items
# (request and resource; for metrics the scope too, whose entries are metrics). They hold a few
# fields in a real request, and a flood of entries or unknown fields there is refused after
# MAX_PREWALK_FIELDS fields instead of costing upb ~40-60 bytes per entry (450 MiB for 16 MiB of
# empty resource entries) and Python a turn per entry.
_PREWALK_LEVELS = 3


def _prewalk(signal: Signal, data: bytes) -> None:
    budget = _Budget(MAX_PREWALK_FIELDS, _TOO_MANY_FIELDS)
    path = signal.item_path
    stop = min(len(path) - 1, _PREWALK_LEVELS)
    _checked_walk(data, 0, len(data), path, known_fields(signal), 0, budget, stop)


# Below this size the prewalk cannot find what it is there for (more fields than
# MAX_PREWALK_FIELDS, or upb spending milliseconds on a flood of tiny entries), and what it would
# refuse (a wire error, more than MAX_UNKNOWN_FIELDS unknown fields) upb and the checked walk
# refuse too; skipping it is ~4 us of a small request's ~15 us count.
PREWALK_MIN_BYTES = 32 * 1024


def count_items(signal: Signal, data: bytes) -> int:
    """Validate `data` as an export request of `signal` and return how many items it holds."""
    cls = _shallow_type(signal)
    if len(data) >= PREWALK_MIN_BYTES:
        _prewalk(signal, data)
    try:
        message = cls.FromString(data)
    except DecodeError:
        raise WireError("corrupt wire format: truncated, or not protobuf") from None
    message.DiscardUnknownFields()
    if message.ByteSize() != len(data):
        del message
        return checked_walk_count(signal, data)
    return _count_levels(message, _path_names(signal))


_PATH_NAMES: dict[str, tuple[tuple[str, ...], ...]] = {}


def _path_names(signal: Signal) -> tuple[tuple[str, ...], ...]:
    """The shallow type's field names along the item path, per level."""
    names = _PATH_NAMES.get(signal.name)
    if names is None:
        names = tuple(tuple(f"f{n}" for n in level) for level in signal.item_path)
        _PATH_NAMES[signal.name] = names
    return names


def _count_levels(message: Message, levels: tuple[tuple[str, ...], ...]) -> int:
    """Items below `message`, level by level (a loop, not a call per message: a 1-span request
    is counted in ~1 us instead of ~3)."""
    if len(levels) == 3 and len(levels[0]) == 1 and len(levels[1]) == 1 and len(levels[2]) == 1:
        # traces and logs (request -> resource entries -> scope entries -> items): nested loops,
        # without the lists of each level (~1.2 us instead of ~2.5 for a small request)
        (outer,), (inner,), (leaf,) = levels
        total = seen = 0
        for entry in getattr(message, outer):
            scopes = getattr(entry, inner)
            seen += 1 + len(scopes)
            if seen > MAX_CONTAINERS:
                raise WireError(_TOO_MANY_CONTAINERS)
            for scope in scopes:
                total += len(getattr(scope, leaf))
        return total
    containers = [message]
    budget = MAX_CONTAINERS
    for names in levels[:-1]:
        containers = [c for m in containers for name in names for c in getattr(m, name)]
        budget -= len(containers)
        if budget < 0:
            raise WireError(_TOO_MANY_CONTAINERS)
    last = levels[-1]
    return sum(len(getattr(m, name)) for m in containers for name in last)
