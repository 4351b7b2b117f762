"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright): the
page served by the admin listener, the admin key entered, a tenant's live tail showing spans sent
during the test (checked in the DOM and in a screenshot), and the backends, tenants and errors
tables filled from the admin API.

`UPDATE_SCREENSHOT=1 uv run --frozen pytest tests/test_status_page.py` also writes the screenshot
to docs/status-page.png, the one the README shows."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.peers import ROOT, Gateway, Sink, free_port, run_gateway, wait_for_port

SCREENSHOT = ROOT / "docs" / "status-page.png"
TIMEOUT_MS = 15_000

ADMIN_KEY = "status-page-" + secrets.token_hex(8)
KEYS = {"acme": "acme-" + secrets.token_hex(8), "globex": "globex-" + secrets.token_hex(8)}


def sha256(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Spans, sent as OTLP/JSON with a tenant's key


@dataclass(frozen=True)
class S:
    service: str
    name: str
    kind: int = 2  # server
    duration_ms: float = 10.0
    method: str = ""
    route: str = ""
    http_status: int = 0
    error: str = ""  # status message of an error span


def otlp_json(spans: list[S]) -> dict[str, Any]:
    now = time.time_ns()
    resource_spans = []
    for s in spans:
        attrs: list[dict[str, Any]] = []
        if s.method:
            attrs.append({"key": "http.request.method", "value": {"stringValue": s.method}})
        if s.route:
            attrs.append({"key": "http.route", "value": {"stringValue": s.route}})
        if s.http_status:
            attrs.append(
                {"key": "http.response.status_code", "value": {"intValue": str(s.http_status)}}
            )
        span = {
            "traceId": secrets.token_hex(16),
            "spanId": secrets.token_hex(8),
            "name": s.name,
            "kind": s.kind,
            "startTimeUnixNano": str(now - int(s.duration_ms * 1e6)),
            "endTimeUnixNano": str(now),
            "attributes": attrs,
            "status": {"code": 2, "message": s.error} if s.error else {"code": 1},
        }
        resource_spans.append(
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": s.service}}]
                },
                "scopeSpans": [{"scope": {"name": "shop"}, "spans": [span]}],
            }
        )
    return {"resourceSpans": resource_spans}


