"""Reading YAML into the value objects, driven by their fields: `${VAR}` interpolation, sizes and
durations, unknown keys, and errors that name the file, the line and the key."""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Generic, TypeVar

import yaml

from gateway.config.model import (
    _CONTROL,
    _HEADER_NAME,
    _HEADER_VALUE_BAD,
    ConfigError,
    Kind,
    Spec,
)

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str) -> float | None:
    """A duration's seconds (`500ms`, `10s`, `5m`, `1h`, `30`), or None when `text` is none."""
    m = _DURATION.match(text)
    return None if m is None else float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "s").lower()]


@dataclass(frozen=True, slots=True)
class SchemaField:
    """One field of a value object as the YAML reader sees it."""

    name: str
    kind: Kind  # resolved: never ""
    spec: Spec
    hint: Any  # the annotation, evaluated
    default: Any  # MISSING: required
    default_factory: Any  # MISSING or a callable

    def default_value(self) -> Any:
        """The default; None for a required field (reading it then says "is required")."""
        if self.default_factory is not MISSING:
            return self.default_factory()
        return None if self.default is MISSING else self.default


def _kind_of(hint: Any) -> Kind:
    if hint is str:
        return "text"
    if hint == str | None:
        return "opt_text"
    if hint is bool:
        return "flag"
    if hint is int:
        return "integer"
    if hint == tuple[str, ...]:
        return "str_list"
    if hint in (Mapping[str, str], dict[str, str]):
        return "str_map"
    if isinstance(hint, type) and is_dataclass(hint):
        return "section"
    return ""


_schemas: dict[type, dict[str, SchemaField]] = {}


def schema(cls: type) -> dict[str, SchemaField]:
    """The fields of a config value object, in order, with how each is read from YAML."""
    if cls in _schemas:
        return _schemas[cls]
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        spec: Spec = f.metadata.get("config", Spec())
        kind = spec.kind or _kind_of(hints[f.name])
        if not kind:
            raise TypeError(f"{cls.__name__}.{f.name}: give its kind in field(metadata=...)")
        out[f.name] = SchemaField(f.name, kind, spec, hints[f.name], f.default, f.default_factory)
    _schemas[cls] = out
    return out


