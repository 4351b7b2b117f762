"""gateway.otlp.wire (the protobuf wire walk that validates and counts) and gateway.otlp.jsonpb
(OTLP/JSON with hex ids <-> protobuf)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.otlp import jsonpb as otlpjson
from gateway.otlp import wire
from gateway.otlp.signals import LOGS, METRICS, PROFILES, TRACES
from gateway.otlp.wire import WireError, count_items
from tests.support.encoding import ld, varint
from tests.support.peers import count_items as decoded_count

# ---------------------------------------------------------------------------------------------
# Raw protobuf encoding helpers


def tag(field: int, wtype: int) -> bytes:
    return varint(field << 3 | wtype)


# unknown fields of every wire type the walk must skip: varint, fixed64, length-delimited, fixed32
UNKNOWN = (
    tag(1000, 0)
    + varint(2**63)
    + tag(1001, 1)
    + b"\x01" * 8
    + ld(1002, b"unknown bytes \x00\xff")
    + tag(1003, 5)
    + b"\x02" * 4
)


# ---------------------------------------------------------------------------------------------
# Builders


def traces(shape: list[list[int]]) -> ExportTraceServiceRequest:
    """shape: per resource, the number of spans of each scope."""
    req = ExportTraceServiceRequest()
    for r, scopes in enumerate(shape):
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc-{r}"
        rs.schema_url = "https://opentelemetry.io/schemas/1.21.0"
        for s, n in enumerate(scopes):
            ss = rs.scope_spans.add()
            ss.scope.name = f"scope-{s}"
            for i in range(n):
                span = ss.spans.add(name=f"span-{i}", kind=Span.SPAN_KIND_SERVER)
                span.trace_id = bytes(range(16))
                span.span_id = i.to_bytes(8, "big")
                span.attributes.add(key="i").value.int_value = i
                span.events.add(name="e")
                span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    return req


def logs(shape: list[list[int]]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for scopes in shape:
        rl = req.resource_logs.add()
        for n in scopes:
            sl = rl.scope_logs.add()
            for i in range(n):
                rec = sl.log_records.add(severity_number=9, time_unix_nano=i + 1)
                rec.body.string_value = f"log {i}"
    return req


METRIC_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def metrics(points: dict[str, int], resources: int = 1) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for _ in range(resources):
        sm = req.resource_metrics.add().scope_metrics.add()
        for kind, n in points.items():
            m = sm.metrics.add(name=f"m.{kind}", unit="1", description="d")
            data = getattr(m, kind)
            data.SetInParent()  # an empty gauge/sum/... is still that kind
            for i in range(n):
                dp = data.data_points.add(time_unix_nano=i + 1)
                if kind in ("gauge", "sum"):
                    dp.as_int = i
                elif kind == "histogram":
                    dp.count, dp.sum = 3, 1.5
                    dp.bucket_counts.extend([1, 2])
                    dp.explicit_bounds.append(1.0)
                    dp.exemplars.add(span_id=b"\x03" * 8, trace_id=b"\x04" * 16, as_double=1)
                elif kind == "exponential_histogram":
                    dp.count, dp.scale = 2, 3
                    dp.positive.bucket_counts.extend([1, 1])
                else:
                    dp.count, dp.sum = 2, 3.0
                    dp.quantile_values.add(quantile=0.5, value=1.0)
    return req


def profiles(shape: list[list[int]]) -> ExportProfilesServiceRequest:
    req = ExportProfilesServiceRequest()
    for scopes in shape:
        rp = req.resource_profiles.add()
        for n in scopes:
            sp = rp.scope_profiles.add()
            for _ in range(n):
                sp.profiles.add().SetInParent()
    req.dictionary.SetInParent()
    return req


# ---------------------------------------------------------------------------------------------
# count_items equals the decoded count


SHAPES = [[], [[]], [[0]], [[1]], [[3]], [[2, 0, 5], [], [1]], [[100]]]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_traces_count(shape: list[list[int]]) -> None:
    req = traces(shape)
    data = req.SerializeToString()
    assert count_items(TRACES, data) == decoded_count("traces", req) == sum(map(sum, shape))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_logs_count(shape: list[list[int]]) -> None:
    req = logs(shape)
    assert count_items(LOGS, req.SerializeToString()) == decoded_count("logs", req)


@pytest.mark.parametrize("kind", METRIC_KINDS)
@pytest.mark.parametrize("n", [0, 1, 4])
def test_metrics_count_per_kind(kind: str, n: int) -> None:
    req = metrics({kind: n})
    assert req.resource_metrics[0].scope_metrics[0].metrics[0].WhichOneof("data") == kind
    assert count_items(METRICS, req.SerializeToString()) == decoded_count("metrics", req) == n


def test_metrics_count_mixed() -> None:
    req = metrics(
        {"gauge": 2, "sum": 3, "histogram": 1, "exponential_histogram": 4, "summary": 5}, 3
    )
    # a metric with no data at all counts nothing
    req.resource_metrics[0].scope_metrics[0].metrics.add(name="no-data")
    assert count_items(METRICS, req.SerializeToString()) == decoded_count("metrics", req) == 45


def test_profiles_count() -> None:
    req = profiles([[2, 1], [], [3]])
    assert count_items(PROFILES, req.SerializeToString()) == 6


@pytest.mark.parametrize("signal", [TRACES, METRICS, LOGS, PROFILES], ids=lambda s: s.name)
def test_empty_request(signal: Any) -> None:
    assert count_items(signal, b"") == 0
    assert count_items(signal, signal.request_type().SerializeToString()) == 0


def _with_unknown_fields_everywhere_traces() -> tuple[bytes, int]:
    """A traces request with unknown fields at the request, resource, scope and span levels."""
    req = traces([[2, 1], [3]])
    body = b""
    for rs in req.resource_spans:
        rs_body = rs.resource.SerializeToString()
        rs_bytes = ld(1, rs_body) + UNKNOWN
        for ss in rs.scope_spans:
            ss_bytes = UNKNOWN + ld(1, ss.scope.SerializeToString())
            for span in ss.spans:
                ss_bytes += ld(2, span.SerializeToString() + UNKNOWN) + UNKNOWN
            rs_bytes += ld(2, ss_bytes)
        rs_bytes += ld(3, rs.schema_url.encode()) + UNKNOWN
        body += UNKNOWN + ld(1, rs_bytes)
    return body + UNKNOWN, 6


def test_unknown_fields_are_skipped() -> None:
    data, n = _with_unknown_fields_everywhere_traces()
    decoded = ExportTraceServiceRequest.FromString(data)  # protobuf agrees it is valid
    assert decoded_count("traces", decoded) == n
    assert count_items(TRACES, data) == n


def test_unknown_fields_in_metrics_and_logs() -> None:
    req = metrics({"sum": 2, "summary": 1})
    metric_list = req.resource_metrics[0].scope_metrics[0].metrics
    sm_bytes = b""
    for m in metric_list:
        sm_bytes += ld(2, m.SerializeToString() + UNKNOWN)
    data = UNKNOWN + ld(1, UNKNOWN + ld(2, sm_bytes + UNKNOWN))
    assert decoded_count("metrics", ExportMetricsServiceRequest.FromString(data)) == 3
    assert count_items(METRICS, data) == 3

    data = logs([[4]]).SerializeToString() + UNKNOWN
    assert count_items(LOGS, data) == 4


def test_items_themselves_are_not_decoded() -> None:
    # By design the walk stops at the items: a span's own bytes are skipped by length.
    data = ld(1, ld(2, ld(2, b"\xff\xff not a span")))
    assert count_items(TRACES, data) == 1


# ---------------------------------------------------------------------------------------------
# Malformed input


VALID = traces([[2]]).SerializeToString()
SCOPE_LEVEL = ld(1, ld(2, tag(2, 5) + b"\0\0\0\0"))  # scope_spans.spans as fixed32

MALFORMED = {
    "truncated-tag-varint": b"\x80",
    "truncated-length-varint": b"\x0a\x80",
    "truncated-unknown-varint": tag(99, 0) + b"\xff\xff",
    "varint-over-10-bytes": tag(99, 0) + b"\xff" * 10 + b"\x01",
    "length-past-end": b"\x0a\x05abc",
    "huge-length": b"\x0a" + varint(2**62) + b"abc",
    "nested-length-past-end": ld(1, b"\x12\x10" + b"x" * 4),
    "fixed64-past-end": tag(99, 1) + b"\x01\x02\x03",
    "fixed32-past-end": tag(99, 5) + b"\x01",
    "field-0-varint": b"\x00\x01",
    "field-0-len": b"\x02\x00",
    "field-0-nested": ld(1, b"\x00\x00"),
    "wire-type-7": tag(99, 7),
    "wire-type-6": tag(99, 6),
    "group-start": tag(99, 3) + tag(99, 4),
    "resource-spans-as-varint": tag(1, 0) + b"\x01",
    "resource-spans-as-fixed64": tag(1, 1) + b"\0" * 8,
    "scope-spans-as-varint": ld(1, tag(2, 0) + b"\x05"),
    "spans-as-fixed32": SCOPE_LEVEL,
    "truncated-valid-request": VALID[:-3],
    "valid-plus-garbage": VALID + b"\xff",
    "garbage": b"\xde\xad\xbe\xef" * 8,
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_raises_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        count_items(TRACES, data)
    assert issubclass(WireError, ValueError)


@pytest.mark.parametrize(
    "data",
    [
        ld(1, ld(2, ld(2, ld(5, tag(1, 0) + b"\x01")))),  # gauge.data_points as a varint
        ld(1, ld(2, ld(2, tag(9, 5) + b"\0\0\0\0"))),  # metric.histogram as fixed32
        ld(1, ld(2, ld(2, ld(11, b"\x0a\x09")))),  # summary data point length past end
    ],
    ids=["data-points-varint", "histogram-fixed32", "summary-truncated"],
)
def test_malformed_metrics(data: bytes) -> None:
    with pytest.raises(WireError):
        count_items(METRICS, data)


@pytest.mark.parametrize("signal", [TRACES, METRICS, LOGS], ids=lambda s: s.name)
def test_every_truncation_of_a_valid_request_is_refused(signal: Any) -> None:
    # one resource entry: every strict prefix ends inside it
    req = {
        "traces": traces([[2, 1]]),
        "metrics": metrics({"gauge": 1, "histogram": 1, "summary": 1}),
        "logs": logs([[3]]),
    }[signal.name]
    data = req.SerializeToString()
    assert count_items(signal, data) == 3
    for cut in range(len(data)):
        if cut == 0:
            continue  # the empty request is valid
        with pytest.raises(WireError):
            wire.count_items(signal, data[:cut])


# ---------------------------------------------------------------------------------------------
# OTLP/JSON


TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"
PARENT_ID = "eee19b7ec3c1b173"
LINK_TRACE = "0af7651916cd43dd8448eb211c80319c"
LINK_SPAN = "b7ad6b7169203331"

TRACE_JSON = {
    "resourceSpans": [
        {
            "resource": {
                "attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]
            },
            "scopeSpans": [
                {
                    "scope": {"name": "lib", "version": "1.0"},
                    "spans": [
                        {
                            "traceId": TRACE_ID,
                            "spanId": SPAN_ID,
                            "parentSpanId": PARENT_ID,
                            "name": "GET /",
                            "kind": 2,
                            "startTimeUnixNano": "1544712660000000000",
                            "endTimeUnixNano": "1544712661000000000",
                            "attributes": [
                                {"key": "n", "value": {"intValue": "9007199254740993"}},
                                {"key": "b", "value": {"bytesValue": "AAEC"}},
                            ],
                            "links": [{"traceId": LINK_TRACE, "spanId": LINK_SPAN}],
                            "status": {"code": 2, "message": "boom"},
                        }
                    ],
                }
            ],
        }
    ]
}


def test_json_round_trip_keeps_hex_ids() -> None:
    data = otlpjson.json_to_proto(TRACES, json.dumps(TRACE_JSON).encode())
    req = ExportTraceServiceRequest.FromString(data)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex(TRACE_ID)
    assert span.span_id == bytes.fromhex(SPAN_ID)
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert span.links[0].trace_id == bytes.fromhex(LINK_TRACE)
    assert span.links[0].span_id == bytes.fromhex(LINK_SPAN)
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.attributes[0].value.int_value == 9007199254740993  # above 2**53: exact
    assert span.attributes[1].value.bytes_value == b"\x00\x01\x02"  # other bytes stay base64
    assert count_items(TRACES, data) == 1

    back = json.loads(otlpjson.proto_to_json(TRACES, data))
    assert back == TRACE_JSON
    out_span = back["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert out_span["traceId"] == TRACE_ID
    assert out_span["kind"] == 2  # enums as integers
    assert out_span["startTimeUnixNano"] == "1544712660000000000"  # 64-bit ints as strings
    assert otlpjson.message_to_json_dict(TRACES, data) == TRACE_JSON


def test_json_ids_in_logs_and_exemplars() -> None:
    logs_doc = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": "1",
                                "severityNumber": 9,
                                "body": {"stringValue": "hi"},
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID,
                            }
                        ]
                    }
                ]
            }
        ]
    }
    data = otlpjson.json_to_proto(LOGS, json.dumps(logs_doc).encode())
    record = ExportLogsServiceRequest.FromString(data).resource_logs[0].scope_logs[0].log_records[0]
    assert record.trace_id.hex() == TRACE_ID and record.span_id.hex() == SPAN_ID
    assert json.loads(otlpjson.proto_to_json(LOGS, data)) == logs_doc

    req = metrics({"histogram": 1})
    data = req.SerializeToString()
    doc = otlpjson.message_to_json_dict(METRICS, data)
    exemplar = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"][
        "dataPoints"
    ][0]["exemplars"][0]
    assert exemplar["traceId"] == "04" * 16 and exemplar["spanId"] == "03" * 8
    assert otlpjson.json_to_proto(METRICS, json.dumps(doc).encode()) == data


def test_json_uppercase_hex_ids_are_accepted() -> None:
    doc = json.loads(json.dumps(TRACE_JSON).replace(TRACE_ID, TRACE_ID.upper()))
    data = otlpjson.json_to_proto(TRACES, json.dumps(doc).encode())
    span = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == TRACE_ID


def _snake(node: Any) -> Any:
    import re

    if isinstance(node, dict):
        return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): _snake(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_snake(v) for v in node]
    return node


def test_json_snake_case_keys_are_accepted() -> None:
    snake = _snake(TRACE_JSON)
    span = snake["resource_spans"][0]["scope_spans"][0]["spans"][0]
    assert span["trace_id"] == TRACE_ID and "start_time_unix_nano" in span
    camel_bytes = otlpjson.json_to_proto(TRACES, json.dumps(TRACE_JSON).encode())
    assert otlpjson.json_to_proto(TRACES, json.dumps(snake).encode()) == camel_bytes


def test_json_enums_as_integers_and_names() -> None:
    for kind in (2, "SPAN_KIND_SERVER"):
        doc = json.loads(json.dumps(TRACE_JSON))
        doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] = kind
        data = otlpjson.json_to_proto(TRACES, json.dumps(doc).encode())
        span = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0]
        assert span.kind == Span.SPAN_KIND_SERVER
        assert otlpjson.message_to_json_dict(TRACES, data) == TRACE_JSON


def test_json_unknown_enum_values() -> None:
    # Integers are kept as they are (open enums); an unknown name is ignored like an unknown field.
    for kind, expected in ((42, 42), ("SPAN_KIND_NOPE", 0)):
        body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": kind}]}]}]})
        data = otlpjson.json_to_proto(TRACES, body.encode())
        span = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0]
        assert span.kind == expected


def test_json_64_bit_ints_as_strings_and_numbers() -> None:
    big = 2**63 + 12345  # fixed64 nanoseconds beyond the int64 range
    doc = json.loads(json.dumps(TRACE_JSON))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for value in (str(big), big):
        span["startTimeUnixNano"] = value
        span["attributes"][0]["value"]["intValue"] = -(2**62) if isinstance(value, int) else "-5"
        data = otlpjson.json_to_proto(TRACES, json.dumps(doc).encode())
        decoded = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0]
        assert decoded.spans[0].start_time_unix_nano == big
        expected_int = -(2**62) if isinstance(value, int) else -5
        assert decoded.spans[0].attributes[0].value.int_value == expected_int
        out = otlpjson.message_to_json_dict(TRACES, data)
        out_span = out["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert out_span["startTimeUnixNano"] == str(big)
        assert out_span["attributes"][0]["value"]["intValue"] == str(expected_int)


def test_json_unknown_fields_are_ignored() -> None:
    doc = json.loads(json.dumps(TRACE_JSON))
    doc["somethingNew"] = {"x": [1, 2]}
    doc["resourceSpans"][0]["futureField"] = 7
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["brandNew"] = "yes"
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["links"][0]["extra"] = None
    data = otlpjson.json_to_proto(TRACES, json.dumps(doc).encode())
    assert data == otlpjson.json_to_proto(TRACES, json.dumps(TRACE_JSON).encode())


def test_json_empty_bodies() -> None:
    assert otlpjson.json_to_proto(TRACES, b"") == b""
    assert otlpjson.json_to_proto(TRACES, b"  \n") == b""
    assert otlpjson.json_to_proto(TRACES, b"{}") == b""
    assert otlpjson.json_to_proto(LOGS, b'{"resourceLogs": []}') == b""


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'"string"',
        b"null",
        b"\xff\xfe{}",
        b'{"resourceSpans": "x"}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "abc"}]}]}]}',  # odd length
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
    ],
    ids=[
        "truncated",
        "array",
        "string",
        "null",
        "not-utf8",
        "wrong-type",
        "non-hex-id",
        "odd-hex-id",
        "bad-int",
    ],
)
def test_json_invalid(body: bytes) -> None:
    with pytest.raises(otlpjson.OTLPJSONError):
        otlpjson.json_to_proto(TRACES, body)


def test_fast_count_agrees_with_the_reference_walk() -> None:
    """count_items (upb on a shallow schema) and walk_count (the Python walk) agree on valid
    requests and on 4 x 5,000 mutations of them: never does the fast path take what the walk
    refuses, and where both take a body they count the same. upb is stricter only about field
    numbers past protobuf's maximum (2^29 - 1), which no valid message has: rare in mutations."""
    import random

    from gateway.otlp.wire import walk_count

    def outcome(f: Any, signal: Any, data: bytes) -> int | str:
        try:
            return int(f(signal, data))
        except WireError:
            return "refused"

    rng = random.Random(7)
    seeds = [
        (TRACES, traces([[3, 4], [2]]).SerializeToString()),
        (LOGS, logs([[2, 3]]).SerializeToString()),
        (METRICS, metrics({"gauge": 3, "sum": 2, "histogram": 1}).SerializeToString()),
        (PROFILES, profiles([[2, 1]]).SerializeToString()),
    ]
    stricter = 0
    for signal, seed in seeds:
        counted = outcome(count_items, signal, seed)
        assert counted == outcome(walk_count, signal, seed)
        assert isinstance(counted, int) and counted > 0
        for _ in range(5000):
            b = bytearray(seed)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(b))
                op = rng.random()
                if op < 0.5:
                    b[i] = rng.randrange(256)
                elif op < 0.75:
                    del b[i : i + rng.randint(1, 20)]
                else:
                    b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 5)))
                if not b:
                    b = bytearray(seed)
            fast = outcome(count_items, signal, bytes(b))
            ref = outcome(walk_count, signal, bytes(b))
            if fast != ref:
                assert fast == "refused", (signal.name, bytes(b).hex(), ref)
                stricter += 1
    assert stricter < 0.01 * 20000


