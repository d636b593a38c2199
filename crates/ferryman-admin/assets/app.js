"use strict";
// ferryman's dashboard: one WebSocket for every live view, REST for the rest.
// Lists are bounded and rendered in frames, so a busy proxy never floods the page.

const $ = (id) => document.getElementById(id);
const MAX_EXCHANGES = 5000;
const MAX_LOG_LINES = 2000;
const CHART_POINTS = 120;
const ROW_HEIGHT = 24;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const clock = (ms) => new Date(ms).toLocaleTimeString();

async function api(path, options = {}) {
  const answer = await fetch(path, options);
  if (answer.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  return answer;
}

// ---- pages ----
const pages = ["overview", "connections", "exchanges", "logs", "settings", "ca"];
function show() {
  const page = pages.includes(location.hash.slice(1)) ? location.hash.slice(1) : "overview";
  for (const name of pages) {
    $(`page-${name}`).hidden = name !== page;
    document.querySelector(`nav a[data-page=${name}]`).classList.toggle("active", name === page);
  }
  if (page === "settings") loadSettings();
  if (page === "ca") loadCa();
  if (page === "exchanges") renderExchanges();
  if (page === "connections") renderConnections();
}
window.addEventListener("hashchange", show);
$("logout").addEventListener("click", async () => {
  await fetch("/api/logout", { method: "POST" });
  location.href = "/login";
});

// ---- live stream ----
let socket = null;
let logLevel = "info";
function connect(delay = 500) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/api/live`);
  socket.onopen = () => {
    delay = 500;
    $("link-state").textContent = "live";
    subscribe();
  };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    const handler = handlers[frame.topic];
    if (handler) handler(frame.data);
  };
  socket.onclose = () => {
    $("link-state").textContent = "reconnecting…";
    setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
  };
}
function subscribe() {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ subscribe: ["traffic", "connections", "logs", "exchanges"], level: logLevel }));
  }
}
const handlers = {
  traffic: onTraffic,
  connections: onConnections,
  logs: onLogs,
  exchanges: (batch) => addExchanges(batch.items, true),
  error: (message) => console.warn("live stream:", message),
};

// ---- overview ----
const rates = [];
function onTraffic(t) {
  rates.push([t.rate_up, t.rate_down]);
  if (rates.length > CHART_POINTS) rates.shift();
  $("rate-up").textContent = `${bytes(t.rate_up)}/s`;
  $("rate-down").textContent = `${bytes(t.rate_down)}/s`;
  $("total-up").textContent = `${bytes(t.bytes_up)} in all`;
  $("total-down").textContent = `${bytes(t.bytes_down)} in all`;
  const kinds = Object.entries(t.sessions).filter(([, n]) => n > 0);
  $("active-total").textContent = kinds.reduce((sum, [, n]) => sum + n, 0);
  $("active-kinds").textContent = kinds.map(([k, n]) => `${k} ${n}`).join(", ");
  fillTop($("top-hosts"), t.top_hosts);
  fillTop($("top-clients"), t.top_clients);
  drawChart();
}
function fillTop(table, rows) {
  table.replaceChildren(el("tr", {}, el("th", {}, "key"), el("th", {}, "up"), el("th", {}, "down")),
    ...rows.map((r) => el("tr", {}, el("td", {}, r.key), el("td", {}, bytes(r.bytes_up)), el("td", {}, bytes(r.bytes_down)))));
}
function drawChart() {
  const canvas = $("chart");
  if (canvas.offsetParent === null) return;
  canvas.width = canvas.clientWidth;
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  const peak = Math.max(1, ...rates.flat());
  const styles = ["#4f8cff", "#2eb67d"];
  for (const which of [0, 1]) {
    g.beginPath();
    g.strokeStyle = styles[which];
    g.lineWidth = 2;
    rates.forEach((r, i) => {
      const x = (i / (CHART_POINTS - 1)) * width;
      const y = height - (r[which] / peak) * (height - 10) - 2;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
  g.fillStyle = "#888";
  g.fillText(`peak ${bytes(peak)}/s  — up (blue), down (green)`, 8, 14);
}

// ---- connections ----
const sessions = new Map();
let sortKey = "id";
let sortDown = false;
let connectionsDirty = false;
function onConnections(changes) {
  if (changes.full) sessions.clear();
  for (const s of changes.upserted) sessions.set(s.id, s);
  for (const id of changes.removed) sessions.delete(id);
  connectionsDirty = true;
}
document.querySelectorAll("#connections th[data-sort]").forEach((th) => th.addEventListener("click", () => {
  sortDown = sortKey === th.dataset.sort ? !sortDown : false;
  sortKey = th.dataset.sort;
  renderConnections();
}));
$("show-closed").addEventListener("change", renderConnections);
$("close-all").addEventListener("click", () => api("/api/connections", { method: "DELETE" }));
function renderConnections() {
  connectionsDirty = false;
  if ($("page-connections").hidden) return;
  const showClosed = $("show-closed").checked;
  const visible = [...sessions.values()].filter((s) => showClosed || s.state === "open");
  const order = (a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const c = x < y ? -1 : x > y ? 1 : 0;
    return sortDown ? -c : c;
  };
  const children = new Map();
  const roots = [];
  for (const s of visible) {
    if (s.parent_id != null && sessions.has(s.parent_id)) {
      if (!children.has(s.parent_id)) children.set(s.parent_id, []);
      children.get(s.parent_id).push(s);
    } else roots.push(s);
  }
  const rows = [];
  const walk = (s, depth) => {
    rows.push(connectionRow(s, depth));
    for (const child of (children.get(s.id) || []).sort(order)) walk(child, depth + 1);
  };
  roots.sort(order).forEach((s) => walk(s, 0));
  $("connections").tBodies[0].replaceChildren(...rows);
}
function connectionRow(s, depth) {
  const close = s.state === "open"
    ? el("button", { class: "quiet", onclick: () => api(`/api/connections/${s.id}`, { method: "DELETE" }) }, "close")
    : "";
  return el("tr", { class: s.state === "open" ? "" : "closed", "data-id": s.id },
    el("td", { style: `padding-left:${0.5 + depth * 1.2}em` }, depth ? `└ ${s.id}` : String(s.id)),
    el("td", {}, s.kind), el("td", {}, s.client), el("td", {}, s.target),
    el("td", { title: s.rule ? `rule ${s.rule}` : "" }, s.outbound || ""),
    el("td", {}, clock(s.started_ms)), el("td", {}, s.state),
    el("td", {}, bytes(s.bytes_up + s.children_up)), el("td", {}, bytes(s.bytes_down + s.children_down)),
    el("td", {}, close));
}

// ---- exchanges ----
let exchanges = [];
let shown = [];
let exchangesDirty = false;
let selected = null;
// Ids listed: the first page (REST) and the live stream can overlap.
const listed = new Set();
function addExchanges(items, live) {
  const fresh = items.filter((x) => x.method !== "CONNECT" && !listed.has(x.id));
  for (const x of fresh) listed.add(x.id);
  exchanges = live ? fresh.reverse().concat(exchanges) : exchanges.concat(fresh);
  for (const gone of exchanges.splice(MAX_EXCHANGES)) listed.delete(gone.id);
  exchangesDirty = true;
}
function parseFilter(text) {
  const filter = { words: [] };
  for (const token of text.trim().split(/\s+/).filter(Boolean)) {
    const [key, ...rest] = token.split(":");
    const value = rest.join(":");
    if (["host", "method", "status", "type"].includes(key) && value) filter[key] = value.toLowerCase();
    else filter.words.push(token.toLowerCase());
  }
  return filter;
}
function matches(x, f) {
  let host = "";
  try { host = new URL(x.url).hostname.toLowerCase(); } catch (_) { host = ""; }
  if (f.host && host !== f.host) return false;
  if (f.method && x.method.toLowerCase() !== f.method) return false;
  if (f.status && String(x.status ?? "") !== f.status) return false;
  if (f.type && !(x.content_type || "").toLowerCase().includes(f.type)) return false;
  const haystack = `${x.method} ${x.url} ${x.status ?? ""} ${x.content_type ?? ""}`.toLowerCase();
  return f.words.every((w) => haystack.includes(w));
}
function harLink(f) {
  const query = new URLSearchParams();
  if (f.host) query.set("host", f.host);
  if (f.method) query.set("method", f.method.toUpperCase());
  if (f.status) query.set("status", f.status);
  if (f.type) query.set("content_type", f.type);
  if (f.words.length) query.set("text", f.words.join(" "));
  return `/api/har?${query}`;
}
$("filter").addEventListener("input", () => { exchangesDirty = true; renderExchanges(); });
$("exchange-viewport").addEventListener("scroll", () => drawRows());
function renderExchanges() {
  exchangesDirty = false;
  if ($("page-exchanges").hidden) return;
  const filter = parseFilter($("filter").value);
  shown = exchanges.filter((x) => matches(x, filter));
  $("har-export").href = harLink(filter);
  $("exchange-count").textContent = `${shown.length} of ${exchanges.length}`;
  $("exchange-rows").style.height = `${shown.length * ROW_HEIGHT}px`;
  drawRows();
}
// Only the rows in view exist in the page: thousands per second stay smooth.
function drawRows() {
  const viewport = $("exchange-viewport");
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - 5);
  const last = Math.min(shown.length, first + Math.ceil(viewport.clientHeight / ROW_HEIGHT) + 10);
  const rows = [];
  for (let i = first; i < last; i++) {
    const x = shown[i];
    const status = x.status ?? (x.error ? "error" : "…");
    rows.push(el("div", {
      class: `row${x.id === selected ? " selected" : ""}${x.status >= 400 || x.error ? " bad" : ""}`,
      style: `top:${i * ROW_HEIGHT}px`, "data-id": x.id, onclick: () => openDetail(x.id),
    },
    el("span", {}, clock(x.started_ms)), el("span", {}, x.method), el("span", {}, String(status)),
    el("span", { class: "url", title: x.url }, x.url), el("span", {}, x.content_type || ""),
    el("span", {}, bytes(x.response_size)), el("span", {}, x.duration_ms == null ? "" : x.duration_ms.toFixed(1))));
  }
  $("exchange-rows").replaceChildren(...rows);
}
function headerTable(table, headers) {
  table.replaceChildren(...(headers || []).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
}
async function openDetail(id) {
  selected = id;
  drawRows();
  const answer = await api(`/api/exchanges/${id}`);
  if (!answer.ok) return;
  const record = await answer.json();
  const response = record.response;
  $("detail").hidden = false;
  $("detail-title").textContent = `${record.request.method} ${record.request.url}`;
  const t = record.timings;
  const ms = (v) => (v == null ? "–" : `${v.toFixed(1)} ms`);
  $("detail-timing").textContent = `status ${response ? response.status : "none"} · sent ${ms(t.request_sent_ms)} · first byte ${ms(t.first_byte_ms)} · end ${ms(t.end_ms)}` +
    (record.tls ? ` · TLS ${record.tls.sni ?? ""} ${record.tls.alpn ?? ""}${record.tls.intercepted ? " (intercepted)" : ""}` : "") +
    ` · via ${record.outbound}${record.rule ? ` (rule ${record.rule})` : ""}` +
    (record.error ? ` · error: ${record.error}` : "");
  headerTable($("request-headers"), record.request.headers);
  headerTable($("response-headers"), response && response.headers);
  $("download-body").href = `/api/exchanges/${id}/response/body?download=true`;
  $("curl-text").hidden = true;
  $("copy-curl").onclick = () => copyCurl(record);
  await preview(id, response);
}
async function preview(id, response) {
  const box = $("body-preview");
  box.replaceChildren();
  if (!response || !response.body.key) {
    box.append(el("p", { class: "muted" }, response ? (response.body.reason || `not captured (${response.body.capture})`) : "no response"));
    return;
  }
  const answer = await api(`/api/exchanges/${id}/response/body?decode=true`);
  if (!answer.ok) { box.append(el("p", { class: "error" }, (await answer.json()).error)); return; }
  const type = (answer.headers.get("content-type") || "").toLowerCase();
  const blob = await answer.blob();
  if (type.startsWith("image/")) {
    box.append(el("img", { src: URL.createObjectURL(blob), alt: "response body" }));
    return;
  }
  const raw = new Uint8Array(await blob.arrayBuffer());
  const text = new TextDecoder("utf-8", { fatal: false }).decode(raw.subarray(0, 1 << 20));
  if (type.includes("json")) {
    try { box.append(el("pre", { class: "json" }, JSON.stringify(JSON.parse(text), null, 2))); return; } catch (_) { /* shown as text */ }
  }
  const printable = !/[\x00-\x08\x0e-\x1f]/.test(text.slice(0, 4096));
  if (printable) box.append(el("pre", {}, text));
  else box.append(el("pre", { class: "hex" }, hexDump(raw.subarray(0, 4096))));
}
function hexDump(raw) {
  const lines = [];
  for (let i = 0; i < raw.length; i += 16) {
    const row = raw.subarray(i, i + 16);
    const hex = [...row].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = [...row].map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${i.toString(16).padStart(8, "0")}  ${hex.padEnd(48)}  ${ascii}`);
  }
  return lines.join("\n");
}
const quote = (s) => `'${s.replace(/'/g, "'\\''")}'`;
async function copyCurl(record) {
  const skip = new Set(["host", "content-length", "proxy-authorization", "connection"]);
  const parts = ["curl", "-X", record.request.method, quote(record.request.url)];
  for (const [k, v] of record.request.headers) if (!skip.has(k.toLowerCase())) parts.push("-H", quote(`${k}: ${v}`));
  if (record.request.body.size > 0) parts.push("--data-binary", "@request.body");
  const command = parts.join(" ");
  const area = $("curl-text");
  area.value = command;
  area.hidden = false;
  try { await navigator.clipboard.writeText(command); } catch (_) { area.select(); }
}

