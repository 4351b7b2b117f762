"""parse() and load(): a YAML document into a LoadedConfig. The fields the schema cannot read
alone (BY_HAND) are read here, with the checks that span several fields. load() also refuses a
file that sends data nowhere: parse() reads any document, load() a config to serve."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, replace
from pathlib import Path
from typing import Any

import yaml

from gateway.config.model import (
    _TENANT_NAME,
    DEFAULT_ADMIN_LISTEN,
    DURABLE_QUEUE_BYTES,
    KEY_PREFIX,
    MEMORY_QUEUE_BYTES,
    MIN_EXPORT_INTERVAL,
    SIGNAL_NAMES,
    AdminConfig,
    BackendConfig,
    ClientTLS,
    ClusterConfig,
    ConfigError,
    ConfigSource,
    DropRule,
    Limits,
    LoadedConfig,
    QueueConfig,
    RedConfig,
    SelfTelemetryConfig,
    ServerTLS,
    TenantConfig,
    address_problem,
)
from gateway.config.reader import (
    _Doc,
    _Section,
)

log = logging.getLogger("otlp_gateway.config")

# -- the fields read by hand, and the checks that span several fields --


def _check_listen(top: _Section[Any], addresses: tuple[str, ...]) -> None:
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            raise top.error("listen", problem)


def _limits(top: _Section[Any]) -> Limits:
    lim = top.section("limits", Limits)
    max_inflight: int = lim.get("max_inflight_bytes")
    return lim.read(
        max_inflight_bytes=max_inflight, max_inflight_share=_inflight_share(lim, max_inflight)
    )


def _inflight_share(lim: _Section[Limits], max_inflight: int) -> int | None:
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


def _queue(section: _Section[QueueConfig], base: QueueConfig) -> QueueConfig:
    """A queue section whose defaults are `base`'s (a backend's: the top-level queue's)."""
    durable: bool = section.get("durable", base.durable)
    max_bytes = base.max_bytes
    if durable != base.durable:  # durable where the base is not (or the other way): that size
        max_bytes = DURABLE_QUEUE_BYTES if durable else MEMORY_QUEUE_BYTES
    return section.read({"directory": base.directory, "max_bytes": max_bytes}, durable=durable)


def _backend(parent: _Section[Any], name: str, queue_base: QueueConfig) -> BackendConfig:
    b = parent.section(name, BackendConfig)
    protocol: str = b.get("protocol")
    tls_section = b.section("tls", ClientTLS)
    tls = tls_section.read()
    queue = _queue(b.section("queue", QueueConfig), queue_base)
    endpoint = ""
    path = ""
    if protocol == "file":
        path = b.get("path", None)  # None: required
    else:
        endpoint = b.get("endpoint", None)
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
    client: str = b.get("client", "httpx" if tls.insecure else MISSING)
    if "client" in b.data and not protocol.startswith("http/"):
        raise b.error("client", "chooses the HTTP client of http/* backends only")
    if client == "pyqwest" and tls.insecure:
        raise b.error(
            "client", "pyqwest always verifies certificates; use client: httpx with tls.insecure"
        )
    return b.read(
        {"compression": "none"} if protocol == "file" else None,
        name=name,
        protocol=protocol,
        endpoint=endpoint,
        tls=tls,
        client=client,
        queue=queue,
        path=path,
    )


def _drop_rules(parent: _Section[Any], key: str) -> tuple[DropRule, ...]:
    value = parent.data.get(key) or []
    if not isinstance(value, list):
        raise parent.error(key, "must be a list of rules such as {span_name: GET /healthz}")
    rules = []
    for i in range(len(value)):
        r = _Section(parent.doc, value[i], f"{parent._p(key)}[{i}]", DropRule)
        rule = r.read()
        tests = [t for t in (rule.equals, rule.starts_with, rule.matches) if t is not None]
        if rule.span_name is None and rule.attribute is None:
            raise r.error("", "needs span_name or attribute")
        if rule.span_name is not None and rule.signal != "traces":
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
    section: _Section[Any], key: str, backends: Mapping[str, BackendConfig]
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
    parent: _Section[Any], name: str, backends: Mapping[str, BackendConfig], seen: dict[str, str]
) -> TenantConfig:
    if not _TENANT_NAME.match(name):
        raise parent.error(
            name,
            f"tenant names are letters, digits, '.', '_' and '-' (at most 63); got {name!r}",
        )
    t = parent.section(name, TenantConfig)
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
    sb = t.mapping("signal_backends")
    sb.known(*SIGNAL_NAMES)
    tenant = t.read(
        name=name,
        api_keys=tuple(keys),
        backends=_backend_names(t, "backends", backends),
        signal_backends={s: _backend_names(sb, s, backends) for s in SIGNAL_NAMES if s in sb.data},
        drop=_drop_rules(t, "drop"),
        red_metrics=_red(t),
    )
    if "tenant.id" in tenant.attributes:
        raise t.error("attributes", "tenant.id is set by the gateway; leave it out")
    return tenant


