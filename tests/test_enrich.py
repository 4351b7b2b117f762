"""gateway.tenancy.enrich: tenant attributes added to every resource at the wire level, client-sent
attributes with our keys removed; checked against a full decode + modify."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.config import DEFAULT_TENANT, parse
from gateway.otlp.signals import LOGS, METRICS, PROFILES, TRACES, Signal
from gateway.otlp.wire import WireError, count_items
from gateway.tenancy.enrich import TENANT_KEY, ResourceEnricher
from gateway.tenancy.tenants import TenantRegistry
from tests.support.encoding import ld, varint

# ---------------------------------------------------------------------------------------------
# Raw protobuf encoding (with optionally non-minimal varints)


def kv_bytes(key: str, value: str) -> bytes:
    return ld(1, ld(1, key.encode()) + ld(2, ld(1, value.encode())))


# ---------------------------------------------------------------------------------------------
# The reference: full decode, drop our keys, append ours


def entries(msg: Message) -> Any:
    """The request's repeated field 1 (resource_spans / _metrics / _logs / _profiles)."""
    return getattr(msg, msg.DESCRIPTOR.fields_by_number[1].name)


def reference(signal: Signal, raw: bytes, ours: tuple[tuple[str, str], ...]) -> Message:
    msg = signal.request_type.FromString(raw)
    keys = {k for k, _ in ours}
    for entry in entries(msg):
        attrs = entry.resource.attributes
        kept = [KeyValue.FromString(kv.SerializeToString()) for kv in attrs if kv.key not in keys]
        del attrs[:]
        attrs.extend(kept)
        for k, v in ours:
            attrs.add(key=k).value.string_value = v
    return msg


# ---------------------------------------------------------------------------------------------
# Strategies

texts = st.text(max_size=8)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def configs(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    tenant = draw(st.text(min_size=1, max_size=10))
    extra = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=12).filter(lambda k: k != TENANT_KEY), texts, max_size=3
        )
    )
    return tenant, extra


