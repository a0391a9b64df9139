/* visionflow dashboard: polls the operator API and updates the page in place.
 * No build step, no dependencies. Every DOM node is created once and then only its text or
 * attributes change, so nothing flickers and nothing jumps while numbers move. */
"use strict";

const POLL_MS = 1500;        // streams, workers, readiness
const COUNTS_MS = 10000;     // minute buckets change slowly
const SNAPSHOT_MS = 2000;    // per visible tile
const SNAPSHOT_PARALLEL = 6;
const STALE_S = 6;           // no answer for this long: say so

// Real state names (visionflow/streams/state.py); "disabled" for a stream registered but off.
const TONE = {
  streaming: "ok",
  connecting: "warn", backoff: "warn", stalled: "warn",
  failed: "bad", stopped: "bad",
  disabled: "off",
};
const RANK = { bad: 0, warn: 1, ok: 2, off: 3 };
const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf", "#ff7b72"];
const OTHER_COLOUR = "#6e7681";

const $ = (id) => document.getElementById(id);
const state = {
  tiles: new Map(),           // id -> tile record
  order: [],
  show: "all",
  filter: "",
  lastOk: 0,                  // performance.now() of the last good /streams answer
  snapshots: new Set(),       // ids with a snapshot in Redis now
  visible: new Set(),
  snapInFlight: 0,
  counts: null,
  streamsAsOf: null,
};

