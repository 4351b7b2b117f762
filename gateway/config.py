"""The gateway's configuration: one YAML file, `${VAR}` interpolation, errors that name the key and
the line. Everything is parsed into small frozen value objects before anything starts."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

PROTOCOLS = ("grpc", "http/protobuf", "http/json", "file")
SIGNAL_NAMES = ("traces", "metrics", "logs", "profiles")
KEY_PREFIX = "sha256:"
# \Z, not $: `$` also matches before a trailing newline, which let "alpha\n" through.
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
# RFC 9110: a field name is a token; a value has no CR, LF, NUL or other controls but HTAB.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # shown escaped in messages
COMPRESSIONS = ("none", "gzip")
HTTP_CLIENTS = ("pyqwest", "httpx")
DEFAULT_LISTEN = ("0.0.0.0:4317", "0.0.0.0:4318")
# open mode (no tenants configured): everything is the default tenant's
DEFAULT_TENANT = "default"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file, line and key."""


# -- request limits (enforced by gateway/ingress/limits.py) --

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # after decompression
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # on the wire, before decompression
DEFAULT_MAX_INFLIGHT_BYTES = 256 * 1024 * 1024
DEFAULT_INFLIGHT_SHARE = 0.5  # of max_inflight_bytes, per tenant
DEFAULT_BODY_TIMEOUT = 30.0  # seconds between two reads of a body (nginx: 60 s)
DEFAULT_HEADER_TIMEOUT = 30.0  # seconds for a whole HTTP/1.1 request head (nginx: 60 s)


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # request bytes being read and processed at once, all transports together; above it new
    # requests get 429 / RESOURCE_EXHAUSTED before their body is read
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    # what one tenant may hold of them (bytes; None: DEFAULT_INFLIGHT_SHARE of the budget), so
    # that one tenant's slow or huge requests cannot get every other tenant a 429
    max_inflight_share: int | None = None
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    @property
    def inflight_share(self) -> int:
        if self.max_inflight_share is not None:
            return min(self.max_inflight_share, self.max_inflight_bytes)
        return int(self.max_inflight_bytes * DEFAULT_INFLIGHT_SHARE)


@dataclass(frozen=True, slots=True)
class ClientTLS:
    ca_file: str | None = None
    insecure: bool = False  # skip certificate verification (http/* only)


MEMORY_QUEUE_BYTES = 64 * 1024 * 1024
DURABLE_QUEUE_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class QueueConfig:
    durable: bool = False
    directory: str = "./otlp-queue"  # durable queues live in <directory>/<backend>[@<tenant>]
    max_bytes: int = MEMORY_QUEUE_BYTES  # per destination (disk bytes when durable)


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
    # http/* only: the HTTP client library. pyqwest (Rust, reqwest) costs a third of httpx's CPU
    # per export; httpx is the one that can skip certificate verification (tls.insecure).
    client: str = "pyqwest"
    concurrency: int = 4
    queue: QueueConfig = QueueConfig()
    batch_max_bytes: int = 4 * 1024 * 1024  # queued requests merge up to this; bigger ones split
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
class DropRule:
    """Drop spans (signal traces) or log records (signal logs) that match: by span name, or by an
    attribute (of the item, else of its resource) that equals / starts with / matches a value."""

    signal: str = "traces"
    span_name: str | None = None
    attribute: str | None = None
    equals: str | None = None
    starts_with: str | None = None
    matches: str | None = None  # a regular expression, searched


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    max_request_bytes: int | None = None  # after decompression; under limits.max_request_bytes
    items_per_second: float | None = None
    bytes_per_second: float | None = None
    burst_seconds: float = 2.0  # a bucket holds this many seconds of the rate


@dataclass(frozen=True, slots=True)
class RedConfig:
    """RED metrics from a tenant's spans (opt-in: it decodes the tenant's trace requests)."""

    span_kinds: tuple[str, ...] = ()  # empty: every kind
    max_series: int = 1000  # (service, span name) pairs per tenant; more count as "_other_"


