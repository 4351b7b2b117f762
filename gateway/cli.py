"""`otlp-gateway serve | check`."""

from __future__ import annotations

import argparse
import logging
import sys

from . import config as config_mod
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


def _url(config: GatewayConfig, address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    scheme = "https" if config.tls else "http"
    return f"{scheme}://{host}:{port}"


def banner(config: GatewayConfig) -> str:
    from . import __version__

    grpc_addr = next((a for a in config.listen if a.endswith(":4317")), config.listen[0])
    http_addr = next((a for a in config.listen if a.endswith(":4318")), config.listen[-1])
    described = []
    for name in config.service_backends:
        b = config.backends[name]
        described.append(f"{name} ({b.protocol} {b.path if b.protocol == 'file' else b.endpoint})")
    return BANNER.format(
        version=__version__,
        listen=", ".join(config.listen),
        backends=", ".join(described) or "nothing (no service_backends configured)",
        http_url=_url(config, http_addr),
        grpc_url=_url(config, grpc_addr),
    )


def _load(path: str | None, data_dir: str) -> GatewayConfig:
    return config_mod.load(path) if path else config_mod.embedded_default(data_dir)


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
    args = parser.parse_args(argv)

    try:
        config = _load(args.config, getattr(args, "data_dir", "./otlp-data"))
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
        print(f"{config.source}: ok ({len(config.backends)} backends, listening on {listening})")
        return 0

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    print(banner(config), flush=True)
    from .server import serve

    try:
        serve(config, log_level=args.log_level)
    except OSError as exc:
        print(f"otlp-gateway: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
