"""Raw gRPC over HTTP/2 (h2) and hostile request bodies: frames, bombs, oversize bodies."""

from __future__ import annotations

import socket
import time
import zlib
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.encoding import varint

MiB = 1024 * 1024


TRACE_RPC = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def trace_request(spans: int, name: str = "span") -> bytes:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(spans):
        span = scope.spans.add()
        span.trace_id = bytes(range(16))
        span.span_id = i.to_bytes(8, "big")
        span.name = f"{name}-{i}"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        span.end_time_unix_nano = 1_700_000_000_000_000_001 + i
    return req.SerializeToString()


@cache
def gzip_bomb(inflated: int = 200 * MiB) -> bytes:
    """~200 KB of gzip that inflates to `inflated` zero bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * MiB
    parts = [c.compress(chunk) for _ in range(inflated // MiB)]
    parts.append(c.flush())
    return b"".join(parts)


def grpc_frame(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def oversize_body(size: int = 2 * MiB) -> bytes:
    # One big resource_spans entry (field 1, length-delimited): a well-formed prefix, too large.
    inner = b"\0" * (size - 8)
    return b"\x0a" + varint(len(inner)) + inner


@dataclass
class H2Result:
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    reset: int | None = None

    @property
    def grpc_status(self) -> str | None:
        return self.trailers.get("grpc-status", self.headers.get("grpc-status"))

    @property
    def grpc_message(self) -> str:
        return unquote(self.trailers.get("grpc-message", self.headers.get("grpc-message", "")))


def h2_grpc_call(
    port: int, path: str, body: bytes, headers: list[tuple[str, str]], timeout: float = 30.0
) -> H2Result:
    """POST `body` on one HTTP/2 stream, honouring flow control, until the response ends."""
    result = H2Result()
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"127.0.0.1:{port}"),
                ("te", "trailers"),
                *headers,
            ],
            end_stream=not body,
        )
        sock.sendall(conn.data_to_send())
        pending = memoryview(body)
        done = False
        data = bytearray()
        while not done:
            if time.monotonic() > deadline:
                raise TimeoutError("no complete HTTP/2 response")
            while pending:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk, pending = pending[:window], pending[window:]
                conn.send_data(sid, chunk.tobytes(), end_stream=not pending)
            sock.sendall(conn.data_to_send())
            raw = sock.recv(65536)
            if not raw:
                break
            for event in conn.receive_data(raw):
                if isinstance(event, h2.events.ResponseReceived):
                    result.headers = dict(event.headers)  # type: ignore[arg-type]
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.TrailersReceived):
                    result.trailers = dict(event.headers)  # type: ignore[arg-type]
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
                elif isinstance(event, h2.events.StreamReset):
                    result.reset = event.error_code
                    done = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    done = True
            if done:
                pending = memoryview(b"")
            sock.sendall(conn.data_to_send())
        result.data = bytes(data)
    return result


def grpc_bomb_call(port: int) -> H2Result:
    return h2_grpc_call(
        port,
        TRACE_RPC,
        grpc_frame(gzip_bomb(), compressed=True),
        [("content-type", "application/grpc"), ("grpc-encoding", "gzip")],
    )
