"""Splitting an export request that is too big for a backend into several valid requests, at the
wire level, without decoding its items.

An export request is a tree of length-delimited messages: the request's entries (ResourceSpans /
ResourceMetrics / ResourceLogs / ResourceProfiles, field 1), their ScopeX (field 2), and the items
(spans, log records, profiles: field 2 of a ScopeX; for metrics a Metric's data field gauge(5) /
sum(7) / histogram(9) / exponential_histogram(10) / summary(11) and its data points, field 1).
`Signal.item_path` names, per level, the fields holding the next level down. Every other field of
a message is its "header": the request's `dictionary` (profiles), an entry's `resource` and
`schema_url`, a scope's `scope`, a Metric's name / unit / metadata, a Sum's temporality, and any
unknown field.

Parts are packed greedily, in order. A message that fits in the current part is copied whole, as
the bytes that arrived. One that does not, but fits in a part of its own, starts the next part.
One that does not fit in a part at all is split: each piece of it carries a copy of its header
(and of its ancestors' headers, the request's included) and a run of its children, and its
children are placed the same way, the first of them filling the room left in the current part.
Protobuf merges repeated occurrences of a non-repeated message field and concatenates repeated
fields, so a decoder sees every item with the same resource, scope, metric and dictionary as in
the original request. In a piece, the header fields come first, then the children; children keep
their order and their bytes. Only the length prefixes of the pieces are new (minimal varints).
(A Metric's data field is a oneof, sent once; should one arrive in several occurrences, which
protobuf would merge, each piece carries the header fields of the occurrence its points are from.)

The walk reads only the messages it splits (the tags and lengths of their fields), raising
WireError on what it reads that is malformed; the bytes it copies whole are not looked into. It
runs in time linear in the size of the messages split, holding (offset, length) runs of the
original bytes, not one object per item.
"""

from __future__ import annotations

import sys

from gateway.otlp.signals import Signal
from gateway.otlp.wire import WireError, count_items, skip_scalar
from gateway.otlp.wire import encode_varint as _encode_varint
from gateway.otlp.wire import read_varint as _varint

__all__ = ["halves", "split"]

_LEN = 2
_UNLIMITED = sys.maxsize


def _vlen(n: int) -> int:
    """The length of n as a (minimal) varint."""
    if n < 0x80:
        return 1
    if n < 0x4000:
        return 2
    if n < 0x200000:
        return 3
    return (n.bit_length() + 6) // 7


class _Level:
    """A message being split (the request, or an open piece of one of its descendants): its
    header, and the children of it that the current part holds."""

    __slots__ = ("header", "hlen", "pieces", "run_start", "run_stop", "size", "tag", "taglen")

    def __init__(self, tag: bytes, header: bytes) -> None:
        self.tag = tag  # this message's tag in its parent, as it arrived (b"" for the request)
        self.taglen = len(tag)
        self.header = header  # its non-child fields, as they arrived, concatenated
        self.hlen = len(header)
        self.size = 0  # bytes of children in the current part (whole ones and closed pieces)
        self.pieces: list[bytes | memoryview] = []
        # whole children data[run_start:run_stop], contiguous, not yet appended to pieces
        self.run_start = -1
        self.run_stop = -1


