"""A request for a path that is no endpoint gets a 404 that lists the ones that exist, in the
request's terms (plain text, JSON, Connect JSON, gRPC UNIMPLEMENTED), and one log line per path
and interval. In process for the shapes and the throttle; through a running gateway (HTTP/1.1,
HTTP/2, grpcio, an SDK exporter set to a wrong URL) for what clients really see."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from gateway.ingress import notfound
from gateway.ingress.notfound import NotFound, message
from tests.support.peers import Gateway, Sink, run_gateway, wait_until
from tests.support.tenants import simple_spans

pytestmark = pytest.mark.timeout(60)

EVERY_PATH = (
    "/v1/traces",
    "/v1/metrics",
    "/v1/logs",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "admin listener",
)


def _lists_every_path(text: str) -> None:
    for path in EVERY_PATH:
        assert path in text, (path, text)


# ---------------------------------------------------------------------------------------------
# In process: the message, the answer's shape, the log throttle


@pytest.mark.parametrize(
    ("method", "path", "hint"),
    [
        ("POST", "/v1/trace", "(did you mean /v1/traces?)"),
        ("POST", "/v1/log", "(did you mean /v1/logs?)"),
        ("POST", "/v1/traces/v1/traces", "did you mean /v1/traces? OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("POST", "/otlp/v1/metrics", "did you mean /v1/metrics?"),
        ("POST", "/", "a per-signal endpoint variable is the full URL: add /v1/traces"),
        ("GET", "/", "on the admin listener's port"),
        ("GET", "/metrics", "on the admin listener's port"),
        ("POST", "/something/else", ""),
    ],
)
def test_message_names_the_path_a_hint_and_every_endpoint(
    method: str, path: str, hint: str
) -> None:
    text = message(method, path)
    assert text.startswith(f"{method} {path} is not an endpoint of this gateway")
    assert hint in text
    if not hint:
        assert "did you mean" not in text
    _lists_every_path(text)


def test_a_long_or_hostile_path_is_cut_and_escaped() -> None:
    text = message("POST", "/a\nb" + "x" * 10_000)
    assert "\n" not in text and "/a\\nb" in text
    assert len(text) < 1500
    assert "x" * 101 not in text


def _app(handler: NotFound) -> Starlette:
    async def ok(request: Any) -> Response:
        return Response(b"ok")

    return Starlette(
        routes=[Route("/v1/traces", ok, methods=["POST"])], exception_handlers={404: handler.handle}
    )


async def _call(app: Starlette, path: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.post(path, content=b"x", headers=headers)


def test_the_answer_speaks_the_request_content_type() -> None:
    app = _app(NotFound())

    async def run() -> list[httpx.Response]:
        return [
            await _call(app, "/v1/traces", {"content-type": "application/x-protobuf"}),
            await _call(app, "/v1/trace", {"content-type": "application/x-protobuf"}),
            await _call(app, "/v1/trace", {"content-type": "application/json; charset=utf-8"}),
            await _call(
                app,
                "/v1/trace",
                {"content-type": "application/json", "connect-protocol-version": "1"},
            ),
            await _call(app, "/x.Y/Export", {"content-type": "application/grpc-web+proto"}),
            await _call(app, "/x.Y/Export", {"content-type": "application/grpc"}),  # no trailers
        ]

    ok, text, json_, connect, grpc_web, grpc_h1 = asyncio.run(run())
    assert (ok.status_code, ok.content) == (200, b"ok")  # a real route is untouched
    assert text.status_code == 404
    assert text.headers["content-type"].startswith("text/plain")
    assert "did you mean /v1/traces?" in text.text
    _lists_every_path(text.text)
    assert json_.status_code == 404 and json_.headers["content-type"] == "application/json"
    assert json_.json()["code"] == 12
    _lists_every_path(json_.json()["message"])
    assert connect.status_code == 404 and connect.json()["code"] == "unimplemented"
    for answer in (grpc_web, grpc_h1):
        assert answer.status_code == 200
        assert answer.headers["grpc-status"] == "12"
        _lists_every_path(unquote(answer.headers["grpc-message"]))
    assert grpc_web.headers["content-type"] == "application/grpc-web+proto"


def _not_found_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "otlp_gateway.ingress"]


def test_one_log_line_per_path_and_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, "otlp_gateway.ingress")
    monkeypatch.setattr(notfound, "_PATHS_LOGGED", 3)
    app = _app(NotFound(interval=0.5))

    async def run() -> None:
        for _ in range(5):
            await _call(app, "/v1/trace", {})
        await _call(app, "/v1/log", {})
        for i in range(5):  # more distinct paths than logged per interval: one line for the rest
            await _call(app, f"/scan/{i}", {})
        await asyncio.sleep(0.7)  # the interval ends: the count of what was left out, once
        await _call(app, "/v1/trace", {})

    asyncio.run(run())
    lines = _not_found_lines(caplog)
    first = [line for line in lines if "answered POST" in line]
    assert [line.split()[2] for line in first] == [
        "/v1/trace",
        "/v1/log",
        "/scan/0",
        "(other",
        "/v1/trace",
    ], lines
    assert any("answered 4 more requests for /v1/trace with 404" in line for line in lines)
    assert any("answered 3 more requests for (other paths)" in line for line in lines)
    assert "OTLP/HTTP paths are /v1/traces, /v1/metrics, /v1/logs" in first[0]


# ---------------------------------------------------------------------------------------------
# Through a running gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("not_found")
    config = {
        "backends": {"files": {"protocol": "file", "path": str(tmp / "data")}},
        "service_backends": ["files"],
    }
    with run_gateway(tmp, config) as g:
        yield g


def test_http1_and_http2_get_the_404_with_every_path(gw: Gateway) -> None:
    for http2 in (False, True):
        with httpx.Client(http1=not http2, http2=http2, timeout=10) as client:
            r = client.post(
                f"{gw.http_endpoint}/v1/trace",
                content=simple_spans("nf", 1),
                headers={"content-type": "application/x-protobuf"},
            )
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert r.status_code == 404
            assert "POST /v1/trace is not an endpoint" in r.text
            assert "did you mean /v1/traces?" in r.text
            _lists_every_path(r.text)
            r = client.post(
                f"{gw.http_endpoint}/v1/trace",
                content=b"{}",
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 404 and r.json()["code"] == 12
            _lists_every_path(r.json()["message"])
            r = client.get(f"{gw.http_endpoint}/")
            assert r.status_code == 404 and "on the admin listener's port" in r.text
    # the right path still works
    r = httpx.post(
        f"{gw.http_endpoint}/v1/traces",
        content=simple_spans("nf", 1),
        headers={"content-type": "application/x-protobuf"},
        timeout=10,
    )
    assert r.status_code == 200


def test_grpc_to_an_unknown_method_gets_unimplemented_with_the_paths(gw: Gateway) -> None:
    path = "/opentelemetry.proto.collector.trace.v1.Traces/Export"  # Traces, not TraceService
    with (
        grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        channel.unary_unary(path)(simple_spans("nf", 1), timeout=10)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "is not an endpoint of this gateway" in error.details()
    _lists_every_path(error.details())


def test_an_sdk_exporter_set_to_the_base_url_is_told_and_logged_once(
    tmp_path: Path, sink: Sink
) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as it is: set to the base URL, the SDK posts to
    `/`. Each attempt gets the 404; the log has one line for the path, not one per attempt."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    config = {
        "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
        "service_backends": ["sink"],
    }
    with run_gateway(tmp_path, config) as gateway:
        exporter = OTLPSpanExporter(endpoint=gateway.http_endpoint, timeout=5)
        provider = TracerProvider(resource=Resource.create({"service.name": "nf"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("nf")
        for i in range(3):
            with tracer.start_as_current_span(f"nf-{i}"):
                pass
        provider.shutdown()
        wait_until(lambda: "answered POST / with 404" in gateway.log())
        log = gateway.log()
    assert log.count("answered POST / with 404") == 1, log
    assert sink.items("traces") == 0
