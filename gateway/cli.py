"""`otlp-gateway serve | check | keys | status | tail | drain`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from gateway import config as config_mod
from gateway.admin import console as console_mod
from gateway.config import ConfigError, GatewayConfig, LoadedConfig, Runtime
from gateway.config.model import address_problem
from gateway.errors import CannotListen
from gateway.telemetry import logs
from gateway.tenancy import keys

BANNER = """\
otlp-gateway {version} listening on {listen}
forwarding to: {backends}

Send to it from any OpenTelemetry SDK:
  export OTEL_EXPORTER_OTLP_ENDPOINT={http_url}
  export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
or over gRPC:
  export OTEL_EXPORTER_OTLP_ENDPOINT={grpc_url}
  export OTEL_EXPORTER_OTLP_PROTOCOL=grpc
"""

DEV_KEY_FILE = "dev-api-key"
ADMIN_KEY_FILE = console_mod.ADMIN_KEY_FILE
DEFAULT_DATA_DIR = "./otlp-data"
PROG = "otlp-gateway"
# How a clone runs the command (README, "Two commands"): the locked environment, without the
# development group, which the command does not need (and never removes when it is there).
UV_RUN = "uv run --frozen --no-dev"

# What to do when a listener's address cannot be bound, by the listener's role.
LISTEN_HINTS = {
    "OTLP": "pass --listen HOST:PORT or set listen",
    "admin": "pass --admin HOST:PORT or set admin.listen",
}


def command_prefix(
    environ: Mapping[str, str] | None = None,
    prefix: str | None = None,
    cwd: Path | None = None,
) -> str:
    """How the user's shell runs this command, for the commands the banner prints: `otlp-gateway`
    when it is on the user's PATH (a pip install, the container image); `uv run --frozen
    otlp-gateway` (UV_RUN) in a uv project's environment that only `uv run` puts on PATH; else
    this interpreter with `-m gateway`."""
    environ = os.environ if environ is None else environ
    venv = Path(sys.prefix if prefix is None else prefix)
    project = venv.parent
    # `uv run` sets $UV and puts the project environment's bin/ first on PATH: that entry is
    # uv's, not the user's shell's, so it does not count.
    under_uv = bool(environ.get("UV")) and (project / "pyproject.toml").is_file()
    path = environ.get("PATH", "")
    if under_uv:
        own = os.path.realpath(venv / "bin")
        path = os.pathsep.join(
            p for p in path.split(os.pathsep) if p and os.path.realpath(p) != own
        )
    if shutil.which(PROG, path=path) is not None:
        return PROG
    if not under_uv:
        return f"{shlex.quote(sys.executable)} -m gateway"
    here = (Path.cwd() if cwd is None else cwd).resolve()
    if here.is_relative_to(project.resolve()):
        return f"{UV_RUN} {PROG}"
    return f"{UV_RUN} --project {shlex.quote(str(project))} {PROG}"


def _url(config: GatewayConfig, address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    scheme = "https" if config.tls else "http"
    return f"{scheme}://{host}:{port}"


def banner(
    config: GatewayConfig,
    dev_key: str | None = None,
    *,
    command: str = PROG,
    data_dir: str = DEFAULT_DATA_DIR,
    admin_key: str | None = None,
) -> str:
    """What `serve` prints once it listens; with the embedded default (`dev_key`), also the
    commands that read its admin API, as `command` runs them from here. With `admin_key`, the
    status page's link carries it (`#key=`: the page takes it, the server never sees it)."""
    from gateway import __version__

    grpc_addr = next((a for a in config.listen if a.endswith(":4317")), config.listen[0])
    http_addr = next((a for a in config.listen if a.endswith(":4318")), config.listen[-1])
    described = []
    for name in config.service_backends:
        b = config.backends[name]
        described.append(f"{name} ({b.protocol} {b.path if b.protocol == 'file' else b.endpoint})")
    text = BANNER.format(
        version=__version__,
        listen=", ".join(config.listen),
        backends=", ".join(described) or "nothing (no service_backends configured)",
        http_url=_url(config, http_addr),
        grpc_url=_url(config, grpc_addr),
    )
    if dev_key is not None:
        text += (
            f"with the key of tenant {config_mod.DEV_TENANT} (kept in the data directory):\n"
            f'  export OTEL_EXPORTER_OTLP_HEADERS="{keys.client_headers_env(dev_key)}"\n'
        )
    if config.admin.listen is not None:
        admin = _url(config, config.admin.listen).replace("https://", "http://")
        page = f"{admin}/" if admin_key is None else f"{admin}/#key={quote(admin_key, safe='')}"
        text += f"\nStatus page and admin API: {page}  (metrics: {admin}/metrics)\n"
        if dev_key is not None:
            where = ""  # what the commands need to find this gateway, past their defaults
            if admin != console_mod.DEFAULT_ADMIN_URL:
                where += f" --admin {admin}"
            if data_dir != DEFAULT_DATA_DIR:
                where += f" --data-dir {shlex.quote(data_dir)}"
            text += (
                f"  admin key in the data directory's {ADMIN_KEY_FILE}; in a terminal:\n"
                f"  {command} status{where}\n"
                f"  {command} tail --tenant {config_mod.DEV_TENANT}{where}\n"
            )
    return text