// ---- formatting -------------------------------------------------------------------------
function fmtNum(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  return Number(v).toFixed(digits);
}
function fmtCompact(n) {
  if (n === null || n === undefined) return "—";
  const a = Math.abs(n);
  if (a < 1000) return String(Math.round(n));
  if (a < 1e6) return (n / 1e3).toFixed(a < 1e4 ? 2 : 1) + "k";
  if (a < 1e9) return (n / 1e6).toFixed(a < 1e7 ? 2 : 1) + "M";
  return (n / 1e9).toFixed(1) + "G";
}
function fmtAxis(v) {
  if (v < 1000) return String(Math.round(v));
  return (v >= 1e6 ? +(v / 1e6).toFixed(1) + "M" : +(v / 1e3).toFixed(1) + "k");
}
function fmtMs(v) {
  if (v === null || v === undefined) return "—";
  if (v >= 1000) return (v / 1000).toFixed(2) + "<small>s</small>";
  return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + "<small>ms</small>";
}
function fmtSpan(s) {
  if (s === null || s === undefined || s < 0) return "";
  if (s < 1) return "<1 s";
  if (s < 60) return Math.floor(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}
function fmtAgo(s) {
  if (s === null || s === undefined) return "";
  return s < 1 ? "just now" : fmtSpan(s) + " ago";
}
function clock(epochS) {
  const d = new Date(epochS * 1000);
  return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
}
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function setText(el, text) { if (el.textContent !== text) el.textContent = text; }
function setHtml(el, html) { if (el._html !== html) { el.innerHTML = html; el._html = html; } }
function setAttr(el, name, value) {
  if (value === null) { if (el.hasAttribute(name)) el.removeAttribute(name); }
  else if (el.getAttribute(name) !== value) el.setAttribute(name, value);
}

// ---- fetching ---------------------------------------------------------------------------
// With api.protect_reads the data routes need the bearer token: open the page once as
// /?token=...; the token is kept in sessionStorage (this tab only, gone when it closes),
// removed from the address bar and sent as an Authorization header with every request.
const TOKEN_KEY = "visionflow.token";
const TOKEN = (() => {
  const params = new URLSearchParams(location.search);
  const given = params.get("token");
  if (given) {
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  try {
    if (given) sessionStorage.setItem(TOKEN_KEY, given);
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (err) {                            // storage disabled: this page load only
    return given;
  }
})();

function headers(extra) {
  return TOKEN ? { ...extra, Authorization: "Bearer " + TOKEN } : { ...extra };
}

async function getJson(path) {
  try {
    const r = await fetch(path, { cache: "no-store", headers: headers({ Accept: "application/json" }) });
    const body = await r.json().catch(() => null);
    return { ok: r.ok, status: r.status, body };
  } catch (err) {
    return { ok: false, status: 0, body: null };
  }
}

// ---- streams ----------------------------------------------------------------------------
function streamState(s) { return s.enabled === false ? "disabled" : s.state; }
function toneOf(s) { return TONE[streamState(s)] || "off"; }

function makeTile(id) {
  const el = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
  el.dataset.id = id;
  const q = (sel) => el.querySelector(sel);
  const t = {
    el, id, img: q("img"), ph: q(".placeholder"), phText: q(".ph-text"), badge: q(".badge"),
    stateText: q(".state"), age: q(".age"), idText: q(".id"), since: q(".since"),
    fps: q(".fps"), afps: q(".afps"), p50: q(".p50"), p99: q(".p99"), pub: q(".pub"),
    drops: q(".drops"), meta: q(".meta"), error: q(".error"),
    snapAt: 0, objectUrl: null, search: "", tone: "off",
  };
  setText(t.idText, id);
  t.idText.title = id;
  observer.observe(el);
  return t;
}

function updateTile(t, s, asOf) {
  const st = streamState(s);
  const tone = toneOf(s);
  t.tone = tone;
  setAttr(t.el, "data-tone", tone);
  setAttr(t.el, "data-state", st);
  setAttr(t.badge, "data-tone", tone);
  setText(t.stateText, st);
  const since = s.state_since && asOf ? asOf - s.state_since : null;
  setText(t.since, since === null ? "" : "for " + fmtSpan(since));
  setText(t.age, s.last_frame_age_s === null || s.last_frame_age_s === undefined ? "" : "frame " + fmtAgo(s.last_frame_age_s));

  const fps = s.fps || {};
  setHtml(t.fps, fmtNum(fps.decoded) + "<small>fps</small>");
  setHtml(t.afps, fmtNum(fps.analysed) + "<small>fps</small>");
  // rates of a stream that is not streaming are its last averages: shown, but dimmed
  t.fps.classList.toggle("dim", tone !== "ok");
  t.afps.classList.toggle("dim", tone !== "ok");
  const total = s.latency_ms && s.latency_ms.total;
  setHtml(t.p50, total ? fmtMs(total.p50) : "—");
  setHtml(t.p99, total ? fmtMs(total.p99) : "—");
  t.p50.classList.toggle("dim", !total);
  t.p99.classList.toggle("dim", !total);
  if (s.latency_ms) {
    t.p99.title = Object.entries(s.latency_ms)
      .map(([stage, l]) => `${stage}: p50 ${fmtNum(l.p50)} ms, p99 ${fmtNum(l.p99)} ms`).join("\n");
  }
  setText(t.pub, fmtCompact(s.published));
  const dropped = s.dropped ?? Object.values(s.drops || {}).reduce((a, b) => a + b, 0);
  setText(t.drops, fmtCompact(dropped));
  t.drops.classList.toggle("hot", dropped > 0);
  t.drops.title = Object.entries(s.drops || {}).map(([k, v]) => `${k}: ${v}`).join("\n") || "no drops";

  const bits = [];
  if (s.width && s.height) bits.push(`${s.width}×${s.height}`);
  if (s.placement && s.placement.decoder) bits.push(s.placement.decoder);
  if (s.reconnects) bits.push(`${s.reconnects} reconnect${s.reconnects === 1 ? "" : "s"}`);
  if (s.url) bits.push(s.url);
  setText(t.meta, bits.join(" · "));
  t.meta.title = s.url || "";
  setText(t.error, s.last_error || "");
  t.error.title = s.last_error || "";
  const labels = Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  t.search = `${s.id} ${labels} ${s.url || ""} ${st}`.toLowerCase();
  setText(t.phText, tone === "bad" ? "no picture: " + st : tone === "warn" ? "waiting for frames…" : "no snapshot yet");
}

function sortKey(t) { return [RANK[t.tone] ?? 9, t.id]; }
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

function renderStreams(body) {
  const grid = $("grid");
  const asOf = body.as_of ?? Date.now() / 1000;
  state.streamsAsOf = asOf;
  const seen = new Set();
  for (const s of body.streams) {
    seen.add(s.id);
    let t = state.tiles.get(s.id);
    if (!t) { t = makeTile(s.id); state.tiles.set(s.id, t); }
    updateTile(t, s, asOf);
  }
  for (const [id, t] of state.tiles) {
    if (!seen.has(id)) {
      observer.unobserve(t.el);
      if (t.objectUrl) URL.revokeObjectURL(t.objectUrl);
      t.el.remove();
      state.tiles.delete(id);
      state.visible.delete(id);
    }
  }
  const sorted = [...state.tiles.values()].sort((a, b) => {
    const [ra, ia] = sortKey(a), [rb, ib] = sortKey(b);
    return ra - rb || collator.compare(ia, ib);
  });
  const order = sorted.map((t) => t.id);
  if (order.join("\u0000") !== state.order.join("\u0000")) {
    for (const t of sorted) grid.appendChild(t.el);  // moves, never re-creates
    state.order = order;
  }
  applyFilter();
  renderSummary(body);
}

function applyFilter() {
  const words = state.filter.toLowerCase().split(/\s+/).filter(Boolean);
  const counts = { all: 0, bad: 0, warn: 0, ok: 0, off: 0 };
  let shown = 0;
  for (const t of state.tiles.values()) {
    counts.all += 1;
    counts[t.tone] = (counts[t.tone] || 0) + 1;
    const match = words.every((w) => t.search.includes(w)) && (state.show === "all" || state.show === t.tone);
    if (t.el.hidden === match) t.el.hidden = !match;
    if (match) shown += 1;
  }
  for (const k of ["all", "bad", "warn", "ok"]) {
    setText($("n-" + k), String(counts[k]));
    $("n-" + k).parentElement.classList.toggle("zero", counts[k] === 0);
  }
  $("nomatch").hidden = shown > 0 || counts.all === 0;
}

function renderSummary(body) {
  const age = body.as_of ? Math.max(0, Date.now() / 1000 - body.as_of) : null;
  const src = $("f-source");
  setText(src, body.source === "redis"
    ? (age === null ? "Redis, never written" : `Redis, ${age < 1 ? "fresh" : fmtSpan(age) + " old"}`)
    : "pipeline, live");
  src.title = body.source === "redis"
    ? "visionflow api: the status the pipeline last wrote to Redis"
    : "visionflow run: straight from the pipeline";
  const streams = body.streams;
  const sum = (f) => streams.reduce((a, s) => a + ((s.fps && s.fps[f]) || 0), 0);
  const down = streams.filter((s) => toneOf(s) === "bad").length;
  setHtml($("sum-streams"), `${streams.length}${down ? ` <span style="color:var(--bad)">· ${down} down</span>` : ""}`);
  setText($("sum-decoded"), fmtNum(sum("decoded")) + " fps");
  setText($("sum-analysed"), fmtNum(sum("analysed")) + " fps");
  setText($("sum-model"), body.model_id || "");
  $("sum-model").title = body.model_id || "";
  $("sum-model-box").hidden = !body.model_id;
}

// ---- snapshots: only for tiles on screen, one fetch per tile at a time ---------------------
const observer = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const id = e.target.dataset.id;
    if (e.isIntersecting) state.visible.add(id); else state.visible.delete(id);
  }
  pumpSnapshots();
}, { rootMargin: "200px" });

