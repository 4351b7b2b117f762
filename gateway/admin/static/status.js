// The gateway's status page: charts of the last minutes (GET /api/history, kept by the gateway),
// tables refreshed from the admin API every 2 s, and the live tail of one tenant read from the
// server-streaming Tail call. Plain browser JavaScript and SVG, no build, nothing fetched from
// elsewhere.
"use strict";

const SERVICE = "/otlp_gateway.admin.v1.AdminService/";
const REFRESH_MS = 2000;
const TAIL_MAX_ROWS = 200;
const TAIL_RETRY_MS = 2000;
const KEY_STORE = "otlp-gateway.admin-key";
const TENANT_STORE = "otlp-gateway.tail-tenant";

const $ = (sel) => document.querySelector(sel);

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  timer: null,
  generation: 0, // of refresh() calls
  tenantNames: null, // names in the tail's <select>, as last filled
  tail: null, // {controller, tenant, service}
  tailRetry: null,
  skipped: 0,
  history: null, // the last GET /api/history answer, drawn as charts
  historyAt: 0, // Date.now() when it was fetched
  hover: null, // {chart, time}: the point under the mouse, whose values its legend shows
  resizing: 0, // requestAnimationFrame id
};

// --------------------------------------------------------------------------------------------
// Formatting

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const num = (v) => Number(v ?? 0); // proto3 JSON: uint64 as strings, defaults omitted
const fmtInt = (v) => num(v).toLocaleString("en-US");

function fmtBytes(v) {
  let n = num(v);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

function fmtAge(seconds) {
  const s = num(seconds);
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

function fmtClock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function fmtTime(unixSeconds) {
  const s = num(unixSeconds);
  if (!s) return "";
  const d = new Date(s * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return (today ? "" : d.toISOString().slice(0, 10) + " ") + fmtClock(d.getTime());
}

function fmtNanos(nanos) {
  if (!nanos) return "";
  try {
    return fmtClock(Number(BigInt(nanos) / 1000000n));
  } catch {
    return String(nanos);
  }
}

function fmtDuration(ms) {
  const v = num(ms);
  if (v === 0) return "0 ms";
  if (v < 1) return v.toFixed(3) + " ms";
  if (v < 1000) return v.toFixed(1) + " ms";
  return (v / 1000).toFixed(2) + " s";
}

// --------------------------------------------------------------------------------------------
// The admin API (Connect protocol, JSON codec)

class ApiError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

function headers(contentType) {
  return {
    "Content-Type": contentType,
    "Connect-Protocol-Version": "1",
    Authorization: "Bearer " + state.key,
  };
}

async function errorOf(response) {
  let code = "http_" + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.code) {
      code = body.code;
      message = body.message || body.code;
    }
  } catch {
    // not a Connect error body
  }
  return new ApiError(code, message);
}

async function call(method) {
  let response;
  try {
    response = await fetch(SERVICE + method, {
      method: "POST",
      headers: headers("application/json"),
      body: "{}",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError("unavailable", "the gateway does not answer (" + e.message + ")");
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

async function getJSON(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: "Bearer " + state.key }, cache: "no-store" });
  } catch (e) {
    throw new ApiError("unavailable", "the gateway does not answer (" + e.message + ")");
  }
  if (!response.ok) throw await errorOf(response); // the same error body as the API's
  return response.json();
}

// One envelope: 1 flag byte, 4-byte big-endian length, the message.
function envelope(obj) {
  const data = new TextEncoder().encode(JSON.stringify(obj));
  const out = new Uint8Array(5 + data.length);
  new DataView(out.buffer).setUint32(1, data.length, false);
  out.set(data, 5);
  return out;
}

// Yields [flags, parsed JSON] for each envelope of a streaming response body; envelopes may be
// split across chunks or several may share one.
async function* envelopes(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = new Uint8Array(0);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const joined = new Uint8Array(buf.length + value.length);
      joined.set(buf);
      joined.set(value, buf.length);
      buf = joined;
      while (buf.length >= 5) {
        const len = new DataView(buf.buffer, buf.byteOffset, 5).getUint32(1, false);
        if (buf.length < 5 + len) break;
        const flags = buf[0];
        const text = decoder.decode(buf.subarray(5, 5 + len));
        buf = buf.slice(5 + len);
        if (flags & 1) throw new ApiError("internal", "compressed message received");
        yield [flags, text ? JSON.parse(text) : {}];
      }
    }
  } finally {
    reader.releaseLock();
  }
  if (buf.length) throw new ApiError("data_loss", "the stream ended inside a message");
}

