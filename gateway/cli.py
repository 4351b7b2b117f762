"""`otlp-gateway serve | check | keys`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import config as config_mod
from . import keys
from .config import ConfigError, GatewayConfig

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


def _url(config: GatewayConfig, address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    scheme = "https" if config.tls else "http"
    return f"{scheme}://{host}:{port}"


def banner(config: GatewayConfig, dev_key: str | None = None) -> str:
    from . import __version__

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
    return text


def _dev_key(data_dir: str) -> str:
    """The embedded default's dev tenant key: made once, then kept in the data directory (0600),
    so clients keep working across restarts."""
    path = Path(data_dir) / DEV_KEY_FILE
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otlp-gateway", description="OTLP ingestion gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the gateway")
    serve_p.add_argument("--config", "-c", help="YAML config file (default: embedded default)")
    serve_p.add_argument(
        "--data-dir",
        default="./otlp-data",
        help="where the embedded default's file backend writes (ignored with --config)",
    )
    serve_p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    check_p = sub.add_parser("check", help="validate a config file without starting")
    check_p.add_argument("--config", "-c", required=True)
    keys_p = sub.add_parser("keys", help="make API keys")
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True)
    new_p = keys_sub.add_parser("new", help="print a new key for TENANT and its config line")
    new_p.add_argument("tenant")
    keys_sub.add_parser("hash", help="print the config line for a key read from standard input")
    args = parser.parse_args(argv)

    if args.command == "keys":
        return _keys_new(args.tenant) if args.keys_command == "new" else _keys_hash()

    dev_key = None
    try:
        if args.config:
            config = config_mod.load(args.config)
        else:
            dev_key = _dev_key(args.data_dir)
            config = config_mod.embedded_default(args.data_dir, keys.digest(dev_key))
        if config.tls is not None:
            from .server import tls_context_ok

            try:
                tls_context_ok(config.tls.cert, config.tls.key)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"{config.source}: tls: cannot load the certificate/key: {exc}"
                ) from None
    except ConfigError as exc:
        print(f"otlp-gateway: {exc}", file=sys.stderr)
        return 2

    if args.command == "check":
        listening = ", ".join(config.listen)
        tenants = "open" if config.tenants is None else f"{len(config.tenants)} tenants"
        print(
            f"{config.source}: ok ({len(config.backends)} backends, {tenants}, "
            f"listening on {listening})"
        )
        return 0

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    print(banner(config, dev_key), flush=True)
    from .server import serve

    try:
        serve(config, log_level=args.log_level)
    except OSError as exc:
        print(f"otlp-gateway: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
