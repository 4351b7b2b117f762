"""Request size limits: a gzip bomb against a running gateway does not inflate in its memory, and
unit tests of gateway.ingress.limits.decompress."""

from __future__ import annotations

import asyncio
import gc
import gzip
import multiprocessing
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway.ingress import limits
from gateway.ingress.limits import BadEncoding, TooLarge, UnknownEncoding, decompress
from tests.support.grpcwire import (
    TRACE_RPC,
    grpc_bomb_call,
    grpc_frame,
    gzip_bomb,
    h2_grpc_call,
    oversize_body,
    trace_request,
)
from tests.support.peers import Gateway, Sink, run_gateway

MB = 1024 * 1024
# The bomb inflates to 200 MB; with the default 16 MiB limit the gateway must stop far earlier.
MAX_RSS_GROWTH = 60 * MB


# ---------------------------------------------------------------------------------------------
# The bomb against a real gateway, per transport


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _bomb_http(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.http_endpoint}/v1/traces",
        content=gzip_bomb(),
        headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
        timeout=60,
    )
    assert r.status_code == 413, r.content[:200]


def _bomb_grpc(gw: Gateway) -> None:
    result = grpc_bomb_call(gw.grpc_port)
    assert result.grpc_status == "8", result


def _bomb_connect(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.http_endpoint}{TRACE_RPC}",
        content=gzip_bomb(),
        headers={
            "content-type": "application/proto",
            "content-encoding": "gzip",
            "connect-protocol-version": "1",
        },
        timeout=60,
    )
    assert r.status_code == 429, r.content[:200]  # Connect's mapping of resource_exhausted
    assert r.json()["code"] == "resource_exhausted"


def _bomb_grpc_web(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.http_endpoint}{TRACE_RPC}",
        content=grpc_frame(gzip_bomb(), compressed=True),
        headers={"content-type": "application/grpc-web+proto", "grpc-encoding": "gzip"},
        timeout=60,
    )
    assert r.status_code == 200
    assert b"grpc-status: 8" in r.content