def _dev_key(data_dir: str, name: str = DEV_KEY_FILE) -> str:
    """A key of the embedded default (the dev tenant's, the admin's): made once, then kept in the
    data directory (0600), so clients keep working across restarts."""
    path = Path(data_dir) / name
    if path.is_file():
        key = path.read_text().strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = keys.new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _keys_new(tenant: str) -> int:
    key = keys.new_key()
    print(f"New API key for tenant {tenant}. It is shown only now; hand it to the team:\n")
    print(f"  {key}\n")
    print(f"Add this line under tenants.{tenant}.api_keys in the config (the key's SHA-256):\n")
    print(f'  - "{keys.config_entry(key)}"\n')
    print("Apps send it with:\n")
    print(f'  export OTEL_EXPORTER_OTLP_HEADERS="{keys.client_headers_env(key)}"\n')
    print(
        "Reload (SIGHUP, or save the config file) to start accepting it; remove the old key's "
        "line when no client uses it any more."
    )
    return 0


def _keys_hash() -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("otlp-gateway: give the key on standard input", file=sys.stderr)
        return 2
    print(f'- "{keys.config_entry(key)}"')
    return 0


def _with_tls_flags(
    config: LoadedConfig, args: argparse.Namespace
) -> tuple[LoadedConfig, tuple[str, ...]]:
    """`serve --tls-cert/--tls-key` set or override the config's `tls` (a --tls-cert without
    --tls-key: the key is in the certificate's PEM). Also returns the fields the flags set: a
    reload of the file keeps them."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None and key is None:
        return config, ()
    if cert is None:
        if config.tls is None:
            raise ConfigError("--tls-key needs --tls-cert (or tls.cert in the config)")
        cert = config.tls.cert
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag}: file {path!r} does not exist")
    return dataclasses.replace(config, tls=config_mod.ServerTLS(cert=cert, key=key)), ("tls",)


def _with_address_flags(
    config: LoadedConfig, args: argparse.Namespace
) -> tuple[LoadedConfig, tuple[str, ...]]:
    """`serve --listen` (repeatable) and `--admin HOST:PORT|off` replace the config's `listen`
    and `admin.listen`, checked as the config's are. Also returns the fields the flags set: a
    reload of the file keeps them (as it keeps --tls-cert) and says nothing of them."""
    listen: list[str] = getattr(args, "listen", None) or []
    admin_flag: str | None = getattr(args, "admin", None)
    if not listen and admin_flag is None:
        return config, ()
    for address in listen:
        problem = address_problem(address)
        if problem is not None:
            raise ConfigError(f"--listen: {problem}")
        if listen.count(address) > 1:
            raise ConfigError(f"--listen: {address} is given twice")
    admin = config.admin.listen
    if admin_flag is not None:
        admin = None if admin_flag == "off" else admin_flag
        problem = None if admin is None else address_problem(admin)
        if problem is not None:
            raise ConfigError(f"--admin: {problem} or off")
    addresses = tuple(listen) or config.listen
    port = None if admin is None else admin.rpartition(":")[2]
    if any(a.rpartition(":")[2] == port for a in addresses):
        if admin_flag is not None:
            raise ConfigError(
                f"--admin: port {port} is also an OTLP listener; give the admin its own"
            )
        raise ConfigError(
            f"--listen: port {port} is the admin listener's ({admin}); pick another, or move the "
            "admin listener with --admin HOST:PORT (or --admin off)"
        )
    moved = dataclasses.replace(
        config, listen=addresses, admin=dataclasses.replace(config.admin, listen=admin)
    )
    pinned = ("listen",) if listen else ()
    return moved, pinned + (("admin.listen",) if admin_flag is not None else ())


def _no_admin_key(data_dir: str) -> str:
    return (
        "no admin key: pass --key KEY (the key set as admin.api_key), set "
        "$OTLP_GATEWAY_ADMIN_KEY, or pass --data-dir DIR, the data directory of a gateway "
        f"started without --config (it keeps its key in DIR/{ADMIN_KEY_FILE}; "
        f"{shlex.quote(data_dir)} has none)"
    )


def _add_drain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "drain",
        help="deliver what a removed replica left in its durable queue directory, then exit",
    )
    p.add_argument(
        "--queue-dir",
        required=True,
        metavar="DIR",
        help="the replica's queue.directory (holding <backend>[@<tenant>] and worker-<i>/)",
    )
    p.add_argument(
        "--config", "-c", help="the config the replica ran: its backends (default: embedded)"
    )
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="the embedded default's file backend directory (ignored with --config)",
    )
    p.add_argument(
        "--timeout",
        default="5m",
        metavar="DURATION",
        help="give up after this long (30s, 5m, 1h; default 5m): what is left stays on disk",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _drain(args: argparse.Namespace) -> int:
    """`otlp-gateway drain` (gateway/drain.py): no listeners, only the config's backends."""
    from gateway import drain
    from gateway.reload import log_warnings

    try:
        timeout = drain.duration(args.timeout)
        config = (
            config_mod.load(args.config)
            if args.config
            else config_mod.embedded_default(args.data_dir)
        )
    except (ConfigError, ValueError) as exc:
        print(f"otlp-gateway drain: {exc}", file=sys.stderr)
        return 2
    logs.setup(args.log_level or config.log.level, config.log.format)
    log_warnings(config.warnings)
    code = drain.run(config, Path(args.queue_dir), timeout)
    # as after serve: leave without the interpreter's finalization, which the export client's
    # native threads can abort
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that went away shows here, not at the interpreter's exit
    except BrokenPipeError:
        # `otlp-gateway status | head -1`: stop quietly. stdout goes to devnull, so the flush at
        # exit does not fail the same way (CPython's docs, signal module: "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def _main(argv: list[str] | None) -> int:
    from gateway import __version__

    parser = argparse.ArgumentParser(prog="otlp-gateway", description="OTLP ingestion gateway")
    parser.add_argument("--version", action="version", version=f"otlp-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the gateway")
    serve_p.add_argument("--config", "-c", help="YAML config file (default: embedded default)")
    serve_p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="where the embedded default's file backend writes and its keys are kept (ignored "
        "with --config)",
    )
    serve_p.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="an OTLP listener (every transport); repeat for more. Replaces the config's listen "
        "(default: the config's, or 127.0.0.1:4317 and 127.0.0.1:4318)",
    )
    serve_p.add_argument(
        "--admin",
        metavar="HOST:PORT|off",
        help="the admin listener (metrics, probes, status page, admin API), or off for none. "
        f"Replaces the config's admin.listen (default {config_mod.DEFAULT_ADMIN_LISTEN})",
    )
    serve_p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides the config's log.level (default info)",
    )
    serve_p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="overrides the config's log.format: text lines, or one JSON object per line",
    )
    serve_p.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="TLS (ALPN h2 and http/1.1) on every listener with this certificate chain; "
        "overrides the config's tls (the key may be in the same file)",
    )
    serve_p.add_argument(
        "--tls-key", metavar="PEM", help="the private key, when not in the --tls-cert file"
    )
    check_p = sub.add_parser("check", help="validate a config file without starting")
    check_p.add_argument("--config", "-c", required=True)
    keys_p = sub.add_parser("keys", help="make API keys")
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True)
    new_p = keys_sub.add_parser("new", help="print a new key for TENANT and its config line")
    new_p.add_argument("tenant")
    keys_sub.add_parser("hash", help="print the config line for a key read from standard input")
    for name, text in (
        ("status", "print backends, queues, tenants, recent errors and the fleet"),
        ("tail", "stream a tenant's spans as access-log lines"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--admin",
            default=os.environ.get("OTLP_GATEWAY_ADMIN_URL", console_mod.DEFAULT_ADMIN_URL),
            help="the admin listener's URL (default $OTLP_GATEWAY_ADMIN_URL or "
            f"{console_mod.DEFAULT_ADMIN_URL})",
        )
        p.add_argument(
            "--key",
            help="admin key (default $OTLP_GATEWAY_ADMIN_KEY, or the embedded default's key "
            "in --data-dir)",
        )
        p.add_argument(
            "--data-dir",
            default=DEFAULT_DATA_DIR,
            help="the data directory of a gateway started without --config, whose admin key "
            f"is read from it (default {DEFAULT_DATA_DIR})",
        )
        if name == "tail":
            p.add_argument("--tenant", required=True)
            p.add_argument("--service", default="", help="only spans of this service.name")
            p.add_argument("--limit", type=int, help="stop after this many rows")
    _add_drain(sub)
    args = parser.parse_args(argv)

    if args.command == "drain":
        return _drain(args)
    if args.command == "keys":
        return _keys_new(args.tenant) if args.keys_command == "new" else _keys_hash()
    if args.command in ("status", "tail"):
        key = console_mod.admin_key(args.key, args.data_dir)
        if key is None:
            print(f"otlp-gateway: {_no_admin_key(args.data_dir)}", file=sys.stderr)
            return 2
        if args.command == "status":
            return console_mod.status(args.admin, key)
        return console_mod.tail(args.admin, key, args.tenant, args.service, limit=args.limit)

    dev_key = admin_key = None
    try:
        if args.config:
            config = config_mod.load(args.config)
        else:
            dev_key = _dev_key(args.data_dir)
            admin_key = _dev_key(args.data_dir, ADMIN_KEY_FILE)
            config = config_mod.embedded_default(
                args.data_dir, keys.digest(dev_key), keys.config_entry(admin_key)
            )
        config, tls_pinned = _with_tls_flags(config, args)
        config, address_pinned = _with_address_flags(config, args)
        pinned = tls_pinned + address_pinned
        if config.tls is not None:
            from gateway.server.run import tls_context_ok

            try:
                tls_context_ok(config.tls.cert, config.tls.key)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"{config.origin.name}: tls: cannot load the certificate/key: {exc}"
                ) from None
    except ConfigError as exc:
        print(f"otlp-gateway: {exc}", file=sys.stderr)
        return 2

    if args.command == "check":
        for warning in config.warnings:
            print(f"config warning: {warning}", file=sys.stderr)
        listening = ", ".join(config.listen)
        tenants = "open" if config.tenants is None else f"{len(config.tenants)} tenants"
        print(
            f"{config.origin.name}: ok ({len(config.backends)} backends, {tenants}, "
            f"listening on {listening})"
        )
        return 0

    level = args.log_level or config.log.level
    log_format = args.log_format or config.log.format
    logs.setup(level, log_format)
    from gateway.reload import log_warnings

    log_warnings(config.warnings)  # now, in the log's format (a reload logs them too)
    # the embedded default's admin key in the status page's link, on a terminal only: never in
    # a log line
    in_link = admin_key if log_format != "json" else None
    text = banner(
        config, dev_key, command=command_prefix(), data_dir=args.data_dir, admin_key=in_link
    )

    def say_listening() -> None:  # once every listener is bound: the banner says so
        if log_format == "json":  # every line a JSON object, the banner too
            logging.getLogger("otlp_gateway").info(text.rstrip())
        else:
            print(text, flush=True)

    from gateway.app import create_app
    from gateway.server.run import serve

    try:
        serve(
            config,
            create_app,
            Runtime(config.origin, pinned),
            log_level=level,
            listening=say_listening,
        )
    except CannotListen as exc:
        hint = LISTEN_HINTS[exc.role]
        if exc.role == "admin" and config.workers > 1:
            hint += " (worker i's admin listener is on its port + i)"
        print(f"otlp-gateway: {exc}; {hint}", file=sys.stderr)
        return 1
    # Everything acknowledged is delivered or on disk by now. Leave without the interpreter's
    # finalization, as worker processes do: the export client's native threads can abort it
    # (SIGABRT after a clean shutdown, now and then under load).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