// --------------------------------------------------------------------------------------------
// Connection state and messages

function setConn(kind, text) {
  const c = $("#conn");
  c.dataset.state = kind;
  c.textContent = text;
}

function showMessage(text) {
  const m = $("#message");
  m.textContent = text || "";
  m.hidden = !text;
}

// --------------------------------------------------------------------------------------------
// Tables

function renderTenants(resp) {
  const tenants = resp.tenants || [];
  $("#open-mode").hidden = !resp.open;
  const rows = tenants.map((t) => {
    const attrs = Object.entries(t.resourceAttributes || {})
      .map(([k, v]) => `${k}=${v}`)
      .join(", ");
    return el(
      "tr",
      { "data-tenant": t.name },
      el("td", { class: "name", text: t.name }),
      el("td", { class: "num keys", text: fmtInt(t.apiKeys) }),
      el("td", { class: "backends", text: (t.backends || []).join(", ") || "-" }),
      el("td", { class: "attributes mono muted wrap", text: attrs }),
      el("td", { class: "num accepted", text: fmtInt(t.acceptedItems) }),
      el("td", { class: "num refused", text: fmtInt(t.refusedRequests) }),
    );
  });
  $("#tenants tbody").replaceChildren(...rows);
  const names = tenants.map((t) => t.name);
  fillTenantSelect(resp.open && !names.length ? ["default"] : names);
}

function queueLine(q) {
  const max = num(q.maxBytes);
  const bytes = num(q.bytes);
  return el(
    "div",
    { class: "queue", "data-queue": q.tenant || "" },
    el("span", { class: "q-name muted", text: q.tenant ? "@" + q.tenant : "shared" }),
    el("span", { class: "q-batches num", text: fmtInt(q.batches) + " batches" }),
    max ? el("meter", { min: "0", max: String(max), value: String(bytes), high: String(max * 0.8) }) : null,
    el("span", { class: "q-bytes num", text: fmtBytes(bytes) + (max ? " / " + fmtBytes(max) : "") }),
    el("span", { class: "q-age num muted", text: num(q.oldestAgeSeconds) ? "oldest " + fmtAge(q.oldestAgeSeconds) : "" }),
  );
}

function renderBackends(resp) {
  const rows = (resp.backends || []).map((b) => {
    const st = (b.state || "BACKEND_STATE_UNSPECIFIED").replace("BACKEND_STATE_", "");
    const flags = [b.serviceWide ? "all tenants" : null, b.durable ? "durable" : null].filter(Boolean);
    return el(
      "tr",
      { "data-backend": b.name, "data-state": st },
      el("td", { class: "name" }, el("div", { text: b.name }), el("div", { class: "muted", text: flags.join(", ") })),
      el("td", { class: "protocol", text: b.protocol || "" }),
      el("td", { class: "endpoint mono", text: b.endpoint || "" }),
      el("td", {}, el("span", { class: "state pill " + st.toLowerCase(), text: st })),
      el("td", { class: "num exported", text: fmtInt(b.exportedItems) }),
      el("td", { class: "num dropped", text: fmtInt(b.droppedItems) }),
      el("td", { class: "queues" }, ...(b.queues || []).map(queueLine)),
      el(
        "td",
        { class: "last-error" },
        b.lastError ? el("div", { class: "muted", text: fmtTime(b.lastErrorTime) }) : null,
        b.lastError ? el("div", { class: "clamp", title: b.lastError, text: b.lastError }) : null,
      ),
    );
  });
  $("#backends tbody").replaceChildren(...rows);
}