// ---- logs ----
const logLines = [];
let logsPaused = false;
let logsDirty = false;
let missedLogs = 0;
function onLogs(batch) {
  missedLogs += batch.missed;
  for (const line of batch.items) logLines.push(line);
  if (logLines.length > MAX_LOG_LINES) logLines.splice(0, logLines.length - MAX_LOG_LINES);
  logsDirty = true;
}
$("log-level").addEventListener("change", (e) => { logLevel = e.target.value; subscribe(); });
$("log-pause").addEventListener("click", () => {
  logsPaused = !logsPaused;
  $("log-pause").textContent = logsPaused ? "Resume" : "Pause";
  logsDirty = true;
});
function renderLogs() {
  logsDirty = false;
  $("log-state").textContent = (logsPaused ? "paused · " : "") + (missedLogs ? `${missedLogs} missed while busy` : "");
  if (logsPaused || $("page-logs").hidden) return;
  const box = $("log-lines");
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.replaceChildren(...logLines.slice(-500).map((l) =>
    el("div", { class: `log ${l.level}` }, `${new Date(l.time_ms).toISOString().slice(11, 23)} ${l.level.toUpperCase().padEnd(5)} ${l.target} ${l.message} ${l.fields}`)));
  if (atBottom) box.scrollTop = box.scrollHeight;
}

