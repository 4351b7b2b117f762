"""The gateway's configuration: one YAML file, `${VAR}` interpolation, errors that name the key and
the line. Everything is parsed into small frozen value objects before anything starts."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_REQUEST_BYTES, Limits

PROTOCOLS = ("grpc", "http/protobuf", "http/json", "file")
COMPRESSIONS = ("none", "gzip")
DEFAULT_LISTEN = ("0.0.0.0:4317", "0.0.0.0:4318")
# open mode (no tenants configured): everything is the default tenant's
DEFAULT_TENANT = "default"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file, line and key."""


@dataclass(frozen=True, slots=True)
class ClientTLS:
    ca_file: str | None = None
    insecure: bool = False  # skip certificate verification (http/* only)


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    protocol: str
    endpoint: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    compression: str = "gzip"
    compression_level: int = 1
    timeout: float = 10.0
    tls: ClientTLS = ClientTLS()
    concurrency: int = 4
    queue_max_bytes: int = 64 * 1024 * 1024
    # file backend
    path: str = ""
    rotate_bytes: int = 100 * 1024 * 1024
    max_files: int = 10


@dataclass(frozen=True, slots=True)
class ServerTLS:
    cert: str
    key: str | None = None  # None: the cert PEM holds the key too


@dataclass(frozen=True, slots=True)
class Cors:
    allowed_origins: tuple[str, ...] = ()
    allowed_headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryConfig:
    initial_interval: float = 0.5
    max_interval: float = 30.0
    max_elapsed: float = 300.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    limits: Limits = field(default_factory=Limits)
    backends: Mapping[str, BackendConfig] = field(default_factory=dict)
    service_backends: tuple[str, ...] = ()
    tls: ServerTLS | None = None
    cors: Cors = Cors()
    retry: RetryConfig = RetryConfig()
    server: str = "hypercorn"
    timeout_keep_alive: float = 75.0
    shutdown_timeout: float = 10.0
    source: str = "<defaults>"


def embedded_default(data_dir: str = "./otlp-data") -> GatewayConfig:
    """What `otlp-gateway serve` runs with no config: local listeners and a file backend."""
    archive = BackendConfig(name="local-files", protocol="file", path=data_dir, compression="none")
    return GatewayConfig(
        listen=("127.0.0.1:4317", "127.0.0.1:4318"),
        backends={"local-files": archive},
        service_backends=("local-files",),
        source="<embedded default>",
    )


# ---------------------------------------------------------------------------------------------
# Loading

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


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
        return ConfigError(f"{where}: {path or 'top level'}: {problem}")

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


