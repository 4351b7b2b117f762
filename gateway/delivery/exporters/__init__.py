"""Exporters: each sends one batch to one backend and knows only its own config.

Implementations sit side by side and are chosen by the backend's `protocol` name.
"""

from __future__ import annotations

from gateway.config import BackendConfig
from gateway.delivery.exporters.base import Exporter, ExportError


def create_exporter(config: BackendConfig) -> Exporter:
    if config.protocol == "grpc":
        from gateway.delivery.exporters.grpc import GRPCExporter

        return GRPCExporter(config)
    if config.protocol in ("http/protobuf", "http/json"):
        from gateway.delivery.exporters.http import HTTPExporter

        return HTTPExporter(config)
    if config.protocol == "file":
        from gateway.delivery.exporters.file import FileExporter

        return FileExporter(config)
    raise ValueError(f"unknown backend protocol {config.protocol!r}")


__all__ = ["ExportError", "Exporter", "create_exporter"]