def _red(t: _Section[TenantConfig]) -> RedConfig | None:
    value = t.data.get("red_metrics")
    if value is None or value is False:
        return None
    if value is True:
        return RedConfig()
    section = t.section("red_metrics", RedConfig)
    red = section.read()
    _check_interval(section, "export_interval", red.export_interval)
    if "export_interval" in section.data and not red.export:
        raise section.error(
            "export_interval", "has no effect without export: true; add it, or remove this key"
        )
    return red


def _check_interval(section: _Section[Any], key: str, seconds: float) -> None:
    if seconds < MIN_EXPORT_INTERVAL:
        raise section.error(
            key,
            f"must be a duration of at least {MIN_EXPORT_INTERVAL:g}s such as 15s or 60s, "
            f"got {section.data[key]!r}",
        )


def _check_red_exports(
    ts: _Section[Any], service_backends: tuple[str, ...], tenants: Mapping[str, TenantConfig]
) -> None:
    """A tenant whose RED metrics are exported needs a backend its metrics go to."""
    for name, tenant in tenants.items():
        if tenant.red_metrics is None or not tenant.red_metrics.export:
            continue
        if not (service_backends + tenant.backends + tenant.signal_backends.get("metrics", ())):
            raise ts.doc.error(
                f"{ts._p(name)}.red_metrics.export",
                f"tenant {name}'s metrics go to no backend, so its RED metrics would go nowhere; "
                "name one in service_backends, the tenant's backends or signal_backends.metrics",
            )


def _cluster(top: _Section[Any]) -> ClusterConfig | None:
    if top.data.get("cluster") is None:
        return None
    s = top.section("cluster", ClusterConfig)
    url: str = s.get("redis")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise s.error(
            "redis",
            # the URL may hold a password: name only its scheme
            "must be a redis://[:password@]host:port/db, rediss:// or unix:// URL; "
            f"got one starting {url.partition(':')[0][:16]!r}",
        )
    return s.read(redis=url, name=_name(s, "name"))


def _name(s: _Section[Any], key: str) -> str:
    """A key whose value is a name as tenants' are (it goes into keys, labels, headers)."""
    name: str = s.get(key)
    if not _TENANT_NAME.match(name):
        raise s.error(
            key,
            f"must be a name of letters, digits, '.', '_' and '-' (at most 63); got {name!r}",
        )
    return name


def _self_telemetry(
    top: _Section[Any], backends: Mapping[str, BackendConfig]
) -> SelfTelemetryConfig | None:
    if top.data.get("self_telemetry") is None:
        return None
    s = top.section("self_telemetry", SelfTelemetryConfig)
    backend: str = s.get("backend")
    if backend not in backends:
        raise s.error(
            "backend",
            f"no backend named {backend!r}; defined backends: {', '.join(backends) or 'none'}",
        )
    config = s.read(backend=backend, tenant=_name(s, "tenant"))
    _check_interval(s, "interval", config.interval)
    return config


def _admin(top: _Section[Any], listen: tuple[str, ...]) -> AdminConfig:
    a = top.section("admin", AdminConfig)
    address: str | None = DEFAULT_ADMIN_LISTEN
    if "listen" in a.data:
        raw = a.data["listen"]
        address = None if raw in (None, False, "", "off") else a.text("listen")
    if address is not None:
        _check_listen(a, (address,))
        port = address.rpartition(":")[2]
        if any(other.rpartition(":")[2] == port for other in listen):
            raise a.error("listen", f"port {port} is also an OTLP listener; give the admin its own")
    return a.read(listen=address, api_key=a.get("api_key") or None)


