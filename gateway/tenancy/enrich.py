"""Tenant enrichment of OTLP export requests at the wire level, without decoding them.

Every top-level entry of an export request (ResourceSpans / ResourceMetrics / ResourceLogs /
ResourceProfiles, request field 1) has its `resource` as field 1, and a Resource holds its
attributes as repeated field 1 (KeyValue{1: key, 2: AnyValue{1: string_value}}). Protobuf merges
a non-repeated message field that occurs more than once and concatenates repeated fields, so
appending one more `resource` field (tag 0x0A, length, Resource{our KeyValues}) at the end of an
entry adds our attributes after the client's. Only the entry's length prefix has to be rewritten;
the appended bytes are encoded once per tenant.

So that a client cannot spoof a key we set (`tenant.id`, ...), each existing `resource` of an
entry is walked down to its KeyValues, reading only their keys; matching KeyValues are cut out
and the lengths of that Resource and of the entry rewritten. To keep that cheap, the Resource's
bytes are first searched for our keys (bytes.find): usually they occur nowhere, the Resource is
not walked, and the entry's bytes are copied as they are; otherwise only the KeyValues that hold
an occurrence have their key read. Scopes and items are skipped by length, never walked; everything
else is kept byte for byte, in order. Only what is read is validated (WireError).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.otlp.signals import Signal
from gateway.otlp.wire import WireError
from gateway.otlp.wire import encode_varint as _encode_varint
from gateway.otlp.wire import read_varint as _varint
from gateway.otlp.wire import skip_scalar as _skip

TENANT_KEY = "tenant.id"

_LEN = 2
_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})

# A Resource with KeyValues to cut out, as positions in the request:
# (tag start, body start, body stop, [(kv start, kv stop), ...]).
_Cut = tuple[int, int, int, list[tuple[int, int]]]


def _len_prefix(size: int) -> bytes:
    """Tag 0x0A (field 1, length-delimited) and `size` as a varint."""
    if size < 0x80:
        return bytes((0x0A, size))
    if size < 0x4000:
        return bytes((0x0A, size & 0x7F | 0x80, size >> 7))
    return b"\x0a" + _encode_varint(size)


def _ld(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | _LEN) + _encode_varint(len(payload)) + payload


class ResourceEnricher:
    """Adds `tenant.id` and a tenant's configured attributes (all strings) to every resource of an
    export request, replacing any attribute of the same key the client sent. Build it once per
    tenant; `apply` is safe to call concurrently."""

    __slots__ = ("_append", "_key_lens", "_keys", "attributes")

    def __init__(self, tenant: str, attributes: Mapping[str, str] = _NO_ATTRIBUTES) -> None:
        if TENANT_KEY in attributes:
            raise ValueError(f"{TENANT_KEY!r} is set by the gateway, not configurable")
        if not tenant or "" in attributes:
            raise ValueError("attribute keys and the tenant name must not be empty")
        # The attributes added, in order: tenant.id first, then the configured ones.
        self.attributes: tuple[tuple[str, str], ...] = (
            (TENANT_KEY, tenant),
            *attributes.items(),
        )
        kvs = b"".join(
            _ld(1, _ld(1, k.encode()) + _ld(2, _ld(1, v.encode()))) for k, v in self.attributes
        )
        self._append: bytes = _ld(1, kvs)  # one more `resource` field: Resource{attributes}
        self._keys: frozenset[bytes] = frozenset(k.encode() for k, _ in self.attributes)
        self._key_lens: frozenset[int] = frozenset(len(k) for k in self._keys)

    def apply(self, signal: Signal, data: bytes) -> bytes:
        """Return the export request `data` of `signal` with our attributes on every resource.

        Raises WireError if what is read is malformed: the request and entry levels always, a
        Resource up to the last occurrence of one of our keys in its bytes."""
        entry_fields = signal.item_path[0]  # request -> resource_{spans,metrics,logs,profiles}
        append = self._append
        end = len(data)
        mv = memoryview(data)
        chunks: list[bytes | memoryview] = []
        copied = 0  # data[copied:pos] is still to be copied unchanged
        pos = 0
        while pos < end:
            start = pos
            b = data[pos]
            if b < 0x80:
                tag = b
                pos += 1
            else:
                tag, pos = _varint(data, pos, end)
            field = tag >> 3
            wtype = tag & 7
            if field == 0:
                raise WireError("field number 0")
            if wtype != _LEN:
                if field in entry_fields:
                    raise WireError(f"field {field} has wire type {wtype}, expected a message")
                pos = _skip(data, pos, end, wtype)
                continue
            b = data[pos] if pos < end else 0x80
            if b < 0x80:
                size = b
                pos += 1
            elif pos + 1 < end and data[pos + 1] < 0x80:  # two bytes: sizes up to 16 KiB
                size = (b & 0x7F) | data[pos + 1] << 7
                pos += 2
            else:
                size, pos = _varint(data, pos, end)
            stop = pos + size
            if stop > end:
                raise WireError("length runs past the end of the message")
            if field in entry_fields:
                if copied < start:
                    chunks.append(mv[copied:start])
                cuts = self._scan_entry(data, pos, stop)
                if cuts is None:
                    chunks.append(_len_prefix(size + len(append)))
                    chunks.append(mv[pos:stop])
                else:
                    body = self._cut_entry(mv, pos, stop, cuts)
                    chunks.append(_len_prefix(len(body) + len(append)))
                    chunks.append(body)
                chunks.append(append)
                copied = stop
            pos = stop
        if pos != end:
            raise WireError("field runs past the end of the message")
        if copied < end:
            chunks.append(mv[copied:end])
        return b"".join(chunks)

    def _scan_entry(self, data: bytes, pos: int, end: int) -> list[_Cut] | None:
        """Walk one ResourceX entry and its resources' KeyValue keys; return the KeyValues whose
        key is one of ours, per resource, or None if there are none."""
        cuts: list[_Cut] | None = None
        while pos < end:
            start = pos
            b = data[pos]
            if b < 0x80:
                tag = b
                pos += 1
            else:
                tag, pos = _varint(data, pos, end)
            field = tag >> 3
            wtype = tag & 7
            if field == 0:
                raise WireError("field number 0")
            if wtype != _LEN:
                if field == 1:
                    raise WireError(f"resource has wire type {wtype}, expected a message")
                pos = _skip(data, pos, end, wtype)
                continue
            b = data[pos] if pos < end else 0x80
            if b < 0x80:
                size = b
                pos += 1
            elif pos + 1 < end and data[pos + 1] < 0x80:  # two bytes: sizes up to 16 KiB
                size = (b & 0x7F) | data[pos + 1] << 7
                pos += 2
            else:
                size, pos = _varint(data, pos, end)
            stop = pos + size
            if stop > end:
                raise WireError("length runs past the end of the message")
            if field != 1:  # scopes, schema_url, ...: skipped by length
                pos = stop
                continue
            # A Resource in data[pos:stop]
            drops = self._resource_drops(data, pos, stop)
            if drops is not None:
                if cuts is None:
                    cuts = []
                cuts.append((start, pos, stop, drops))
            pos = stop
        if pos != end:
            raise WireError("field runs past the end of the message")
        return cuts

    def _resource_drops(self, data: bytes, pos: int, stop: int) -> list[tuple[int, int]] | None:
        """The (start, stop) ranges of the KeyValues (field 1) of the Resource data[pos:stop] whose
        key is one of ours, or None if there are none."""
        keys = self._keys
        # Where our keys occur in the Resource's bytes, found at C speed. Usually nowhere: then no
        # KeyValue can have one of them as its key. Otherwise only KeyValues holding one of these
        # positions need a look at their key, and the walk ends after the last one.
        hits: list[int] = []
        for key in keys:
            i = data.find(key, pos, stop)
            while i >= 0:
                hits.append(i)
                i = data.find(key, i + 1, stop)
        if not hits:
            return None
        hits.sort()
        n_hits = len(hits)
        h = 0
        next_hit = hits[0]
        drops: list[tuple[int, int]] | None = None
        while True:  # pos <= next_hit < stop
            kv_start = pos
            b = data[pos]
            if b == 0x0A and pos + 1 < stop and data[pos + 1] < 0x80:
                kv_stop = pos + 2 + data[pos + 1]
                if kv_stop <= next_hit:  # a KeyValue before the next hit: skip it
                    pos = kv_stop
                    continue
            if b < 0x80:
                tag = b
                pos += 1
            else:
                tag, pos = _varint(data, pos, stop)
            field = tag >> 3
            wtype = tag & 7
            if field == 0:
                raise WireError("field number 0")
            if wtype != _LEN:
                if field == 1:
                    raise WireError(f"attribute has wire type {wtype}, expected a message")
                pos = _skip(data, pos, stop, wtype)
            else:
                b = data[pos] if pos < stop else 0x80
                if b < 0x80:
                    size = b
                    pos += 1
                else:
                    size, pos = _varint(data, pos, stop)
                kv_stop = pos + size
                if kv_stop > stop:
                    raise WireError("length runs past the end of the message")
                if field == 1 and self._has_our_key(data, pos, kv_stop):
                    if drops is None:
                        drops = []
                    drops.append((kv_start, kv_stop))
                pos = kv_stop
            while h < n_hits and hits[h] < pos:
                h += 1
            if h == n_hits:  # no more of our keys in the rest of the Resource
                return drops
            next_hit = hits[h]

    def _has_our_key(self, data: bytes, pos: int, stop: int) -> bool:
        """Whether the KeyValue data[pos:stop] has one of our keys (its last field 1 counts)."""
        key_pos = key_stop = pos
        while pos < stop:
            b = data[pos]
            if b < 0x80:
                tag = b
                pos += 1
            else:
                tag, pos = _varint(data, pos, stop)
            field = tag >> 3
            wtype = tag & 7
            if field == 0:
                raise WireError("field number 0")
            if wtype != _LEN:
                if field == 1:
                    raise WireError(f"key has wire type {wtype}, expected a string")
                pos = _skip(data, pos, stop, wtype)
                continue
            b = data[pos] if pos < stop else 0x80
            if b < 0x80:
                size = b
                pos += 1
            else:
                size, pos = _varint(data, pos, stop)
            if field == 1:
                key_pos = pos
                key_stop = pos + size
            pos += size
        if pos != stop:
            raise WireError("length runs past the end of the message")
        return key_stop - key_pos in self._key_lens and data[key_pos:key_stop] in self._keys

    @staticmethod
    def _cut_entry(mv: memoryview, pos: int, end: int, cuts: list[_Cut]) -> bytes:
        """The entry data[pos:end] with the KeyValues in `cuts` removed from their resources."""
        parts: list[bytes | memoryview] = []
        for start, body, stop, drops in cuts:
            parts.append(mv[pos:start])
            size = stop - body - sum(b - a for a, b in drops)
            parts.append(_len_prefix(size))
            pos = body
            for a, b in drops:
                parts.append(mv[pos:a])
                pos = b
            parts.append(mv[pos:stop])
            pos = stop
        parts.append(mv[pos:end])
        return b"".join(parts)
