"""OTLP/HTTP exporter (http/protobuf and http/json) over httpx."""

from __future__ import annotations

import ssl

import httpx
from google.protobuf.message import DecodeError

from .. import gz, otlpjson
from ..batch import Batch
from ..config import BackendConfig
from ..signals import SIGNALS
from .base import (
    ExportError,
    log_partial_success,
    log_partial_success_message,
    parse_retry_after,
    render_headers,
)

# OTLP/HTTP: only these are retryable; every other failure status is permanent.
_RETRYABLE = frozenset({429, 502, 503, 504})


class HTTPExporter:
    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        self._json = config.protocol == "http/json"
        base = config.endpoint.rstrip("/")
        self._urls = {s.name: base + s.http_path for s in SIGNALS}
        verify: bool | ssl.SSLContext = True
        if config.tls.insecure:
            verify = False
        elif config.tls.ca_file:
            verify = ssl.create_default_context(cafile=config.tls.ca_file)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout),
            verify=verify,
            limits=httpx.Limits(max_connections=config.concurrency * 2),
        )
        self._content_type = "application/json" if self._json else "application/x-protobuf"

    async def export(self, batch: Batch) -> None:
        body = batch.payload
        if self._json:
            body = otlpjson.proto_to_json(batch.signal, body)
        headers = render_headers(self._config.headers, batch.tenant)
        headers["content-type"] = self._content_type
        if self._config.compression == "gzip":
            body = gz.gzip_compress(body, self._config.compression_level)
            headers["content-encoding"] = "gzip"
        url = self._urls[batch.signal.name]
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ExportError(
                f"timed out after {self._config.timeout}s: {exc!r}", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ExportError(f"could not reach {url}: {exc!r}", retryable=True) from exc
        status = response.status_code
        if 200 <= status < 300:
            self._log_partial_success(batch, response)
            return
        detail = response.text[:200].replace("\n", " ")
        message = f"{url} answered {status}: {detail}"
        if status in _RETRYABLE:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise ExportError(message, retryable=True, retry_after=retry_after)
        raise ExportError(message, retryable=False, too_large=status == 413)

    def _log_partial_success(self, batch: Batch, response: httpx.Response) -> None:
        if not response.content:
            return
        try:
            if "json" in response.headers.get("content-type", ""):
                parsed = response.json().get("partialSuccess") or {}
                rejected = next((int(v) for k, v in parsed.items() if k.startswith("rejected")), 0)
                log_partial_success(
                    self._config.name, batch, rejected, str(parsed.get("errorMessage", ""))
                )
            else:
                res = batch.signal.response_type.FromString(response.content)
                log_partial_success_message(self._config.name, batch, res)
        except (ValueError, DecodeError, AttributeError):
            return

    async def aclose(self) -> None:
        await self._client.aclose()
