"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright): the
page served by the admin listener, the admin key entered (or taken from `#key=` in the address),
a tenant's live tail showing spans sent during the test (checked in the DOM and in a screenshot),
the backends, tenants and errors tables filled from the admin API, the charts drawn from the
history the gateway keeps (GET /api/history), a refused reload's reason shown whole, and the
fleet of a cluster's replicas with its warnings (config drift, stale replicas, Redis down).

docs/status-page.png, the screenshot the README shows, is made by scripts/status_page_shot.py."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import signal
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
import yaml
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gateway import config as config_mod
from gateway.admin.history import INTERVAL_ENV, History
from gateway.cluster.fleet import REDIS_DOWN, config_digest
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.fleet import cluster_name, put_replica
from tests.support.peers import Gateway, Sink, free_port, run_gateway, wait_for_port
from tests.support.redis import RedisServer

TIMEOUT_MS = 15_000
HISTORY_INTERVAL = 0.5  # seconds between two points of the charts (5 by default)

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
    config_path: Path  # the file the gateway reloads


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
    with run_gateway(tmp_path, config, env={INTERVAL_ENV: str(HISTORY_INTERVAL)}) as gw:
        wait_for_port(admin_port)
        path = tmp_path / f"gateway-{gw.grpc_port}.yaml"  # as run_gateway names it
        yield Setup(gw, sink, f"http://127.0.0.1:{admin_port}", path)


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


def test_status_page_shows_live_tail_and_backends(gateway: Setup, page: Page) -> None:
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
    # no cluster: the fleet is this process alone, with nothing to warn about
    expect(page.locator("#fleet tbody tr")).to_have_count(1)
    expect(page.locator("#fleet tbody tr[data-self]")).to_have_attribute("data-state", "live")
    expect(page.locator("#fleet-summary")).to_have_text("no cluster configured: this process alone")
    expect(page.locator("#fleet-warnings")).to_be_hidden()

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
    data = page.screenshot(full_page=True, animations="disabled")
    width, height = png_size(data)
    assert width == 1280 and height >= 600, (width, height)
    assert len(data) > 20_000 and png_distinct_bytes(data) > 64, "the screenshot looks blank"

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


# ---------------------------------------------------------------------------------------------
# Charts, the key in the address, reload reasons


def chart_line(page: Page, chart: str, series: str) -> Any:
    return page.locator(f'#charts [data-chart="{chart}"] path[data-series="{series}"]')


def wait_value(page: Page, selector: str, attribute: str, above: float) -> None:
    """Wait until the attribute of the element, as a number, is above `above`."""
    page.wait_for_function(
        "([sel, attr, above]) => { const e = document.querySelector(sel);"
        " return e !== null && Number(e.getAttribute(attr)) > above; }",
        arg=[selector, attribute, above],
    )


def test_status_page_charts_and_key_from_the_address(gateway: Setup, page: Page) -> None:
    gw = gateway.gw
    for s in ACME_SPANS:
        assert send(gw, KEYS["acme"], [s]).status_code == 200
    assert send(gw, KEYS["globex"], GLOBEX_SPANS * 3).status_code == 200
    refused = httpx.post(  # globex may not send metrics
        f"{gw.http_endpoint}/v1/metrics",
        json={"resourceMetrics": []},
        headers={"authorization": f"Bearer {KEYS['globex']}"},
        timeout=10,
    )
    assert refused.status_code == 403

    # The history is behind the admin key, like the rest of the API.
    history_url = gateway.admin_url + "/api/history"
    denied = httpx.get(history_url, timeout=10)
    assert denied.status_code == 401 and denied.json()["code"] == "unauthenticated"
    ok = httpx.get(history_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["interval_seconds"] == HISTORY_INTERVAL and body["points"] == 180
    assert list(body["tenants"]) == ["acme", "globex", "unknown"]  # unknown: the 401 above
    assert set(body["tenants"]["acme"]) == {"accepted_items", "refused_items", "refused_requests"}
    assert list(body["tenants"]["unknown"]) == ["refused_requests"]  # no key, no items
    assert list(body["backends"]) == ["central", "globex-tempo"]
    assert all(len(v) == len(body["times"]) for v in body["backends"]["central"].values())

    # The page takes the key from the fragment and removes it from the address.
    entries = page.evaluate("history.length")
    page.goto(gateway.admin_url + "/#key=" + quote(ADMIN_KEY, safe=""))
    expect(page.locator("#conn")).to_have_attribute("data-state", "ok")
    assert page.url == gateway.admin_url + "/"
    assert page.evaluate("location.hash") == ""
    assert page.evaluate("history.length") == entries + 1  # the entry replaced, none added
    expect(page.locator("#admin-key")).to_have_value(ADMIN_KEY)

    # A line per tenant and per backend, each showing what was sent.
    for chart in ("accepted_items", "refused_items", "refused_requests"):
        for tenant in ("acme", "globex"):
            expect(chart_line(page, chart, tenant)).to_have_count(1)
    for chart in ("exported_items", "queue_bytes"):
        for backend in ("central", "globex-tempo"):
            expect(chart_line(page, chart, backend)).to_have_count(1)
    expect(chart_line(page, "refused_requests", "unknown")).to_have_count(1)  # the 401
    expect(chart_line(page, "accepted_items", "unknown")).to_have_count(0)
    line = '#charts [data-chart="{}"] path[data-series="{}"]'.format
    wait_value(page, line("accepted_items", "acme"), "data-max", 0)
    wait_value(page, line("accepted_items", "globex"), "data-max", 0)
    wait_value(page, line("refused_requests", "globex"), "data-max", 0)
    wait_value(page, line("exported_items", "central"), "data-max", 0)
    wait_value(page, line("queue_bytes", "globex-tempo"), "data-max", 0)  # nothing takes them
    expect(chart_line(page, "accepted_items", "acme")).to_have_attribute("stroke", re.compile("#"))
    legend = page.locator('#charts [data-chart="accepted_items"] .legend li[data-series="acme"]')
    expect(legend).to_contain_text("acme")

    # Live: the charts take the gateway's new points by themselves.
    samples = int(page.locator("#charts").get_attribute("data-samples") or 0)
    points = int(chart_line(page, "accepted_items", "acme").get_attribute("data-points") or 0)
    assert samples >= 1 and points >= 1
    wait_value(page, "#charts", "data-samples", samples)
    wait_value(page, line("accepted_items", "acme"), "data-points", points)

    # Pointing at a chart shows the values at that time in its legend.
    page.hover('#charts [data-chart="accepted_items"] svg')
    expect(page.locator('#charts [data-chart="accepted_items"] .legend')).to_contain_text("at ")

    # A reload does not ask for the key again: it is kept for the tab, not put back in the address.
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "ok")
    assert page.url == gateway.admin_url + "/"


