"""A batch is gzipped once however many destinations send it and however often it is retried:
the destinations of a fan-out share the batch objects of their memory queues (and the merges
they make of the same run of them), and the encoding travels with the batch."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.config import BackendConfig, RetryConfig
from gateway.delivery.batch import Batch
from gateway.delivery.merge import MergeMemo
from gateway.delivery.pipeline import Pipeline
from gateway.otlp import gz
from gateway.otlp.signals import TRACES
from tests.support.peers import Sink, run_gateway


def _batch(name: str, n: int) -> Batch:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i in range(n):
        span = spans.add()
        span.name = f"{name}-{i}"
        span.trace_id = bytes(range(16))
        span.span_id = bytes(range(8))
    return Batch(TRACES, req.SerializeToString(), n, "default")


def test_fanout_and_retries_gzip_each_batch_object_once(
    sink: Sink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Backends a and b over http/protobuf (a refuses with 503 for a while), c over grpc (to a
    second gateway, in front of a third sink): each batch object is gzipped once for all."""
    compressed: list[bytes] = []  # the inputs, kept alive so that ids stay unique
    real = gz.gzip_compress

    def counting(data: bytes, level: int = 1) -> bytes:
        compressed.append(data)
        return real(data, level)

    monkeypatch.setattr(gz, "gzip_compress", counting)
    stack = contextlib.ExitStack()
    sink.status, sink.retry_after = 503, "0"  # backend a fails until told otherwise
    with stack, Sink().running() as other, Sink().running() as third:
        relay = {"backends": {"s": {"protocol": "http/protobuf", "endpoint": third.endpoint}}}
        relay["service_backends"] = ["s"]  # type: ignore[assignment]
        gw = stack.enter_context(run_gateway(tmp_path, relay))
        backends = {
            name: BackendConfig(name=name, protocol="http/protobuf", endpoint=s.endpoint)
            for name, s in (("a", sink), ("b", other))
        }
        backends["c"] = BackendConfig(name="c", protocol="grpc", endpoint=gw.grpc_endpoint)
        retry = RetryConfig(initial_interval=0.05, max_interval=0.1, max_elapsed=30)

        async def main() -> None:
            pipeline = Pipeline(backends, retry)
            await pipeline.start()
            for i in range(6):
                await pipeline.submit(_batch(f"s{i}", 3), ["a", "b", "c"])
            while other.items("traces") < 18 or len(sink.body_sizes) < 4:
                await asyncio.sleep(0.02)  # b delivered; a has been refused a few times
            sink.status = 200
            while sink.items("traces") < 18 or third.items("traces") < 18:
                await asyncio.sleep(0.02)
            await pipeline.shutdown(5)

        asyncio.run(asyncio.wait_for(main(), 30))
        expected = sorted(f"s{i}-{j}" for i in range(6) for j in range(3))
        assert sink.span_names() == expected and other.span_names() == expected
        assert third.span_names() == expected
        sent = len(sink.body_sizes) + len(other.body_sizes)  # every request, refused ones too
    assert len({id(d) for d in compressed}) == len(compressed)  # no object compressed twice
    assert len(compressed) < sent  # and bodies were shared between sends


def test_merge_memo_shares_by_identity_only_when_active() -> None:
    memo = MergeMemo()
    parts = [_batch("x", 2), _batch("y", 2)]
    assert memo.merge(parts) is not memo.merge(parts)  # inactive: one destination
    memo.active = True
    merged = memo.merge(parts)
    assert memo.merge(list(parts)) is merged
    assert merged.payload == parts[0].payload + parts[1].payload and merged.items == 4
    twins = [_batch("x", 2), _batch("y", 2)]  # equal bytes, other batches
    assert memo.merge(twins) is not merged
    assert memo.merge(parts[:1] + twins[1:]) is not merged


def test_encoding_is_made_once_per_batch_and_key() -> None:
    batch = _batch("e", 1)
    made: list[str] = []

    def gzip1(payload: bytes) -> bytes:
        made.append("gzip1")
        return real_gzip(payload, 1)

    real_gzip = gz.gzip_compress
    first = batch.encoded(("http", "application/x-protobuf", 1), gzip1)
    assert batch.encoded(("http", "application/x-protobuf", 1), gzip1) is first
    batch.encoded(("http", "application/x-protobuf", 2), gzip1)  # another level: made again
    assert made == ["gzip1", "gzip1"]
    assert batch == Batch(batch.signal, batch.payload, batch.items, batch.tenant)  # not compared