class _Doc:
    """Parsed YAML plus the line of every key path, for error messages."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.lines: dict[str, int] = {}

    def error(self, path: str, problem: str) -> ConfigError:
        line = self.lines.get(path)
        parent = path
        while line is None and parent:  # a missing key: point at the mapping it belongs in
            parent = parent.rpartition(".")[0]
            line = self.lines.get(parent)
        where = f"{self.source}:{line}" if line else self.source
        # A key may hold a newline or an escape sequence: shown escaped, one message one line.
        shown = _CONTROL.sub(lambda m: repr(m.group())[1:-1], path)
        return ConfigError(f"{where}: {shown or 'top level'}: {problem}")

    def build(self, node: yaml.Node, path: str, loader: yaml.SafeLoader) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node)
                if not isinstance(key, str):
                    self.lines[path] = key_node.start_mark.line + 1
                    raise self.error(path, f"keys must be strings, got {key!r}")
                sub = f"{path}.{key}" if path else key
                if key in out:
                    self.lines[sub] = key_node.start_mark.line + 1
                    raise self.error(sub, "key appears twice")
                out[key] = self.build(value_node, sub, loader)
                # A problem with `key` is reported at the key's line, also when its value is a
                # block that starts on the next line.
                self.lines[sub] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, f"{path}[{i}]", loader) for i, v in enumerate(node.value)]
        value = loader.construct_object(node)
        if isinstance(value, str):
            value = self.interpolate(value, path)
        return value

    def interpolate(self, value: str, path: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            value = self.env.get(name)
            if default is not None and not value:  # as in the shell: unset or empty
                return default
            if value is not None:
                return value
            raise self.error(
                path,
                f"environment variable {name} is not set (use ${{{name}:-default}} for a default)",
            )

        return _VAR.sub(sub, value)


T = TypeVar("T")
U = TypeVar("U")


class _Section(Generic[T]):
    """Typed access to one mapping of the document; given a schema (a value object's class), its
    keys are checked against the schema's and its fields are read as the schema says."""

    def __init__(self, doc: _Doc, data: Any, path: str, schema_: type[T] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise doc.error(path, f"must be a mapping, got {type(data).__name__}")
        self.doc, self.data, self.path = doc, data, path
        self.schema = schema_
        if schema_ is not None:
            self.known(*(f.name for f in schema(schema_).values() if f.kind != "not_a_key"))

    def _p(self, key: str) -> str:
        if not key:
            return self.path
        return f"{self.path}.{key}" if self.path else key

    def known(self, *keys: str) -> None:
        for key in self.data:
            if key not in keys:
                raise self.doc.error(
                    self._p(key), f"unknown key; expected one of: {', '.join(keys)}"
                )

    def error(self, key: str, problem: str) -> ConfigError:
        return self.doc.error(self._p(key), problem)

    def section(self, key: str, schema_: type[U]) -> _Section[U]:
        return _Section(self.doc, self.data.get(key), self._p(key), schema_)

    def mapping(self, key: str) -> _Section[Any]:
        """A mapping whose keys are names (of backends, tenants), not the keys of a schema."""
        return _Section(self.doc, self.data.get(key), self._p(key))

    # -- the schema's fields --

    def get(self, name: str, default: Any = MISSING) -> Any:
        """Field `name` of the schema as its kind says; when absent, `default` if given, else the
        schema's default."""
        assert self.schema is not None
        f = schema(self.schema)[name]
        if default is MISSING:
            default = f.default_value()
        choices, kind = f.spec.choices, f.kind
        if kind == "text":
            return self.text(name, default, choices)
        if kind == "opt_text":
            return self.opt_text(name)
        if kind == "flag":
            return self.flag(name, default)
        if kind == "integer":
            return self.integer(name, default, f.spec.minimum)
        if kind == "str_list":
            return self.str_list(name, default, choices)
        if kind == "str_map":
            return self.str_map(name)
        if kind == "headers":
            return self.header_map(name)
        if kind == "section":
            return self.section(name, f.hint).read()
        if kind == "size":
            if default is None and name not in self.data:  # optional: None when absent
                return None
            size = self.size(name, default)
            return float(size) if f.hint in (float, float | None) else size
        if kind == "duration":
            return self.duration(name, default)
        if kind == "positive_duration":
            value = self.duration(name, default)
            if value <= 0:
                raise self.error(name, f"must be a duration above 0 such as 30s, got {value!r}")
            return value
        if kind == "rate":
            return self.rate(name)
        raise TypeError(f"{self.schema.__name__}.{name} is read by hand: give it to read()")

    def read(self, defaults: Mapping[str, Any] | None = None, /, **given: Any) -> T:
        """The value object: the `given` fields as they are (the ones read by hand, with their
        checks), every other one read with get() in field order (absent: its default in
        `defaults`, else the schema's)."""
        assert self.schema is not None
        values = dict(given)
        for name in schema(self.schema):
            if name not in values:
                values[name] = self.get(name, (defaults or {}).get(name, MISSING))
        return self.schema(**values)

    # -- kinds of value --

    def text(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.error(key, "is required")
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if self.data.get(key) is not None else None

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"must be a whole number >= {minimum}, got {value!r}")
        return value

    def size(self, key: str, default: int) -> int:
        """Bytes, as a number or with a unit: 16MiB, 4MB, 512KiB."""
        value = self.data.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        m = _SIZE.match(str(value))
        if not m:
            raise self.error(
                key, f"must be a size in bytes such as 16777216 or 16MiB, got {value!r}"
            )
        unit = (m.group(2) or "").lower()
        base = 1024 if "i" in unit else 1000
        power = "bkmgt".index(unit[0]) if unit else 0
        result = int(float(m.group(1)) * base**power)
        if result <= 0:
            raise self.error(key, f"must be more than 0 bytes, got {value!r}")
        return result

    def duration(self, key: str, default: float) -> float:
        """Seconds, as a number or with a unit: 500ms, 10s, 5m."""
        value = self.data.get(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        result = seconds(str(value))
        if result is None:
            raise self.error(key, f"must be a duration such as 10s, 500ms or 5m, got {value!r}")
        return result

    def rate(self, key: str) -> float | None:
        """A positive number per second, or None when the key is absent."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.error(key, f"must be a number above 0 (per second), got {value!r}")
        return float(value)

    def str_list(
        self, key: str, default: tuple[str, ...] = (), choices: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of strings, got {value!r}")
        for i, item in enumerate(value):
            if choices and item not in choices:
                raise self.doc.error(
                    f"{self._p(key)}[{i}]", f"must be one of {', '.join(choices)}; got {item!r}"
                )
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            raise self.error(key, "must be a mapping of names to strings")
        out = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise self.doc.error(f"{self._p(key)}.{k}", f"must be a string, got {v!r}")
            out[k] = str(v)
        return out

    def header_map(self, key: str) -> dict[str, str]:
        """str_map for HTTP headers: names are tokens, values hold no CR, LF or other control
        characters (also after ${ENV} substitution), so no header can be forged downstream."""
        out = self.str_map(key)
        for k, v in out.items():
            if not _HEADER_NAME.match(k):
                raise self.doc.error(
                    f"{self._p(key)}.{k}",
                    f"{k!r} is not a valid header name (letters, digits and !#$%&'*+.^_`|~-)",
                )
            bad = _HEADER_VALUE_BAD.search(v)
            if bad is not None:
                raise self.doc.error(
                    f"{self._p(key)}.{k}",
                    f"the value holds the control character {bad.group()!r} (at {bad.start()}); "
                    "header values may not contain CR, LF or other control characters "
                    "(check the environment variable it comes from)",
                )
        return out
