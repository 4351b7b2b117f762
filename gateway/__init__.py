"""otlp-gateway: an OTLP ingestion gateway."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("otlp-gateway")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

__all__ = ["__version__"]