// The same error repeated (a backend retrying, a client with a wrong key) is one row with a
// count and the time it was last seen; rows stay newest first.
function renderErrors(resp) {
  const groups = new Map();
  for (const e of resp.errors || []) {
    const id = [e.kind, e.tenant, e.backend, e.signal, e.message].join("\u0000");
    const g = groups.get(id);
    if (g) g.count += 1;
    else groups.set(id, { e, count: 1 });
  }
  const rows = [...groups.values()].map(({ e, count }) =>
    el(
      "tr",
      { "data-kind": e.kind || "", "data-tenant": e.tenant || "", "data-backend": e.backend || "" },
      el("td", { class: "time num", text: fmtTime(e.time) }),
      el(
        "td",
        { class: "kind" },
        el("span", { class: "pill " + (e.kind === "export" || e.kind === "reload" ? "error" : "warn"), text: e.kind || "" }),
      ),
      el("td", { class: "count num", text: count > 1 ? count + "\u00d7" : "" }),
      el(
        "td",
        { class: "message" },
        el("div", { class: "where muted", text: [e.tenant, e.backend, e.signal].filter(Boolean).join(" \u00b7 ") }),
        // A refused reload's reason is what the operator must fix: shown whole, wrapped.
        e.kind === "reload"
          ? el("div", { class: "whole", text: e.message || "" })
          : el("div", { class: "clamp", title: e.message || null, text: e.message || "" }),
      ),
    ),
  );
  $("#errors tbody").replaceChildren(...rows);
  $("#errors-empty").hidden = rows.length > 0;
}

// The fleet: every replica of the cluster as its heartbeat in Redis says (this process alone
// without a `cluster` section), and a banner for what needs a look: Redis unreachable (quotas
// fall back to local shares), config drift, replicas that stopped heartbeating.
function renderFleet(resp) {
  const panel = $("#fleet-panel");
  const banner = $("#fleet-warnings");
  if (!resp) {
    // a gateway without ListReplicas
    panel.hidden = true;
    banner.hidden = true;
    return;
  }
  panel.hidden = false;
  const c = resp.cluster || {};
  const replicas = resp.replicas || [];
  const live = replicas.filter((r) => r.state === "REPLICA_STATE_LIVE").length;
  const stale = replicas.length - live;
  const notListed = num(resp.notListed);
  $("#fleet-summary").textContent = c.configured
    ? `cluster ${c.name || "default"}: ${live} live, ${stale} stale` +
      (notListed ? `, ${fmtInt(notListed)} more not listed` : "") +
      (c.redisUp ? "" : ", Redis unreachable")
    : "no cluster configured: this process alone";
  const now = Date.now() / 1000;
  const rows = replicas.map((r) => {
    const st = r.state === "REPLICA_STATE_LIVE" ? "live" : "stale";
    const local = c.configured && r.quotaMode === "local";
    return el(
      "tr",
      { "data-replica": r.id, "data-state": st, "data-drift": r.drift || null, "data-self": r.isSelf || null },
      el("td", { class: "id mono" }, r.id, r.isSelf ? " " : null, r.isSelf ? el("span", { class: "pill kind", text: "this" }) : null),
      el("td", {}, el("span", { class: "state pill " + (st === "live" ? "up" : "warn"), text: st })),
      el("td", { class: "version", text: r.version || "" }),
      el(
        "td",
        { class: "digest" },
        el("span", { class: "mono", text: r.configDigest || "" }),
        r.drift ? " " : null,
        r.drift ? el("span", { class: "pill error", title: "the fleet serves " + (resp.fleetConfigDigest || "?"), text: "drift" }) : null,
      ),
      el("td", { class: "num queued", text: fmtBytes(r.queueBytes) }),
      el("td", { class: "num accepted", text: fmtRate(r.acceptedPerSecond) }),
      el("td", { class: "num refused", text: fmtRate(r.refusedPerSecond) }),
      el("td", {}, el("span", { class: "quota pill" + (local ? " warn" : ""), text: r.quotaMode || "" })),
      el("td", { class: "listen mono muted", text: (r.listen || "").split(",").join(", ") }),
      el("td", { class: "num seen muted", text: num(r.seen) ? fmtAge(Math.max(0, now - num(r.seen))) + " ago" : "" }),
    );
  });
  $("#fleet tbody").replaceChildren(...rows);
  const warnings = resp.warnings || [];
  banner.replaceChildren(...warnings.map((w) => el("div", { class: "warning", text: w })));
  banner.dataset.level = c.configured && !c.redisUp ? "error" : "warn";
  banner.dataset.redisDown = c.configured && !c.redisUp ? "true" : "false";
  banner.dataset.drift = replicas.some((r) => r.drift) ? "true" : "false";
  banner.dataset.stale = stale ? "true" : "false";
  banner.hidden = warnings.length === 0;
}

