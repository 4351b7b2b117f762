"""The configuration's value objects, which are its schema: a field's name is its YAML key, its
default is the default and its annotation says how a YAML value is read; where that is not
enough, its metadata says so (SIZE, DURATION, one_of(...), ...). Fields marked BY_HAND are read by
gateway/config/parse.py, which also holds every check that spans several fields."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

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
# validate: auto (tenants a backend refused data of, for a while), full (every request), wire (the
# wire walk only)
VALIDATE_MODES = ("auto", "full", "wire")
_SPAN_KINDS = ("internal", "server", "client", "producer", "consumer", "unspecified")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file, line and key."""


# -- the schema's vocabulary: how a field is read when its annotation does not say it all --

Kind = Literal[
    "",  # from the annotation: text, opt_text, flag, integer, str_list, str_map or section
    "text",  # str; with choices, one of them
    "opt_text",  # str | None
    "flag",  # bool (also "true" and "false")
    "integer",  # int, at least the minimum
    "str_list",  # tuple[str, ...] (a single string is a list of one); with choices, each of them
    "str_map",  # names to strings (numbers become strings)
    "section",  # a nested value object, read by its own schema
    "size",  # bytes: 16777216, 16MiB, 4MB (an int, or a float for a float field)
    "duration",  # seconds: 10, 10s, 500ms, 5m
    "positive_duration",  # a duration above 0
    "rate",  # a number above 0, per second
    "headers",  # HTTP header names to values, safe to send on
    "by_hand",  # read by a function below, with its checks that span several fields
    "not_a_key",  # set by the code, not read from a key (a backend's name is its mapping's key)
]


@dataclass(frozen=True, slots=True)
class Spec:
    """A field's metadata (under the key "config")."""

    kind: Kind = ""
    choices: tuple[str, ...] = ()  # a str, or each item of a tuple[str, ...], is one of these
    minimum: int = 0  # the least an int may be


def _spec(kind: Kind = "", choices: tuple[str, ...] = (), minimum: int = 0) -> dict[str, Spec]:
    return {"config": Spec(kind, choices, minimum)}


SIZE = _spec("size")
DURATION = _spec("duration")
POSITIVE_DURATION = _spec("positive_duration")
RATE = _spec("rate")
HEADERS = _spec("headers")
BY_HAND = _spec("by_hand")
NOT_A_KEY = _spec("not_a_key")


def one_of(*choices: str) -> dict[str, Spec]:
    return _spec(choices=choices)


def at_least(minimum: int) -> dict[str, Spec]:
    return _spec(minimum=minimum)


# -- request limits (enforced by gateway/ingress/limits.py) --

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # after decompression
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # on the wire, before decompression
DEFAULT_MAX_INFLIGHT_BYTES = 256 * 1024 * 1024
DEFAULT_INFLIGHT_SHARE = 0.5  # of max_inflight_bytes, per tenant
DEFAULT_BODY_TIMEOUT = 30.0  # seconds between two reads of a body (nginx: 60 s)
DEFAULT_HEADER_TIMEOUT = 30.0  # seconds for a whole HTTP/1.1 request head (nginx: 60 s)


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = field(default=DEFAULT_MAX_REQUEST_BYTES, metadata=SIZE)
    max_body_bytes: int = field(default=DEFAULT_MAX_BODY_BYTES, metadata=SIZE)
    # request bytes being read and processed at once, all transports together; above it new
    # requests get 429 / RESOURCE_EXHAUSTED before their body is read
    max_inflight_bytes: int = field(default=DEFAULT_MAX_INFLIGHT_BYTES, metadata=SIZE)
    # what one tenant may hold of them (bytes; None: DEFAULT_INFLIGHT_SHARE of the budget), so
    # that one tenant's slow or huge requests cannot get every other tenant a 429. In YAML a
    # fraction of max_inflight_bytes or a size.
    max_inflight_share: int | None = field(default=None, metadata=BY_HAND)
    body_timeout: float = field(default=DEFAULT_BODY_TIMEOUT, metadata=POSITIVE_DURATION)
    header_timeout: float = field(default=DEFAULT_HEADER_TIMEOUT, metadata=POSITIVE_DURATION)

    @property
    def inflight_share(self) -> int:
        if self.max_inflight_share is not None:
            return min(self.max_inflight_share, self.max_inflight_bytes)
        return int(self.max_inflight_bytes * DEFAULT_INFLIGHT_SHARE)


