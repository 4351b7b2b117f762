"""Refusals the HTTP/2 server answers from the request's headers alone, before an ASGI task is
made: an OTLP/HTTP or OTLP/gRPC export without a valid key, or for a signal its tenant may not
send. A client that opens stream after stream without a key then costs a header lookup and a
counter each, not a task, a request body and a log line (see uvicorn_h2.py, which calls this).

The server layer knows nothing of tenants: app.py hands it `EarlyRefusal(...)` as a plain
callable. Everything else (no key needed, other transports, the admin listener) goes to the app.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from google.rpc import status_pb2

from gateway.errors import GatewayError
from gateway.ingress.guard import EarlyAnswer, Header
from gateway.ingress.intake import Intake
from gateway.otlp.signals import SIGNALS, Signal

_GRPC_TYPES = (b"application/grpc", b"application/grpc+proto", b"application/grpc+json")
_PROTOBUF_TYPES = (b"application/x-protobuf", b"application/protobuf")
_JSON = b"application/json"


class EarlyRefusal:
    """`(local port, path, header) -> EarlyAnswer | None` for the HTTP/2 server."""

    def __init__(self, intake: Intake, admin_port: int | None) -> None:
        self._intake = intake
        self._admin_port = admin_port
        self._http: dict[str, Signal] = {s.http_path: s for s in SIGNALS}
        self._grpc: dict[str, Signal] = {s.rpc_path: s for s in SIGNALS}
        self._answers: dict[tuple[str, int, str], EarlyAnswer] = {}

    def __call__(self, port: int | None, path: str, header: Header) -> EarlyAnswer | None:
        if (port is not None and port == self._admin_port) or self._intake.registry.open:
            return None
        signal = self._http.get(path)
        content_type = (header(b"content-type") or b"").split(b";", 1)[0].strip().lower()
        if signal is not None:
            if content_type in _PROTOBUF_TYPES:
                transport = "http/protobuf"
            elif content_type == _JSON:
                transport = "http/json"
            else:
                return None  # the app answers 415 (or a CORS preflight)
        else:
            signal = self._grpc.get(path)
            if signal is None or content_type not in _GRPC_TYPES:
                return None  # Connect, gRPC-web, health: served by the app
            transport = "grpc"
        names = ("authorization", "x-api-key")
        headers = {n: v.decode("latin-1") for n in names if (v := header(n.encode())) is not None}
        try:
            self._intake.registry.authenticate(headers, signal)
        except GatewayError as error:
            self._intake.refused(signal, transport, error)
            return self._answer(transport, error)
        return None

    def _answer(self, transport: str, error: GatewayError) -> EarlyAnswer:
        # The few (transport, status, message) combinations are built once each.
        key = (transport, error.http_status, error.message)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = _build(transport, error)
        return answer


def _build(transport: str, error: GatewayError) -> EarlyAnswer:
    if transport == "grpc":
        return EarlyAnswer(
            200,
            [
                (b"content-type", b"application/grpc"),
                (b"grpc-status", str(int(error.grpc_code)).encode()),
                (b"grpc-message", quote(error.message, safe=" ").encode()),
            ],
            trailers_only=True,
        )
    if transport == "http/json":
        body = json.dumps({"code": int(error.grpc_code), "message": error.message}).encode()
        content_type = _JSON
    else:
        status = status_pb2.Status(code=int(error.grpc_code), message=error.message)
        body = bytes(status.SerializeToString())
        content_type = b"application/x-protobuf"
    return EarlyAnswer(
        error.http_status,
        [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        body,
    )
