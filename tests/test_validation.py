"""Deep validation (gateway/otlp/validate.py): `validate: full` refuses a request whose items
cannot be decoded with 400 before it is acknowledged; `validate: auto` (the default) does so for
a tenant once a backend refused some of its data as invalid, while the good data merged with the
bad is delivered all the same."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client.parser import text_string_to_metric_families

from gateway.otlp import validate
from gateway.otlp.signals import TRACES
from gateway.otlp.wire import count_items
from tests.support.encoding import BAD_UTF8_SPAN, GARBAGE_SPAN, spans_request
from tests.support.peers import Gateway, Sink, run_gateway, wait_until

PROTOBUF = {"content-type": "application/x-protobuf"}


def _deep(levels: int) -> bytes:
    """A span whose one attribute is a key-value list nested `levels` deep: valid OTLP."""
    value = AnyValue(string_value="leaf")
    for _ in range(levels):
        outer = AnyValue()
        outer.kvlist_value.values.add(key="k").value.CopyFrom(value)
        value = outer
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(name="deep")
    span.attributes.add(key="nested").value.CopyFrom(value)
    return req.SerializeToString()


def test_check_decodes_every_item() -> None:
    validate.check(TRACES, spans_request("ok", 3))
    validate.check(TRACES, _deep(150))  # deeper than protobuf's own decoder goes: still valid
    for bad in (GARBAGE_SPAN, BAD_UTF8_SPAN):
        data = spans_request("ok", 3, bad=bad)
        assert count_items(TRACES, data) == 4  # the wire walk lets it through
        with pytest.raises(validate.Malformed, match="cannot be decoded"):
            validate.check(TRACES, data)


def test_large_requests_are_validated_in_the_decode_process() -> None:
    from gateway.otlp import offload

    big = spans_request("ok", 5000)  # over offload.VALIDATE_PROCESS_MIN_BYTES
    assert len(big) >= offload.VALIDATE_PROCESS_MIN_BYTES
    asyncio.run(offload.validate(TRACES, big))
    with pytest.raises(validate.Malformed, match="cannot be decoded"):
        asyncio.run(offload.validate(TRACES, spans_request("ok", 5000, bad=BAD_UTF8_SPAN)))


def test_which_tenants_are_validated() -> None:
    now = [0.0]
    auto = validate.Validation("auto", clock=lambda: now[0])
    assert not auto.wanted("alpha")
    auto.suspect("alpha")
    assert auto.wanted("alpha") and not auto.wanted("beta")
    assert auto.suspects() == ["alpha"]
    now[0] += validate.SUSPECT_SECONDS + 1
    assert not auto.wanted("alpha") and auto.suspects() == []
    wire = validate.Validation("wire")
    wire.suspect("alpha")
    assert not wire.wanted("alpha")
    assert validate.Validation("full").wanted("anyone")


def _post(gw: Gateway, body: bytes) -> httpx.Response:
    return httpx.post(gw.http_endpoint + "/v1/traces", content=body, headers=PROTOBUF)


def _metric(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(gw.admin_url + "/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _config(sink: Sink, mode: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backends": {"down": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["down"],
        "retry": {"initial_interval": "100ms", "max_interval": "500ms", "max_elapsed": "30s"},
    }
    if mode is not None:
        config["validate"] = mode
    return config


@pytest.mark.timeout(90)
def test_full_validation_refuses_undecodable_items_at_the_door(tmp_path: Path) -> None:
    with Sink().running() as sink, run_gateway(tmp_path, _config(sink, "full")) as gw:
        for bad in (GARBAGE_SPAN, BAD_UTF8_SPAN):
            refused = _post(gw, spans_request("mixed", 5, bad=bad))
            assert refused.status_code == 400
            assert b"cannot be decoded" in refused.content
        assert _post(gw, spans_request("good", 10)).status_code == 200
        assert sink.wait_items("traces", 10) == 10
        assert sink.span_names() == sorted(f"good-{i}" for i in range(10))
        assert _metric(gw, "otlp_gateway_requests_total", outcome="invalid") == 2
        assert _metric(gw, "otlp_gateway_dropped_items_total") == 0


@pytest.mark.timeout(90)
def test_auto_validation_starts_for_a_tenant_a_backend_refused(tmp_path: Path) -> None:
    with Sink().running() as sink, run_gateway(tmp_path, _config(sink, None)) as gw:
        # Nobody is suspect yet: the malformed request passes the wire walk and is acknowledged.
        assert _post(gw, spans_request("mixed", 5, bad=GARBAGE_SPAN)).status_code == 200
        # The backend (its decoder) refuses the batch; the pipeline splits it back, delivers
        # the 5 good spans and drops the bad one.
        assert sink.wait_items("traces", 5, timeout=30) == 5
        wait_until(
            lambda: _metric(gw, "otlp_gateway_dropped_items_total", reason="permanent_error") == 1
        )
        # From now on this tenant's requests are decoded before they are acknowledged.
        refused = _post(gw, spans_request("mixed2", 5, bad=BAD_UTF8_SPAN))
        assert refused.status_code == 400
        assert _post(gw, spans_request("good", 10)).status_code == 200
        assert sink.wait_items("traces", 15) == 15
        assert sink.span_names() == sorted(
            [f"mixed-{i}" for i in range(5)] + [f"good-{i}" for i in range(10)]
        )
        assert _metric(gw, "otlp_gateway_requests_total", outcome="invalid") == 1
        assert _metric(gw, "otlp_gateway_dropped_items_total", reason="permanent_error") == 1
        assert "validating every request of tenant default" in gw.log()
