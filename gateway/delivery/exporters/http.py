"""OTLP/HTTP exporter (http/protobuf and http/json).

Two HTTP clients side by side, chosen by the backend's `client`: pyqwest (reqwest in Rust, the
default) and httpx. pyqwest costs a third of httpx's client CPU per export (bench/README.md,
"http_export_client.py", has the figures). httpx stays for `tls.insecure`: pyqwest always
verifies certificates.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import NamedTuple, Protocol

import pyqwest
from google.protobuf.message import DecodeError

from gateway.config import BackendConfig
from gateway.delivery.batch import Batch
from gateway.delivery.exporters.base import (
    ExportError,
    gzip_encoding,
    log_partial_success,
    log_partial_success_message,
    parse_retry_after,
    render_headers,
)
from gateway.delivery.exporters.jsonenc import encoded as json_encoded
from gateway.otlp import gz
from gateway.otlp.signals import SIGNALS

# OTLP/HTTP: only these are retryable; every other failure status is permanent.
_RETRYABLE = frozenset({429, 502, 503, 504})
# Refusals of the request's content: 400 is OTLP's "bad data"; 422 and 500 are what many servers
# answer for a body they cannot decode (a Python/Starlette receiver answers 500 for a
# DecodeError). The pipeline splits such a batch and sends the parts.
_INVALID = frozenset({400, 422, 500})


class _Reply(NamedTuple):
    status: int
    content_type: str
    retry_after: str | None
    content: bytes


class _Client(Protocol):
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> _Reply:
        """Send; raise ExportError (retryable) when no answer came."""
        ...

    async def aclose(self) -> None: ...


class _PyqwestClient:
    def __init__(self, config: BackendConfig) -> None:
        ca = None
        if config.tls.ca_file:
            with open(config.tls.ca_file, "rb") as f:
                ca = f.read()
        self._timeout = config.timeout
        self._transport = pyqwest.HTTPTransport(
            tls_ca_cert=ca,
            tls_include_system_certs=ca is None,
            timeout=config.timeout,
            pool_max_idle_per_host=config.concurrency * 2,
            max_connections_per_address=config.concurrency * 2,
            follow_redirects=False,  # a redirect is a misconfigured endpoint: say so, don't chase
            enable_otel=False,
        )
        self._client = pyqwest.Client(self._transport)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> _Reply:
        try:
            r = await self._client.post(url, headers, body)
        except TimeoutError as exc:
            raise ExportError(f"timed out after {self._timeout}s: {exc!r}", retryable=True) from exc
        except (
            ConnectionError,
            OSError,
            pyqwest.ReadError,
            pyqwest.WriteError,
            pyqwest.RemoteProtocolError,
        ) as exc:
            raise ExportError(f"could not reach {url}: {exc!r}", retryable=True) from exc
        h = r.headers
        return _Reply(r.status, h.get("content-type", ""), h.get("retry-after"), r.content)

    async def aclose(self) -> None:
        await self._transport.aclose()


class _HttpxClient:
    def __init__(self, config: BackendConfig) -> None:
        import httpx  # only for the backends that choose it: most processes never load it

        self._httpx = httpx
        verify: bool | ssl.SSLContext = True
        if config.tls.insecure:
            verify = False
        elif config.tls.ca_file:
            verify = ssl.create_default_context(cafile=config.tls.ca_file)
        self._timeout = config.timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout),
            verify=verify,
            limits=httpx.Limits(max_connections=config.concurrency * 2),
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> _Reply:
        httpx = self._httpx
        try:
            r = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ExportError(f"timed out after {self._timeout}s: {exc!r}", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise ExportError(f"could not reach {url}: {exc!r}", retryable=True) from exc
        h = r.headers
        return _Reply(r.status_code, h.get("content-type", ""), h.get("retry-after"), r.content)

    async def aclose(self) -> None:
        await self._client.aclose()


_CLIENTS: Mapping[str, type[_PyqwestClient] | type[_HttpxClient]] = {
    "pyqwest": _PyqwestClient,
    "httpx": _HttpxClient,
}


class HTTPExporter:
    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        self._json = config.protocol == "http/json"
        base = config.endpoint.rstrip("/")
        self._urls = {s.name: base + s.http_path for s in SIGNALS}
        self._client: _Client = _CLIENTS[config.client](config)
        self._content_type = "application/json" if self._json else "application/x-protobuf"
        gzip = config.compression == "gzip"
        self._gzip_level = config.compression_level if gzip else None
        # the body this exporter sends, as a key of Batch.encoded (None: the payload as it is);
        # gzipped protobuf has the key the grpc exporter uses, as the bytes are the same
        self._encoding: tuple[str, int | None] | None = None
        if self._json:
            self._encoding = ("json", self._gzip_level)
        elif self._gzip_level is not None:
            self._encoding = gzip_encoding(self._gzip_level)

    async def export(self, batch: Batch) -> None:
        headers = render_headers(self._config.headers, batch.tenant)
        headers["content-type"] = self._content_type
        body = batch.payload
        if self._json:  # a conversion of up to seconds: in the conversion pool, in pieces
            body = await json_encoded(batch, self._gzip_level)
        elif self._encoding is not None:
            level = self._gzip_level
            assert level is not None
            body = batch.encoded(self._encoding, lambda payload: gz.gzip_compress(payload, level))
        if self._gzip_level is not None:
            headers["content-encoding"] = "gzip"
        url = self._urls[batch.signal.name]
        reply = await self._client.post(url, body, headers)
        status = reply.status
        if 200 <= status < 300:
            self._log_partial_success(batch, reply)
            return
        detail = reply.content[:200].decode("utf-8", "replace").replace("\n", " ")
        message = f"{url} answered {status}: {detail}"
        if status in _RETRYABLE:
            retry_after = parse_retry_after(reply.retry_after)
            raise ExportError(message, retryable=True, retry_after=retry_after)
        raise ExportError(
            message, retryable=False, too_large=status == 413, invalid=status in _INVALID
        )

    def _log_partial_success(self, batch: Batch, reply: _Reply) -> None:
        if not reply.content:
            return
        try:
            if "json" in reply.content_type:
                parsed = json.loads(reply.content).get("partialSuccess") or {}
                rejected = next((int(v) for k, v in parsed.items() if k.startswith("rejected")), 0)
                log_partial_success(
                    self._config.name, batch, rejected, str(parsed.get("errorMessage", ""))
                )
            else:
                res = batch.signal.response_type.FromString(reply.content)
                log_partial_success_message(self._config.name, batch, res)
        except (ValueError, DecodeError, AttributeError):
            return

    async def aclose(self) -> None:
        await self._client.aclose()