// ---- settings and CA ----
async function loadSettings() {
  const config = await (await api("/api/config")).json();
  $("config").textContent = JSON.stringify(config, null, 2);
  const rules = config.intercept;
  $("intercept-mode").value = rules.mode;
  $("intercept-hosts").value = rules.hosts.join("\n");
  $("intercept-passthrough").value = rules.passthrough.join("\n");
  $("intercept-auto").checked = rules.auto_passthrough;
}
const list = (text) => JSON.stringify(text.split("\n").map((s) => s.trim()).filter(Boolean));
$("intercept-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const set = [
    `intercept.mode="${$("intercept-mode").value}"`,
    `intercept.hosts=${list($("intercept-hosts").value)}`,
    `intercept.passthrough=${list($("intercept-passthrough").value)}`,
    `intercept.auto_passthrough=${$("intercept-auto").checked}`,
  ];
  const answer = await api("/api/config", { method: "PATCH", headers: { "content-type": "application/json" }, body: JSON.stringify({ set }) });
  const result = await answer.json();
  $("intercept-result").textContent = answer.ok ? "applied" : result.error;
  if (answer.ok) loadSettings();
});
async function loadCa() {
  const page = new DOMParser().parseFromString(await (await fetch("/ca")).text(), "text/html");
  $("page-ca").replaceChildren(...page.querySelector("main").childNodes);
}

// ---- start ----
function frame() {
  if (connectionsDirty) renderConnections();
  if (exchangesDirty) renderExchanges();
  if (logsDirty) renderLogs();
  requestAnimationFrame(frame);
}
async function start() {
  show();
  connect();
  const answer = await api("/api/exchanges?limit=500");
  if (answer.ok) addExchanges((await answer.json()).exchanges, false);
  requestAnimationFrame(frame);
}
start();

// ---- configuration in force ----
// A refused reload leaves the old configuration running: say so until a
// later reload succeeds.
async function checkConfig() {
  const answer = await api("/api/status");
  if (!answer.ok) return;
  const config = (await answer.json()).config || {};
  const last = config.last_reload;
  const banner = $("config-banner");
  if (last && !last.ok) {
    banner.textContent = `The configuration was refused (${last.trigger}, ${clock(last.at_ms)}); the one in force (${(config.hash || "").slice(0, 19)}) stays.\n${last.error}`;
    banner.hidden = false;
  } else banner.hidden = true;
}
checkConfig();
setInterval(checkConfig, 5000);
