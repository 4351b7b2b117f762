#!/usr/bin/env python3
"""Make docs/status-page.png, the status page screenshot the README shows, from real data.

It starts a gateway (two tenants, two backends, the charts sampled every second) and drives it
for a while: traffic that rises and falls, one backend down for a third of the run (its queue
fills, then drains), a burst over a tenant's quota, a client with a wrong key and one sending a
signal its tenant may not. Then it opens the status page in headless Chromium with the key in
the address, tails a tenant and saves a screenshot of the whole page.

With --fleet it makes docs/status-page-fleet.png: the gateway is one replica of a cluster kept in
a real redis-server on a free port, with two more replicas beside it, one started from the same
config file and one from a config that differs in one key, so that the Fleet section lists three
live replicas (each sent a little traffic) and warns of the drift. `--fleet --seconds 30` is enough.

Usage: uv run --frozen python scripts/status_page_shot.py [--fleet] [--seconds 150] [-o FILE.png]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from gateway.admin.history import INTERVAL_ENV  # noqa: E402
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.cli import serve_flags  # noqa: E402
from tests.support.peers import Gateway, Sink, free_port, run_gateway, wait_for_port  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402
from tests.test_status_page import (  # noqa: E402
    ACME_SPANS,
    ADMIN_KEY,
    GLOBEX_SPANS,
    KEYS,
    S,
    otlp_json,
    sha256,
    wait_tail_live,
)

SERVICES = [
    ("storefront", "GET /products/{id}"),
    ("checkout", "POST /checkout"),
    ("cart", "GET /cart"),
]


def config(central: Sink, tempo: Sink, admin_port: int) -> dict[str, object]:
    return {
        "backends": {
            "central": {"protocol": "http/protobuf", "endpoint": central.endpoint},
            "globex-tempo": {"protocol": "http/protobuf", "endpoint": tempo.endpoint},
        },
        "service_backends": ["central"],
        "tenants": {
            "acme": {
                "api_keys": [sha256(KEYS["acme"])],
                "attributes": {"team": "payments"},
                "quota": {"items_per_second": 400, "burst_seconds": 1},
            },
            "globex": {
                "api_keys": [sha256(KEYS["globex"])],
                "backends": ["globex-tempo"],
                "signals": ["traces", "logs"],
            },
        },
        "retry": {"initial_interval": "200ms", "max_interval": "1s", "max_elapsed": "10m"},
        "shutdown_timeout": "1s",
        "admin": {"listen": f"127.0.0.1:{admin_port}", "api_key": ADMIN_KEY},
    }


def batch(n: int) -> list[S]:
    return [
        S(*SERVICES[i % len(SERVICES)], duration_ms=5 + i % 40, method="GET", http_status=200)
        for i in range(n)
    ]


def drive(client: httpx.Client, endpoint: str, tempo: Sink, seconds: float) -> None:
    """Send the traffic, in ticks of 0.1 s: items per second that follow slow waves."""
    start = time.monotonic()
    tick = 0
    while (t := time.monotonic() - start) < seconds:
        phase = t / seconds
        tempo.status = 503 if 0.25 <= phase < 0.55 else 200  # globex's backend down, then back
        acme = 120 + 90 * math.sin(2 * math.pi * t / 50)
        if 0.62 <= phase < 0.7:
            acme += 600  # over acme's quota: refused items
        globex = 60 + 40 * math.sin(2 * math.pi * t / 35 + 1)
        for tenant, rate in (("acme", acme), ("globex", globex)):
            n = max(1, round(rate / 10))
            client.post(
                f"{endpoint}/v1/traces",
                json=otlp_json(batch(n)),
                headers={"authorization": f"Bearer {KEYS[tenant]}"},
            )
        if 0.4 <= phase < 0.48 and tick % 2 == 0:  # a client with a wrong key
            client.post(f"{endpoint}/v1/traces", json=otlp_json(batch(1)),
                        headers={"authorization": "Bearer not-a-key"})  # fmt: skip
        if 0.8 <= phase < 0.85 and tick % 3 == 0:  # globex may not send metrics
            client.post(f"{endpoint}/v1/metrics", json={"resourceMetrics": []},
                        headers={"authorization": f"Bearer {KEYS['globex']}"})  # fmt: skip
        tick += 1
        time.sleep(max(0.0, start + tick * 0.1 - time.monotonic()))


class Trickle:
    """A little steady traffic, in a thread, to the replicas beside the gateway (and, once the
    driving is done, to the gateway itself): a replica's heartbeat carries its rates over the last
    interval, so the Fleet section would show zeros without it. Only globex's traces (the tail
    shows acme's spans, and acme's quota is shared by the fleet); `bad` wrong-key requests a
    second make refusals."""

    def __init__(self) -> None:
        self.targets: list[tuple[str, int, int]] = []  # (endpoint, items/s, refused requests/s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            tick = 0
            while not self._stop.wait(0.2):
                for endpoint, rate, bad in list(self.targets):
                    n = max(1, round(rate / 5 * (1 + 0.3 * math.sin(tick / 7 + rate))))
                    sends = [(n, KEYS["globex"])]
                    if bad and tick % max(1, 5 // bad) == 0:
                        sends.append((1, "not-a-key"))
                    for items, key in sends:
                        with contextlib.suppress(httpx.HTTPError):
                            client.post(
                                f"{endpoint}/v1/traces",
                                json=otlp_json(batch(items)),
                                headers={"authorization": f"Bearer {key}"},
                            )
                tick += 1

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def start_replicas(
    stack: contextlib.ExitStack, tmp: Path, cfg: dict[str, object], trickle: Trickle
) -> None:
    """Two more replicas of the fleet: one from the gateway's config (the same digest), one from
    a config with another retry.max_interval (a drift), each sent its own trickle of traffic."""
    same = tmp / "replica.yaml"
    same.write_text(yaml.safe_dump(cfg))
    retry = cfg["retry"]
    assert isinstance(retry, dict)
    drifted = tmp / "replica-drifted.yaml"
    drifted.write_text(yaml.safe_dump({**cfg, "retry": {**retry, "max_interval": "2s"}}))
    for path, rate, bad in ((same, 70, 0), (drifted, 35, 1)):
        replica: Gateway = stack.enter_context(serve_flags(tmp, "--config", str(path)))
        trickle.targets.append((replica.http_endpoint, rate, bad))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="how long to send data")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="three replicas in a cluster, one drifting (the output: docs/status-page-fleet.png)",
    )
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    name = "status-page-fleet.png" if args.fleet else "status-page.png"
    output: Path = args.output or REPO_ROOT / "docs" / name

    with (
        tempfile.TemporaryDirectory() as tmp,
        Sink().running() as central,
        Sink().running() as tempo,
        contextlib.ExitStack() as stack,  # Redis, then the replicas: stopped in reverse order
        Trickle() as trickle,
    ):
        admin_port = free_port()
        cfg = config(central, tempo, admin_port)
        if args.fleet:
            redis = stack.enter_context(RedisServer())
            cfg["cluster"] = {"redis": redis.url, "name": "shot", "heartbeat_interval": "1s"}
        with run_gateway(Path(tmp), cfg, env={INTERVAL_ENV: "1"}) as gw:
            wait_for_port(admin_port)
            if args.fleet:
                start_replicas(stack, Path(tmp), cfg, trickle)
            with httpx.Client(timeout=10) as client:
                print(f"sending for {args.seconds:.0f} s ...", flush=True)
                drive(client, gw.http_endpoint, tempo, args.seconds)
            if args.fleet:
                trickle.targets.append((gw.http_endpoint, 50, 0))
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(15_000)
                page.goto(f"{gw.admin_url}/#key={quote(ADMIN_KEY, safe='')}")
                expect(page.locator("#conn")).to_have_attribute("data-state", "ok")
                page.select_option("#tail-tenant", "acme")
                wait_tail_live(page, gw, KEYS["acme"])
                for s in ACME_SPANS:
                    httpx.post(
                        f"{gw.http_endpoint}/v1/traces",
                        json=otlp_json([s]),
                        headers={"authorization": f"Bearer {KEYS['acme']}"},
                        timeout=10,
                    )
                httpx.post(
                    f"{gw.http_endpoint}/v1/traces",
                    json=otlp_json(GLOBEX_SPANS),
                    headers={"authorization": f"Bearer {KEYS['globex']}"},
                    timeout=10,
                )
                expect(page.locator("#tail tbody tr")).to_have_count(len(ACME_SPANS))
                page.wait_for_timeout(2500)  # a table refresh and the charts' newest points
                page.mouse.move(0, 0)
                if args.fleet:
                    expect(page.locator("#fleet tbody tr")).to_have_count(3)
                    expect(page.locator("#fleet-warnings")).to_be_visible()
                page.mouse.move(0, 0)
                output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(output), full_page=True, animations="disabled")
                browser.close()
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