@dataclass(frozen=True, slots=True)
class TenantConfig:
    name: str
    api_keys: tuple[str, ...] = ()  # sha256 hex digests of the keys
    backends: tuple[str, ...] = ()  # the tenant's own backends, every allowed signal
    signal_backends: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    signals: tuple[str, ...] = SIGNAL_NAMES
    attributes: Mapping[str, str] = field(default_factory=dict)
    quota: QuotaConfig = QuotaConfig()
    drop: tuple[DropRule, ...] = ()
    red_metrics: RedConfig | None = None


DEFAULT_ADMIN_LISTEN = "127.0.0.1:9464"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin listener: /metrics, /healthz, /readyz (no key), the admin API and the status
    page (admin key)."""

    listen: str | None = DEFAULT_ADMIN_LISTEN  # None: no admin listener
    api_key: str | None = None  # the key itself or sha256:<hex>; None: admin API refused

    @property
    def port(self) -> int | None:
        return None if self.listen is None else int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "text"  # text | json
    level: str = "info"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    limits: Limits = field(default_factory=Limits)
    backends: Mapping[str, BackendConfig] = field(default_factory=dict)
    service_backends: tuple[str, ...] = ()
    tls: ServerTLS | None = None
    cors: Cors = Cors()
    retry: RetryConfig = RetryConfig()
    server: str = "uvicorn"
    timeout_keep_alive: float = 75.0
    shutdown_timeout: float = 10.0
    # None: no tenants section, the gateway runs open (every request is DEFAULT_TENANT's)
    tenants: Mapping[str, TenantConfig] | None = None
    drop: tuple[DropRule, ...] = ()  # applies to every tenant
    reload_interval: float = 2.0  # how often the config file is checked for changes; 0: never
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    workers: int = 1  # processes serving the same ports (SO_REUSEPORT), each with its own queues
    # whose requests get every item decoded before they are acknowledged (gateway/otlp/validate.py)
    validate: str = "auto"
    worker: int | None = None  # this process's index, when workers > 1
    pinned: tuple[str, ...] = ()  # fields set on the command line: a reload keeps them
    source: str = "<defaults>"
    path: str | None = None  # the file it came from, for reloads


DEV_TENANT = "dev"


def embedded_default(
    data_dir: str = "./otlp-data",
    dev_key_digest: str | None = None,
    admin_key_digest: str | None = None,
) -> GatewayConfig:
    """What `otlp-gateway serve` runs with no config: local listeners, a file backend, and (given
    key digests) one `dev` tenant and the admin API."""
    archive = BackendConfig(name="local-files", protocol="file", path=data_dir, compression="none")
    tenants = None
    if dev_key_digest is not None:
        tenants = {DEV_TENANT: TenantConfig(name=DEV_TENANT, api_keys=(dev_key_digest,))}
    return GatewayConfig(
        listen=("127.0.0.1:4317", "127.0.0.1:4318"),
        backends={"local-files": archive},
        service_backends=("local-files",),
        tenants=tenants,
        admin=AdminConfig(api_key=admin_key_digest),
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


class _Section:
    """Typed access to one mapping of the document."""

    def __init__(self, doc: _Doc, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise doc.error(path, f"must be a mapping, got {type(data).__name__}")
        self.doc, self.data, self.path = doc, data, path

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

    def rate(self, key: str) -> float | None:
        """A positive number per second, or None when the key is absent."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.error(key, f"must be a number above 0 (per second), got {value!r}")
        return float(value)

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


def _check_listen(top: _Section, addresses: tuple[str, ...]) -> None:
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise top.error("listen", f"{address!r} is not host:port (for example 0.0.0.0:4317)")