def any_values(strings: list[str] = ["x"]) -> st.SearchStrategy[AnyValue]:  # noqa: B006
    # strings: values to use sometimes (our keys: their bytes then occur in a value, not a key);
    # long strings make KeyValues longer than 127 bytes (two-byte lengths)
    return st.one_of(
        texts.map(lambda v: AnyValue(string_value=v)),
        st.sampled_from(strings).map(lambda v: AnyValue(string_value=v)),
        st.text("ab", min_size=120, max_size=200).map(lambda v: AnyValue(string_value=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: AnyValue(int_value=v)),
        st.booleans().map(lambda v: AnyValue(bool_value=v)),
        st.floats(allow_nan=False).map(lambda v: AnyValue(double_value=v)),
        st.binary(max_size=8).map(lambda v: AnyValue(bytes_value=v)),
        st.just(AnyValue()),
    )


def key_values(our_keys: list[str]) -> st.SearchStrategy[KeyValue]:
    keys = st.one_of(st.sampled_from(our_keys), texts, st.sampled_from(["service.name", ""]))
    return st.builds(KeyValue, key=keys, value=any_values(our_keys))


@st.composite
def scopes(draw: st.DrawFn) -> InstrumentationScope:
    return InstrumentationScope(
        name=draw(texts),
        version=draw(texts),
        attributes=draw(st.lists(key_values(["x"]), max_size=2)),
        dropped_attributes_count=draw(u32),
    )


spans = st.builds(
    Span,
    trace_id=st.binary(min_size=16, max_size=16),
    span_id=st.binary(min_size=8, max_size=8),
    name=texts,
    start_time_unix_nano=u64,
    attributes=st.lists(key_values(["k", TENANT_KEY]), max_size=2),
)
logs = st.builds(
    LogRecord,
    time_unix_nano=u64,
    severity_text=texts,
    body=any_values(),
    attributes=st.lists(key_values(["k", TENANT_KEY]), max_size=2),
)
points = st.builds(
    NumberDataPoint,
    time_unix_nano=u64,
    as_int=st.integers(-(2**63), 2**63 - 1),
    attributes=st.lists(key_values([TENANT_KEY]), max_size=1),
)


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    m = Metric(name=draw(texts), unit=draw(texts))
    dps = draw(st.lists(points, max_size=3))
    if draw(st.booleans()):
        m.gauge.data_points.extend(dps)
    else:
        m.sum.data_points.extend(dps)
        m.sum.is_monotonic = draw(st.booleans())
    return m


ITEMS: dict[str, st.SearchStrategy[Any]] = {"traces": spans, "metrics": metrics(), "logs": logs}


@st.composite
def requests(draw: st.DrawFn, signal: Signal, our_keys: list[str]) -> Message:
    msg = signal.request_type()
    for _ in range(draw(st.integers(0, 4))):
        entry = entries(msg).add()
        if draw(st.booleans()):  # else: no resource at all
            entry.resource.SetInParent()
            entry.resource.attributes.extend(draw(st.lists(key_values(our_keys), max_size=6)))
            entry.resource.dropped_attributes_count = draw(st.sampled_from([0, 1, 2**32 - 1]))
        entry.schema_url = draw(st.sampled_from(["", "https://opentelemetry.io/schemas/1.21.0"]))
        scope_field = entry.DESCRIPTOR.fields_by_number[2].name
        for _ in range(draw(st.integers(0, 2))):
            sx = getattr(entry, scope_field).add()
            if draw(st.booleans()):
                sx.scope.CopyFrom(draw(scopes()))
            sx.schema_url = draw(texts)
            items = getattr(sx, sx.DESCRIPTOR.fields_by_number[2].name)
            items.extend(draw(st.lists(ITEMS[signal.name], max_size=3)))
    return msg


UNKNOWN = varint(1000 << 3 | 0) + varint(2**63) + ld(1001, b"?") + varint(1002 << 3 | 5) + b"\1" * 4


@st.composite
def wire_variants(draw: st.DrawFn, msg: Message) -> bytes:
    """msg encoded by hand: each resource split into several `resource` fields interleaved with
    the other fields of its entry, non-minimal varints, unknown fields on every level walked."""
    pads = st.integers(0, 2)
    out = bytearray()
    for entry in entries(msg):
        resource_fields = []
        if entry.HasField("resource"):
            res = entry.resource
            # sometimes a KeyValue with an extra key field first (the last one counts)
            decoys = st.sampled_from([b"", ld(1, b"decoy"), ld(1, TENANT_KEY.encode())])
            parts = [draw(decoys) + kv.SerializeToString() for kv in res.attributes]
            cuts = sorted(draw(st.lists(st.integers(0, len(parts)), max_size=2)))
            groups = [parts[a:b] for a, b in zip([0, *cuts], [*cuts, len(parts)], strict=True)]
            for i, group in enumerate(groups):
                body = b"".join(ld(1, kv, draw(pads)) for kv in group)
                if i == 0 and res.dropped_attributes_count:
                    body += varint(2 << 3) + varint(res.dropped_attributes_count)
                if draw(st.booleans()):
                    body += UNKNOWN
                resource_fields.append(ld(1, body, draw(pads)))
        scope_field = entry.DESCRIPTOR.fields_by_number[2].name
        other = [ld(2, sx.SerializeToString(), draw(pads)) for sx in getattr(entry, scope_field)]
        if entry.schema_url:
            other.append(ld(3, entry.schema_url.encode()))
        if draw(st.booleans()):
            other.append(UNKNOWN)
        # interleave, keeping the order within each list
        fields = []
        while resource_fields or other:
            take_resource = resource_fields and (not other or draw(st.booleans()))
            fields.append((resource_fields if take_resource else other).pop(0))
        body = b"".join(fields)
        if draw(st.booleans()):
            out += UNKNOWN
        tag = b"\x0a" if not draw(st.booleans()) else b"\x8a\x00"  # non-minimal tag too
        out += tag + varint(len(body), draw(pads)) + body
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Property tests


@pytest.mark.parametrize("signal", [TRACES, METRICS, LOGS], ids=lambda s: s.name)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_apply_equals_decode_modify(signal: Signal, data: st.DataObject) -> None:
    tenant, extra = data.draw(configs())
    enricher = ResourceEnricher(tenant, extra)
    ours = enricher.attributes
    assert ours == ((TENANT_KEY, tenant), *extra.items())
    msg = data.draw(requests(signal, [k for k, _ in ours]))
    raw = msg.SerializeToString() if data.draw(st.booleans()) else data.draw(wire_variants(msg))

    out = enricher.apply(signal, raw)

    got = signal.request_type.FromString(out)
    assert got == reference(signal, raw, ours)
    assert count_items(signal, out) == count_items(signal, raw)
    # applying again changes nothing but the bytes: our own attributes are replaced by themselves
    assert signal.request_type.FromString(enricher.apply(signal, out)) == got


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_raises_wire_error_only(data: bytes) -> None:
    enricher = ResourceEnricher("acme", {"env": "prod"})
    try:
        out = enricher.apply(TRACES, data)
    except WireError:
        return
    # whatever it accepted has a resource per entry with our attributes last
    assert len(out) >= len(data)


# ---------------------------------------------------------------------------------------------
# Deterministic tests

ENRICHER = ResourceEnricher("acme", {"deployment.environment": "prod", "region": "eu-1"})
OURS = [(TENANT_KEY, "acme"), ("deployment.environment", "prod"), ("region", "eu-1")]


def attrs(resource: Resource) -> list[tuple[str, Any]]:
    return [
        (kv.key, getattr(kv.value, kv.value.WhichOneof("value") or "string_value"))
        for kv in resource.attributes
    ]


@pytest.mark.parametrize("signal", [TRACES, METRICS, LOGS, PROFILES], ids=lambda s: s.name)
def test_empty_request(signal: Signal) -> None:
    assert ENRICHER.apply(signal, b"") == b""


def test_spoofed_tenant_id_is_replaced() -> None:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key=TENANT_KEY).value.string_value = "evil"
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    rs.resource.attributes.add(key="region").value.int_value = 7
    rs.resource.attributes.add(key=TENANT_KEY).value.string_value = "evil2"
    rs.scope_spans.add().spans.add(name="s")
    # a second `resource` field on the same entry with another spoof
    raw = req.SerializeToString()
    second = ld(1, kv_bytes(TENANT_KEY, "evil3") + kv_bytes("host", "h"))
    entry = rs.SerializeToString() + second
    raw = ld(1, entry)

    got = ExportTraceServiceRequest.FromString(ENRICHER.apply(TRACES, raw))

    res = got.resource_spans[0].resource
    assert attrs(res) == [("service.name", "svc"), ("host", "h"), *OURS]
    assert [kv.value.string_value for kv in res.attributes if kv.key == TENANT_KEY] == ["acme"]
    assert got.resource_spans[0].scope_spans[0].spans[0].name == "s"