def test_refused_reload_reason_is_shown_whole(gateway: Setup, page: Page) -> None:
    # A config naming a backend that does not exist: refused, with a long reason.
    missing = "tempo-" + "-".join(["eu-west-1-behind-the-corporate-proxy"] * 4)
    broken = yaml.safe_load(gateway.config_path.read_text())
    broken["tenants"]["acme"]["backends"] = [missing]
    gateway.config_path.write_text(yaml.safe_dump(broken))
    gateway.gw.proc.send_signal(signal.SIGHUP)

    page.goto(gateway.admin_url + "/#key=" + quote(ADMIN_KEY, safe=""))
    reason = page.locator('#errors tbody tr[data-kind="reload"] td.message > div').last
    expect(reason).to_contain_text(f"no backend named '{missing}'")
    expect(reason).to_contain_text("defined backends: central, globex-tempo")
    # Whole: nothing of it is cut off (it is taller than the two lines other messages get).
    box = reason.evaluate(
        "e => ({scroll: e.scrollHeight, client: e.clientHeight,"
        " lines: e.clientHeight / parseFloat(getComputedStyle(e).lineHeight)})"
    )
    assert box["scroll"] <= box["client"] + 1, box
    assert box["lines"] > 2.5, box


def test_history_rates_and_bounds() -> None:
    """The sampler alone: rates from counter totals, levels as read, a new series empty before it
    appeared, a removed one dropped, and no more points than its ring holds."""
    readings: dict[tuple[str, str, str], float] = {}
    history = History(lambda: dict(readings), interval=5.0, points=3)
    readings[("tenants", "acme", "accepted_items")] = 100.0
    readings[("backends", "central", "queue_bytes")] = 10.0
    history.sample(wall=1000.0, mono=0.0)  # the first reading: totals only
    assert history.snapshot()["times"] == []
    readings[("tenants", "acme", "accepted_items")] = 150.0
    history.sample(wall=1005.0, mono=5.0)
    readings[("tenants", "acme", "accepted_items")] = 150.0
    readings[("tenants", "globex", "accepted_items")] = 7.0  # a tenant added by a reload
    readings[("backends", "central", "queue_bytes")] = 30.0
    history.sample(wall=1010.0, mono=10.0)
    snap = history.snapshot()
    assert snap["times"] == [1005.0, 1010.0]
    assert snap["tenants"]["acme"]["accepted_items"] == [10.0, 0.0]
    assert snap["tenants"]["globex"]["accepted_items"] == [None, None]  # no rate yet
    assert snap["backends"]["central"]["queue_bytes"] == [10.0, 30.0]
    del readings[("tenants", "acme", "accepted_items")]  # removed by a reload
    for t in (15.0, 20.0):
        readings[("tenants", "globex", "accepted_items")] += 10
        history.sample(wall=1000.0 + t, mono=t)
    snap = history.snapshot()
    assert snap["times"] == [1010.0, 1015.0, 1020.0]
    assert "acme" not in snap["tenants"]
    assert snap["tenants"]["globex"]["accepted_items"] == [None, 2.0, 2.0]


# ---------------------------------------------------------------------------------------------
# The fleet