def _warm_up(gw: Gateway) -> None:
    """One valid request on every transport, so lazy imports and set-up are not counted."""
    body = trace_request(2)
    r = httpx.post(
        f"{gw.http_endpoint}/v1/traces",
        content=gzip.compress(body),
        headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
    )
    assert r.status_code == 200
    r = httpx.post(
        f"{gw.http_endpoint}{TRACE_RPC}",
        content=gzip.compress(body),
        headers={"content-type": "application/proto", "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.content
    result = h2_grpc_call(
        gw.grpc_port,
        TRACE_RPC,
        grpc_frame(gzip.compress(body), compressed=True),
        [("content-type", "application/grpc"), ("grpc-encoding", "gzip")],
    )
    assert result.grpc_status == "0", result


BOMBS: dict[str, Callable[[Gateway], None]] = {
    "otlp-http": _bomb_http,
    "grpc": _bomb_grpc,
    "connect": _bomb_connect,
    "grpc-web": _bomb_grpc_web,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
@pytest.mark.parametrize("transport", list(BOMBS))
def test_gzip_bomb_does_not_inflate_in_memory(
    tmp_path: Path,
    sink: Sink,
    transport: str,
    server: str,
    record_property: Callable[[str, object], None],
) -> None:
    gzip_bomb()  # build it before measuring
    config = {
        "server": server,
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["sink"],
    }  # default limits: 16 MiB
    with run_gateway(tmp_path, config) as gw:
        _warm_up(gw)
        assert sink.wait_items("traces", 6) == 6
        pid = gw.proc.pid
        before = _kib(pid, "VmHWM")
        for _ in range(3):  # repeated bombs must not add up either
            BOMBS[transport](gw)
        after = _kib(pid, "VmHWM")
        growth = after - before
        record_property("rss_growth_bytes", growth)
        print(
            f"\n{server} {transport}: peak RSS {before / MB:.1f} MiB -> {after / MB:.1f} MiB "
            f"(+{growth / MB:.1f} MiB) for 3 x 200 MiB bombs"
        )
        assert growth < MAX_RSS_GROWTH
        assert gw.proc.poll() is None
        _warm_up(gw)  # still serving
        assert sink.wait_items("traces", 12) == 12
        assert "Traceback" not in gw.log(), gw.log()


def _refuse_big(gw: Gateway, transport: str, body: bytes, bad: str) -> None:
    """Send `body` (no Content-Length: streamed) and check it is refused as `bad`."""
    if transport == "grpc":
        with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
            export = channel.unary_unary(
                TRACE_RPC, request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError) as info:
                export(body, timeout=60)
        expected = {"oversize": "RESOURCE_EXHAUSTED", "garbage": "INVALID_ARGUMENT"}[bad]
        assert info.value.code().name == expected
        return
    path, content_type, status = {
        "otlp-http": ("/v1/traces", "application/x-protobuf", {"oversize": 413, "garbage": 400}),
        "connect": (TRACE_RPC, "application/proto", {"oversize": 429, "garbage": 400}),
        "grpc-web": (TRACE_RPC, "application/grpc-web+proto", {"oversize": 200, "garbage": 200}),
    }[transport]
    if transport == "grpc-web":
        body = grpc_frame(body)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), MB):
            yield body[i : i + MB]

    r = httpx.post(
        f"{gw.http_endpoint}{path}",
        content=chunks(),
        headers={"content-type": content_type},
        timeout=60,
    )
    assert r.status_code == status[bad], r.content[:200]
    if transport == "grpc-web":
        code = {"oversize": b"grpc-status: 8", "garbage": b"grpc-status: 3"}[bad]
        assert code in r.content


@pytest.mark.timeout(180)
@pytest.mark.parametrize("bad", ["oversize", "garbage"])
@pytest.mark.parametrize("transport", ["otlp-http", "grpc", "connect", "grpc-web"])
def test_refused_big_requests_do_not_pin_memory(
    tmp_path: Path, sink: Sink, transport: str, bad: str
) -> None:
    """A refused request's buffers (up to the 16 MiB cap) are freed when it is answered, not at
    some later garbage collection: many refused requests in a row do not add up."""
    # oversize: 20 MiB, over the 16 MiB body cap; garbage: 15 MiB under it, invalid at the top.
    body = oversize_body(20 * MB) if bad == "oversize" else b"\x0a\x00" + b"\x0d" * (15 * MB)
    config = {
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["sink"],
    }
    with run_gateway(tmp_path, config) as gw:
        _warm_up(gw)
        for _ in range(2):  # let the allocator settle on its working set first
            _refuse_big(gw, transport, body, bad)
        settled = _kib(gw.proc.pid, "VmRSS")
        for _ in range(10):
            _refuse_big(gw, transport, body, bad)
        growth = _kib(gw.proc.pid, "VmRSS") - settled
        print(f"\n{transport} {bad}: RSS +{growth / MB:.1f} MiB over 10 more refused requests")
        # Before the fix every gRPC/gRPC-web refusal pinned 16-30 MiB until a full GC (10 of them:
        # 160+ MiB); the allocator alone moves RSS by up to ~45 MiB either way with 15 MiB bodies.
        assert growth < 64 * MB
        assert gw.proc.poll() is None
        assert "Traceback" not in gw.log(), gw.log()


def _big_valid_request(size: int) -> bytes:
    """One resource, one scope, one span of `size` bytes: valid for the wire walk."""

    def ld(field: int, payload: bytes) -> bytes:
        n, prefix = len(payload), bytearray()
        while n >= 0x80:
            prefix.append(n & 0x7F | 0x80)
            n >>= 7
        prefix.append(n)
        return bytes([field << 3 | 2]) + bytes(prefix) + payload

    return ld(1, ld(2, ld(2, b"x" * size)))


def _asgi_scope(content_type: str, encoding: str | None = None) -> dict[str, Any]:
    headers = [(b"content-type", content_type.encode())]
    if encoding:
        headers.append((b"grpc-encoding", encoding.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "2",
        "method": "POST",
        "scheme": "http",
        "path": TRACE_RPC,
        "raw_path": TRACE_RPC.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "extensions": {"http.response.trailers": {}},
    }


GARBAGE_15M = b"\x0a\x00" + b"\x0d" * (15 * MB)
RETAINED_CASES: dict[str, tuple[str, str | None, Callable[[], bytes], str | None]] = {
    "grpc-garbage": ("application/grpc", None, lambda: grpc_frame(GARBAGE_15M), "3"),
    "grpc-oversize": ("application/grpc", None, lambda: grpc_frame(b"\0" * (20 * MB)), "8"),
    "grpc-bomb": ("application/grpc", "gzip", lambda: grpc_frame(gzip_bomb(), True), "8"),
    "grpc-refused-by-pipeline": (
        "application/grpc",
        None,
        lambda: grpc_frame(_big_valid_request(15 * MB)),
        "14",
    ),
    "grpc-web-garbage": ("application/grpc-web+proto", None, lambda: grpc_frame(GARBAGE_15M), None),
    "connect-garbage": ("application/proto", None, lambda: GARBAGE_15M, None),
}


def _measure_refusal(case: str) -> tuple[int, int, str, list[dict[str, Any]]]:
    """(retained, peak, where the retained bytes were allocated, what was sent) for one of
    RETAINED_CASES, served by the RPC ingress in-process with the cycle collector off. Run in a
    fresh process: in a test worker that ran other tests before, their threads and leftovers
    would be traced too."""
    from gateway.config import GatewayConfig, Limits
    from gateway.delivery.pipeline import Pipeline
    from gateway.ingress.connect import RPCService
    from gateway.ingress.intake import Intake
    from gateway.otlp.signals import TRACES
    from gateway.tenancy.tenants import TenantRegistry

    content_type, encoding, make_body, _ = RETAINED_CASES[case]
    # a pipeline that was never started refuses valid requests as UNAVAILABLE
    config = GatewayConfig()
    intake = Intake(TenantRegistry(config), Pipeline(config.backends, config.retry))
    service = RPCService(TRACES, intake, Limits(), limits.InFlight(1 << 30))
    body = make_body()
    chunks = [body[i : i + MB] for i in range(0, len(body), MB)]
    del body
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        asyncio.run(service(_asgi_scope(content_type, encoding), receive, send))  # type: ignore[arg-type]
        retained, peak = tracemalloc.get_traced_memory()
        holders = tracemalloc.take_snapshot().statistics("traceback")[:1] if retained > MB else []
    finally:
        tracemalloc.stop()
        gc.enable()
    where = "\n".join(line for stat in holders for line in stat.traceback.format())
    return retained, peak, where, sent


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", RETAINED_CASES)
def test_refused_rpc_request_leaves_nothing_behind(case: str) -> None:
    """The RPC ingress (gRPC served directly, the others by the real connect-python app, driven
    in-process) keeps nothing of a refused request once it has answered, even with the cycle
    collector off: connect-python keeps the caught error in a frame its traceback points back
    to, and that cycle used to pin the request's buffers (~30 MiB for a 15 MiB message) until
    the next full collection."""
    content_type, encoding, _, grpc_status = RETAINED_CASES[case]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
        retained, peak, where, sent = fresh.submit(_measure_refusal, case).result(timeout=50)
    if grpc_status is not None:
        trailers = dict(sent[-1]["headers"])
        assert trailers[b"grpc-status"] == grpc_status.encode(), trailers
    elif content_type.startswith("application/grpc-web"):
        assert b"grpc-status: 3" in b"".join(m.get("body", b"") for m in sent)
    else:
        assert sent[0]["status"] == 400
    if content_type == "application/grpc" and grpc_status == "8" and not encoding:
        assert peak < 2 * MB  # gRPC's own path refuses an oversized body while reading it
    else:
        assert peak > 10 * MB or encoding  # the request really was buffered
    assert retained < 2 * MB, f"{retained / MB:.1f} MiB still allocated after the answer:\n{where}"


# ---------------------------------------------------------------------------------------------
# gateway.ingress.limits.decompress


DATA = bytes(range(256)) * 40 + b"tail"


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def test_identity() -> None:
    assert decompress("", DATA, len(DATA)) == DATA
    assert decompress("identity", DATA, len(DATA)) == DATA
    assert decompress(" Identity ", b"", 0) == b""
    with pytest.raises(TooLarge):
        decompress("identity", DATA, len(DATA) - 1)


def test_gzip_single_and_multi_member() -> None:
    assert decompress("gzip", _gz(DATA), len(DATA)) == DATA
    assert decompress("x-gzip", _gz(DATA), len(DATA)) == DATA
    assert decompress("GZIP", _gz(DATA), len(DATA)) == DATA
    multi = _gz(b"first,") + _gz(b"") + _gz(b"second,") + _gz(DATA)
    assert decompress("gzip", multi, 10 * len(DATA)) == b"first,second," + DATA
    # trailing zero padding after the last member is tolerated, as gzip(1) does
    assert decompress("gzip", _gz(DATA) + b"\0" * 16, len(DATA)) == DATA


def test_gzip_multi_member_cap_counts_all_members() -> None:
    multi = _gz(DATA) + _gz(DATA)
    assert decompress("gzip", multi, 2 * len(DATA)) == DATA + DATA
    with pytest.raises(TooLarge):
        decompress("gzip", multi, 2 * len(DATA) - 1)


def test_deflate_zlib_and_raw() -> None:
    assert decompress("deflate", zlib.compress(DATA), len(DATA)) == DATA
    assert decompress("deflate", _raw_deflate(DATA), len(DATA)) == DATA
    with pytest.raises(TooLarge):
        decompress("deflate", zlib.compress(DATA), len(DATA) - 1)
    with pytest.raises(TooLarge):
        decompress("deflate", _raw_deflate(DATA), len(DATA) - 1)


@pytest.mark.parametrize(
    "encoding,compress",
    [("gzip", _gz), ("deflate", zlib.compress), ("deflate", _raw_deflate)],
    ids=["gzip", "deflate-zlib", "deflate-raw"],
)
@pytest.mark.parametrize("size", [0, 1, 1000, 65536, 1 << 20])
def test_cap_exactly_at_limit_passes_one_more_byte_fails(
    encoding: str, compress: Callable[[bytes], bytes], size: int
) -> None:
    data = (DATA * (size // len(DATA) + 1))[:size]
    body = compress(data)
    assert decompress(encoding, body, size) == data
    if size:
        with pytest.raises(TooLarge):
            decompress(encoding, body, size - 1)
    # one byte more than the cap
    plus = compress(data + b"!")
    with pytest.raises(TooLarge):
        decompress(encoding, plus, size)
    assert decompress(encoding, plus, size + 1) == data + b"!"


@pytest.mark.parametrize("cut", [1, 4, 8, 20])
def test_truncated_gzip_is_bad_encoding(cut: int) -> None:
    with pytest.raises(BadEncoding):
        decompress("gzip", _gz(DATA)[:-cut], 10 * len(DATA))


def test_truncated_deflate_is_bad_encoding() -> None:
    with pytest.raises(BadEncoding):
        decompress("deflate", zlib.compress(DATA)[:-20], 10 * len(DATA))


@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", b"\x1f\x8b\x08\x00garbage-after-magic", b"\x1f"],
    ids=["text", "bad-header", "one-byte"],
)
def test_invalid_gzip_is_bad_encoding(body: bytes) -> None:
    with pytest.raises(BadEncoding):
        decompress("gzip", body, 1 << 20)


def test_garbage_after_a_gzip_member_is_bad_encoding() -> None:
    with pytest.raises(BadEncoding):
        decompress("gzip", _gz(DATA) + b"garbage", 10 * len(DATA))


def test_empty_compressed_body_is_empty() -> None:
    assert decompress("gzip", b"", 0) == b""
    assert decompress("deflate", b"", 0) == b""


@pytest.mark.parametrize("encoding", ["br", "compress", "gzip, br", "lz4"])
def test_unknown_encoding(encoding: str) -> None:
    with pytest.raises(UnknownEncoding):
        decompress(encoding, b"x", 100)
    assert "gzip" in limits.accepted_encodings()


def test_zstd_when_available() -> None:
    zstandard = pytest.importorskip("zstandard")
    body = zstandard.ZstdCompressor().compress(DATA)
    assert decompress("zstd", body, len(DATA)) == DATA
    with pytest.raises(TooLarge):
        decompress("zstd", body, len(DATA) - 1)
    assert "zstd" in limits.accepted_encodings()


def test_bomb_is_refused_without_inflating() -> None:
    cap = 1 * MB
    bomb = gzip_bomb()
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            decompress("gzip", bomb, cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * cap, peak