def test_open_mode_enriches_as_tenant_default() -> None:
    """Without tenants every request is tenant `default`'s, and its resources say so: a client
    cannot put another tenant's name downstream there either."""
    config = parse("backends: {f: {protocol: file, path: ./x}}\nservice_backends: [f]\n", env={})
    registry = TenantRegistry(config)
    assert registry.open
    tenant = registry.authenticate({}, TRACES)
    assert tenant.name == DEFAULT_TENANT == "default"
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key=TENANT_KEY).value.string_value = "acme"
    rs.scope_spans.add().spans.add(name="s")
    payload, items = asyncio.run(tenant.prepare(TRACES, req.SerializeToString(), 1))
    got = ExportTraceServiceRequest.FromString(payload)
    assert (attrs(got.resource_spans[0].resource), items) == ([(TENANT_KEY, "default")], 1)


def test_spoof_in_last_key_of_a_key_value() -> None:
    # KeyValue{key: "x", value, key: "tenant.id"} parses as key "tenant.id": must be removed
    kv = ld(1, b"x") + ld(2, ld(1, b"v")) + ld(1, TENANT_KEY.encode())
    raw = ld(1, ld(1, ld(1, kv)))
    got = ExportTraceServiceRequest.FromString(ENRICHER.apply(TRACES, raw))
    assert attrs(got.resource_spans[0].resource) == OURS


def test_entries_without_resource_get_one() -> None:
    req = ExportLogsServiceRequest()
    req.resource_logs.add()  # empty entry
    req.resource_logs.add().scope_logs.add().log_records.add(severity_text="INFO")
    raw = req.SerializeToString()
    got = ExportLogsServiceRequest.FromString(ENRICHER.apply(LOGS, raw))
    assert len(got.resource_logs) == 2
    for rl in got.resource_logs:
        assert rl.HasField("resource")
        assert attrs(rl.resource) == OURS
    assert got.resource_logs[1].scope_logs[0].log_records[0].severity_text == "INFO"


def test_untouched_bytes_are_copied_and_ours_appended() -> None:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "svc"
    rm.scope_metrics.add().metrics.add(name="m").gauge.data_points.add(as_int=1)
    body = rm.SerializeToString()
    raw = UNKNOWN + ld(1, body, pad=2) + UNKNOWN
    appended = ld(1, b"".join(kv_bytes(k, v) for k, v in OURS))
    new_body = body + appended
    assert ENRICHER.apply(METRICS, raw) == UNKNOWN + ld(1, new_body) + UNKNOWN