// --------------------------------------------------------------------------------------------
// Charts: the gateway samples its counters every few seconds and keeps the last points
// (gateway/admin/history.py); the page draws them as SVG and fetches them again once a new
// point is due.

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_HEIGHT = 140;
const PAD = { left: 46, right: 10, top: 8, bottom: 18 };
const PALETTE = ["#2456b3", "#d9480f", "#2b8a3e", "#ae3ec9", "#0b7285", "#e67700", "#c2255c", "#5c940d", "#364fc7", "#495057"];
const CHARTS = [
  { series: "accepted_items", group: "tenants", title: "Accepted items/s", note: "per tenant", rate: true },
  { series: "refused_items", group: "tenants", title: "Refused items/s", note: "read, then refused: quota, full queue", rate: true },
  { series: "refused_requests", group: "tenants", title: "Refused requests/s", note: "every reason; unknown: no valid key", rate: true },
  { series: "exported_items", group: "backends", title: "Exported items/s", note: "per backend", rate: true },
  { series: "queue_bytes", group: "backends", title: "Queued bytes", note: "per backend, all its queues", rate: false },
];

const trimZero = (text) => text.replace(/\.0+$/, "");

function fmtRate(v) {
  const n = num(v);
  if (n >= 1e6) return trimZero((n / 1e6).toFixed(n >= 1e7 ? 0 : 1)) + "M";
  if (n >= 1e3) return trimZero((n / 1e3).toFixed(n >= 1e4 ? 0 : 1)) + "k";
  if (n >= 10 || Number.isInteger(n)) return n.toFixed(0);
  return n.toFixed(n >= 1 ? 1 : 2);
}

function fmtSpan(seconds) {
  return seconds >= 120 ? Math.round(seconds / 60) + " min" : Math.round(seconds) + " s";
}

const fmtHMS = (unixSeconds) => fmtClock(unixSeconds * 1000).slice(0, 8);

