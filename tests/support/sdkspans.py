"""Finished spans of the OpenTelemetry SDK, named `<prefix>-<i>`, for tests that export them with
the SDK's own exporters and then look for each name downstream."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

_tracer = TracerProvider().get_tracer("otlp-gateway-tests")


def named_spans(prefix: str, n: int) -> list[ReadableSpan]:
    spans: list[ReadableSpan] = []
    for i in range(n):
        span = _tracer.start_span(f"{prefix}-{i}")
        span.end()
        assert isinstance(span, ReadableSpan)  # the SDK's span
        spans.append(span)
    return spans
