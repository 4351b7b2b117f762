"""A protobuf wire-format walk: validates the structure of an OTLP export request down to its
items and counts them, without decoding the items themselves.

Protobuf bodies are forwarded as the bytes that arrived; this walk is the only look inside them
on the hot path. It checks every tag, wire type and length on the levels it walks (request,
resource, scope, and for metrics the metric), so garbage and truncated bodies are refused; the
items themselves are skipped by length.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from .signals import Signal

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


def _walk(buf: bytes, pos: int, end: int, path: tuple[frozenset[int], ...], depth: int) -> int:
    """Walk the message in buf[pos:end]; count fields path[depth] (descending further if needed)."""
    wanted = path[depth]
    last = depth == len(path) - 1
    count = 0
    # The hot loop (one turn per span, log record, data point): one- and two-byte tags and
    # lengths are decoded inline, longer ones by read_varint.
    while pos < end:
        b = buf[pos]
        if b < 0x80:  # one-byte tag, the common case
            tag = b
            pos += 1
        else:
            tag, pos = read_varint(buf, pos, end)
        field = tag >> 3
        wtype = tag & 7
        if field == 0:
            raise WireError("field number 0")
        if wtype == _LEN:
            if pos + 1 < end:
                b = buf[pos]
                if b < 0x80:
                    size = b
                    pos += 1
                else:
                    b2 = buf[pos + 1]
                    if b2 < 0x80:
                        size = (b & 0x7F) | (b2 << 7)
                        pos += 2
                    else:
                        size, pos = read_varint(buf, pos, end)
            else:
                size, pos = read_varint(buf, pos, end)
            stop = pos + size
            if stop > end:
                raise WireError("length runs past the end of the message")
            if field in wanted:
                count += 1 if last else _walk(buf, pos, stop, path, depth + 1)
            pos = stop
        elif field in wanted:
            raise WireError(f"field {field} has wire type {wtype}, expected a message")
        else:
            pos = skip_scalar(buf, pos, end, wtype)
    if pos != end:
        raise WireError("field runs past the end of the message")
    return count


def walk_count(signal: Signal, data: bytes) -> int:
    """count_items in Python: the reference the fast path is tested against."""
    return _walk(data, 0, len(data), signal.item_path, 0)


# The fast path: upb (protobuf's C parser) parses the request with a *shallow* schema built from
# the signal's item path, in which the items are plain bytes fields; it checks the same structure
# as _walk (tags, wire types, lengths on the walked levels) about ten times faster, and the items
# are never parsed. A wanted field sent with another wire type would be kept by upb as an unknown
# field; that is checked for explicitly.

_shallow: dict[str, type[Message]] = {}


def _shallow_type(signal: Signal) -> type[Message]:
    cls = _shallow.get(signal.name)
    if cls is not None:
        return cls
    package = f"otlp_gateway.shallow.{signal.name}"
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"otlp_gateway/shallow/{signal.name}.proto", package=package, syntax="proto3"
    )
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    for depth, fields in enumerate(signal.item_path):
        message = fdp.message_type.add(name=f"L{depth}")
        for number in sorted(fields):
            field = message.field.add(name=f"f{number}", number=number, label=repeated)
            if depth == len(signal.item_path) - 1:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            else:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{package}.L{depth + 1}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.L0"))
    _shallow[signal.name] = cls
    return cls


def _count(message: Message, path: tuple[frozenset[int], ...], depth: int) -> int:
    fields = message.DESCRIPTOR.fields
    unknown = UnknownFieldSet(message)
    if len(unknown):
        wanted = path[depth]
        for i in range(len(unknown)):
            entry = unknown[i]
            if entry.wire_type in (3, 4):  # groups: not in OTLP
                raise WireError(f"unsupported wire type {entry.wire_type}")
            if entry.field_number in wanted:
                raise WireError(
                    f"field {entry.field_number} has wire type {entry.wire_type}, "
                    "expected a message"
                )
    if depth == len(path) - 1:
        return sum(len(getattr(message, f.name)) for f in fields)
    return sum(_count(child, path, depth + 1) for f in fields for child in getattr(message, f.name))


def count_items(signal: Signal, data: bytes) -> int:
    """Validate `data` as an export request of `signal` and return how many items it holds."""
    try:
        message = _shallow_type(signal).FromString(data)
    except DecodeError:
        raise WireError("corrupt wire format: truncated, or not protobuf") from None
    return _count(message, signal.item_path, 0)
