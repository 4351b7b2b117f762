"""The worst inputs for the lane (gateway/ingress/lane.py), measured on a real gateway:

1. event-loop time: gRPC calls whose message is just under the lane's 1 MiB cap and made of the
   smallest entries (empty spans: the most items to count in the bytes), while a probe sends a
   1-span OTLP/HTTP export every 5 ms on its own connection; the probe's worst latency is the
   longest the loop was held.
2. memory: HTTP/2 connections that open the most streams the gateway allows, each with the
   headers of an OTLP/HTTP export of unknown size and 60 KiB of body, then stall: the gateway's
   RSS and its in-flight gauge while they hold, and after limits.body_timeout.

Prints one JSON line. Only 127.0.0.1; the gateway is started and stopped here (by PID).

  uv run --frozen python bench/lane_worst.py [--app]

With --app, a CORS origin is configured, which turns the lane off: the same inputs through the
ASGI app, for comparison.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.tenancy import keys
from tests.support.grpcwire import TRACE_RPC, grpc_frame, h2_grpc_call, trace_request
from tests.support.peers import Sink, run_gateway

KEY = keys.new_key()


def empty_spans_request(size: int) -> bytes:
    """An ExportTraceServiceRequest of about `size` bytes: one resource, one scope, empty spans
    (2 bytes each)."""
    spans = b"\x12\x00" * ((size - 16) // 2)
    scope = b"\x12" + _varint(len(spans)) + spans
    return b"\x0a" + _varint(len(scope)) + scope


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else 0.0


def _inflight(admin: str) -> float:
    m = re.search(r"^otlp_gateway_inflight_bytes (\S+)$", httpx.get(admin + "/metrics").text, re.M)
    return float(m.group(1)) if m else -1.0


def probe(url: str, stop: threading.Event, worst: list[float]) -> None:
    body = trace_request(1, "probe")
    headers = {"content-type": "application/x-protobuf", "authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            t = time.monotonic()
            client.post(url, content=body, headers=headers)
            worst[0] = max(worst[0], time.monotonic() - t)
            time.sleep(0.005)


def main() -> None:
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, Sink().running() as sink:
        config = {
            "backends": {"sink": {"protocol": "http/protobuf", "endpoint": sink.endpoint}},
            "service_backends": ["sink"],
            "tenants": {"acme": {"api_keys": [keys.config_entry(KEY)]}},
            "limits": {"body_timeout": "2s"},
        }
        if "--app" in sys.argv:  # a middleware must see every request: no lane
            config["cors"] = {"allowed_origins": ["https://app.example"]}
        result["path"] = "app" if "--app" in sys.argv else "lane"
        with run_gateway(Path(tmp), config) as gw:
            pid = gw.proc.pid
            # 1. the loop, against messages of the smallest items just under the lane's cap
            message = empty_spans_request(1024 * 1024 - 64)
            headers = [("content-type", "application/grpc"), ("authorization", f"Bearer {KEY}")]
            worst = [0.0]
            stop = threading.Event()
            url = gw.http_endpoint + "/v1/traces"
            prober = threading.Thread(target=probe, args=(url, stop, worst))
            idle = [0.0]
            quiet = threading.Event()
            t0 = threading.Thread(target=probe, args=(url, quiet, idle))
            t0.start()
            time.sleep(1.0)
            quiet.set()
            t0.join()
            prober.start()
            began = time.monotonic()
            statuses = []
            for _ in range(10):
                statuses.append(
                    h2_grpc_call(gw.grpc_port, TRACE_RPC, grpc_frame(message), headers).grpc_status
                )
            per_call = (time.monotonic() - began) / 10
            stop.set()
            prober.join()
            result["worst_message"] = {
                "bytes": len(message),
                "items": (len(message) - 16) // 2,
                "grpc_status": sorted(set(s or "" for s in statuses)),
                "seconds_per_call": round(per_call, 4),
                "probe_worst_ms_idle": round(idle[0] * 1000, 1),
                "probe_worst_ms_during": round(worst[0] * 1000, 1),
            }
            # 2. memory: stalled streams of unknown size
            rss_before = _rss_mib(pid)
            socks = []
            streams = 0
            for _ in range(20):
                sock = socket.create_connection(("127.0.0.1", gw.http_port))
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                sock.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.receive_data(sock.recv(65536))  # the server's SETTINGS
                sock.sendall(conn.data_to_send())
                limit = min(100, conn.remote_settings.max_concurrent_streams)
                for _ in range(limit):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(
                        sid,
                        [
                            (":method", "POST"),
                            (":scheme", "http"),
                            (":path", "/v1/traces"),
                            (":authority", "127.0.0.1"),
                            ("content-type", "application/x-protobuf"),
                            ("authorization", f"Bearer {KEY}"),
                        ],
                    )
                    left = min(60 * 1024, conn.local_flow_control_window(sid))
                    while left > 0:
                        size = min(left, conn.max_outbound_frame_size)
                        conn.send_data(sid, b"\x0a" * size)
                        left -= size
                    streams += 1
                sock.sendall(conn.data_to_send())
                socks.append((sock, conn))
            time.sleep(0.5)
            held = {"rss_mib": round(_rss_mib(pid), 1), "inflight_bytes": _inflight(gw.admin_url)}
            time.sleep(3.5)  # past limits.body_timeout: answered 408 / DEADLINE_EXCEEDED
            after = {"rss_mib": round(_rss_mib(pid), 1), "inflight_bytes": _inflight(gw.admin_url)}
            for sock, _ in socks:
                sock.close()
            result["stalled_streams"] = {
                "connections": len(socks),
                "streams": streams,
                "rss_mib_before": round(rss_before, 1),
                "while_held": held,
                "after_body_timeout": after,
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