# ---------------------------------------------------------------------------------------------
# Hostile bodies: bounded time and memory (floods of unknown fields, entries, duplicates)


def _timed_outcome(signal: Any, data: bytes) -> tuple[int | str, float]:
    import time

    t0 = time.perf_counter()
    try:
        result: int | str = count_items(signal, data)
    except WireError as exc:
        result = str(exc)
    return result, time.perf_counter() - t0


FLOOD = 15 * 1024 * 1024 // 2  # 2-byte fields in a 15 MiB body

FLOODS = {
    # took 5-7 s and 700+ MiB (UnknownFieldSet of 7.8 million entries) before
    "unknown-in-scope": (ld(1, ld(2, b"\x18\x00" * FLOOD)), "unknown"),
    "unknown-at-top": (b"\x10\x00" * FLOOD, "unknown"),
    "unknown-in-resource": (ld(1, b"\x20\x00" * FLOOD), "fields"),
    # took 16 s (a Python object per entry) before
    "empty-scope-entries": (ld(1, b"\x12\x00" * FLOOD), "fields"),
    "empty-resource-entries": (b"\x0a\x00" * FLOOD, "fields"),
    # a known singular field sent millions of times
    "schema-url-repeated": (ld(1, b"\x1a\x00" * FLOOD), "fields"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(FLOODS))
def test_floods_are_refused_in_bounded_time(case: str) -> None:
    data, word = FLOODS[case]
    result, took = _timed_outcome(TRACES, data)
    print(f"\n{case}: {len(data)} bytes -> {result!r:.100} in {took * 1000:.0f} ms")
    assert isinstance(result, str) and word in result
    assert took < 2.0  # ~50-150 ms on a loaded 2-core machine; seconds before


def test_a_few_unknown_fields_at_every_level_are_fine() -> None:
    # the slow path (unknown fields present) still counts exactly, up to the limit
    req = traces([[3]])
    scope = req.resource_spans[0].scope_spans[0].SerializeToString()
    extra = tag(77, 0) + varint(1)
    limit = wire.MAX_UNKNOWN_FIELDS
    data = ld(1, ld(2, scope + extra * (limit - 1)))
    assert count_items(TRACES, data) == 3
    with pytest.raises(WireError, match="unknown fields"):
        count_items(TRACES, ld(1, ld(2, scope + extra * (limit + 1))))


def test_known_fields_take_the_fast_path() -> None:
    # resource, scope, schema_url (and for metrics name, unit, temporality, ...) are declared, so
    # a real request re-encodes to its own length: no Python walk
    for signal, req in (
        (TRACES, traces([[2, 1], [3]])),
        (METRICS, metrics({"sum": 2, "histogram": 1, "gauge": 1})),
        (LOGS, logs([[2]])),
        (PROFILES, profiles([[1]])),
    ):
        data = req.SerializeToString()
        message = wire._shallow_type(signal).FromString(data)
        message.DiscardUnknownFields()
        assert message.ByteSize() == len(data), signal.name


def test_non_minimal_encoding_is_counted_by_the_walk() -> None:
    from tests.support.encoding import ld as padded_ld

    span = traces([[1]]).resource_spans[0].scope_spans[0].spans[0].SerializeToString()
    data = padded_ld(1, padded_ld(2, padded_ld(2, span, pad=2) * 4, pad=1), pad=3)
    assert count_items(TRACES, data) == 4 == walk_count_reference(data)


def walk_count_reference(data: bytes) -> int:
    return wire.walk_count(TRACES, data)


def test_duplicate_resource_is_counted() -> None:
    # enrichment appends a second `resource` field to each entry: still valid, still counted
    req = traces([[2]])
    rs = req.resource_spans[0].SerializeToString() + ld(1, b"\x0a\x00")
    assert count_items(TRACES, ld(1, rs)) == 2


def test_a_request_forwarded_by_an_upstream_gateway_stays_on_the_fast_path() -> None:
    # enrich.py appends a second `resource` to every entry; a next gateway must count such a
    # request like any other, however many items it holds (the fallback walk stops at
    # MAX_WALK_FIELDS fields)
    from gateway.tenancy.enrich import ResourceEnricher

    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for _ in range(wire.MAX_WALK_FIELDS + 1):
        scope.spans.add()
    forwarded = ResourceEnricher("acme", {"team": "a"}).apply(TRACES, req.SerializeToString())
    assert wire.count_items(TRACES, forwarded) == wire.MAX_WALK_FIELDS + 1
