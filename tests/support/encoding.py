"""Raw protobuf encoding for tests that build requests by hand (optionally with non-minimal
varints, which decoders must accept)."""

from __future__ import annotations

import os

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

GARBAGE_SPAN = b"\xff\xff\xff\xff\xff\xff"  # not a protobuf message
BAD_UTF8_SPAN = b"\x2a\x03\xff\xfe\xfd"  # a name (field 5) that is not UTF-8


def varint(n: int, pad: int = 0) -> bytes:
    """n as a varint, padded with `pad` redundant continuation bytes (non-minimal encoding)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    if not pad:
        return bytes([*out, n])
    return bytes([*out, n | 0x80, *[0x80] * (pad - 1), 0x00])


def ld(field: int, payload: bytes, pad: int = 0) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload), pad) + payload


def spans_request(prefix: str, n: int, *, bad: bytes | None = None) -> bytes:
    """`n` spans named prefix-0 .. prefix-<n-1> (service.name "hostile"); with `bad`, one more
    entry holding one span whose bytes are `bad` (valid at the levels the ingress wire walk
    checks, not as a span)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value={"string_value": "hostile"})
    spans = rs.scope_spans.add().spans
    for i in range(n):
        spans.add(
            name=f"{prefix}-{i}",
            trace_id=os.urandom(16),
            span_id=os.urandom(8),
            start_time_unix_nano=1,
            end_time_unix_nano=2,
        )
    data = req.SerializeToString()
    if bad is None:
        return data
    # one more ResourceSpans holding one ScopeSpans holding the bad span
    return data + ld(1, ld(2, ld(2, bad)))
