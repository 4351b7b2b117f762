"""gateway.otlp.split: oversized export requests split into valid requests at the wire level;
checked by decoding every part and comparing each item, with all its ancestors, with the
original."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    SummaryDataPoint,
)
from opentelemetry.proto.profiles.v1development.profiles_pb2 import Profile, Sample
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from gateway.otlp.signals import LOGS, METRICS, PROFILES, TRACES, Signal
from gateway.otlp.split import halves, split
from gateway.otlp.wire import WireError, count_items
from tests.support.encoding import ld, varint

# The OTLP schema, written out here rather than taken from Signal.item_path: per level, the
# field numbers of the children (a Metric's data field, then its data points).
PATHS: dict[str, tuple[tuple[int, ...], ...]] = {
    "traces": ((1,), (2,), (2,)),
    "logs": ((1,), (2,), (2,)),
    "profiles": ((1,), (2,), (2,)),
    "metrics": ((1,), (2,), (2,), (5, 7, 9, 10, 11), (1,)),
}
ALL = [TRACES, METRICS, LOGS, PROFILES]

# ---------------------------------------------------------------------------------------------
# Raw protobuf encoding


UNKNOWN = varint(1000 << 3 | 0) + varint(2**63) + ld(1001, b"?") + varint(1002 << 3 | 5) + b"\1" * 4


def vlen(n: int) -> int:
    return len(varint(n))


# ---------------------------------------------------------------------------------------------
# The reference: decode, and list every message and item with the headers of its ancestors


def children(msg: Message, fields: tuple[int, ...]) -> list[tuple[int, Message]]:
    out: list[tuple[int, Message]] = []
    for f in fields:
        fd = msg.DESCRIPTOR.fields_by_number[f]
        if fd.is_repeated:
            out.extend((f, c) for c in getattr(msg, fd.name))
        elif msg.HasField(fd.name):
            out.append((f, getattr(msg, fd.name)))
    return out


def header(msg: Message, fields: tuple[int, ...]) -> bytes:
    """msg without its children, serialized: its resource / scope / name, unknown fields..."""
    h = type(msg)()
    h.CopyFrom(msg)
    for f in fields:
        h.ClearField(msg.DESCRIPTOR.fields_by_number[f].name)
    return h.SerializeToString(deterministic=True)


def events(signal: Signal, raws: list[bytes]) -> list[tuple[Any, ...]]:
    """Every message (below the request) and item of the requests `raws`, in order, each with the
    headers of all its ancestors, the request's included. A message that continues the previous
    one at its depth (equal headers all the way up) is listed once: a split message's pieces are
    one message; so are adjacent identical ones, in the original as in the parts."""
    path = PATHS[signal.name]
    out: list[tuple[Any, ...]] = []
    last: dict[int, tuple[Any, ...]] = {}

    def walk(m: Message, depth: int, ctx: tuple[bytes, ...]) -> None:
        if depth == len(path):
            out.append(("item", ctx, m.SerializeToString(deterministic=True)))
            return
        ctx = (*ctx, header(m, path[depth]))
        if depth:
            ev = (depth, ctx)
            if last.get(depth) != ev:
                out.append(ev)
                last[depth] = ev
        for _, c in children(m, path[depth]):
            walk(c, depth + 1, ctx)

    for raw in raws:
        walk(signal.request_type.FromString(raw), 0, ())
    return out


# ---------------------------------------------------------------------------------------------
# Strategies: decoded requests


def blobs(n: int) -> str:
    return "x" * n


# mostly small, sometimes a few hundred bytes (2-byte lengths), rarely > 16 KiB (3-byte lengths)
sizes = st.integers(0, 39).flatmap(
    lambda b: (
        st.integers(0, 40)
        if b < 28
        else st.integers(100, 400)
        if b < 38
        else st.integers(1000, 3000)
        if b < 39
        else st.integers(16000, 17000)
    )
)
texts = st.text(max_size=6)
key_values = st.builds(
    KeyValue, key=texts, value=sizes.map(lambda n: AnyValue(string_value=blobs(n)))
)
attributes = st.lists(key_values, max_size=2)
u64 = st.integers(0, 2**64 - 1)

spans = st.builds(
    Span,
    trace_id=st.binary(min_size=16, max_size=16),
    span_id=st.binary(min_size=8, max_size=8),
    name=texts,
    start_time_unix_nano=u64,
    attributes=attributes,
)
log_records = st.builds(
    LogRecord,
    time_unix_nano=u64,
    severity_text=texts,
    body=sizes.map(lambda n: AnyValue(string_value=blobs(n))),
    attributes=attributes,
)
profiles = st.builds(
    Profile,
    profile_id=st.binary(min_size=16, max_size=16),
    time_unix_nano=u64,
    samples=st.lists(
        st.builds(
            Sample,
            stack_index=st.integers(0, 9),
            values=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
        ),
        max_size=3,
    ),
    original_payload=sizes.map(lambda n: b"p" * n),
)
number_points = st.builds(
    NumberDataPoint,
    time_unix_nano=u64,
    as_int=st.integers(-(2**63), 2**63 - 1),
    attributes=attributes,
)
POINTS: dict[str, st.SearchStrategy[Any]] = {
    "gauge": number_points,
    "sum": number_points,
    "histogram": st.builds(
        HistogramDataPoint,
        count=u64,
        bucket_counts=st.lists(u64, max_size=4),
        explicit_bounds=st.lists(st.floats(allow_nan=False), max_size=3),
        attributes=attributes,
    ),
    "exponential_histogram": st.builds(
        ExponentialHistogramDataPoint,
        count=u64,
        scale=st.integers(-10, 20),
        positive=st.builds(
            ExponentialHistogramDataPoint.Buckets,
            offset=st.integers(-100, 100),
            bucket_counts=st.lists(u64, max_size=4),
        ),
        attributes=attributes,
    ),
    "summary": st.builds(
        SummaryDataPoint,
        count=u64,
        sum=st.floats(allow_nan=False),
        quantile_values=st.lists(
            st.builds(SummaryDataPoint.ValueAtQuantile, quantile=st.floats(0, 1)), max_size=3
        ),
        attributes=attributes,
    ),
}


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    m = Metric(name=draw(texts), description=draw(texts), unit=draw(texts))
    if draw(st.booleans()):
        m.metadata.extend(draw(attributes))
    kind = draw(st.sampled_from([*POINTS, None]))
    if kind is None:  # no data at all: a Metric without items
        return m
    data = getattr(m, kind)
    data.SetInParent()
    data.data_points.extend(draw(st.lists(POINTS[kind], max_size=8)))
    if kind != "gauge" and kind != "summary":
        data.aggregation_temporality = draw(st.integers(0, 2))
    if kind == "sum":
        data.is_monotonic = draw(st.booleans())
    return m


ITEMS: dict[str, st.SearchStrategy[Any]] = {
    "traces": spans,
    "logs": log_records,
    "profiles": profiles,
    "metrics": metrics(),
}


@st.composite
def requests(draw: st.DrawFn, signal: Signal) -> Message:
    msg = signal.request_type()
    if signal is PROFILES and draw(st.booleans()):
        profiles: Any = msg
        profiles.dictionary.string_table.extend(draw(st.lists(texts, max_size=4)))
        profiles.dictionary.mapping_table.add(memory_start=draw(u64), filename_strindex=1)
    entries = getattr(msg, msg.DESCRIPTOR.fields_by_number[1].name)
    for _ in range(draw(st.integers(0, 4))):
        entry = entries.add()
        if draw(st.booleans()):
            entry.resource.SetInParent()
            entry.resource.attributes.extend(draw(attributes))
        entry.schema_url = draw(st.sampled_from(["", "https://opentelemetry.io/schemas/1.21.0"]))
        for _ in range(draw(st.integers(0, 3))):
            sx = getattr(entry, entry.DESCRIPTOR.fields_by_number[2].name).add()
            if draw(st.booleans()):
                sx.scope.CopyFrom(
                    InstrumentationScope(name=draw(texts), attributes=draw(attributes))
                )
            sx.schema_url = draw(texts)
            items = getattr(sx, sx.DESCRIPTOR.fields_by_number[2].name)
            items.extend(draw(st.lists(ITEMS[signal.name], max_size=6)))
    return msg


# ---------------------------------------------------------------------------------------------
# Strategies: wire encodings, with what the size guarantees are checked against


def wrap_total(hdrs: tuple[int, ...], size: int, depth: int) -> int:
    """The size of a request holding only a field of `size` bytes at `depth`, inside messages
    carrying headers of hdrs[k] bytes at depths k < depth (minimal length prefixes, 1-byte tags)."""
    for k in range(depth - 1, 0, -1):
        body = hdrs[k] + size
        size = 1 + vlen(body) + body
    return hdrs[0] + size


@dataclass
class Encoded:
    raw: bytes
    # per item, in order: the header sizes of its ancestors (depths 0..) and its field's size
    items: list[tuple[tuple[int, ...], int]]
    # per message without items: the size of a request holding it alone
    itemless: list[int]

    def single(self, i: int) -> int:
        """The size of a request holding item i alone."""
        hdrs, size = self.items[i]
        return wrap_total(hdrs, size, len(hdrs))

    def degenerate(self, i: int, max_bytes: int) -> bool:
        """Whether an ancestor of item i does not fit in a part even without children (it is not
        split then)."""
        hdrs, _ = self.items[i]
        return any(
            wrap_total(hdrs, 1 + vlen(hdrs[d]) + hdrs[d], d) > max_bytes
            for d in range(1, len(hdrs))
        )

    def floor(self) -> int:
        """The smallest max_bytes for which no message is too big for a part without children."""
        return max(
            (
                wrap_total(hdrs, 1 + vlen(hdrs[d]) + hdrs[d], d)
                for hdrs, _ in self.items
                for d in range(1, len(hdrs))
            ),
            default=1,
        )


@st.composite
def encodings(draw: st.DrawFn, signal: Signal, msg: Message) -> Encoded:
    """msg encoded by hand: on every level the header fields and sometimes unknown fields placed
    anywhere among the children, sometimes non-minimal length prefixes."""
    path = PATHS[signal.name]
    items: list[tuple[tuple[int, ...], int]] = []
    itemless: list[int] = []
    pads = st.sampled_from([0, 0, 0, 0, 1, 2])

    def encode(m: Message, depth: int, hdrs: tuple[int, ...]) -> bytes:
        head = [header(m, path[depth])]
        if draw(st.integers(0, 3)) == 0:
            head.append(UNKNOWN)
        hdrs = (*hdrs, sum(map(len, head)))
        fields = []
        for f, c in children(m, path[depth]):
            if depth + 1 == len(path):
                field = ld(f, c.SerializeToString(), draw(pads))
                items.append((hdrs, len(field)))
            else:
                before = len(items)
                field = ld(f, encode(c, depth + 1, hdrs), draw(pads))
                if len(items) == before:
                    itemless.append(wrap_total(hdrs, len(field), depth + 1))
            fields.append(field)
        for h in head:
            fields.insert(draw(st.integers(0, len(fields))), h)
        return b"".join(fields)

    return Encoded(encode(msg, 0, ()), items, itemless)


@st.composite
def cases(draw: st.DrawFn, signal: Signal) -> tuple[Encoded, int]:
    msg = draw(requests(signal))
    enc = draw(encodings(signal, msg))
    n = len(enc.raw)
    floor = max(1, min(enc.floor(), n))
    max_bytes = draw(st.one_of(st.integers(1, n + 10), st.integers(floor, max(floor, n))))
    return enc, max_bytes


# ---------------------------------------------------------------------------------------------
# Property tests


def check_items(signal: Signal, raw: bytes, parts: list[bytes]) -> list[int]:
    """Every part valid; together the original's items (each once, in order, each with all its
    ancestors' headers) and its item-less messages. Returns the items per part."""
    counts = [count_items(signal, p) for p in parts]
    assert sum(counts) == count_items(signal, raw)
    assert events(signal, parts) == events(signal, [raw])
    return counts


