"""Delivery basics: OTLP retry rules towards backends, and a full queue answered with 429."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.peers import Sink, run_gateway


def _request(name: str, n: int = 1) -> bytes:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i in range(n):
        span = spans.add(name=f"{name}-{i}")
        span.trace_id = bytes(range(16))
        span.span_id = bytes(range(8))
    return req.SerializeToString()


def _post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(
        url + "/v1/traces", content=body, headers={"content-type": "application/x-protobuf"}
    )


def _config(sink: Sink, **backend: object) -> dict[str, object]:
    return {
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint, **backend}},
        "service_backends": ["sink"],
        "retry": {"initial_interval": "100ms", "max_interval": "1s", "max_elapsed": "30s"},
    }


def test_retryable_status_is_retried_after_retry_after(tmp_path: Path, sink: Sink) -> None:
    sink.status, sink.retry_after = 503, "1"
    with run_gateway(tmp_path, _config(sink)) as gw:
        assert _post(gw.http_endpoint, _request("retried", 3)).status_code == 200
        time.sleep(1.5)
        assert sink.items("traces") == 0
        sink.status = 200
        assert sink.wait_items("traces", 3) == 3  # delivered once, not duplicated
        assert "retrying in 1.0s" in gw.log()


def test_permanent_status_is_dropped_not_retried(tmp_path: Path, sink: Sink) -> None:
    sink.status = 400
    with run_gateway(tmp_path, _config(sink)) as gw:
        assert _post(gw.http_endpoint, _request("dropped", 2)).status_code == 200
        deadline = time.monotonic() + 10
        while "dropped 2 spans" not in gw.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "permanent error" in gw.log()
        sink.status = 200
        time.sleep(0.5)
        assert sink.items("traces") == 0


def test_full_queue_answers_429_with_retry_after(tmp_path: Path, sink: Sink) -> None:
    sink.status, sink.retry_after = 503, "30"
    config = _config(sink, concurrency=1, queue={"max_bytes": 1000})
    # the first batch must stay in retry (it holds its queue bytes until delivered): a 30 s
    # Retry-After within a 30 s max_elapsed would give it up at once and free the queue
    config["retry"] = {"initial_interval": "100ms", "max_interval": "1s", "max_elapsed": "5m"}
    with run_gateway(tmp_path, config) as gw:
        assert _post(gw.http_endpoint, _request("first", 20)).status_code == 200
        r = _post(gw.http_endpoint, _request("second", 20))
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        status = status_pb2.Status.FromString(r.content)
        assert status.code == 8 and "queue for backend sink is full" in status.message


def test_413_is_answered_by_sending_halves(tmp_path: Path, sink: Sink) -> None:
    sink.max_body = 3000
    with run_gateway(tmp_path, _config(sink)) as gw:
        body = _request("halved", 300)
        assert len(body) > 4 * 3000
        assert _post(gw.http_endpoint, body).status_code == 200
        assert sink.wait_items("traces", 300) == 300
        log = gw.log()
    assert "dropped" not in log, log
    assert sink.span_names() == sorted(f"halved-{i}" for i in range(300))
    assert max(sink.body_sizes) <= 3000


def test_request_over_batch_max_bytes_is_split_before_sending(tmp_path: Path, sink: Sink) -> None:
    with run_gateway(tmp_path, _config(sink, batch_max_bytes=4000)) as gw:
        assert _post(gw.http_endpoint, _request("split", 400)).status_code == 200
        assert sink.wait_items("traces", 400) == 400
    assert sink.span_names() == sorted(f"split-{i}" for i in range(400))
    assert len(sink.body_sizes) >= 4 and max(sink.body_sizes) <= 4000


def test_requests_over_the_inflight_budget_get_429(tmp_path: Path, sink: Sink) -> None:
    """While one slow client holds the whole in-flight budget, others are told to retry later,
    before their bodies are read; once it is done, requests are taken again."""
    import socket

    config = {**_config(sink), "limits": {"max_inflight_bytes": 1000}}
    body = _request("slow", 100)
    with run_gateway(tmp_path, config) as gw:
        slow = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)
        slow.sendall(
            b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body[:100]
        )
        time.sleep(0.5)  # the gateway has the headers and holds the reservation
        busy = _post(gw.http_endpoint, _request("refused", 1))
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        assert "holding" in status_pb2.Status.FromString(busy.content).message
        slow.sendall(body[100:])
        assert slow.recv(4096).startswith(b"HTTP/1.1 200")
        slow.close()
        assert _post(gw.http_endpoint, _request("after", 1)).status_code == 200
        assert sink.wait_items("traces", 101) == 101