class _Packer:
    __slots__ = ("balanced", "budget", "data", "leaf_depth", "levels", "mv", "parts", "paths")

    def __init__(self, signal: Signal, data: bytes, budget: int, balanced: bool) -> None:
        self.data = data
        self.mv = memoryview(data)
        self.paths = signal.item_path
        self.leaf_depth = len(signal.item_path)  # the depth of the items (the request is 0)
        self.budget = budget
        # balanced (halves): split whatever does not fit to fill the first part up to the
        # budget, then put all the rest in the second
        self.balanced = balanced
        self.levels: list[_Level] = []
        self.parts: list[bytes] = []

    def run(self) -> list[bytes]:
        data = self.data
        header, children = self._scan(0, len(data), 0)
        if not children:
            return [data]
        self.levels.append(_Level(b"", header))
        self._children(0, len(data), 0)
        if self._filled():
            self._flush()
        return self.parts

    # -- sizes -----------------------------------------------------------------------------

    def _total(self, size: int, fresh: bool) -> int:
        """The size of the current part (fresh: of a new one) with `size` more bytes of children
        in the innermost open message."""
        levels = self.levels
        i = len(levels) - 1
        while i:
            lv = levels[i]
            body = lv.hlen + size if fresh else lv.hlen + lv.size + size
            size = lv.taglen + _vlen(body) + body
            i -= 1
        lv = levels[0]
        return lv.hlen + size if fresh else lv.hlen + lv.size + size

    def _room(self) -> int:
        """A lower bound, usually exact, on the bytes of children the innermost open message can
        hold in the current part (a size up to which children are added without a check)."""
        inner = self.levels[-1]
        budget = self.budget
        room = budget - (self._total(0, False) - inner.size)
        for _ in range(4):  # varint lengths grow a byte at a time: a few steps at most
            if room <= inner.size:
                break
            total = self._total(room - inner.size, False)
            if total <= budget:
                return room
            room -= total - budget
        return inner.size

    def _filled(self) -> bool:
        return any(lv.size or lv.run_stop >= 0 for lv in self.levels)

    # -- building parts ----------------------------------------------------------------------

    def _add(self, start: int, stop: int) -> None:
        """Add the whole field data[start:stop] to the innermost open message."""
        lv = self.levels[-1]
        if start == lv.run_stop:
            lv.run_stop = stop
        else:
            if lv.run_stop >= 0:
                lv.pieces.append(self.mv[lv.run_start : lv.run_stop])
            lv.run_start = start
            lv.run_stop = stop
        lv.size += stop - start

    def _close_run(self, lv: _Level) -> None:
        if lv.run_stop >= 0:
            lv.pieces.append(self.mv[lv.run_start : lv.run_stop])
            lv.run_start = lv.run_stop = -1

    def _emit(self, lv: _Level, parent: _Level) -> None:
        """Append the piece of `lv` in the current part (it has children) to its parent's."""
        self._close_run(lv)
        self._close_run(parent)
        body = lv.hlen + lv.size
        parent.pieces.append(lv.tag + _encode_varint(body) + lv.header)
        parent.pieces.extend(lv.pieces)
        parent.size += lv.taglen + _vlen(body) + body
        lv.pieces = []
        lv.size = 0

    def _flush(self) -> None:
        """Finish the current part and start the next, reopening every open message in it."""
        levels = self.levels
        for i in range(len(levels) - 1, 0, -1):
            lv = levels[i]
            if lv.size or lv.run_stop >= 0:
                self._emit(lv, levels[i - 1])
        top = levels[0]
        self._close_run(top)
        self.parts.append(b"".join([top.header, *top.pieces]))
        top.pieces = []
        top.size = 0
        if self.balanced:
            self.budget = _UNLIMITED

    # -- the walk ------------------------------------------------------------------------------

    def _scan(self, pos: int, end: int, depth: int) -> tuple[bytes, int]:
        """Validate the fields of the message data[pos:end] at `depth`; return its header (its
        fields other than the children's, concatenated) and how many children it has."""
        data = self.data
        wanted = self.paths[depth]
        header: list[memoryview] = []
        run_start = run_stop = pos
        children = 0
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
            if wtype == _LEN:
                b = data[pos] if pos < end else 0x80
                if b < 0x80:
                    pos += 1 + b
                elif pos + 1 < end and data[pos + 1] < 0x80:  # two bytes: sizes up to 16 KiB
                    pos += 2 + ((b & 0x7F) | data[pos + 1] << 7)
                else:
                    size, pos = _varint(data, pos, end)
                    pos += size
                if pos > end:
                    raise WireError("length runs past the end of the message")
                if field in wanted:
                    children += 1
                    continue
            elif field in wanted:
                raise WireError(f"field {field} has wire type {wtype}, expected a message")
            else:
                pos = skip_scalar(data, pos, end, wtype)
            if start != run_stop:  # a header field after children: a new run
                if run_stop > run_start:
                    header.append(self.mv[run_start:run_stop])
                run_start = start
            run_stop = pos
        if run_stop > run_start:
            header.append(self.mv[run_start:run_stop])
        return b"".join(header), children

    def _children(self, pos: int, end: int, depth: int) -> None:
        """Place the children of the open message data[pos:end] (already scanned) at `depth`."""
        data = self.data
        wanted = self.paths[depth]
        lv = self.levels[-1]
        room = self._room()
        while pos < end:
            start = pos
            b = data[pos]
            if b < 0x80:
                tag = b
                pos += 1
            else:
                tag, pos = _varint(data, pos, end)
            wtype = tag & 7
            if wtype != _LEN:
                pos = skip_scalar(data, pos, end, wtype)  # validated by the scan already
                continue
            tag_stop = pos
            b = data[pos]
            if b < 0x80:
                size = b
                pos += 1
            elif data[pos + 1] < 0x80:  # two bytes: sizes up to 16 KiB
                size = (b & 0x7F) | data[pos + 1] << 7
                pos += 2
            else:
                size, pos = _varint(data, pos, end)
            stop = pos + size
            if tag >> 3 in wanted:
                if lv.size + stop - start <= room:  # fits: the common case, inlined _add
                    if start == lv.run_stop:
                        lv.run_stop = stop
                    else:
                        if lv.run_stop >= 0:
                            lv.pieces.append(self.mv[lv.run_start : lv.run_stop])
                        lv.run_start = start
                        lv.run_stop = stop
                    lv.size += stop - start
                else:
                    self._place(start, tag_stop, pos, stop, depth + 1)
                    room = self._room()
            pos = stop

    def _place(self, start: int, tag_stop: int, pos: int, stop: int, depth: int) -> None:
        """Place the field data[start:stop] (its body from pos) holding a message at `depth`
        that does not fit in the current part without a check."""
        size = stop - start
        budget = self.budget
        if self._total(size, False) <= budget:
            self._add(start, stop)
            return
        filled = self._filled()
        if filled and not self.balanced and self._total(size, True) <= budget:
            self._flush()
            self._add(start, stop)
            return
        if depth < self.leaf_depth:
            header, children = self._scan(pos, stop, depth)
            hlen = len(header)
            tag = self.data[start:tag_stop]
            # Split it, unless even its header does not fit in a part: then every piece would
            # be too big anyway, one per child, each with a copy of the header.
            if children and (
                self.balanced or self._total(len(tag) + _vlen(hlen) + hlen, True) <= budget
            ):
                self.levels.append(_Level(tag, header))
                self._children(pos, stop, depth)
                lv = self.levels.pop()
                if lv.size or lv.run_stop >= 0:
                    self._emit(lv, self.levels[-1])
                return
        # An item (or a message that cannot usefully be split) too big for any part: alone.
        if filled:
            self._flush()
        self._add(start, stop)