class _Section:
    """Typed access to one mapping of the document."""

    def __init__(self, doc: _Doc, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise doc.error(path, f"must be a mapping, got {type(data).__name__}")
        self.doc, self.data, self.path = doc, data, path

    def _p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def known(self, *keys: str) -> None:
        for key in self.data:
            if key not in keys:
                raise self.doc.error(
                    self._p(key), f"unknown key; expected one of: {', '.join(keys)}"
                )

    def error(self, key: str, problem: str) -> ConfigError:
        return self.doc.error(self._p(key), problem)

    def section(self, key: str) -> _Section:
        return _Section(self.doc, self.data.get(key), self._p(key))

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
        m = _DURATION.match(str(value))
        if not m:
            raise self.error(key, f"must be a duration such as 10s, 500ms or 5m, got {value!r}")
        factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[(m.group(2) or "s").lower()]
        return float(m.group(1)) * factor

    def str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of strings, got {value!r}")
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


def _check_listen(top: _Section, addresses: tuple[str, ...]) -> None:
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise top.error("listen", f"{address!r} is not host:port (for example 0.0.0.0:4317)")


def _backend(parent: _Section, name: str) -> BackendConfig:
    b = parent.section(name)
    b.known(
        "protocol",
        "endpoint",
        "headers",
        "compression",
        "compression_level",
        "timeout",
        "tls",
        "concurrency",
        "queue",
        "path",
        "rotate_bytes",
        "max_files",
    )
    protocol = b.text("protocol", choices=PROTOCOLS)
    tls_section = b.section("tls")
    tls_section.known("ca_file", "insecure")
    tls = ClientTLS(
        ca_file=tls_section.opt_text("ca_file"), insecure=tls_section.flag("insecure", False)
    )
    queue = b.section("queue")
    queue.known("max_bytes")
    endpoint = ""
    path = ""
    if protocol == "file":
        path = b.text("path")
    else:
        endpoint = b.text("endpoint")
        if not re.match(r"^https?://[^/\s]+", endpoint):
            raise b.error(
                "endpoint", f"must be a URL starting with http:// or https://, got {endpoint!r}"
            )
        if protocol == "grpc" and tls.insecure:
            raise b.error(
                "tls", "insecure is not supported for grpc backends; give tls.ca_file instead"
            )
        if protocol == "grpc" and endpoint.count("/") > 2 and not endpoint.endswith("/"):
            raise b.error("endpoint", "a grpc endpoint is scheme://host:port, without a path")
    if tls.ca_file and not Path(tls.ca_file).is_file():
        raise tls_section.error("ca_file", f"file {tls.ca_file!r} does not exist")
    return BackendConfig(
        name=name,
        protocol=protocol,
        endpoint=endpoint,
        headers=b.str_map("headers"),
        compression=b.text("compression", "none" if protocol == "file" else "gzip", COMPRESSIONS),
        compression_level=b.integer("compression_level", 1, minimum=1),
        timeout=b.duration("timeout", 10.0),
        tls=tls,
        concurrency=b.integer("concurrency", 4, minimum=1),
        queue_max_bytes=queue.size("max_bytes", 64 * 1024 * 1024),
        path=path,
        rotate_bytes=b.size("rotate_bytes", 100 * 1024 * 1024),
        max_files=b.integer("max_files", 10, minimum=1),
    )


def parse(
    text: str, source: str = "<config>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    doc = _Doc(source, os.environ if env is None else env)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = doc.build(node, "", loader) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    finally:
        loader.dispose()
    top = _Section(doc, data, "")
    top.known(
        "listen",
        "limits",
        "backends",
        "service_backends",
        "tls",
        "cors",
        "retry",
        "server",
        "timeout_keep_alive",
        "shutdown_timeout",
    )
    listen = top.str_list("listen", DEFAULT_LISTEN)
    if not listen:
        raise top.error("listen", "needs at least one host:port")
    _check_listen(top, listen)

    lim = top.section("limits")
    lim.known("max_request_bytes", "max_body_bytes")
    limits = Limits(
        max_request_bytes=lim.size("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES),
        max_body_bytes=lim.size("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
    )

    backends_section = top.section("backends")
    backends = {name: _backend(backends_section, name) for name in backends_section.data}
    service_backends = top.str_list("service_backends")
    for i, name in enumerate(service_backends):
        if name not in backends:
            raise doc.error(
                f"service_backends[{i}]",
                f"no backend named {name!r}; defined backends: {', '.join(backends) or 'none'}",
            )

    tls = None
    if "tls" in top.data:
        t = top.section("tls")
        t.known("cert", "key")
        tls = ServerTLS(cert=t.text("cert"), key=t.opt_text("key"))
        for key, value in (("cert", tls.cert), ("key", tls.key)):
            if value and not Path(value).is_file():
                raise t.error(key, f"file {value!r} does not exist")

    c = top.section("cors")
    c.known("allowed_origins", "allowed_headers")
    r = top.section("retry")
    r.known("initial_interval", "max_interval", "max_elapsed")
    return GatewayConfig(
        listen=listen,
        limits=limits,
        backends=backends,
        service_backends=service_backends,
        tls=tls,
        cors=Cors(c.str_list("allowed_origins"), c.str_list("allowed_headers")),
        retry=RetryConfig(
            initial_interval=r.duration("initial_interval", 0.5),
            max_interval=r.duration("max_interval", 30.0),
            max_elapsed=r.duration("max_elapsed", 300.0),
        ),
        server=top.text("server", "hypercorn", ("hypercorn", "uvicorn")),
        timeout_keep_alive=top.duration("timeout_keep_alive", 75.0),
        shutdown_timeout=top.duration("shutdown_timeout", 10.0),
        source=source,
    )


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> GatewayConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror}") from None
    return parse(text, str(p), env)