def test_profiles_dictionary_copied_unchanged() -> None:
    req = ExportProfilesServiceRequest()
    req.dictionary.string_table.extend(["", "main", "libc.so"])
    req.dictionary.mapping_table.add(memory_start=4096, memory_limit=8192)
    rp = req.resource_profiles.add()
    rp.resource.attributes.add(key=TENANT_KEY).value.string_value = "evil"
    rp.scope_profiles.add().profiles.add()
    req.resource_profiles.add()
    dictionary = ld(2, req.dictionary.SerializeToString())
    raw = req.SerializeToString()
    assert dictionary in raw

    out = ENRICHER.apply(PROFILES, raw)

    assert dictionary in out
    got = ExportProfilesServiceRequest.FromString(out)
    assert got.dictionary == req.dictionary
    assert [attrs(e.resource) for e in got.resource_profiles] == [OURS, OURS]
    assert got == reference(PROFILES, raw, tuple(OURS))
    assert count_items(PROFILES, out) == count_items(PROFILES, raw) == 1


def test_count_items_unchanged() -> None:
    req = ExportTraceServiceRequest()
    for r in range(3):
        rs = req.resource_spans.add()
        if r:
            rs.resource.attributes.add(key=TENANT_KEY).value.string_value = "evil"
        for s in range(r + 1):
            rs.scope_spans.add().spans.extend(Span(name=f"{r}.{s}.{i}") for i in range(s + 2))
    raw = req.SerializeToString()
    out = ENRICHER.apply(TRACES, raw)
    assert count_items(TRACES, out) == count_items(TRACES, raw) == 2 + 5 + 9


VALID_ENTRY = ld(1, ld(1, kv_bytes("a", "b")))
T = TENANT_KEY.encode()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x0a", id="truncated length"),
        pytest.param(b"\x0a\x05ab", id="entry past end"),
        pytest.param(b"\x8a", id="truncated tag"),
        pytest.param(b"\x00\x00", id="field 0"),
        pytest.param(b"\x08\x01", id="entry as varint"),
        pytest.param(b"\x0b", id="group"),
        pytest.param(b"\x11\x00\x00", id="truncated fixed64"),
        pytest.param(b"\x15\x00", id="truncated fixed32"),
        pytest.param(b"\x0a\x01\x08", id="truncated varint in entry"),
        pytest.param(b"\x0a\x02\x08\x01" + b"\x0a\x01\x0a", id="resource length truncated"),
        # inside a Resource, only what comes before the last occurrence of our keys is read
        pytest.param(ld(1, ld(1, b"\x0a\x7f" + T)), id="key value past resource"),
        pytest.param(ld(1, ld(1, b"\x08\x01" + kv_bytes("x", "tenant.id"))), id="kv as varint"),
        pytest.param(ld(1, ld(1, ld(1, b"\x08\x01" + ld(2, T)))), id="key as varint"),
        pytest.param(ld(1, ld(1, ld(1, b"\x0a\x30" + T))), id="key past key value"),
        pytest.param(ld(1, ld(1, ld(1, ld(2, T) + b"\x0a"))), id="key length truncated"),
        pytest.param(ld(1, ld(1, ld(1, ld(2, T) + b"\x00\x00"))), id="field 0 in key value"),
        pytest.param(ld(1, ld(1, b"\x0f" + T)), id="invalid wire type in resource"),
        pytest.param(ld(1, b"\x1d\x00"), id="fixed32 past entry"),
        pytest.param(ld(1, b"\x0f"), id="invalid wire type in entry"),
        pytest.param(VALID_ENTRY + b"\xff" * 11, id="overlong varint"),
        pytest.param(
            VALID_ENTRY + b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", id="huge length"
        ),
    ],
)
def test_malformed_input_raises_wire_error(raw: bytes) -> None:
    ENRICHER.apply(TRACES, VALID_ENTRY)  # the prefix used above is fine on its own
    with pytest.raises(WireError):
        ENRICHER.apply(TRACES, raw)


def test_tenant_id_not_configurable() -> None:
    with pytest.raises(ValueError, match=TENANT_KEY):
        ResourceEnricher("acme", {TENANT_KEY: "other"})
    assert ResourceEnricher("acme").attributes == ((TENANT_KEY, "acme"),)
