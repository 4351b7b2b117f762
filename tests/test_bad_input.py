"""Bad input on every transport gets its documented status, never a 500, and is never forwarded.

One gateway (1 MiB limits) forwarding over http/protobuf to a counting Sink; a table of bad
requests over OTLP/HTTP, gRPC (grpcio, and a hand-driven h2 client for a compressed frame),
Connect unary and gRPC-web; then the gateway must still be alive, still accept valid data, and the
Sink must have received exactly the valid items.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import status_pb2

from tests.support.grpcwire import (
    TRACE_RPC,
    MiB,
    grpc_bomb_call,
    grpc_frame,
    gzip_bomb,
    h2_grpc_call,
    oversize_body,
    trace_request,
)
from tests.support.peers import Gateway, Sink, run_gateway

pytestmark = pytest.mark.timeout(120)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


# ---------------------------------------------------------------------------------------------
# Payloads (shared with test_limits)


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/2 (h2c, prior knowledge) gRPC client: grpcio cannot send a frame that is already
# compressed, so the gzip bomb goes through this.


# ---------------------------------------------------------------------------------------------
# Fixtures


@dataclass
class Setup:
    gw: Gateway
    sink: Sink
    http: httpx.Client
    channel: grpc.Channel

    def export(self) -> Any:
        return self.channel.unary_unary(
            TRACE_RPC, request_serializer=None, response_deserializer=None
        )


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn"])
def setup(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("bad-input")
    with Sink().running() as sink:
        config = {
            "server": request.param,
            "limits": {"max_request_bytes": "1MiB", "max_body_bytes": "1MiB"},
            "backends": {
                "sink": {
                    "protocol": "http/protobuf",
                    "endpoint": sink.endpoint,
                    "compression": "none",
                }
            },
            "service_backends": ["sink"],
        }
        with (
            run_gateway(tmp, config) as gw,
            httpx.Client(base_url=gw.http_endpoint, timeout=30) as http,
            grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel,
        ):
            yield Setup(gw, sink, http, channel)
            assert "Traceback" not in gw.log(), gw.log()


# ---------------------------------------------------------------------------------------------
# OTLP/HTTP


def _chunked(total: int, chunk: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            yield b"\0" * chunk
            sent += chunk

    return gen


BAD_TRACE_ID = json.dumps(
    {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "not-hex-at-all-not-hex-at-all-xx",
                                "spanId": "0102030405060708",
                                "name": "x",
                            }
                        ]
                    }
                ]
            }
        ]
    }
).encode()


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@dataclass(frozen=True)
class HTTPCase:
    id: str
    status: int
    body: bytes | Callable[[], Iterator[bytes]] = b""
    content_type: str | None = PROTOBUF
    encoding: str | None = None
    method: str = "POST"
    path: str = "/v1/traces"

    @property
    def as_json(self) -> bool:
        return self.content_type == JSON


HTTP_CASES = [
    HTTPCase("garbage", 400, b"\xff\xfe\xfd garbage \x00\x07"),
    HTTPCase("truncated-protobuf", 400, lambda: iter([trace_request(3)[:-5]])),
    HTTPCase("wrong-content-type", 415, b"hello", content_type="text/plain"),
    HTTPCase("no-content-type", 415, trace_request(1), content_type=None),
    HTTPCase("bad-json", 400, b'{"resourceSpans": [', content_type=JSON),
    HTTPCase("json-non-hex-trace-id", 400, BAD_TRACE_ID, content_type=JSON),
    HTTPCase("json-array", 400, b"[]", content_type=JSON),
    HTTPCase("json-wrong-type", 400, b'{"resourceSpans": "x"}', content_type=JSON),
    HTTPCase("protobuf-as-json", 400, trace_request(2), content_type=JSON),
    HTTPCase("gzip-bomb", 413, lambda: iter([gzip_bomb()]), encoding="gzip"),
    HTTPCase("gzip-bomb-json", 413, lambda: iter([gzip_bomb()]), JSON, "gzip"),
    HTTPCase("oversize-content-length", 413, lambda: iter([oversize_body()])),
    HTTPCase("oversize-chunked", 413, _chunked(2 * MiB)),
    HTTPCase("invalid-gzip", 400, b"this is not gzip at all", encoding="gzip"),
    HTTPCase("truncated-gzip", 400, lambda: iter([_gzip(trace_request(3))[:-6]]), encoding="gzip"),
    HTTPCase("unknown-encoding-br", 415, trace_request(1), encoding="br"),
    HTTPCase("get", 405, method="GET"),
    HTTPCase("get-json", 405, method="GET", content_type=JSON),
    HTTPCase("put", 405, b"x", method="PUT"),
    HTTPCase("wrong-path", 404, trace_request(1), path="/v1/nothing"),
]


def _body(case_body: bytes | Callable[[], Iterator[bytes]], chunked: bool) -> bytes | Any:
    if callable(case_body):
        parts = list(case_body()) if not chunked else case_body()
        return b"".join(parts) if not chunked else parts
    return case_body


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c.id)
def test_http_bad_input(setup: Setup, case: HTTPCase) -> None:
    headers = {}
    if case.content_type:
        headers["content-type"] = case.content_type
    if case.encoding:
        headers["content-encoding"] = case.encoding
    chunked = case.id == "oversize-chunked"
    content = _body(case.body, chunked)
    if case.method == "GET":
        response = setup.http.request("GET", case.path, headers=headers)
    else:
        response = setup.http.request(case.method, case.path, content=content, headers=headers)
    if chunked:
        assert "content-length" not in response.request.headers
        assert response.request.headers.get("transfer-encoding") == "chunked"
    elif case.method != "GET":
        assert int(response.request.headers["content-length"]) == len(content)

    assert response.status_code != 500
    assert response.status_code == case.status, response.content[:300]
    if case.status == 405:
        assert response.headers["allow"] == "POST"
    if case.status == 404:
        return  # the router's own answer: plain text is fine
    if case.content_type not in (PROTOBUF, JSON):
        # a client that speaks neither format reads the refusal as text
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text.startswith(f"{case.status} content-type "), response.text
        assert "application/x-protobuf or application/json" in response.text
        return
    if case.as_json:
        assert response.headers["content-type"] == JSON
        doc = response.json()
        assert set(doc) == {"code", "message"}
        assert isinstance(doc["code"], int) and doc["code"] != 0
        assert isinstance(doc["message"], str) and doc["message"]
    else:
        assert response.headers["content-type"] == PROTOBUF
        status = status_pb2.Status.FromString(response.content)
        assert status.code != 0
        assert status.message
    expected_code = {400: 3, 413: 8, 415: 3, 405: None}[case.status]
    if expected_code is not None:
        code = response.json()["code"] if case.as_json else status.code
        assert code == expected_code


def test_http_empty_body_is_ok_and_forwards_nothing(setup: Setup) -> None:
    before = len(setup.sink.received)
    for content_type in (PROTOBUF, JSON):
        response = setup.http.post(
            "/v1/traces", content=b"", headers={"content-type": content_type}
        )
        assert response.status_code == 200
    gz = setup.http.post(
        "/v1/traces",
        content=_gzip(b""),
        headers={"content-type": PROTOBUF, "content-encoding": "gzip"},
    )
    assert gz.status_code == 200
    # over HTTP/2 (h2c), with END_STREAM on the HEADERS frame: no DATA frame at all
    h2 = h2_grpc_call(
        setup.gw.http_port, "/v1/traces", b"", [("content-type", PROTOBUF)], timeout=10
    )
    assert h2.headers.get(":status") == "200", h2
    time.sleep(0.3)
    assert len(setup.sink.received) == before


# ---------------------------------------------------------------------------------------------
# gRPC


GRPC_CASES = [
    ("garbage", lambda: b"\xff\xfe\xfd garbage \x00\x07", grpc.StatusCode.INVALID_ARGUMENT),
    ("truncated", lambda: trace_request(3)[:-5], grpc.StatusCode.INVALID_ARGUMENT),
    ("wrong-wire-type", lambda: b"\x0d\x00\x00\x00\x00", grpc.StatusCode.INVALID_ARGUMENT),
    ("oversize", oversize_body, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


@pytest.mark.parametrize(
    ("body", "code"), [c[1:] for c in GRPC_CASES], ids=[c[0] for c in GRPC_CASES]
)
def test_grpc_bad_input(setup: Setup, body: Callable[[], bytes], code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        setup.export()(body(), timeout=30)
    assert info.value.code() == code
    assert info.value.details()


def test_grpc_gzip_bomb(setup: Setup) -> None:
    result = grpc_bomb_call(setup.gw.grpc_port)
    assert result.reset is None
    assert result.headers.get(":status") == "200"
    assert result.grpc_status == "8", result
    assert "larger than the limit" in result.grpc_message


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        # gRPC: an unsupported grpc-encoding is UNIMPLEMENTED
        (grpc_frame(b"x", compressed=True), [("grpc-encoding", "br")], "12"),
        # the compressed flag without a grpc-encoding is a protocol error: INTERNAL
        (grpc_frame(_gzip(b"x"), compressed=True), [], "13"),
        # no message at all (END_STREAM on HEADERS), or an incomplete frame: answered, not hung
        (b"", [], None),
        (grpc_frame(trace_request(1))[:-3], [], None),
        (grpc_frame(b"") * 2, [], None),
    ],
    ids=[
        "unknown-encoding",
        "compressed-flag-no-encoding",
        "no-message",
        "short-frame",
        "two-messages",
    ],
)
def test_grpc_framing_errors(
    setup: Setup, body: bytes, headers: list[tuple[str, str]], status: str | None
) -> None:
    result = h2_grpc_call(
        setup.gw.grpc_port,
        TRACE_RPC,
        body,
        [("content-type", "application/grpc"), *headers],
        timeout=10,
    )
    assert result.headers.get(":status") == "200", result
    assert result.grpc_status not in (None, "0"), result
    if status is not None:
        assert result.grpc_status == status, result


def test_grpc_invalid_gzip_frame(setup: Setup) -> None:
    result = h2_grpc_call(
        setup.gw.grpc_port,
        TRACE_RPC,
        grpc_frame(b"this is not gzip", compressed=True),
        [("content-type", "application/grpc"), ("grpc-encoding", "gzip")],
    )
    assert result.grpc_status == "3", result


# ---------------------------------------------------------------------------------------------
# Connect unary and gRPC-web

INVALID = "invalid_argument"
CONNECT_CASES = [
    ("garbage", "application/proto", None, lambda: b"\xff\xfe\xfd garbage", 400, INVALID),
    ("truncated", "application/proto", None, lambda: trace_request(3)[:-5], 400, INVALID),
    ("bad-json", "application/json", None, lambda: b'{"resourceSpans": [', 400, INVALID),
    ("json-wrong-type", "application/json", None, lambda: b'{"resourceSpans": 7}', 400, INVALID),
    # Connect maps resource_exhausted to HTTP 429 (connectrpc.com/docs/protocol#error-codes)
    ("oversize", "application/proto", None, oversize_body, 429, "resource_exhausted"),
    ("gzip-bomb", "application/proto", "gzip", gzip_bomb, 429, "resource_exhausted"),
    ("invalid-gzip", "application/proto", "gzip", lambda: b"not gzip", 400, INVALID),
    ("unknown-content-type", "text/plain", None, lambda: b"hello", 415, None),
    # Connect: an unsupported Content-Encoding is `unimplemented`, answered with 415 (not
    # connect-python's 501: bad input never gets a 5xx)
    ("unknown-encoding", "application/proto", "br", lambda: b"x", 415, "unimplemented"),
]


@pytest.mark.parametrize(
    ("content_type", "encoding", "body", "status", "code"),
    [c[1:] for c in CONNECT_CASES],
    ids=[c[0] for c in CONNECT_CASES],
)
def test_connect_bad_input(
    setup: Setup,
    content_type: str,
    encoding: str | None,
    body: Callable[[], bytes],
    status: int,
    code: str | None,
) -> None:
    headers = {"content-type": content_type, "connect-protocol-version": "1"}
    if encoding:
        headers["content-encoding"] = encoding
    response = setup.http.post(TRACE_RPC, content=body(), headers=headers)
    assert response.status_code != 500
    assert response.status_code == status, response.content[:300]
    if code is not None:
        doc = response.json()
        assert doc["code"] == code
        assert doc["message"]


@pytest.mark.parametrize(
    ("frame", "status"),
    [
        (lambda: grpc_frame(b"\xff\xfe\xfd garbage"), "3"),
        (lambda: grpc_frame(trace_request(3)[:-5]), "3"),
        (lambda: grpc_frame(oversize_body()), "8"),
    ],
    ids=["garbage", "truncated", "oversize"],
)
def test_grpc_web_bad_input(setup: Setup, frame: Callable[[], bytes], status: str) -> None:
    response = setup.http.post(
        TRACE_RPC,
        content=frame(),
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
    )
    assert response.status_code == 200  # gRPC-web carries the status in the trailer frame
    trailers = _grpc_web_trailers(response.content)
    assert trailers["grpc-status"] == status, trailers
    assert trailers.get("grpc-message")


def _grpc_web_trailers(body: bytes) -> dict[str, str]:
    pos = 0
    while pos + 5 <= len(body):
        flags = body[pos]
        size = int.from_bytes(body[pos + 1 : pos + 5], "big")
        payload = body[pos + 5 : pos + 5 + size]
        pos += 5 + size
        if flags & 0x80:
            out = {}
            for line in payload.decode().split("\r\n"):
                if line:
                    k, _, v = line.partition(":")
                    out[k.strip().lower()] = v.strip()
            return out
    raise AssertionError(f"no trailer frame in {body[:200]!r}")


# ---------------------------------------------------------------------------------------------
# Afterwards: alive, still working, nothing bad forwarded


def test_after_all_bad_input_gateway_still_serves(setup: Setup) -> None:
    assert setup.gw.proc.poll() is None, setup.gw.log()
    before = setup.sink.items("traces")

    response = setup.http.post(
        "/v1/traces", content=trace_request(3, "http"), headers={"content-type": PROTOBUF}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == PROTOBUF

    gz = setup.http.post(
        "/v1/traces",
        content=_gzip(trace_request(2, "http-gzip")),
        headers={"content-type": PROTOBUF, "content-encoding": "gzip"},
    )
    assert gz.status_code == 200

    setup.export()(trace_request(4, "grpc"), timeout=30)
    setup.export()(trace_request(1, "grpc-gzip"), timeout=30, compression=grpc.Compression.Gzip)

    connect = setup.http.post(
        TRACE_RPC,
        content=trace_request(5, "connect"),
        headers={"content-type": "application/proto", "connect-protocol-version": "1"},
    )
    assert connect.status_code == 200, connect.content

    sent = 3 + 2 + 4 + 1 + 5
    assert setup.sink.wait_items("traces", before + sent, timeout=20) == before + sent
    # Only the valid requests above ever reached the sink: the bad ones forwarded nothing.
    names = sorted(
        span.name.rsplit("-", 1)[0]
        for message in setup.sink.messages("traces")
        for rs in message.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    )
    assert names == sorted(
        ["http"] * 3 + ["http-gzip"] * 2 + ["grpc"] * 4 + ["grpc-gzip"] + ["connect"] * 5
    )
    assert setup.gw.proc.poll() is None