@dataclass(frozen=True, slots=True)
class ClientTLS:
    ca_file: str | None = None  # must exist
    insecure: bool = False  # skip certificate verification (http/* only)


MEMORY_QUEUE_BYTES = 64 * 1024 * 1024
DURABLE_QUEUE_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The top-level `queue`, and a backend's own (whose defaults are the top-level one's)."""

    durable: bool = False
    directory: str = "./otlp-queue"  # durable queues live in <directory>/<backend>[@<tenant>]
    # per destination (disk bytes when durable); DURABLE_QUEUE_BYTES when durable is set and this
    # is not
    max_bytes: int = field(default=MEMORY_QUEUE_BYTES, metadata=SIZE)


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str = field(metadata=NOT_A_KEY)
    protocol: str = field(metadata=one_of(*PROTOCOLS))
    endpoint: str = ""  # required unless the protocol is file; an http(s):// URL
    headers: dict[str, str] = field(default_factory=dict, metadata=HEADERS)
    compression: str = field(default="gzip", metadata=one_of(*COMPRESSIONS))  # file: none
    compression_level: int = field(default=1, metadata=at_least(1))
    timeout: float = field(default=10.0, metadata=DURATION)
    tls: ClientTLS = ClientTLS()
    # http/* only: the HTTP client library. pyqwest (Rust, reqwest) costs a third of httpx's CPU
    # per export; httpx is the one that can skip certificate verification (tls.insecure), and the
    # default with it.
    client: str = field(default="pyqwest", metadata=one_of(*HTTP_CLIENTS))
    concurrency: int = field(default=4, metadata=at_least(1))
    queue: QueueConfig = QueueConfig()
    # queued requests merge up to this; bigger ones split
    batch_max_bytes: int = field(default=4 * 1024 * 1024, metadata=SIZE)
    # how long a small export (under 64 KiB) waits for more requests to merge; 0: never waits
    batch_linger: float = field(default=0.005, metadata=DURATION)
    # file backend
    path: str = ""  # required when the protocol is file
    rotate_bytes: int = field(default=100 * 1024 * 1024, metadata=SIZE)
    max_files: int = field(default=10, metadata=at_least(1))


@dataclass(frozen=True, slots=True)
class ServerTLS:
    cert: str  # must exist, as must key
    key: str | None = None  # None: the cert PEM holds the key too


@dataclass(frozen=True, slots=True)
class Cors:
    allowed_origins: tuple[str, ...] = ()
    allowed_headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryConfig:
    initial_interval: float = field(default=0.5, metadata=DURATION)
    max_interval: float = field(default=30.0, metadata=DURATION)
    max_elapsed: float = field(default=300.0, metadata=DURATION)


@dataclass(frozen=True, slots=True)
class DropRule:
    """Drop spans (signal traces) or log records (signal logs) that match: by span name, or by an
    attribute (of the item, else of its resource) that equals / starts with / matches a value."""

    signal: str = field(default="traces", metadata=one_of("traces", "logs"))
    span_name: str | None = None
    attribute: str | None = None
    equals: str | None = None
    starts_with: str | None = None
    matches: str | None = None  # a regular expression, searched


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    # after decompression; under limits.max_request_bytes
    max_request_bytes: int | None = field(default=None, metadata=SIZE)
    items_per_second: float | None = field(default=None, metadata=RATE)
    bytes_per_second: float | None = field(default=None, metadata=SIZE)
    # a bucket holds this many seconds of the rate
    burst_seconds: float = field(default=2.0, metadata=DURATION)


@dataclass(frozen=True, slots=True)
class RedConfig:
    """RED metrics from a tenant's spans (opt-in: it decodes the tenant's trace requests)."""

    span_kinds: tuple[str, ...] = field(default=(), metadata=one_of(*_SPAN_KINDS))  # (): every kind
    # (service, span name) pairs per tenant; more count as "_other_"
    max_series: int = field(default=1000, metadata=at_least(1))
    # also send them as OTLP metrics to the tenant's metrics backends (gateway/analysis/
    # red_export.py); off by default: it adds series to those backends
    export: bool = False
    export_interval: float = field(default=60.0, metadata=DURATION)  # MIN_EXPORT_INTERVAL or more


@dataclass(frozen=True, slots=True)
class TenantConfig:
    name: str = field(metadata=NOT_A_KEY)
    # sha256 hex digests of the keys; in YAML sha256:<hex>, each key for one tenant only
    api_keys: tuple[str, ...] = field(default=(), metadata=BY_HAND)
    # the tenant's own backends, every allowed signal (names of defined backends)
    backends: tuple[str, ...] = field(default=(), metadata=BY_HAND)
    signal_backends: Mapping[str, tuple[str, ...]] = field(default_factory=dict, metadata=BY_HAND)
    signals: tuple[str, ...] = field(default=SIGNAL_NAMES, metadata=one_of(*SIGNAL_NAMES))
    attributes: Mapping[str, str] = field(default_factory=dict)  # tenant.id is the gateway's
    quota: QuotaConfig = QuotaConfig()
    drop: tuple[DropRule, ...] = field(default=(), metadata=BY_HAND)
    # YAML true: the defaults; false or absent: None
    red_metrics: RedConfig | None = field(default=None, metadata=BY_HAND)


DEFAULT_ADMIN_LISTEN = "127.0.0.1:9464"


def address_problem(address: str) -> str | None:
    """Why `address` cannot be a listener's host:port, or None when it can: the one check of
    `listen`, `admin.listen` and `serve --listen/--admin`."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return f"{address!r} is not host:port (for example 0.0.0.0:4317)"
    return None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin listener: /metrics, /healthz, /readyz (no key), the admin API and the status
    page (admin key)."""

    # None (YAML null, false, "" or off): no admin listener; a port of its own
    listen: str | None = field(default=DEFAULT_ADMIN_LISTEN, metadata=BY_HAND)
    api_key: str | None = None  # the key itself or sha256:<hex>; None: admin API refused

    @property
    def port(self) -> int | None:
        return None if self.listen is None else int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = field(default="text", metadata=one_of("text", "json"))
    level: str = field(default="info", metadata=one_of("debug", "info", "warning", "error"))


# The shortest interval of the periodic OTLP metric exports (red_metrics, self_telemetry).
MIN_EXPORT_INTERVAL = 1.0
SELF_TELEMETRY_TENANT = "otlp-gateway"


@dataclass(frozen=True, slots=True)
class SelfTelemetryConfig:
    """The gateway's own metrics (those of /metrics) sent as OTLP to one backend, every
    `interval` (gateway/telemetry/self_telemetry.py)."""

    backend: str  # a defined backend
    interval: float = field(default=60.0, metadata=DURATION)  # MIN_EXPORT_INTERVAL or more
    # What `{tenant}` in the backend's headers stands for (and its queue's and delivery metrics'
    # tenant): the gateway is none of the tenants.
    tenant: str = SELF_TELEMETRY_TENANT


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Replicas that act as one gateway: shared quotas and one fleet view, kept in Redis
    (gateway/cluster/). Without it each process has its own quotas and sees only itself."""

    redis: str  # redis://[:password@]host:port/db or rediss://; ${ENV} for the password
    name: str = "default"  # the key prefix, so several fleets can share one Redis
    # how long a Redis call may take before the replica falls back to its local share
    timeout: float = field(default=0.25, metadata=POSITIVE_DURATION)
    # how often a replica says it is alive (and a fallback replica tries Redis again)
    heartbeat_interval: float = field(default=2.0, metadata=POSITIVE_DURATION)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: tuple[str, ...] = DEFAULT_LISTEN  # at least one host:port
    limits: Limits = field(default_factory=Limits)
    backends: Mapping[str, BackendConfig] = field(default_factory=dict, metadata=BY_HAND)
    service_backends: tuple[str, ...] = field(default=(), metadata=BY_HAND)  # backend names
    tls: ServerTLS | None = field(default=None, metadata=BY_HAND)
    cors: Cors = Cors()
    retry: RetryConfig = RetryConfig()
    server: str = field(default="uvicorn", metadata=one_of("uvicorn", "hypercorn"))
    # uvloop: ~8% less CPU a small request (bench/README.md); asyncio: the standard library's
    event_loop: str = field(default="uvloop", metadata=one_of("uvloop", "asyncio"))
    timeout_keep_alive: float = field(default=75.0, metadata=DURATION)
    shutdown_timeout: float = field(default=10.0, metadata=DURATION)
    # None: no tenants section, the gateway runs open (every request is DEFAULT_TENANT's)
    tenants: Mapping[str, TenantConfig] | None = field(default=None, metadata=BY_HAND)
    drop: tuple[DropRule, ...] = field(default=(), metadata=BY_HAND)  # applies to every tenant
    # how often the config file is checked for changes; 0: never
    reload_interval: float = field(default=2.0, metadata=DURATION)
    queue: QueueConfig = QueueConfig()  # the defaults of every backend's queue
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    # processes serving the same ports (SO_REUSEPORT), each with its own queues
    workers: int = field(default=1, metadata=at_least(1))
    # whose requests get every item decoded before they are acknowledged (gateway/otlp/validate.py)
    validate: str = field(default="auto", metadata=one_of(*VALIDATE_MODES))
    # None: the gateway's own metrics are on /metrics only
    self_telemetry: SelfTelemetryConfig | None = field(default=None, metadata=BY_HAND)
    # None: replicas share nothing (per-process quotas)
    cluster: ClusterConfig | None = field(default=None, metadata=BY_HAND)