def split(signal: Signal, data: bytes, max_bytes: int) -> list[bytes]:
    """Split the export request `data` of `signal` into requests of at most `max_bytes` each,
    in order, whose items together are exactly those of `data`, each once, each with its own
    resource, scope (and for metrics its metric), schema_urls, the request's `dictionary`
    (profiles) and any unknown fields of those messages.

    A request that fits is returned as it is, `[data]` (an empty request gives `[b""]`). So is
    a request without entries. Entries, scopes, metrics that fit in a part are kept whole;
    one is split only if it does not fit in a part of its own.

    A part is larger than `max_bytes` only when it cannot be helped: it holds a single item
    that does not fit with the headers it needs, or a single message whose header alone (with
    its ancestors') does not fit, which is therefore not split. The caller decides what to do
    with such a part (send it and let the backend refuse it, or drop it). Parts without items
    can occur when the request holds messages without items (an empty scope) that do not fit
    with their neighbours.

    Raises WireError on malformed bytes in the messages that are split (what is copied whole
    is not read): pass requests that `gateway.otlp.wire.count_items` accepted.
    """
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    if len(data) <= max_bytes:
        return [data]
    return _Packer(signal, data, max_bytes, balanced=False).run()


def halves(signal: Signal, data: bytes) -> tuple[bytes, bytes] | None:
    """Split the export request `data` of `signal` into two valid requests of roughly equal
    size (the first at most half of `data`, unless it holds a single item larger than that),
    with all its items in order, as `split` does; for a backend that answered 413.

    None if `data` holds fewer than two items: it cannot be split. Raises WireError if `data`
    is malformed (it is validated with `count_items`)."""
    if count_items(signal, data) < 2:
        return None
    budget = len(data) // 2
    while True:
        parts = _Packer(signal, data, budget, balanced=True).run()
        if len(parts) == 2:
            return parts[0], parts[1]
        # All of it fits in half its size: only if its length prefixes were far from minimal.
        budget = len(parts[0]) // 2