function pumpSnapshots() {
  const now = performance.now();
  const dense = $("grid").classList.contains("compact");
  for (const id of state.visible) {
    if (dense || state.snapInFlight >= SNAPSHOT_PARALLEL) return;
    const t = state.tiles.get(id);
    if (!t || t.el.hidden || t.busy || now - t.snapAt < SNAPSHOT_MS) continue;
    if (!state.snapshots.has(id)) { showPlaceholder(t); continue; }
    loadSnapshot(t);
  }
}

async function loadSnapshot(t) {
  t.busy = true;
  t.snapAt = performance.now();
  state.snapInFlight += 1;
  try {
    const r = await fetch(`streams/${encodeURIComponent(t.id)}/snapshot`, { cache: "no-store", headers: headers() });
    if (!r.ok) { showPlaceholder(t); return; }
    const url = URL.createObjectURL(await r.blob());
    const img = new Image();
    img.src = url;
    await img.decode();                      // swap only a fully decoded frame: no flash
    const old = t.objectUrl;
    t.img.src = url;
    t.objectUrl = url;
    t.img.hidden = false;
    t.ph.hidden = true;
    if (old) URL.revokeObjectURL(old);
  } catch (err) {
    showPlaceholder(t);
  } finally {
    t.busy = false;
    state.snapInFlight -= 1;
  }
}

