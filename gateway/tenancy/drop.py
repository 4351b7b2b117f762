"""Drop rules: remove spans or log records that match, e.g. health-check spans of kube-probe.

This needs a decode (and re-encode), so only requests of tenants that have rules pay for it."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from gateway.config import DropRule
from gateway.otlp import spans
from gateway.otlp.signals import Signal

Predicate = Callable[[Any, dict[str, str]], bool]


def _attribute_value(value: Any) -> str | None:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return str(value.string_value)
    if kind in ("int_value", "double_value", "bool_value"):
        return (
            str(getattr(value, kind)).lower() if kind == "bool_value" else str(getattr(value, kind))
        )
    return None


def _attributes(kvs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in kvs:
        v = _attribute_value(kv.value)
        if v is not None:
            out[kv.key] = v
    return out


def _predicate(rule: DropRule) -> Predicate:
    if rule.span_name is not None:
        name = rule.span_name
        return lambda item, _res: bool(item.name == name)
    key = rule.attribute or ""
    test: Callable[[str], bool]
    if rule.equals is not None:
        expected = rule.equals
        test = lambda v: v == expected  # noqa: E731
    elif rule.starts_with is not None:
        prefix = rule.starts_with
        test = lambda v: v.startswith(prefix)  # noqa: E731
    else:
        pattern = re.compile(rule.matches or "")
        test = lambda v: pattern.search(v) is not None  # noqa: E731

    def predicate(item: Any, resource_attrs: dict[str, str]) -> bool:
        for kv in item.attributes:
            if kv.key == key:
                v = _attribute_value(kv.value)
                return v is not None and test(v)
        v = resource_attrs.get(key)
        return v is not None and test(v)

    return predicate


class DropFilter:
    def __init__(self, rules: Sequence[DropRule]) -> None:
        self._by_signal: dict[str, list[Predicate]] = {}
        for rule in rules:
            self._by_signal.setdefault(rule.signal, []).append(_predicate(rule))

    def applies(self, signal: Signal) -> bool:
        return signal.name in self._by_signal

    def apply(self, signal: Signal, payload: bytes) -> tuple[bytes, int]:
        """Return the request without matching items, and how many were dropped; raises
        spans.UndecodableError when the items cannot be decoded. Nested attribute values
        (arrays, key-value lists) are never decoded, so any depth of them is fine, and they are
        forwarded byte for byte."""
        predicates = self._by_signal.get(signal.name)
        if not predicates:
            return payload, 0
        current: list[Any] = [None, {}]  # the entry's Resource and its attributes, read once

        def matches(item: Any, resource: Any) -> bool:
            if current[0] is not resource:
                current[0], current[1] = resource, _attributes(resource.attributes)
            attrs: dict[str, str] = current[1]
            return any(p(item, attrs) for p in predicates)

        return spans.filter_items(payload, signal.name, matches)
