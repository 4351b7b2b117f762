#!/usr/bin/env python3
"""Build build/otlp.binpb: a FileDescriptorSet for the OTLP collector services.

The opentelemetry-proto wheel ships only *_pb2.py modules, no .proto files. Each
module's DESCRIPTOR is serialized back into a FileDescriptorProto and written, with
all transitive dependencies (dependencies first, each file once), as a binary
FileDescriptorSet that `buf generate` reads as a binary image input (see
buf.gen.yaml). The output is deterministic: same installed packages, same bytes.

Usage: python scripts/build_descriptors.py [-o OUTPUT]   (run from anywhere)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "build" / "otlp.binpb"

# Collector service modules. Required ones must exist; optional ones (profiles is
# still "v1development" upstream) are included only if the installed package has them.
REQUIRED_MODULES = (
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
    "opentelemetry.proto.collector.logs.v1.logs_service_pb2",
)
OPTIONAL_MODULES = ("opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2",)


def _load_roots() -> list[FileDescriptor]:
    roots: list[FileDescriptor] = []
    for name in REQUIRED_MODULES:
        roots.append(importlib.import_module(name).DESCRIPTOR)
    for name in OPTIONAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            print(f"build_descriptors: optional {name} not installed, skipped", file=sys.stderr)
            continue
        roots.append(module.DESCRIPTOR)
    return roots


def _topological(roots: list[FileDescriptor]) -> list[FileDescriptor]:
    """Post-order DFS over FileDescriptor.dependencies: every file after its deps."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        # Declaration order of imports is stable, so the walk is deterministic.
        for dep in fd.dependencies:
            visit(dep)
        ordered.append(fd)

    for root in roots:
        visit(root)
    return ordered


def build() -> bytes:
    fds = descriptor_pb2.FileDescriptorSet()
    for fd in _topological(_load_roots()):
        proto = fds.file.add()
        fd.CopyToProto(proto)
    return bytes(fds.SerializeToString(deterministic=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    data = build()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # Write only on change so the file's mtime is stable too.
    if not args.output.exists() or args.output.read_bytes() != data:
        args.output.write_bytes(data)
    names = [f.name for f in descriptor_pb2.FileDescriptorSet.FromString(data).file]
    print(f"build_descriptors: wrote {args.output} ({len(data)} bytes, {len(names)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