def _queue(section: _Section, base: QueueConfig) -> QueueConfig:
    section.known("durable", "directory", "max_bytes")
    durable = section.flag("durable", base.durable)
    default_size = base.max_bytes
    if "max_bytes" not in section.data and durable != base.durable:
        default_size = DURABLE_QUEUE_BYTES if durable else MEMORY_QUEUE_BYTES
    return QueueConfig(
        durable=durable,
        directory=section.text("directory", base.directory),
        max_bytes=section.size("max_bytes", default_size),
    )


def _backend(parent: _Section, name: str, queue_base: QueueConfig) -> BackendConfig:
    b = parent.section(name)
    b.known(
        "protocol",
        "endpoint",
        "headers",
        "compression",
        "compression_level",
        "timeout",
        "tls",
        "client",
        "concurrency",
        "queue",
        "batch_max_bytes",
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
    queue = _queue(b.section("queue"), queue_base)
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
    client = b.text("client", "httpx" if tls.insecure else "pyqwest", HTTP_CLIENTS)
    if "client" in b.data and not protocol.startswith("http/"):
        raise b.error("client", "chooses the HTTP client of http/* backends only")
    if client == "pyqwest" and tls.insecure:
        raise b.error(
            "client", "pyqwest always verifies certificates; use client: httpx with tls.insecure"
        )
    return BackendConfig(
        name=name,
        protocol=protocol,
        endpoint=endpoint,
        headers=b.header_map("headers"),
        compression=b.text("compression", "none" if protocol == "file" else "gzip", COMPRESSIONS),
        compression_level=b.integer("compression_level", 1, minimum=1),
        timeout=b.duration("timeout", 10.0),
        tls=tls,
        client=client,
        concurrency=b.integer("concurrency", 4, minimum=1),
        queue=queue,
        batch_max_bytes=b.size("batch_max_bytes", 4 * 1024 * 1024),
        path=path,
        rotate_bytes=b.size("rotate_bytes", 100 * 1024 * 1024),
        max_files=b.integer("max_files", 10, minimum=1),
    )


def _drop_rules(parent: _Section, key: str) -> tuple[DropRule, ...]:
    value = parent.data.get(key) or []
    if not isinstance(value, list):
        raise parent.error(key, "must be a list of rules such as {span_name: GET /healthz}")
    rules = []
    for i in range(len(value)):
        r = _Section(parent.doc, value[i], f"{parent._p(key)}[{i}]")
        r.known("signal", "span_name", "attribute", "equals", "starts_with", "matches")
        signal = r.text("signal", "traces", ("traces", "logs"))
        rule = DropRule(
            signal=signal,
            span_name=r.opt_text("span_name"),
            attribute=r.opt_text("attribute"),
            equals=r.opt_text("equals"),
            starts_with=r.opt_text("starts_with"),
            matches=r.opt_text("matches"),
        )
        tests = [t for t in (rule.equals, rule.starts_with, rule.matches) if t is not None]
        if rule.span_name is None and rule.attribute is None:
            raise r.error("", "needs span_name or attribute")
        if rule.span_name is not None and signal != "traces":
            raise r.error("span_name", "applies to traces only")
        if rule.attribute is not None and len(tests) != 1:
            raise r.error("attribute", "needs exactly one of equals, starts_with, matches")
        if rule.matches is not None:
            try:
                re.compile(rule.matches)
            except re.error as exc:
                raise r.error("matches", f"is not a valid regular expression: {exc}") from None
        rules.append(rule)
    return tuple(rules)


def _backend_names(
    section: _Section, key: str, backends: Mapping[str, BackendConfig]
) -> tuple[str, ...]:
    names = section.str_list(key)
    for i, name in enumerate(names):
        if name not in backends:
            raise section.doc.error(
                f"{section._p(key)}[{i}]",
                f"no backend named {name!r}; defined backends: {', '.join(backends) or 'none'}",
            )
    return names


def _tenant(
    parent: _Section, name: str, backends: Mapping[str, BackendConfig], seen: dict[str, str]
) -> TenantConfig:
    t = parent.section(name)
    if not _TENANT_NAME.match(name):
        raise t.error(
            "",
            f"tenant names are letters, digits, '.', '_' and '-' (at most 63); got {name!r}",
        )
    t.known(
        "api_keys",
        "backends",
        "signal_backends",
        "signals",
        "attributes",
        "quota",
        "drop",
        "red_metrics",
    )
    keys = []
    for i, key in enumerate(t.str_list("api_keys")):
        digest = key.removeprefix(KEY_PREFIX).lower()
        if not key.startswith(KEY_PREFIX) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise parent.doc.error(
                f"{t._p('api_keys')}[{i}]",
                "must be sha256:<64 hex digits>, as printed by `otlp-gateway keys new TENANT`"
                " (never the key itself)",
            )
        if digest in seen:
            raise parent.doc.error(
                f"{t._p('api_keys')}[{i}]", f"the same key is also listed for tenant {seen[digest]}"
            )
        seen[digest] = name
        keys.append(digest)
    signals = t.str_list("signals", SIGNAL_NAMES)
    for i, sig in enumerate(signals):
        if sig not in SIGNAL_NAMES:
            raise parent.doc.error(
                f"{t._p('signals')}[{i}]", f"must be one of {', '.join(SIGNAL_NAMES)}; got {sig!r}"
            )
    sb = t.section("signal_backends")
    sb.known(*SIGNAL_NAMES)
    attributes = t.str_map("attributes")
    if "tenant.id" in attributes:
        raise t.error("attributes", "tenant.id is set by the gateway; leave it out")
    q = t.section("quota")
    q.known("max_request_bytes", "items_per_second", "bytes_per_second", "burst_seconds")
    quota = QuotaConfig(
        max_request_bytes=q.size("max_request_bytes", 0) if "max_request_bytes" in q.data else None,
        items_per_second=q.rate("items_per_second"),
        bytes_per_second=float(q.size("bytes_per_second", 1))
        if "bytes_per_second" in q.data
        else None,
        burst_seconds=q.duration("burst_seconds", 2.0),
    )
    return TenantConfig(
        name=name,
        api_keys=tuple(keys),
        backends=_backend_names(t, "backends", backends),
        signal_backends={s: _backend_names(sb, s, backends) for s in SIGNAL_NAMES if s in sb.data},
        signals=signals,
        attributes=attributes,
        quota=quota,
        drop=_drop_rules(t, "drop"),
        red_metrics=_red(t),
    )


# validate: auto (tenants a backend refused data of, for a while), full (every request), wire (the
# wire walk only)
VALIDATE_MODES = ("auto", "full", "wire")
_SPAN_KINDS = ("internal", "server", "client", "producer", "consumer", "unspecified")


def _red(t: _Section) -> RedConfig | None:
    value = t.data.get("red_metrics")
    if value is None or value is False:
        return None
    if value is True:
        return RedConfig()
    r = t.section("red_metrics")
    r.known("span_kinds", "max_series")
    kinds = r.str_list("span_kinds")
    for i, kind in enumerate(kinds):
        if kind not in _SPAN_KINDS:
            raise t.doc.error(
                f"{r._p('span_kinds')}[{i}]",
                f"must be one of {', '.join(_SPAN_KINDS)}; got {kind!r}",
            )
    return RedConfig(span_kinds=kinds, max_series=r.integer("max_series", 1000, minimum=1))


def _admin(top: _Section, listen: tuple[str, ...]) -> AdminConfig:
    a = top.section("admin")
    a.known("listen", "api_key")
    address: str | None = DEFAULT_ADMIN_LISTEN
    if "listen" in a.data:
        raw = a.data["listen"]
        address = None if raw in (None, False, "", "off") else a.text("listen")
    if address is not None:
        _check_listen(a, (address,))
        port = address.rpartition(":")[2]
        if any(other.rpartition(":")[2] == port for other in listen):
            raise a.error("listen", f"port {port} is also an OTLP listener; give the admin its own")
    key = a.opt_text("api_key") or None
    return AdminConfig(listen=address, api_key=key)


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
        "tenants",
        "drop",
        "reload_interval",
        "queue",
        "admin",
        "log",
        "workers",
        "validate",
    )
    listen = top.str_list("listen", DEFAULT_LISTEN)
    if not listen:
        raise top.error("listen", "needs at least one host:port")
    _check_listen(top, listen)

    lim = top.section("limits")
    lim.known(
        "max_request_bytes",
        "max_body_bytes",
        "max_inflight_bytes",
        "max_inflight_share",
        "body_timeout",
        "header_timeout",
    )
    max_inflight = lim.size("max_inflight_bytes", DEFAULT_MAX_INFLIGHT_BYTES)
    limits = Limits(
        max_request_bytes=lim.size("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES),
        max_body_bytes=lim.size("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        max_inflight_bytes=max_inflight,
        max_inflight_share=_inflight_share(lim, max_inflight),
        body_timeout=_positive_duration(lim, "body_timeout", DEFAULT_BODY_TIMEOUT),
        header_timeout=_positive_duration(lim, "header_timeout", DEFAULT_HEADER_TIMEOUT),
    )

    backends_section = top.section("backends")
    queue_section = top.section("queue")
    base = QueueConfig()
    if queue_section.flag("durable", False):
        base = QueueConfig(durable=True, max_bytes=DURABLE_QUEUE_BYTES)
    queue_base = _queue(queue_section, base)
    backends = {
        name: _backend(backends_section, name, queue_base) for name in backends_section.data
    }
    service_backends = _backend_names(top, "service_backends", backends)
    tenants = None
    if "tenants" in top.data:
        ts = top.section("tenants")
        seen: dict[str, str] = {}
        tenants = {name: _tenant(ts, name, backends, seen) for name in ts.data}

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
        server=top.text("server", "uvicorn", ("uvicorn", "hypercorn")),
        timeout_keep_alive=top.duration("timeout_keep_alive", 75.0),
        shutdown_timeout=top.duration("shutdown_timeout", 10.0),
        tenants=tenants,
        drop=_drop_rules(top, "drop"),
        reload_interval=top.duration("reload_interval", 2.0),
        admin=_admin(top, listen),
        log=_log(top),
        workers=top.integer("workers", 1, minimum=1),
        validate=top.text("validate", "auto", VALIDATE_MODES),
        source=source,
    )


def _inflight_share(lim: _Section, max_inflight: int) -> int | None:
    """limits.max_inflight_share: a fraction of max_inflight_bytes (0.25) or a size (64MiB)."""
    value = lim.data.get("max_inflight_share")
    if value is None:
        return None
    if isinstance(value, float) or (isinstance(value, int) and value == 1):
        if not 0 < value <= 1 or isinstance(value, bool):
            raise lim.error(
                "max_inflight_share",
                f"must be a fraction of max_inflight_bytes above 0 and at most 1 (such as 0.25) "
                f"or a size (such as 64MiB), got {value!r}",
            )
        return max(1, int(max_inflight * value))
    return lim.size("max_inflight_share", max_inflight)


def _positive_duration(section: _Section, key: str, default: float) -> float:
    value = section.duration(key, default)
    if value <= 0:
        raise section.error(key, f"must be a duration above 0 such as 30s, got {value!r}")
    return value


def _log(top: _Section) -> LogConfig:
    section = top.section("log")
    section.known("format", "level")
    return LogConfig(
        format=section.text("format", "text", ("text", "json")),
        level=section.text("level", "info", ("debug", "info", "warning", "error")),
    )


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> GatewayConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror}") from None
    return replace(parse(text, str(p), env), path=str(p))