# -- what is not configuration: where it came from, and how this process serves it --


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a config came from."""

    name: str = "<defaults>"  # how messages name it: the file, "<embedded default>"
    path: str | None = None  # the file a reload re-reads; None: nothing to reload


@dataclass(frozen=True, slots=True)
class LoadedConfig(GatewayConfig):
    """What parse, load and embedded_default return: the config and where it came from. Nothing
    past the command reads `origin`: it hands it on in a Runtime."""

    origin: ConfigSource = field(default=ConfigSource(), compare=False, metadata=NOT_A_KEY)
    # what is valid but likely a mistake (a backend nothing routes to), each naming the file, line
    # and key; load() logs them, so `check` and a reload show them too
    warnings: tuple[str, ...] = field(default=(), compare=False, metadata=NOT_A_KEY)

    @property
    def source(self) -> str:
        return self.origin.name


@dataclass(frozen=True, slots=True)
class Runtime:
    """How this process serves its config, beside the config: a reload replaces the config, never
    this."""

    origin: ConfigSource = ConfigSource()
    pinned: tuple[str, ...] = ()  # config fields set on the command line: a reload keeps them
    worker: int | None = None  # this process's index with `workers: N` (N > 1)


DEV_TENANT = "dev"


def embedded_default(
    data_dir: str = "./otlp-data",
    dev_key_digest: str | None = None,
    admin_key_digest: str | None = None,
) -> LoadedConfig:
    """What `otlp-gateway serve` runs with no config: local listeners, a file backend, and (given
    key digests) one `dev` tenant and the admin API."""
    archive = BackendConfig(name="local-files", protocol="file", path=data_dir, compression="none")
    tenants = None
    if dev_key_digest is not None:
        tenants = {DEV_TENANT: TenantConfig(name=DEV_TENANT, api_keys=(dev_key_digest,))}
    return LoadedConfig(
        listen=("127.0.0.1:4317", "127.0.0.1:4318"),
        backends={"local-files": archive},
        service_backends=("local-files",),
        tenants=tenants,
        admin=AdminConfig(api_key=admin_key_digest),
        origin=ConfigSource("<embedded default>"),
    )
