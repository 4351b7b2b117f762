"""CPU per OTLP/gRPC export on the client side: grpcio aio vs connect-python over pyqwest.

Sends one pre-serialized 512-span ExportTraceServiceRequest (~245 KB) again and again, gzip on, to
rotel's OTLP/gRPC receiver (rotel-agent with the blackhole exporter, started here and stopped by
PID), from a single-process asyncio loop with `--concurrency` calls in flight. Reports the client
process's CPU (time.process_time: every thread of the process, so grpc core's and pyqwest's tokio
threads count) per 1000 exports.

Clients (each one runs in a fresh subprocess, `--rounds` times, interleaved):
  grpcio       grpc.aio channel, unary_unary with identity (de)serializers, Compression.Gzip
               (what gateway/delivery/exporters/grpc.py does; grpc core's gzip is zlib level 6)
  connect      connect-python TraceServiceClient, ProtocolType.GRPC, pyqwest HTTPTransport with
               http_version=HTTP2 (h2c prior knowledge), GzipCompression(level 6), a request class
               whose SerializeToString returns the stored bytes
  connect-l1   the same with gzip level 1 (the gateway's default compression_level)

  python bench/export_client.py --exports 2000 --concurrency 8 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.peers import free_port, rotel_binary, wait_for_port  # noqa: E402

EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
CLIENTS = ("grpcio", "connect", "connect-l1")


def build_request(spans: int = 512, seed: int = 7) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (
        ("service.name", "checkout"),
        ("host.name", "node-17"),
        ("k8s.pod.name", "co-7f9"),
    ):
        rs.resource.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    ss = rs.scope_spans.add()
    ss.scope.name = "bench.export_client"
    trace_id = rnd.randbytes(16)
    t0 = 1_700_000_000_000_000_000
    for i in range(spans):
        if i % 16 == 0:
            trace_id = rnd.randbytes(16)
        span = ss.spans.add(
            trace_id=trace_id,
            span_id=rnd.randbytes(8),
            parent_span_id=rnd.randbytes(8),
            name=f"GET /api/v1/items/{rnd.randrange(10_000)}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=t0 + i * 1_000_000,
            end_time_unix_nano=t0 + i * 1_000_000 + rnd.randrange(10_000_000),
            status=Status(code=Status.STATUS_CODE_OK),
        )
        attrs = {
            "http.request.method": "GET",
            "url.full": f"https://shop.example.com/api/v1/items/{rnd.randrange(10**6)}?q={rnd.randbytes(12).hex()}",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0.6478.126",
            "server.address": "shop.example.com",
            "client.address": f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}",
            "db.statement": f"SELECT * FROM items WHERE id = {rnd.randrange(10**6)}",
        }
        for k, v in attrs.items():
            span.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
        span.attributes.append(
            KeyValue(key="http.response.status_code", value=AnyValue(int_value=200))
        )
        span.attributes.append(
            KeyValue(key="http.response.body.size", value=AnyValue(int_value=rnd.randrange(10**5)))
        )
    return req.SerializeToString()


# ---------------------------------------------------------------------------------------------
# clients: each returns (export coroutine function, close coroutine function)


def grpcio_client(target: str) -> tuple[Any, Any]:
    import grpc
    import grpc.aio

    channel = grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 4 << 20),
        ],
    )
    call = channel.unary_unary(
        EXPORT_PATH, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )

    async def export(payload: bytes) -> None:
        await call(payload, timeout=10, compression=grpc.Compression.Gzip)

    return export, channel.close


class RawTraceRequest:
    """Stands in for ExportTraceServiceRequest: the bytes as they are, no re-encode."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def connect_client(target: str, level: int) -> tuple[Any, Any]:
    import pyqwest
    from connectrpc.compression.gzip import GzipCompression
    from connectrpc.protocol import ProtocolType

    from gateway._gen.opentelemetry.proto.collector.trace.v1.trace_service_connect import (
        TraceServiceClient,
    )

    transport = pyqwest.HTTPTransport(
        http_version=pyqwest.HTTPVersion.HTTP2,  # plaintext: h2c with prior knowledge
        enable_otel=False,
        timeout=10.0,
    )
    client = TraceServiceClient(
        f"http://{target}",
        protocol=ProtocolType.GRPC,
        http_client=pyqwest.Client(transport),
        send_compression=GzipCompression(level=level),
    )

    async def export(payload: bytes) -> None:
        await client.export(RawTraceRequest(payload), timeout_ms=10_000)  # type: ignore[arg-type]

    async def close() -> None:
        await client.close()

    return export, close


