#!/usr/bin/env python3
"""Make docs/status-page.png, the status page screenshot the README shows, from real data.

It starts a gateway (two tenants, two backends, the charts sampled every second) and drives it
for a while: traffic that rises and falls, one backend down for a third of the run (its queue
fills, then drains), a burst over a tenant's quota, a client with a wrong key and one sending a
signal its tenant may not. Then it opens the status page in headless Chromium with the key in
the address, tails a tenant and saves a screenshot of the whole page.

Usage: uv run --frozen python scripts/status_page_shot.py [--seconds 150] [-o docs/status-page.png]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from gateway.admin.history import INTERVAL_ENV  # noqa: E402
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.peers import Sink, free_port, run_gateway, wait_for_port  # noqa: E402
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="how long to send data")
    parser.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "docs" / "status-page.png")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        Sink().running() as central,
        Sink().running() as tempo,
    ):
        admin_port = free_port()
        cfg = config(central, tempo, admin_port)
        with run_gateway(Path(tmp), cfg, env={INTERVAL_ENV: "1"}) as gw:
            wait_for_port(admin_port)
            with httpx.Client(timeout=10) as client:
                print(f"sending for {args.seconds:.0f} s ...", flush=True)
                drive(client, gw.http_endpoint, tempo, args.seconds)
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
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.output), full_page=True, animations="disabled")
                browser.close()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