@pytest.mark.parametrize("signal", ALL, ids=lambda s: s.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_split(signal: Signal, data: st.DataObject) -> None:
    enc, max_bytes = data.draw(cases(signal))
    raw = enc.raw

    parts = split(signal, raw, max_bytes)

    if len(raw) <= max_bytes:
        assert parts == [raw]
        return
    counts = check_items(signal, raw, parts)
    first = 0
    for part, n in zip(parts, counts, strict=True):
        assert part
        if len(part) > max_bytes:  # only what cannot be helped
            if n == 0:
                # a message without items too big alone, or a request without entries
                assert any(size > max_bytes for size in enc.itemless) or parts == [raw]
            elif n == 1:
                assert enc.single(first) > max_bytes or enc.degenerate(first, max_bytes)
            else:
                assert all(enc.degenerate(i, max_bytes) for i in range(first, first + n))
        first += n
    # greedy: a part ends only where the next thing would not fit (a few bytes of slack for
    # length prefixes that grow)
    slack = 4 * len(PATHS[signal.name])
    for a, b in itertools.pairwise(parts):
        assert len(a) + len(b) > max_bytes - slack


@pytest.mark.parametrize("signal", ALL, ids=lambda s: s.name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_halves(signal: Signal, data: st.DataObject) -> None:
    enc, _ = data.draw(cases(signal))
    raw = enc.raw
    n = count_items(signal, raw)

    got = halves(signal, raw)

    if n < 2:
        assert got is None
        return
    assert got is not None
    first, second = got
    counts = check_items(signal, raw, [first, second])
    assert len(first) <= len(raw) // 2 or counts[0] <= 1
    assert len(first) < len(raw) and len(second) < len(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 64))
def test_garbage_raises_wire_error_only(data: bytes, max_bytes: int) -> None:
    for signal in (TRACES, METRICS):
        try:
            parts = split(signal, data, max_bytes)
        except WireError:
            continue
        assert parts


# ---------------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("signal", ALL, ids=lambda s: s.name)
def test_empty_request(signal: Signal) -> None:
    assert split(signal, b"", 1) == [b""]
    assert halves(signal, b"") is None


def test_fitting_request_returned_as_is() -> None:
    raw = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[Span()])])]
    )
    data = raw.SerializeToString()
    assert split(TRACES, data, len(data))[0] is data
    assert halves(TRACES, data) is None  # one span