function showPlaceholder(t) {
  if (t.objectUrl) { URL.revokeObjectURL(t.objectUrl); t.objectUrl = null; }
  if (!t.img.hidden) { t.img.hidden = true; t.img.removeAttribute("src"); }
  t.ph.hidden = false;
}

// ---- workers ----------------------------------------------------------------------------
function meter(label, pct, cls, text) {
  const w = Math.max(0, Math.min(100, pct));
  return `<div class="meter ${cls}" title="${escapeHtml(text)}"><em>${label}</em><span><i style="width:${w.toFixed(1)}%"></i></span></div>`;
}

function renderWorkers(body) {
  const rows = body.workers.map((w) => {
    const tone = w.state === "ready" ? "ok" : w.state === "failed" || w.state === "dead" ? "bad" : "warn";
    const gpu = w.gpu;
    let gpuCell = '<span class="muted">—</span>';
    if (gpu) {
      const util = gpu.utilization_percent;
      const memPct = gpu.memory_total_mb ? (100 * gpu.memory_used_mb) / gpu.memory_total_mb : 0;
      gpuCell =
        meter("util", util ?? 0, "util", util === null ? "utilisation unknown" : `utilisation ${util}%`) +
        meter("mem", memPct, "mem", `${fmtCompact(gpu.memory_used_mb)} / ${fmtCompact(gpu.memory_total_mb)} MB`);
    }
    const dev = [w.backend, w.placement || w.device].filter(Boolean).join(" · ");
    const err = w.error ? `<span class="werr">${escapeHtml(w.error)}</span>` : "";
    return `<tr data-worker="${w.id}"><td><span class="wid"><span class="badge-dot" data-tone="${tone}"></span>#${w.id}</span>` +
      ` <span class="muted">${escapeHtml(w.state)}</span></td>` +
      `<td class="dev" title="${escapeHtml(dev)}">${escapeHtml(dev) || "—"}${err}</td>` +
      `<td class="num">${fmtNum(w.batches_per_s)}</td><td class="num">${fmtNum(w.mean_batch)}</td>` +
      `<td class="num">${w.queue_depth ?? "—"}</td><td>${gpuCell}</td></tr>`;
  });
  const tbody = $("workers");
  if (!rows.length) rows.push('<tr class="none"><td colspan="6">No workers reported</td></tr>');
  const html = rows.join("");
  if (tbody._html !== html) {
    // keep the meters (and their transitions) when only numbers change: patch row by row
    const tmp = document.createElement("tbody");
    tmp.innerHTML = html;
    const same = tmp.rows.length === tbody.rows.length &&
      [...tmp.rows].every((row, i) => row.dataset.worker !== undefined &&
        row.dataset.worker === tbody.rows[i].dataset.worker && row.cells.length === tbody.rows[i].cells.length);
    if (same) {
      [...tmp.rows].forEach((row, i) => {
        if (tbody.rows[i].outerHTML !== row.outerHTML) morphRow(tbody.rows[i], row);
      });
    } else {
      tbody.innerHTML = html;
    }
    tbody._html = html;
  }
  const r = body.redis || {};
  const redisEl = $("f-redis");
  setText(redisEl, r.connected === true ? "connected" : r.connected === false ? "unreachable" : "—");
  redisEl.className = r.connected === false ? "bad" : r.connected ? "good" : "";
  redisEl.title = r.error || "";
  setText($("f-pending"), r.pending === null || r.pending === undefined ? "—"
    : r.pending === 0 ? "none" : fmtCompact(r.pending) + (r.pending === 1 ? " entry" : " entries"));
}

function morphRow(dst, src) {
  [...src.cells].forEach((cell, i) => {
    const d = dst.cells[i];
    const bars = cell.querySelectorAll(".meter i");
    const old = d.querySelectorAll(".meter i");
    if (bars.length && bars.length === old.length && cell.textContent === d.textContent) {
      bars.forEach((b, j) => { old[j].style.width = b.style.width; });
      d.querySelectorAll(".meter").forEach((m, j) => { m.title = cell.querySelectorAll(".meter")[j].title; });
    } else if (d.innerHTML !== cell.innerHTML) {
      d.innerHTML = cell.innerHTML;
      d.className = cell.className;
      d.title = cell.title;
    }
  });
}