// The smallest of 1, 2, 2.5, 5 x 10^k at or above v: a y axis with round labels. Bytes are
// rounded in their unit (KiB, MiB, ...), so the labels read 50 KiB, not 49 KiB.
function niceMax(v, bytes) {
  if (!(v > 0)) return 1;
  const unit = bytes ? 1024 ** Math.min(4, Math.floor(Math.log(v) / Math.log(1024))) : 1;
  const p = 10 ** Math.floor(Math.log10(v / unit));
  const top = [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m * unit >= v * (1 - 1e-9));
  return bytes && top >= 1000 ? unit * 1024 : unit * top; // 1 MiB rather than 1000 KiB
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function historyDue() {
  const every = state.history ? num(state.history.interval_seconds) * 1000 : 0;
  return Date.now() - state.historyAt >= every;
}

function clearCharts() {
  state.history = null;
  state.historyAt = 0;
  state.hover = null;
  $("#charts").replaceChildren();
  $("#charts").dataset.samples = "0";
  $("#charts-range").textContent = "";
}

function renderCharts(h) {
  state.history = h;
  const box = $("#charts");
  const times = h.times || [];
  box.dataset.samples = String(times.length);
  box.dataset.newest = times.length ? String(times[times.length - 1]) : "";
  const interval = num(h.interval_seconds);
  $("#charts-range").textContent =
    `last ${fmtSpan(interval * num(h.points))}, a point every ${interval < 10 ? interval : Math.round(interval)} s` +
    (times.length ? "" : ": the first comes within " + fmtSpan(2 * interval));
  if (box.children.length !== CHARTS.length) {
    box.replaceChildren(
      ...CHARTS.map((c) =>
        el(
          "figure",
          { class: "chart", "data-chart": c.series },
          el("figcaption", {}, el("span", { class: "title", text: c.title }), " ", el("span", { class: "muted", text: c.note })),
          el("div", { class: "plot" }),
          el("ul", { class: "legend" }),
        ),
      ),
    );
  }
  for (const c of CHARTS) drawChart(box.querySelector(`[data-chart="${c.series}"]`), c, h);
}

function drawChart(fig, c, h) {
  const times = h.times || [];
  const n = times.length;
  const group = h[c.group] || {};
  const fmt = c.rate ? fmtRate : fmtBytes;
  // colours follow a tenant's or backend's place in its group (backends from another part of the
  // palette), the same in every chart; a name without this series (unknown: refused requests
  // only) is left out
  const offset = c.group === "backends" ? 4 : 0;
  const lines = Object.keys(group).flatMap((name, i) => {
    const values = group[name][c.series];
    if (!values) return [];
    const shown = values.filter((v) => v !== null && v !== undefined);
    return [{ name, values, color: PALETTE[(i + offset) % PALETTE.length], max: Math.max(0, ...shown), points: shown.length }];
  });
  const width = Math.max(200, fig.clientWidth);
  const plotW = width - PAD.left - PAD.right;
  const plotH = CHART_HEIGHT - PAD.top - PAD.bottom;
  const top = niceMax(Math.max(0, ...lines.map((l) => l.max)), !c.rate);
  const span = n > 1 ? times[n - 1] - times[0] : 0;
  const x = (i) => PAD.left + (span > 0 ? ((times[i] - times[0]) / span) * plotW : plotW);
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const plot = svg("svg", { width, height: CHART_HEIGHT, viewBox: `0 0 ${width} ${CHART_HEIGHT}`, role: "img", "aria-label": c.title });
  for (const f of [0, 0.5, 1]) {
    const gy = y(top * f).toFixed(1);
    plot.append(
      svg("line", { class: "grid", x1: PAD.left, x2: width - PAD.right, y1: gy, y2: gy }),
      svg("text", { class: "axis", x: PAD.left - 6, y: gy, "text-anchor": "end", "dominant-baseline": "middle", text: fmt(top * f) }),
    );
  }
  if (n) {
    const base = CHART_HEIGHT - 4;
    plot.append(svg("text", { class: "axis", x: PAD.left, y: base, text: fmtHMS(times[0]) }));
    if (n > 1) plot.append(svg("text", { class: "axis", x: width - PAD.right, y: base, "text-anchor": "end", text: fmtHMS(times[n - 1]) }));
  } else {
    plot.append(svg("text", { class: "axis", x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, "text-anchor": "middle", text: "no points yet" }));
  }
  for (const l of lines) {
    // a gap (null: the series did not exist yet) lifts the pen
    let d = "";
    let pen = false;
    let last = -1;
    l.values.forEach((v, i) => {
      if (v === null || v === undefined || i >= n) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)} ${y(v).toFixed(1)}`;
      pen = true;
      last = i;
    });
    const path = svg("path", { class: "line", d: d || "M0 0", stroke: l.color, "data-series": l.name, "data-points": l.points, "data-max": l.max });
    path.append(svg("title", { text: l.name }));
    plot.append(path);
    if (last >= 0) plot.append(svg("circle", { class: "dot", cx: x(last).toFixed(1), cy: y(l.values[last]).toFixed(1), r: 2.5, fill: l.color }));
  }
  const cursor = svg("line", { class: "cursor", y1: PAD.top, y2: PAD.top + plotH, visibility: "hidden" });
  plot.append(cursor);

  // The legend: each series' latest value, or its value at the point under the mouse.
  const legend = fig.querySelector(".legend");
  const showAt = (at) => {
    const items = lines.map((l) => {
      let v = null;
      if (at !== null) v = l.values[at];
      else for (let i = Math.min(n, l.values.length) - 1; i >= 0 && v === null; i--) v = l.values[i] ?? null;
      const text = v === null || v === undefined ? "-" : fmt(v) + (c.rate ? "/s" : "");
      return el(
        "li",
        { "data-series": l.name },
        el("i", { style: "background:" + l.color }),
        el("span", { class: "name", text: l.name }),
        " ",
        el("span", { class: "value num", text }),
      );
    });
    if (at !== null) items.push(el("li", { class: "muted", text: "at " + fmtHMS(times[at]) }));
    legend.replaceChildren(...items);
    cursor.setAttribute("visibility", at === null ? "hidden" : "visible");
    if (at !== null) {
      cursor.setAttribute("x1", x(at).toFixed(1));
      cursor.setAttribute("x2", x(at).toFixed(1));
    }
  };
  plot.addEventListener("mousemove", (ev) => {
    if (!n) return;
    const px = ev.clientX - plot.getBoundingClientRect().left;
    let best = 0;
    for (let i = 1; i < n; i++) if (Math.abs(x(i) - px) < Math.abs(x(best) - px)) best = i;
    state.hover = { chart: c.series, time: times[best] };
    showAt(best);
  });
  plot.addEventListener("mouseleave", () => {
    state.hover = null;
    showAt(null);
  });
  const hovered = state.hover && state.hover.chart === c.series ? times.indexOf(state.hover.time) : -1;
  showAt(hovered >= 0 ? hovered : null);
  fig.querySelector(".plot").replaceChildren(plot);
}

// The readiness verdict (/readyz, no key): problems (not ready) and warnings (ready, but
// something needs a look, such as queue records in quarantine).
async function health() {
  try {
    const response = await fetch("/readyz", { cache: "no-store" });
    return await response.json(); // 200 and 503 both carry the verdict
  } catch {
    return null; // the API calls report an unreachable gateway
  }
}

function renderHealth(verdict) {
  const box = $("#health");
  const problems = (verdict && verdict.problems) || [];
  const warnings = (verdict && verdict.warnings) || [];
  const lines = [
    ...problems.map((p) => el("div", { class: "problem", text: "Not ready: " + p })),
    ...warnings.map((w) => el("div", { class: "warning", text: "Warning: " + w })),
  ];
  box.replaceChildren(...lines);
  box.dataset.level = problems.length ? "error" : "warn";
  box.hidden = lines.length === 0;
}

async function refresh() {
  clearTimeout(state.timer);
  const generation = ++state.generation; // a newer call (another key) supersedes this one
  if (!state.key) {
    setConn("idle", "not connected");
    return;
  }
  try {
    const [tenants, backends, errors, fleet, verdict, history] = await Promise.all([
      call("ListTenants"),
      call("ListBackends"),
      call("ListRecentErrors"),
      call("ListReplicas").catch((e) => {
        if (e.code === "unimplemented") return null; // an older gateway
        throw e;
      }),
      health(),
      historyDue() ? getJSON("/api/history") : null,
    ]);
    if (generation !== state.generation) return;
    if (history) {
      state.historyAt = Date.now();
      renderCharts(history);
    }
    renderHealth(verdict);
    renderTenants(tenants);
    renderBackends(backends);
    renderErrors(errors);
    renderFleet(fleet);
    setConn("ok", "connected");
    showMessage("");
    $("#updated").textContent = "updated " + fmtClock(Date.now());
  } catch (e) {
    if (generation !== state.generation) return;
    if (e.code === "unauthenticated" || e.code === "permission_denied") {
      setConn("error", "key refused");
      showMessage(e.code === "unauthenticated" ? "The admin key was refused: " + e.message : e.message);
      stopTail();
      return; // wait for another key
    }
    setConn("error", "error");
    showMessage(e.message);
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

// --------------------------------------------------------------------------------------------
// Live tail

function fillTenantSelect(names) {
  const key = names.join("\n");
  if (state.tenantNames === key) return;
  state.tenantNames = key;
  const select = $("#tail-tenant");
  const wanted = select.value || sessionStorage.getItem(TENANT_STORE) || "";
  const options = [el("option", { value: "", text: "choose a tenant" })];
  for (const n of names) options.push(el("option", { value: n, text: n }));
  select.replaceChildren(...options);
  select.value = names.includes(wanted) ? wanted : "";
  startTail(); // no-op while the same tenant is tailed
}

function setTail(kind, text) {
  const t = $("#tail-state");
  t.dataset.state = kind;
  t.textContent = text;
}

function tailRow(r) {
  const http = num(r.httpStatus);
  const status = r.status || "unset";
  return el(
    "tr",
    { class: "fresh status-" + status, "data-trace-id": r.traceId || "", "data-span-id": r.spanId || "" },
    el("td", { class: "time mono", text: fmtNanos(r.timeUnixNano) }),
    el("td", { class: "service", text: r.service || "" }),
    el("td", { class: "span-name", text: r.spanName || "" }),
    el("td", { class: "kind", text: r.kind || "" }),
    el("td", { class: "status", title: r.statusMessage || null, text: status + (r.statusMessage ? ": " + r.statusMessage : "") }),
    el("td", { class: "duration num", text: fmtDuration(r.durationMs) }),
    el("td", { class: "http-method", text: r.httpMethod || "" }),
    el("td", { class: "http-route mono", text: r.httpRoute || "" }),
    el("td", { class: "http-status num" + (http >= 400 ? " http-" + Math.floor(http / 100) : ""), text: http ? String(http) : "" }),
    el("td", { class: "trace-id mono muted", title: r.traceId || null, text: (r.traceId || "").slice(0, 8) }),
  );
}

function addTailRows(rows, skipped) {
  const tbody = $("#tail tbody");
  // Rows of one message arrive oldest first: newest ends up on top.
  const frag = document.createDocumentFragment();
  for (let i = rows.length - 1; i >= 0; i--) frag.append(tailRow(rows[i]));
  tbody.prepend(frag);
  while (tbody.rows.length > TAIL_MAX_ROWS) tbody.lastElementChild.remove();
  if (skipped) {
    state.skipped += skipped;
    $("#tail-skipped").textContent = `${fmtInt(state.skipped)} spans skipped (the page read too slowly)`;
  }
}

function clearTail() {
  $("#tail tbody").replaceChildren();
  state.skipped = 0;
  $("#tail-skipped").textContent = "";
}

function stopTail() {
  clearTimeout(state.tailRetry);
  if (state.tail) state.tail.controller.abort();
  state.tail = null;
  setTail("idle", "idle");
}

function startTail() {
  const tenant = $("#tail-tenant").value;
  const service = $("#tail-service").value.trim();
  if (state.tail && state.tail.tenant === tenant && state.tail.service === service) return;
  stopTail();
  clearTail();
  if (tenant) sessionStorage.setItem(TENANT_STORE, tenant);
  if (!tenant || !state.key) return;
  const tail = { controller: new AbortController(), tenant, service };
  state.tail = tail;
  runTail(tail);
}

async function runTail(tail) {
  // The stream may answer only with its first rows: until then it is waiting, not failing.
  setTail("connecting", "waiting for spans: " + tail.tenant);
  let retry = true;
  try {
    const response = await fetch(SERVICE + "Tail", {
      method: "POST",
      headers: headers("application/connect+json"),
      body: envelope(tailRequest(tail)),
      signal: tail.controller.signal,
      cache: "no-store",
    });
    if (!response.ok) throw await errorOf(response);
    setTail("live", "live: " + tail.tenant);
    for await (const [flags, msg] of envelopes(response.body)) {
      if (state.tail !== tail) return;
      if (flags & 2) {
        if (msg.error) throw new ApiError(msg.error.code, msg.error.message);
        break;
      }
      addTailRows(msg.rows || [], num(msg.skipped));
    }
    if (state.tail === tail) setTail("connecting", "stream ended, reconnecting");
  } catch (e) {
    if (tail.controller.signal.aborted || state.tail !== tail) return;
    if (e.code === "unauthenticated" || e.code === "permission_denied" || e.code === "invalid_argument" || e.code === "not_found") retry = false;
    setTail("error", "tail: " + (e.message || e.code || "failed"));
  }
  if (retry && state.tail === tail) {
    state.tailRetry = setTimeout(() => {
      if (state.tail === tail) runTail(tail);
    }, TAIL_RETRY_MS);
  }
}

function tailRequest(tail) {
  return tail.service ? { tenant: tail.tenant, service: tail.service } : { tenant: tail.tenant };
}

// --------------------------------------------------------------------------------------------
// Wiring

function connect(key) {
  state.key = key;
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  stopTail();
  state.tenantNames = null; // refill the select, which (re)starts the tail
  state.historyAt = 0; // fetch the charts' history with the next refresh
  refresh();
}

// `#key=<admin key>` in the address (the gateway's banner prints it): the page takes the key and
// removes it from the address bar and the history entry, so it is left in neither a screenshot
// nor the history. A fragment never reaches the server.
function keyFromFragment() {
  const m = /^#(?:.*&)?key=([^&]*)/.exec(location.hash);
  if (!m) return null;
  history.replaceState(history.state, "", location.pathname + location.search);
  try {
    return decodeURIComponent(m[1]).trim();
  } catch {
    return m[1].trim(); // not %-encoded after all: taken as written
  }
}

function takeKeyFromFragment() {
  const key = keyFromFragment();
  if (!key) return;
  $("#admin-key").value = key;
  connect(key);
}

document.addEventListener("DOMContentLoaded", () => {
  const input = $("#admin-key");
  input.value = state.key;
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    connect(input.value.trim());
  });
  $("#forget").addEventListener("click", () => {
    input.value = "";
    connect("");
    $("#tenants tbody").replaceChildren();
    $("#backends tbody").replaceChildren();
    $("#errors tbody").replaceChildren();
    $("#fleet tbody").replaceChildren();
    $("#fleet-warnings").hidden = true;
    clearCharts();
    clearTail();
  });
  $("#tail-tenant").addEventListener("change", startTail);
  $("#tail-service").addEventListener("change", startTail);
  $("#tail-clear").addEventListener("click", clearTail);
  window.addEventListener("hashchange", takeKeyFromFragment);
  window.addEventListener("resize", () => {
    cancelAnimationFrame(state.resizing);
    state.resizing = requestAnimationFrame(() => state.history && renderCharts(state.history));
  });
  const fromAddress = keyFromFragment();
  if (fromAddress) {
    input.value = fromAddress;
    connect(fromAddress);
  } else if (state.key) refresh();
});
