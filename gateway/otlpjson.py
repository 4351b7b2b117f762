"""OTLP/JSON <-> protobuf bytes.

OTLP/JSON differs from the canonical protobuf JSON mapping in one way that matters: trace and span
ids are hex strings, not base64. `json_format` alone would read a hex id as base64 and silently
produce a wrong id, so ids are converted here on the way in and on the way out.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from .signals import Signal

# Every bytes field of the OTLP messages that OTLP/JSON writes as hex, under both key spellings.
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class OTLPJSONError(ValueError):
    """The body is not a valid OTLP/JSON export request."""


def _map_ids(node: Any, convert: Callable[[str, str], str]) -> None:
    """Replace every id string in a decoded JSON document by convert(key, value), in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = convert(key, value)
            elif isinstance(value, (dict, list)):
                _map_ids(value, convert)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, (dict, list)):
                _map_ids(value, convert)


def _hex_to_base64(key: str, value: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(value)).decode("ascii")
    except ValueError:
        raise OTLPJSONError(f"{key} must be a hex string, got {value[:40]!r}") from None


def _base64_to_hex(key: str, value: str) -> str:
    return base64.b64decode(value).hex()


def json_to_proto(signal: Signal, body: bytes) -> bytes:
    """Parse an OTLP/JSON export request and return it as protobuf bytes."""
    if not body.strip():
        return b""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OTLPJSONError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise OTLPJSONError("body must be a JSON object")
    _map_ids(doc, _hex_to_base64)
    message = signal.request_type()
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, DecodeError, binascii.Error) as exc:
        raise OTLPJSONError(f"not a valid OTLP/JSON {signal.name} request: {exc}") from None
    return message.SerializeToString()


def message_to_json_dict(signal: Signal, data: bytes) -> dict[str, Any]:
    """Decode protobuf bytes of an export request into an OTLP/JSON document."""
    message = signal.request_type.FromString(data)
    doc: dict[str, Any] = json_format.MessageToDict(message, use_integers_for_enums=True)
    _map_ids(doc, _base64_to_hex)
    return doc


def proto_to_json(signal: Signal, data: bytes) -> bytes:
    """Re-encode protobuf bytes of an export request as OTLP/JSON."""
    return json.dumps(message_to_json_dict(signal, data), separators=(",", ":")).encode()