// ---- health -----------------------------------------------------------------------------
function renderHealth(r) {
  const el = $("health");
  if (!r.body) {
    setAttr(el, "data-ok", "no");
    setText($("health-text"), "API unreachable");
    el.title = "GET /readyz did not answer";
    return;
  }
  const b = r.body;
  const workers = b.workers ? ` · ${b.workers.ready}/${b.workers.total} workers` : "";
  setAttr(el, "data-ok", b.ready ? "yes" : "no");
  setText($("health-text"), (b.ready ? "Ready" : "Not ready: " + (b.reasons[0] || "")) + workers);
  el.title = b.ready ? "GET /readyz: ready" : b.reasons.join("\n");
}

// ---- counts chart (SVG, stacked minute bars) ---------------------------------------------
function seriesOf(c) {
  const rows = [...c.series].sort((a, b) => b.total - a.total);
  const top = rows.slice(0, PALETTE.length - 1);
  const rest = rows.slice(PALETTE.length - 1);
  const out = top.map((r, i) => ({ label: r.label, counts: r.counts, total: r.total, colour: PALETTE[i] }));
  if (rest.length) {
    const counts = c.buckets.map((_, i) => rest.reduce((a, r) => a + r.counts[i], 0));
    out.push({ label: `${rest.length} more`, counts, total: counts.reduce((a, b) => a + b, 0), colour: OTHER_COLOUR });
  }
  return out;
}

