"""TLS with ALPN h2 on every listener, and CORS for browser clients."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)

from tests.support.peers import Gateway, Sink, run_gateway, send_spans


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_gateway(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[tuple[Gateway, Sink, Path]]:
    tmp = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem = tmp / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))  # one PEM with key and chain
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with Sink().running() as sink:
        config = {
            "tls": {"cert": str(pem)},
            "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["sink"],
        }
        with run_gateway(tmp, config) as gw:
            yield gw, sink, ca_file


def _names(sink: Sink, prefix: str) -> list[str]:
    return sink.span_names(prefix)


@pytest.mark.parametrize("port_attr", ["grpc_port", "http_port"])
def test_sdk_grpc_exporter_over_tls(
    tls_gateway: tuple[Gateway, Sink, Path], port_attr: str
) -> None:
    gw, sink, ca_file = tls_gateway
    creds = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    port = getattr(gw, port_attr)
    exporter = GRPCSpanExporter(endpoint=f"https://127.0.0.1:{port}", credentials=creds)
    prefix = f"tls-grpc-{port_attr}"
    send_spans(exporter, prefix, 3)
    assert _wait_names(sink, prefix, 3) == [f"{prefix}-{i}" for i in range(3)]


def test_sdk_http_exporter_over_tls(
    tls_gateway: tuple[Gateway, Sink, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, sink, ca_file = tls_gateway
    # requests lets these machine-wide variables override the exporter's own CA file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    exporter = HTTPSpanExporter(
        endpoint=f"https://127.0.0.1:{gw.http_port}/v1/traces", certificate_file=str(ca_file)
    )
    send_spans(exporter, "tls-http", 4)
    assert _wait_names(sink, "tls-http", 4) == [f"tls-http-{i}" for i in range(4)]


def test_alpn_offers_h2(tls_gateway: tuple[Gateway, Sink, Path]) -> None:
    gw, _, ca_file = tls_gateway
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=ca_file)) as client:
        r = client.post(
            f"https://127.0.0.1:{gw.http_port}/v1/traces",
            content=b"",
            headers={"content-type": "application/x-protobuf"},
        )
    assert r.status_code == 200
    assert r.http_version == "HTTP/2"


@pytest.mark.parametrize(
    ("client", "tls"),
    [("pyqwest", "ca_file"), ("httpx", "ca_file"), (None, "insecure")],
    ids=["pyqwest-ca_file", "httpx-ca_file", "default-insecure"],
)
def test_http_backend_over_tls_with_each_client(
    tls_gateway: tuple[Gateway, Sink, Path], tmp_path: Path, client: str | None, tls: str
) -> None:
    """An edge gateway forwards over https to the TLS gateway, with each HTTP client: pyqwest and
    httpx verifying a private CA, and tls.insecure (which picks httpx by itself)."""
    upstream, sink, ca_file = tls_gateway
    backend: dict[str, object] = {
        "protocol": "http/protobuf",
        "endpoint": f"https://127.0.0.1:{upstream.http_port}",
        "tls": {"ca_file": str(ca_file)} if tls == "ca_file" else {"insecure": True},
    }
    if client:
        backend["client"] = client
    config = {"backends": {"up": backend}, "service_backends": ["up"]}
    prefix = f"edge-{client}-{tls}"
    with run_gateway(tmp_path, config) as edge:
        send_spans(HTTPSpanExporter(endpoint=edge.http_endpoint + "/v1/traces"), prefix, 5)
        assert _wait_names(sink, prefix, 5) == [f"{prefix}-{i}" for i in range(5)]


def _wait_names(sink: Sink, prefix: str, n: int) -> list[str]:
    from tests.support.peers import wait_until

    wait_until(lambda: len(_names(sink, prefix)) >= n)
    return _names(sink, prefix)


def test_cors_preflight_and_response(tmp_path: Path) -> None:
    config = {
        "cors": {"allowed_origins": ["https://app.example"]},
        "backends": {"files": {"protocol": "file", "path": str(tmp_path / "out")}},
        "service_backends": ["files"],
    }
    with run_gateway(tmp_path, config) as gw:
        path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        pre = httpx.options(
            gw.http_endpoint + path,
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": (
                    "content-type,connect-protocol-version,authorization"
                ),
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        allowed = pre.headers["access-control-allow-headers"].lower()
        assert "connect-protocol-version" in allowed and "authorization" in allowed
        r = httpx.post(
            gw.http_endpoint + path,
            content=b"",
            headers={"origin": "https://app.example", "content-type": "application/proto"},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "grpc-status" in r.headers["access-control-expose-headers"].lower()
        denied = httpx.options(
            gw.http_endpoint + "/v1/traces",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert "access-control-allow-origin" not in denied.headers