def send(gw: Gateway, key: str, spans: list[S]) -> httpx.Response:
    return httpx.post(
        f"{gw.http_endpoint}/v1/traces",
        json=otlp_json(spans),
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


# The spans of the test, sent one request each, in this order: the tail shows them newest first.
ACME_SPANS = [
    S("storefront", "GET /products/{id}", duration_ms=14.2, method="GET",
      route="/products/{id}", http_status=200),
    S("storefront", "GET /cart", duration_ms=8.9, method="GET", route="/cart", http_status=200),
    S("checkout", "SELECT orders", kind=3, duration_ms=3.1),
    S("payments", "POST /v1/charges", kind=3, duration_ms=231.0, method="POST",
      route="/v1/charges", http_status=402, error="card declined"),
    S("checkout", "POST /checkout", duration_ms=264.5, method="POST", route="/checkout",
      http_status=201),
    S("checkout", "GET /orders/{id}", duration_ms=1503.0, method="GET", route="/orders/{id}",
      http_status=504, error="upstream timeout"),
]  # fmt: skip
GLOBEX_SPANS = [
    S("billing", "POST /invoices", duration_ms=45.0, method="POST", route="/invoices",
      http_status=201),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# PNG checks (no image library needed)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def png_distinct_bytes(data: bytes) -> int:
    """How many distinct byte values the decompressed image data holds: a blank or one-colour
    image has a handful, a rendered page with text and colours far more."""
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"the status page test needs Chromium at {CHROMIUM} (Debian: apt-get install -y "
            "chromium; or set CHROMIUM=/path/to/chromium)",
            pytrace=False,
        )
    with sync_playwright() as pw:
        # Playwright starts it with a fresh, empty profile (--user-data-dir) of its own.
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Setup:
    gw: Gateway
    sink: Sink
    admin_url: str


@pytest.fixture
def gateway(tmp_path: Path, sink: Sink) -> Iterator[Setup]:
    admin_port = free_port()
    unreachable = free_port()  # nothing listens here: the backend keeps retrying
    config = {
        "backends": {
            "central": {"protocol": "http/protobuf", "endpoint": sink.endpoint},
            "globex-tempo": {
                "protocol": "http/protobuf",
                "endpoint": f"http://127.0.0.1:{unreachable}",
                "timeout": "1s",
            },
        },
        "service_backends": ["central"],
        "tenants": {
            "acme": {"api_keys": [sha256(KEYS["acme"])], "attributes": {"team": "payments"}},
            "globex": {
                "api_keys": [sha256(KEYS["globex"])],
                "backends": ["globex-tempo"],
                "signals": ["traces", "logs"],
            },
        },
        "retry": {"initial_interval": "200ms", "max_interval": "1s", "max_elapsed": "5m"},
        "shutdown_timeout": "1s",  # the unreachable backend's queue need not drain at the end
        "admin": {"listen": f"127.0.0.1:{admin_port}", "api_key": ADMIN_KEY},
    }
    with run_gateway(tmp_path, config) as gw:
        wait_for_port(admin_port)
        yield Setup(gw, sink, f"http://127.0.0.1:{admin_port}")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    p = context.new_page()
    p.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield p
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


# ---------------------------------------------------------------------------------------------


def tail_names(page: Page) -> list[str]:
    return page.locator("#tail tbody td.span-name").all_text_contents()


def wait_tail_live(page: Page, gw: Gateway, key: str) -> None:
    """Wait until the tail is subscribed (a stream may only answer with its first message):
    send a probe span until one shows, then clear the table."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while "probe" not in tail_names(page):
        assert time.monotonic() < deadline, "the live tail showed no span"
        assert send(gw, key, [S("probe", "probe", kind=1)]).status_code == 200
        page.wait_for_timeout(300)
    page.wait_for_timeout(300)  # a late probe lands before the clear, not after
    expect(page.locator("#tail-state")).to_have_attribute("data-state", "live")
    page.click("#tail-clear")
    expect(page.locator("#tail tbody tr")).to_have_count(0)


def test_status_page_shows_live_tail_and_backends(
    gateway: Setup, page: Page, tmp_path: Path
) -> None:
    gw = gateway.gw
    page.goto(gateway.admin_url + "/")
    expect(page).to_have_title("otlp-gateway status")

    # A wrong key is refused and said so; the right one fills the tables.
    page.fill("#admin-key", "not-the-key")
    page.click("#connect")
    expect(page.locator("#message")).to_contain_text("refused")
    page.fill("#admin-key", ADMIN_KEY)
    page.click("#connect")
    expect(page.locator("#conn")).to_have_attribute("data-state", "ok")
    expect(page.locator("#tenants tbody tr")).to_have_count(2)
    expect(page.locator("#tail-tenant option")).to_have_text(["choose a tenant", "acme", "globex"])

    # The live tail of acme: spans sent now show up, newest on top; globex's do not.
    page.select_option("#tail-tenant", "acme")
    wait_tail_live(page, gw, KEYS["acme"])
    empty_tail = page.locator("#tail").screenshot()
    for s in ACME_SPANS:
        assert send(gw, KEYS["acme"], [s]).status_code == 200
        assert send(gw, KEYS["globex"], GLOBEX_SPANS).status_code == 200
    expected = [s.name for s in reversed(ACME_SPANS)]
    expect(page.locator("#tail tbody td.span-name")).to_have_text(expected)
    top = page.locator("#tail tbody tr").first
    expect(top.locator("td.service")).to_have_text("checkout")
    expect(top.locator("td.status")).to_have_text("error: upstream timeout")
    expect(top.locator("td.http-method")).to_have_text("GET")
    expect(top.locator("td.http-route")).to_have_text("/orders/{id}")
    expect(top.locator("td.http-status")).to_have_text("504")
    expect(top.locator("td.duration")).to_have_text("1.50 s")
    expect(page.locator("#tail tbody tr").nth(3).locator("td.kind")).to_have_text("client")

    # A refused request (globex may not send metrics), for the tenants and errors tables.
    refused = httpx.post(
        f"{gw.http_endpoint}/v1/metrics",
        json={"resourceMetrics": []},
        headers={"authorization": f"Bearer {KEYS['globex']}"},
        timeout=10,
    )
    assert refused.status_code == 403

    # Backends: the sink's is up, the unreachable one retrying; the tables refresh by themselves.
    central = page.locator('#backends tbody tr[data-backend="central"]')
    expect(central.locator(".state")).to_have_text("UP")
    expect(central.locator("td.endpoint")).to_have_text(gateway.sink.endpoint)
    expect(central.locator("td.exported")).not_to_have_text("0")
    globex_tempo = page.locator('#backends tbody tr[data-backend="globex-tempo"]')
    expect(globex_tempo.locator(".state")).to_have_text("RETRYING")
    expect(globex_tempo.locator("td.last-error")).not_to_be_empty()
    acme = page.locator('#tenants tbody tr[data-tenant="acme"]')
    expect(acme.locator("td.accepted")).not_to_have_text("0")
    globex = page.locator('#tenants tbody tr[data-tenant="globex"]')
    expect(globex.locator("td.refused")).to_have_text("1")
    refusal = page.locator('#errors tbody tr[data-kind="refused"][data-tenant="globex"]')
    expect(refusal).to_contain_text("metrics")
    failing = page.locator('#errors tbody tr[data-kind="export"][data-backend="globex-tempo"]')
    expect(failing.first).to_be_visible()

    # The screenshot shows the rows: the tail is drawn taller than when it was empty.
    tail_shot = page.locator("#tail").screenshot()
    empty_h, full_h = png_size(empty_tail)[1], png_size(tail_shot)[1]
    assert full_h >= empty_h + 20 * len(ACME_SPANS), (empty_h, full_h)
    shot = tmp_path / "status-page.png"
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    data = shot.read_bytes()
    width, height = png_size(data)
    assert width == 1280 and height >= 600, (width, height)
    assert len(data) > 20_000 and png_distinct_bytes(data) > 64, "the screenshot looks blank"
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # A reload keeps the key and the chosen tenant for the tab (sessionStorage).
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "ok")
    expect(page.locator("#tail-tenant")).to_have_value("acme")
    expect(page.locator("#tail-state")).to_contain_text("acme")

    # Choosing another tenant ends acme's stream and starts globex's, from an empty table.
    page.select_option("#tail-tenant", "globex")
    expect(page.locator("#tail tbody tr")).to_have_count(0)
    wait_tail_live(page, gw, KEYS["globex"])
    assert send(gw, KEYS["acme"], ACME_SPANS[:1]).status_code == 200
    assert send(gw, KEYS["globex"], GLOBEX_SPANS).status_code == 200
    expect(page.locator("#tail tbody td.span-name")).to_have_text(["POST /invoices"])