def _server_tls(top: _Section[Any]) -> ServerTLS | None:
    if "tls" not in top.data:
        return None
    t = top.section("tls", ServerTLS)
    tls = t.read()
    for key, value in (("cert", tls.cert), ("key", tls.key)):
        if value and not Path(value).is_file():
            raise t.error(key, f"file {value!r} does not exist")
    return tls


def _routed(
    service_backends: tuple[str, ...], tenants: Mapping[str, TenantConfig] | None
) -> set[str]:
    """The backends some data goes to: the service backends and every tenant's own."""
    routed = set(service_backends)
    for tenant in (tenants or {}).values():
        routed.update(tenant.backends)
        for names in tenant.signal_backends.values():
            routed.update(names)
    return routed


def _unrouted(
    section: _Section[Any], backends: Mapping[str, BackendConfig], routed: set[str]
) -> tuple[str, ...]:
    """A warning for each backend nothing routes to (when none is routed, load() refuses)."""
    if not routed:
        return ()
    return tuple(
        str(
            section.error(
                name,
                "nothing routes to this backend, so it receives no data; name it in "
                "service_backends or in a tenant's backends or signal_backends, or remove it",
            )
        )
        for name in backends
        if name not in routed
    )


def _check_routes(config: LoadedConfig) -> None:
    """Refuse a config whose data would reach no backend: the gateway would acknowledge every
    request and drop it, which no client could tell."""
    if not config.backends:
        raise ConfigError(
            f"{config.source}: no backend is defined, so everything received would be "
            "acknowledged and dropped; define one under `backends:` (for example "
            "`archive: {protocol: file, path: ./otlp-data}`) and route to it with "
            "`service_backends: [archive]` or a tenant's `backends:`"
        )
    if not _routed(config.service_backends, config.tenants):
        names = ", ".join(config.backends)
        first = next(iter(config.backends))
        raise ConfigError(
            f"{config.source}: nothing routes to a backend (neither service_backends nor any "
            "tenant's backends or signal_backends names one), so everything received would be "
            f"acknowledged and dropped; route to {names} with `service_backends: [{first}]` or "
            "a tenant's `backends:`"
        )


def parse(
    text: str, source: str = "<config>", env: Mapping[str, str] | None = None
) -> LoadedConfig:
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
    top = _Section(doc, data, "", LoadedConfig)
    listen: tuple[str, ...] = top.get("listen")
    if not listen:
        raise top.error("listen", "needs at least one host:port")
    _check_listen(top, listen)
    limits = _limits(top)
    backends_section = top.mapping("backends")
    queue = _queue(top.section("queue", QueueConfig), QueueConfig())
    backends = {name: _backend(backends_section, name, queue) for name in backends_section.data}
    service_backends = _backend_names(top, "service_backends", backends)
    tenants = None
    if "tenants" in top.data:
        ts = top.mapping("tenants")
        seen: dict[str, str] = {}
        tenants = {name: _tenant(ts, name, backends, seen) for name in ts.data}
        _check_red_exports(ts, service_backends, tenants)
    self_telemetry = _self_telemetry(top, backends)
    routed = _routed(service_backends, tenants)
    if self_telemetry is not None:
        routed.add(self_telemetry.backend)  # used: no warning (data must still go somewhere)
    return top.read(
        listen=listen,
        limits=limits,
        backends=backends,
        service_backends=service_backends,
        tenants=tenants,
        tls=_server_tls(top),
        queue=queue,
        drop=_drop_rules(top, "drop"),
        admin=_admin(top, listen),
        self_telemetry=self_telemetry,
        cluster=_cluster(top),
        origin=ConfigSource(source),
        warnings=_unrouted(backends_section, backends, routed),
    )


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror}") from None
    config = replace(parse(text, str(p), env), origin=ConfigSource(str(p), path=str(p)))
    _check_routes(config)
    # config.warnings are the caller's to say: `check` prints them, `serve` and a reload log them
    # once logging is set up (in its format)
    return config