def traces_request(names: list[str]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.21.0")
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    ss = rs.scope_spans.add(schema_url="s")
    ss.scope.name = "lib"
    for name in names:
        ss.spans.add(name=name, trace_id=b"t" * 16, span_id=b"s" * 8)
    return req


def test_one_huge_span() -> None:
    names = [f"span-{i}" for i in range(100)]
    names[40] = "h" * 100_000
    raw = traces_request(names).SerializeToString()

    parts = split(TRACES, raw, 4096)

    check_items(TRACES, raw, parts)
    big = [p for p in parts if len(p) > 4096]
    assert len(big) == 1 and count_items(TRACES, big[0]) == 1
    got = ExportTraceServiceRequest.FromString(big[0])
    assert got.resource_spans[0].scope_spans[0].spans[0].name == names[40]
    assert got.resource_spans[0].resource.attributes[0].value.string_value == "svc"


def test_whole_entries_kept_together() -> None:
    req = ExportTraceServiceRequest()
    for r in range(10):
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="r").value.int_value = r
        rs.scope_spans.add().spans.extend(Span(name=f"{r}-{i}" * 10) for i in range(20))
    raw = req.SerializeToString()
    entry = len(req.resource_spans[0].SerializeToString()) + 3

    # room for three and a half entries: the fourth starts the next part rather than being split
    parts = split(TRACES, raw, 3 * entry + entry // 2)

    check_items(TRACES, raw, parts)
    sizes = [len(ExportTraceServiceRequest.FromString(p).resource_spans) for p in parts]
    assert sizes == [3, 3, 3, 1]
    assert b"".join(parts) == raw  # whole entries: the bytes as they arrived


@pytest.mark.parametrize("signal", [TRACES, METRICS], ids=lambda s: s.name)
def test_every_max_bytes(signal: Signal) -> None:
    # items and messages around the 128-byte and 16 KiB length-prefix boundaries, every max_bytes
    # from where the headers fit to the whole request: parts fit exactly where they can
    lengths = [0, 60, 100, 110, 118, 120, 121, 122, 123, 124, 125, 126, 127, 128, 200, 16_300]

    def make(lengths: list[int]) -> bytes:
        if signal is TRACES:
            spans = traces_request([blobs(n) for n in lengths])
            if len(lengths) > 1:  # a second resource
                spans.resource_spans.add().CopyFrom(spans.resource_spans[0])
            return spans.SerializeToString()
        req = ExportMetricsServiceRequest()
        rm = req.resource_metrics.add()
        rm.resource.attributes.add(key="service.name").value.string_value = "svc"
        m = rm.scope_metrics.add().metrics.add(name="m")
        for n in lengths:
            m.sum.data_points.add().attributes.add(key=blobs(n))
        return req.SerializeToString()

    raw = make(lengths)
    single = len(make([16_300]))  # the biggest item alone, with its headers
    for max_bytes in [*range(90, 1200), *range(16_300, 16_700), len(raw) - 1]:
        parts = split(signal, raw, max_bytes)
        counts = [count_items(signal, p) for p in parts]
        assert sum(counts) == count_items(signal, raw)
        for p, n in zip(parts, counts, strict=True):
            assert len(p) <= max_bytes or (n == 1 and max_bytes < single), max_bytes
        for a, b in itertools.pairwise(parts):
            assert len(a) + len(b) > max_bytes - 8
    check_items(signal, raw, parts)


@pytest.mark.parametrize("kind", list(POINTS))
def test_metric_with_many_data_points(kind: str) -> None:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "svc"
    m = rm.scope_metrics.add().metrics.add(name="requests", description="d", unit="1")
    m.metadata.add(key="k").value.string_value = "v"
    data = getattr(m, kind)
    for i in range(10_000):
        p = data.data_points.add(time_unix_nano=i)
        p.attributes.add(key="i").value.int_value = i
    if kind in ("sum", "histogram", "exponential_histogram"):
        data.aggregation_temporality = 2
    if kind == "sum":
        data.is_monotonic = True
    raw = req.SerializeToString()
    assert len(raw) > 200_000

    parts = split(METRICS, raw, 16 * 1024)

    assert all(len(p) <= 16 * 1024 for p in parts)
    assert len(parts) <= len(raw) // (15 * 1024) + 1
    check_items(METRICS, raw, parts)
    times: list[int] = []
    for p in parts:
        got = ExportMetricsServiceRequest.FromString(p)
        (grm,) = got.resource_metrics
        (gm,) = grm.scope_metrics[0].metrics
        assert grm.resource == rm.resource
        assert (gm.name, gm.description, gm.unit, gm.metadata) == ("requests", "d", "1", m.metadata)
        assert gm.WhichOneof("data") == kind
        gdata = getattr(gm, kind)
        for field in ("aggregation_temporality", "is_monotonic"):
            if hasattr(data, field):
                assert getattr(gdata, field) == getattr(data, field)
        times.extend(dp.time_unix_nano for dp in gdata.data_points)
    assert times == list(range(10_000))


def profiles_request(dictionary_strings: int) -> ExportProfilesServiceRequest:
    req = ExportProfilesServiceRequest()
    req.dictionary.string_table.extend(["", "main", "libc.so", *("s" * 50,) * dictionary_strings])
    req.dictionary.mapping_table.add(memory_start=4096, memory_limit=8192, filename_strindex=2)
    for r in range(3):
        rp = req.resource_profiles.add(schema_url="u")
        rp.resource.attributes.add(key="r").value.int_value = r
        for s in range(2):
            sp = rp.scope_profiles.add()
            sp.scope.name = f"scope-{s}"
            for i in range(30):
                sp.profiles.add(profile_id=bytes([r, s, i]) * 5 + b"!", original_payload=b"p" * 300)
    return req


def test_profiles_dictionary_in_every_part() -> None:
    req = profiles_request(10)
    raw = req.SerializeToString()

    parts = split(PROFILES, raw, 4000)

    assert len(parts) > 10 and all(len(p) <= 4000 for p in parts)
    check_items(PROFILES, raw, parts)
    for p in parts:
        assert ExportProfilesServiceRequest.FromString(p).dictionary == req.dictionary
    first, second = halves(PROFILES, raw) or (b"", b"")
    check_items(PROFILES, raw, [first, second])
    assert ExportProfilesServiceRequest.FromString(second).dictionary == req.dictionary


def test_headers_too_big_for_a_part_are_not_split_per_item() -> None:
    # the dictionary alone is bigger than max_bytes: splitting cannot make parts fit, and one
    # part per profile would copy the dictionary 180 times; one part per entry instead
    req = profiles_request(200)
    raw = req.SerializeToString()
    assert len(req.dictionary.SerializeToString()) > 8000

    parts = split(PROFILES, raw, 8000)

    assert len(parts) == 3
    check_items(PROFILES, raw, parts)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(ld(1, b"\x12\x05ab"), id="scope past end of entry"),
        pytest.param(ld(1, b"\x10\x01" + ld(2, b"")), id="scope as varint"),
        pytest.param(ld(1, ld(2, b"\x12\x09abc")), id="span past end of scope"),
        pytest.param(ld(1, ld(2, b"\x0f")), id="invalid wire type"),
        pytest.param(ld(1, ld(2, b"\x00\x00")), id="field 0"),
        pytest.param(b"\x0a", id="truncated"),
    ],
)
def test_malformed_split_messages_raise_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        split(TRACES, raw + b"\x0a\x00", 2)
