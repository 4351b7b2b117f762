"""`otlp-gateway serve --tls-cert/--tls-key`: TLS with ALPN h2 on every listener from the command
line, used by the SDK exporters configured the way docs/clients.md says (environment variables)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)

from gateway.tenancy import keys
from tests.support.cli import run_cli, serve
from tests.support.peers import Sink, send_spans, wait_until

# Variables of the machine that the HTTP exporter (requests) would prefer over its CA file.
_CA_OVERRIDES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
# for tests that forward nothing: a config needs a backend data goes to (under the gateway's cwd)
FILES: dict[str, Any] = {
    "backends": {"files": {"protocol": "file", "path": "./otlp-data"}},
    "service_backends": ["files"],
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate with its key in a separate file, and the same certificate and
    key in one PEM; plus a certificate from another CA that clients do not trust."""
    tmp = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "ca": tmp / "ca.pem",
        "cert": tmp / "tls.crt",
        "key": tmp / "tls.key",
        "combined": tmp / "server.pem",
        "untrusted": tmp / "untrusted.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(files["cert"]), append=i > 0)
    cert.private_key_pem.write_to_path(str(files["key"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files["combined"]))
    other_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(files["untrusted"])
    )
    return files


def _spans(sink: Sink, prefix: str) -> list[tuple[str, str]]:
    """(span name, tenant.id) of every received span whose name starts with prefix."""
    out = []
    for m in sink.messages("traces"):
        for rs in m.resource_spans:
            tenant = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "tenant.id"), ""
            )
            out += [(s.name, tenant) for ss in rs.scope_spans for s in ss.spans]
    return sorted(x for x in out if x[0].startswith(prefix))


def _wait_spans(sink: Sink, prefix: str, n: int) -> list[tuple[str, str]]:
    wait_until(lambda: len(_spans(sink, prefix)) >= n)
    return _spans(sink, prefix)


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*_CA_OVERRIDES, *(k for k in os.environ if k.startswith("OTEL_"))):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_tls_flags_sdk_grpc_and_http_exporters(
    tmp_path: Path, pki: dict[str, Path], sdk_env: pytest.MonkeyPatch
) -> None:
    """Config without `tls`; certificate and key from the flags (separate files). The SDK
    exporters are configured only by the environment variables of docs/clients.md: an https://
    endpoint, the CA in OTEL_EXPORTER_OTLP_CERTIFICATE, the key in OTEL_EXPORTER_OTLP_HEADERS."""
    key = keys.new_key()
    with Sink().running() as sink:
        config = {
            "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["sink"],
            "tenants": {"acme": {"api_keys": [keys.config_entry(key)]}},
        }
        args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])]
        with serve(tmp_path, config, args) as gw:
            assert f"OTEL_EXPORTER_OTLP_ENDPOINT=https://127.0.0.1:{gw.grpc_port}" in gw.log()
            sdk_env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki["ca"]))
            sdk_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", keys.client_headers_env(key))
            # OTLP/gRPC over TLS (ALPN h2) on both listeners: every listener serves every transport
            for port in (gw.grpc_port, gw.http_port):
                sdk_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://127.0.0.1:{port}")
                send_spans(GRPCSpanExporter(), f"grpc-{port}", 3)
                assert _wait_spans(sink, f"grpc-{port}", 3) == [
                    (f"grpc-{port}-{i}", "acme") for i in range(3)
                ]
            # OTLP/HTTP protobuf over TLS: the exporter appends /v1/traces to the base endpoint
            sdk_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://127.0.0.1:{gw.http_port}")
            send_spans(HTTPSpanExporter(), "http", 4)
            assert _wait_spans(sink, "http", 4) == [(f"http-{i}", "acme") for i in range(4)]
            # a client that does not trust the certificate's CA fails at the handshake
            with pytest.raises(httpx.ConnectError):
                httpx.post(
                    f"https://127.0.0.1:{gw.http_port}/v1/traces",
                    verify=ssl.create_default_context(cafile=str(pki["untrusted"])),
                )


def test_tls_cert_flag_overrides_config_tls(tmp_path: Path, pki: dict[str, Path]) -> None:
    """The config names a certificate clients do not trust; `--tls-cert` with a PEM holding key
    and chain replaces it, on both listeners, with ALPN h2."""
    config = {"tls": {"cert": str(pki["untrusted"])}, **FILES}
    with serve(tmp_path, config, ["--tls-cert", str(pki["combined"])]) as gw:
        trust = ssl.create_default_context(cafile=str(pki["ca"]))
        with httpx.Client(http2=True, verify=trust) as client:
            for port in (gw.grpc_port, gw.http_port):
                r = client.post(
                    f"https://127.0.0.1:{port}/v1/traces",
                    content=b"",
                    headers={"content-type": "application/x-protobuf"},
                )
                assert (r.status_code, r.http_version) == (200, "HTTP/2")


def test_tls_flag_errors(tmp_path: Path, pki: dict[str, Path]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(FILES))
    serve_cmd = ("serve", "--config", str(config))

    r = run_cli(tmp_path, *serve_cmd, "--tls-key", str(pki["key"]))
    assert r.returncode == 2
    assert "--tls-key needs --tls-cert" in r.stderr

    r = run_cli(tmp_path, *serve_cmd, "--tls-cert", str(tmp_path / "missing.pem"))
    assert r.returncode == 2
    assert "--tls-cert: file" in r.stderr and "missing.pem" in r.stderr

    # a certificate without its key (no --tls-key, none in the PEM)
    r = run_cli(tmp_path, *serve_cmd, "--tls-cert", str(pki["cert"]))
    assert r.returncode == 2
    assert "tls: cannot load the certificate/key" in r.stderr

    # the flags are for serve; check validates the file alone
    r = run_cli(tmp_path, "check", "--config", str(config), "--tls-cert", str(pki["cert"]))
    assert r.returncode == 2
    assert "unrecognized arguments" in r.stderr


def test_version_is_the_package_version() -> None:
    from importlib.metadata import version

    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"otlp-gateway {version('otlp-gateway')}"