async def measure(
    client: str, target: str, payload: bytes, exports: int, concurrency: int
) -> dict[str, Any]:
    if client == "grpcio":
        export, close = grpcio_client(target)
    else:
        export, close = connect_client(target, 1 if client == "connect-l1" else 6)
    errors: dict[str, int] = {}

    async def worker(counter: Iterator[int], n: int) -> None:
        for _ in range(n):
            try:
                next(counter)
            except StopIteration:
                return
            try:
                await export(payload)
            except Exception as exc:
                key = f"{type(exc).__name__}: {exc}"[:120]
                errors[key] = errors.get(key, 0) + 1

    warm = 50
    await asyncio.gather(*(worker(iter(range(warm)), warm) for _ in range(concurrency)))
    if errors:
        await close()
        return {"client": client, "warmup_errors": errors}
    counter = iter(range(exports))
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(counter, exports) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    await close()
    return {
        "client": client,
        "exports": exports,
        "errors": errors,
        "cpu_s": round(cpu, 2),
        "cpu_s_per_1000": round(cpu * 1000 / exports, 2),
        "wall_s": round(wall, 2),
        "exports_per_s": round(exports / wall, 1),
    }


# ---------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def run_rotel_blackhole(tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    grpc_port, http_port = free_port(), free_port()
    with open(tmp / "rotel.log", "wb") as log:
        proc = subprocess.Popen(
            [
                rotel_binary(), "start",
                "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
                "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
                "--exporter", "blackhole",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(grpc_port)
        yield proc, grpc_port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", default=",".join(CLIENTS), help=f"comma list of {CLIENTS}")
    p.add_argument("--exports", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1, help="repeat the client list, interleaved")
    p.add_argument("--child", help=argparse.SUPPRESS)  # client name; target in --target
    p.add_argument("--target", help=argparse.SUPPRESS)
    args = p.parse_args()
    payload = build_request()

    if args.child:
        result = asyncio.run(
            measure(args.child, args.target, payload, args.exports, args.concurrency)
        )
        print(json.dumps(result), flush=True)
        return

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    for c in clients:
        if c not in CLIENTS:
            raise SystemExit(f"unknown client {c!r}; choose from {CLIENTS}")
    info = {
        "request_bytes": len(payload),
        "gzip6_bytes": len(gzip.compress(payload, 6)),
        "gzip1_bytes": len(gzip.compress(payload, 1)),
        "exports": args.exports,
        "concurrency": args.concurrency,
    }
    print(json.dumps(info), flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="export-client-") as tmp,
        run_rotel_blackhole(Path(tmp)) as (rotel, port),
    ):
        for _ in range(args.rounds):
            for c in clients:
                rotel_cpu0 = proc_cpu_seconds(rotel.pid)
                out = subprocess.run(
                    [
                        sys.executable, __file__, "--child", c,
                        "--target", f"127.0.0.1:{port}",
                        "--exports", str(args.exports),
                        "--concurrency", str(args.concurrency),
                    ],
                    capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
                result = json.loads(line)
                result["rotel_cpu_s"] = round(proc_cpu_seconds(rotel.pid) - rotel_cpu0, 2)
                if out.returncode:
                    result["stderr"] = out.stderr[-1500:]
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