function niceMax(v) {
  if (v <= 5) return 5;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function renderChart() {
  const c = state.counts;
  const box = $("chart");
  const legend = $("legend");
  if (!c || !c.series.length || c.series.every((s) => s.total === 0)) {
    setHtml(box, '<div class="empty">No detections counted in the last hour</div>');
    setHtml(legend, "");
    return;
  }
  const series = seriesOf(c);
  const n = c.buckets.length;
  const W = Math.max(300, box.clientWidth), H = box.clientHeight || 168;
  const left = 34, right = 6, top = 6, bottom = 20;
  const pw = W - left - right, ph = H - top - bottom;
  const stacks = c.buckets.map((_, i) => series.reduce((a, s) => a + s.counts[i], 0));
  const ymax = niceMax(Math.max(...stacks));
  const step = pw / n, bw = Math.max(1, step - (step > 6 ? 2 : 1));
  const y = (v) => top + ph - (v / ymax) * ph;
  let svg = `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="detections per minute">`;
  for (let k = 0; k <= 4; k++) {
    const v = (ymax * k) / 4, yy = Math.round(y(v)) + 0.5;
    svg += `<line class="grid-line" x1="${left}" x2="${W - right}" y1="${yy}" y2="${yy}"/>`;
    svg += `<text class="axis" x="${left - 6}" y="${yy + 3.5}" text-anchor="end">${fmtAxis(v)}</text>`;
  }
  for (let i = 0; i < n; i++) {
    let acc = 0;
    const x = left + i * step + (step - bw) / 2;
    for (const s of series) {
      const v = s.counts[i];
      if (!v) continue;
      const y0 = y(acc), y1 = y(acc + v);
      svg += `<rect x="${x.toFixed(1)}" y="${y1.toFixed(1)}" width="${bw.toFixed(1)}" height="${Math.max(0.5, y0 - y1).toFixed(1)}" fill="${s.colour}" rx="1"/>`;
      acc += v;
    }
  }
  const ticks = [0, 15, 30, 45, n - 1].filter((i) => i < n);
  for (const i of ticks) {
    const x = left + i * step + step / 2;
    const anchor = i === 0 ? "start" : i === n - 1 ? "end" : "middle";
    svg += `<text class="axis" x="${x.toFixed(1)}" y="${H - 4}" text-anchor="${anchor}">${clock(c.buckets[i])}</text>`;
  }
  svg += `<rect class="hover-bar" id="hover-bar" x="0" y="${top}" width="${step}" height="${ph}" visibility="hidden"/>`;
  svg += "</svg>";
  setHtml(box, svg + '<div class="tip" id="tip" hidden></div>');
  box._geom = { left, step, n, series, buckets: c.buckets, W };
  setHtml(legend, series.map((s) =>
    `<li><i style="background:${s.colour}"></i>${escapeHtml(s.label)} <b>${fmtCompact(s.total)}</b></li>`).join(""));
}

function chartHover(ev) {
  const box = $("chart"), g = box._geom, tip = $("tip"), bar = $("hover-bar");
  if (!g || !tip) return;
  const rect = box.getBoundingClientRect();
  const x = ((ev.clientX - rect.left) / rect.width) * g.W;
  const i = Math.floor((x - g.left) / g.step);
  if (i < 0 || i >= g.n) { tip.hidden = true; bar.setAttribute("visibility", "hidden"); return; }
  bar.setAttribute("x", String(g.left + i * g.step));
  bar.setAttribute("visibility", "visible");
  const rows = g.series.filter((s) => s.counts[i]).map((s) =>
    `<div><span style="color:${s.colour}">${escapeHtml(s.label)}</span><span>${s.counts[i]}</span></div>`).join("");
  tip.innerHTML = `<b>${clock(g.buckets[i])}</b>${rows || '<div class="muted">nothing</div>'}`;
  tip.hidden = false;
  const px = ev.clientX - rect.left;
  tip.style.left = Math.min(px + 12, rect.width - tip.offsetWidth) + "px";
  tip.style.top = "4px";
}

// ---- loop -------------------------------------------------------------------------------
async function tick() {
  const [streams, workers, ready, snaps] = await Promise.all([
    getJson("streams"), getJson("workers"), getJson("readyz"), getJson("snapshots"),
  ]);
  if (streams.ok && streams.body) {
    state.lastOk = performance.now();
    renderStreams(streams.body);
  }
  if (workers.ok && workers.body) renderWorkers(workers.body);
  renderHealth(ready);
  if (snaps.ok && snaps.body) state.snapshots = new Set(snaps.body.streams);
  pumpSnapshots();
  renderFreshness();
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

function renderFreshness() {
  const el = $("updated");
  if (!state.lastOk) { setText($("updated-text"), "waiting for the API…"); return; }
  const s = (performance.now() - state.lastOk) / 1000;
  const stale = s > STALE_S;
  el.classList.toggle("stale", stale);
  setText($("updated-text"), stale ? `updated ${fmtAgo(s)}` : "live");
  const banner = $("banner");
  banner.hidden = !stale;
  if (stale) setText(banner, `The API has not answered for ${fmtSpan(s)}: the figures below are from then.`);
}

async function countsTick() {
  const r = await getJson("counts?window=3600&bucket=60");
  if (r.ok && r.body) { state.counts = r.body; renderChart(); }
}

function loop(fn, ms) {
  const run = async () => {
    try {
      await fn();
    } catch (err) {
      setTimeout(() => { throw err; }, 0);  // reported as an uncaught error; polling goes on
    }
    setTimeout(run, ms);
  };
  run();
}

function wire() {
  $("filter").addEventListener("input", (e) => { state.filter = e.target.value; applyFilter(); pumpSnapshots(); });
  $("chips").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    state.show = b.dataset.show;
    for (const x of $("chips").children) x.classList.toggle("on", x === b);
    applyFilter();
    pumpSnapshots();
  });
  const setDensity = (d) => {
    $("grid").classList.toggle("compact", d === "compact");
    for (const x of document.querySelectorAll(".density button")) x.classList.toggle("on", x.dataset.density === d);
    try { localStorage.setItem("vf-density", d); } catch (err) { /* private mode */ }
    pumpSnapshots();
  };
  document.querySelector(".density").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b) setDensity(b.dataset.density);
  });
  let saved = null;
  try { saved = localStorage.getItem("vf-density"); } catch (err) { /* private mode */ }
  if (saved) setDensity(saved);
  $("chart").addEventListener("mousemove", chartHover);
  $("chart").addEventListener("mouseleave", () => {
    const tip = $("tip"), bar = $("hover-bar");
    if (tip) tip.hidden = true;
    if (bar) bar.setAttribute("visibility", "hidden");
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(renderChart, 120); });
  setInterval(renderFreshness, 1000);
  document.addEventListener("keydown", (e) => {  // "/" jumps to the filter box, Escape clears it
    const f = $("filter");
    if (e.key === "/" && document.activeElement !== f) { e.preventDefault(); f.focus(); f.select(); }
    else if (e.key === "Escape" && document.activeElement === f) {
      f.value = ""; state.filter = ""; applyFilter(); pumpSnapshots(); f.blur();
    }
  });
}

wire();
loop(tick, POLL_MS);
loop(countsTick, COUNTS_MS);