def test_status_page_shows_the_fleet(tmp_path: Path, page: Page) -> None:
    """Two real replicas of one cluster, and two records written straight into their Redis: one
    replica serving another config (drift) and one that stopped heartbeating (stale). Then Redis
    goes away, and the page says quotas are local shares."""
    drifting = "0123456789ab"
    with RedisServer() as server, contextlib.ExitStack() as stack:
        name = cluster_name()
        cluster = {"redis": server.url, "name": name, "heartbeat_interval": "300ms"}
        config = {
            "backends": {"local": {"protocol": "file", "path": "./out"}},
            "service_backends": ["local"],
            "admin": {"api_key": ADMIN_KEY},
            "cluster": {**cluster, "timeout": "200ms"},
        }
        one = stack.enter_context(run_gateway(tmp_path, config))
        two = stack.enter_context(run_gateway(tmp_path, config))
        ids = [f"{socket.gethostname()}:{gw.proc.pid}" for gw in (one, two)]
        ours = config_digest(config_mod.load(tmp_path / f"gateway-{one.grpc_port}.yaml"))
        db = redis.Redis.from_url(server.url, socket_timeout=5)
        stack.callback(db.close)
        now = time.time()
        put_replica(
            db, name, "peer-drift", seen=now + 60, digest=drifting,
            queue_bytes=3 * 1024 * 1024, accepted=1234.5, version="9.9.8",
        )  # fmt: skip
        put_replica(db, name, "peer-gone", seen=now - 30, digest=ours)

        page.goto(one.admin_url + "/#key=" + quote(ADMIN_KEY, safe=""))
        expect(page.locator("#conn")).to_have_attribute("data-state", "ok")
        rows = page.locator("#fleet tbody tr")
        expect(rows).to_have_count(4)
        expect(page.locator("#fleet-summary")).to_have_text(f"cluster {name}: 3 live, 1 stale")
        # this replica first, marked; the others by id
        expect(rows.first).to_have_attribute("data-replica", ids[0])
        expect(rows.first).to_have_attribute("data-self", "")
        expect(rows.first.locator("td.id")).to_contain_text("this")
        me = page.locator(f'#fleet tr[data-replica="{ids[0]}"]')
        expect(me.locator("td.digest")).to_have_text(ours)
        expect(me.locator(".quota")).to_have_text("shared")
        other = page.locator(f'#fleet tr[data-replica="{ids[1]}"]')
        expect(other).to_have_attribute("data-state", "live")
        expect(other.locator("td.listen")).to_have_text(
            f"127.0.0.1:{two.grpc_port}, 127.0.0.1:{two.http_port}"
        )
        drift = page.locator('#fleet tr[data-replica="peer-drift"]')
        expect(drift).to_have_attribute("data-drift", "")
        expect(drift.locator("td.digest")).to_have_text(f"{drifting} drift")
        expect(drift.locator("td.version")).to_have_text("9.9.8")
        expect(drift.locator("td.queued")).to_have_text("3.0 MiB")
        expect(drift.locator("td.accepted")).to_have_text("1.2k")
        gone = page.locator('#fleet tr[data-replica="peer-gone"]')
        expect(gone).to_have_attribute("data-state", "stale")
        expect(gone.locator(".state")).to_have_text("stale")
        expect(gone).not_to_have_attribute("data-drift", "")  # a stale replica does not drift
        expect(page.locator("#fleet tbody tr[data-drift]")).to_have_count(1)

        banner = page.locator("#fleet-warnings")
        expect(banner).to_be_visible()
        expect(banner).to_have_attribute("data-level", "warn")
        expect(banner).to_have_attribute("data-drift", "true")
        expect(banner).to_have_attribute("data-stale", "true")
        expect(banner.locator("div")).to_have_count(2)
        expect(banner.locator("div").first).to_contain_text(
            f"config drift: 2 of 3 live replicas serve config {ours}"
        )
        expect(banner.locator("div").last).to_contain_text("1 stale replica")
        expect(banner.locator("div").last).to_contain_text("peer-gone")
        shot = page.locator("#fleet-panel").screenshot()
        assert png_size(shot)[1] > 100 and png_distinct_bytes(shot) > 16, "the fleet looks blank"

        # Redis gone: only what this replica knows of itself, and the fallback said
        server.stop()
        expect(banner).to_have_attribute("data-redis-down", "true")
        expect(banner).to_have_attribute("data-level", "error")
        expect(banner.locator("div")).to_have_count(1)
        expect(banner).to_contain_text(REDIS_DOWN)
        expect(rows).to_have_count(1)
        expect(me.locator(".quota")).to_have_text("local")
        expect(page.locator("#fleet-summary")).to_contain_text("Redis unreachable")

        # back: the fleet is read again (the stopped Redis came back empty: the replicas'
        # next heartbeats fill it)
        server.start()
        expect(banner).to_be_hidden(timeout=TIMEOUT_MS)
        expect(rows).to_have_count(2)
