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

from gateway.otlp.signals import Signal

# Every bytes field of the OTLP messages that OTLP/JSON writes as hex, under both key spellings.
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


# Deepest JSON nesting (objects and arrays) accepted. json_format parses recursively, a few Python
# frames per level, so a document nested ~1000 deep ended in RecursionError (a 500). Protobuf
# itself refuses messages nested deeper than 100 (an AnyValue holds ~31 kvlist or ~48 array levels
# before that), and each message level is at most two JSON levels (an object in an array), so 200
# refuses nothing protobuf would accept.
MAX_JSON_DEPTH = 200


class OTLPJSONError(ValueError):
    """The body is not a valid OTLP/JSON export request."""


def _too_deep() -> OTLPJSONError:
    return OTLPJSONError(
        f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels; OTLP needs far fewer "
        "(flatten deeply nested attribute values)"
    )


def loads(body: bytes | bytearray | memoryview) -> Any:
    """json.loads with the nesting bounded: OTLPJSONError for invalid JSON or nesting deeper than
    MAX_JSON_DEPTH. json.loads itself stops at the interpreter's recursion limit (~1000 levels)
    with a RecursionError; everything shallower is measured by an iterative walk of the result,
    before anything recursive (json_format) sees it."""
    doc = _parse(body)
    _map_ids(doc, None)
    return doc


def _parse(body: bytes | bytearray | memoryview) -> Any:
    try:
        return json.loads(bytes(body))
    except RecursionError:
        raise _too_deep() from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise OTLPJSONError(f"body is not valid JSON: {exc}") from None


def _map_ids(node: Any, convert: Callable[[str, str], str] | None) -> None:
    """Replace every id string in a decoded JSON document by convert(key, value), in place (with
    None: only check the depth). Iterative, and refuses nesting deeper than MAX_JSON_DEPTH."""
    stack: list[tuple[Any, int]] = [(node, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str):
                    if convert is not None and key in _ID_KEYS:
                        node[key] = convert(key, value)
                elif isinstance(value, (dict, list)):
                    stack.append((value, depth + 1))
        elif isinstance(node, list):
            for value in node:
                if isinstance(value, (dict, list)):
                    stack.append((value, depth + 1))


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
    doc = _parse(body)
    if not isinstance(doc, dict):
        raise OTLPJSONError("body must be a JSON object")
    _map_ids(doc, _hex_to_base64)
    message = signal.request_type()
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except (
        json_format.ParseError,
        ValueError,
        TypeError,
        DecodeError,
        binascii.Error,
        RecursionError,
    ) as exc:
        raise OTLPJSONError(f"not a valid OTLP/JSON {signal.name} request: {exc}") from None
    return message.SerializeToString()


def canonical_json_to_proto(signal: Signal, body: bytes | bytearray | memoryview) -> bytes:
    """Parse an export request in protobuf's canonical JSON (base64 ids: Connect and gRPC with
    the JSON codec) and return it as protobuf bytes; unknown fields are ignored as OTLP asks."""
    message = signal.request_type()
    try:
        json_format.ParseDict(loads(body), message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        if isinstance(exc, OTLPJSONError):
            raise
        raise OTLPJSONError(
            f"the body is not valid JSON for {message.DESCRIPTOR.name}: {exc}"
        ) from None
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
