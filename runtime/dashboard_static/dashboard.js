// Augury dashboard page: draws the newest update pushed over /ws (no build step, no library).
"use strict";

const MAPS = {observed: "seq", predicted: "seq", difference: "div", uncertainty: "seq",
              surprise_z: "div"};
const MAX_POINTS = 600;
const series = {forecast: [], surprise: [], stats: []};
let restarts = 0;
let alarmZ = 3;

function decodeF32(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

// colour maps: sequential (dark blue → yellow) and diverging (blue → white → red)
function seqColour(u) {
  const stops = [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]];
  const s = Math.min(Math.max(u, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(s), stops.length - 2), f = s - i;
  return stops[i].map((c, k) => c + f * (stops[i + 1][k] - c));
}
function divColour(u) {  // u in [-1, 1]
  const v = Math.min(Math.max(u, -1), 1);
  return v >= 0 ? [255, 255 * (1 - v), 255 * (1 - v)] : [255 * (1 + v), 255 * (1 + v), 255];
}
function colour(kind, v, lo, hi) {
  if (kind === "div") return divColour(hi > 0 ? v / hi : 0);
  return seqColour(hi > lo ? (v - lo) / (hi - lo) : 0);
}

function drawMap(name, m) {
  const canvas = document.getElementById("map-" + name);
  const kind = MAPS[name];
  const data = decodeF32(m.b64);
  const off = document.createElement("canvas");
  off.width = m.cols; off.height = m.rows;
  const octx = off.getContext("2d");
  const img = octx.createImageData(m.cols, m.rows);
  for (let i = 0; i < data.length; i++) {
    const c = colour(kind, data[i], m.lo, m.hi);
    img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2];
    img.data[4 * i + 3] = 255;
  }
  octx.putImageData(img, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "#eee";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const scale = Math.min(canvas.width / m.cols, canvas.height / m.rows);
  ctx.drawImage(off, 0, 0, m.cols * scale, m.rows * scale);
  drawScale(name, kind, m);
}

function drawScale(name, kind, m) {
  const el = document.getElementById("scale-" + name);
  const fmt = (v) => Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(2);
  el.textContent = "";
  const lo = document.createElement("span"); lo.textContent = fmt(m.lo);
  const bar = document.createElement("canvas"); bar.width = 100; bar.height = 10;
  const ctx = bar.getContext("2d");
  for (let x = 0; x < 100; x++) {
    const v = m.lo + (m.hi - m.lo) * x / 99;
    const c = colour(kind, v, m.lo, m.hi);
    ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
    ctx.fillRect(x, 0, 1, 10);
  }
  const hi = document.createElement("span"); hi.textContent = fmt(m.hi);
  el.append(lo, bar, hi);
}

// layer-1 dictionary: K1 tiles (OFF | ON, column × column cells each) on the grid of tiles
// that gives the largest cells; one colour scale (weight) for every atom. Drawn in canvas
// pixels so that atoms are set apart (GAP) more than their OFF and ON halves (SPLIT).
const DICT = {GAP: 8, SPLIT: 2, HEAD: 12};
function dictionaryLayout(k, c, W, H) {
  let best = {cols: 1, rows: k, cell: 0};
  for (let cols = 1; cols <= k; cols++) {
    const rows = Math.ceil(k / cols);
    const cell = Math.floor(Math.min(
      (W - (cols - 1) * DICT.GAP - cols * DICT.SPLIT) / (2 * c * cols),
      (H - DICT.HEAD - (rows - 1) * DICT.GAP) / (c * rows)));
    if (cell > best.cell) best = {cols, rows, cell};
  }
  best.cell = Math.max(best.cell, 1);
  best.tw = 2 * c * best.cell + DICT.SPLIT;  // tile width, px
  return best;
}

function drawDictionary(d) {
  const canvas = document.getElementById("map-dictionary");
  const ctx = canvas.getContext("2d");
  const data = decodeF32(d.b64), k = d.k1, c = d.column;
  const L = dictionaryLayout(k, c, canvas.width, canvas.height);
  ctx.fillStyle = "#eee";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#333"; ctx.font = "10px sans-serif"; ctx.textAlign = "center";
  for (let q = 0; q < Math.min(L.cols, k); q++) {  // column heads: which half is which
    const x0 = q * (L.tw + DICT.GAP), half = c * L.cell;
    ctx.fillText("OFF", x0 + half / 2, DICT.HEAD - 3);
    ctx.fillText("ON", x0 + half + DICT.SPLIT + half / 2, DICT.HEAD - 3);
  }
  for (let a = 0; a < k; a++) {
    const x0 = (a % L.cols) * (L.tw + DICT.GAP);
    const y0 = DICT.HEAD + Math.floor(a / L.cols) * (c * L.cell + DICT.GAP);
    for (let r = 0; r < c; r++) for (let q = 0; q < c; q++) for (let p = 0; p < 2; p++) {
      const v = data[((a * c + r) * c + q) * 2 + p];  // w_l1[a, r, q, p]
      const col = colour("seq", v, d.lo, d.hi);
      ctx.fillStyle = `rgb(${col[0] | 0},${col[1] | 0},${col[2] | 0})`;
      ctx.fillRect(x0 + p * (c * L.cell + DICT.SPLIT) + q * L.cell, y0 + r * L.cell,
                   L.cell, L.cell);
    }
  }
  drawScale("dictionary", "seq", d);
  document.getElementById("dict-column").textContent = `${c} × ${c}`;
  document.getElementById("dict-shared").textContent = (d.shared
    ? `Shared by every column (${k} atoms, numbered left to right, top to bottom).`
    : `Per-column weights: the mean over the ${d.columns} columns' own atoms.`) +
    (d.sd_median != null ? ` Median weight uncertainty (posterior sd): ${d.sd_median.toPrecision(2)}.` : "");
}

let dictionary = null;
function showDictionaryAge(u) {
  if (u.dictionary) { dictionary = u.dictionary; drawDictionary(dictionary); }
  if (!dictionary || u.dictionary_age_s == null) return;
  const every = dictionary.every_s ? ` (sent every ${dictionary.every_s} s)` : "";
  const frozen = dictionary.learning === false ? "; learning paused: the atoms stay as they are" : "";
  document.getElementById("dictionary-age").textContent =
    `updated ${u.dictionary_age_s.toFixed(0)} s ago${every}, at stream time ` +
    `${(dictionary.t_us / 1e6).toFixed(3)} s${frozen}`;
}

// line plot: lines = [{key, colour}], optional threshold line, alarm marks
function plot(id, points, lines, opts = {}) {
  const canvas = document.getElementById(id);
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 48, R = 8, T = 8, B = 20;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
  const vals = [];
  for (const p of points) for (const l of lines) if (p[l.key] != null) vals.push(p[l.key]);
  if (opts.threshold != null) vals.push(opts.threshold);
  ctx.fillStyle = "#888"; ctx.font = "11px sans-serif";
  if (points.length < 1 || vals.length < 1) { ctx.fillText("no data yet", L + 10, H / 2); return; }
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (opts.zero) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
  if (hi - lo < 1e-9) { if (opts.zero && lo >= 0) hi = lo + 1; else { hi += 1; lo -= 1; } }
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1e-3);
  const X = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  const Y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  ctx.strokeStyle = "#ccc"; ctx.strokeRect(L, T, W - L - R, H - T - B);
  ctx.fillStyle = "#333";
  ctx.fillText(hi.toPrecision(3), 2, T + 8); ctx.fillText(lo.toPrecision(3), 2, H - B);
  ctx.fillText(t0.toFixed(2) + " s", L, H - 5);
  ctx.fillText(t1.toFixed(2) + " s", W - R - 50, H - 5);
  if (opts.threshold != null) {
    ctx.strokeStyle = "#c33"; ctx.setLineDash([4, 3]); ctx.beginPath();
    ctx.moveTo(L, Y(opts.threshold)); ctx.lineTo(W - R, Y(opts.threshold)); ctx.stroke();
    ctx.setLineDash([]);
  }
  for (const l of lines) {
    ctx.strokeStyle = l.colour; ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    for (const p of points) {
      const v = p[l.key];
      if (v == null) { pen = false; continue; }
      if (pen) ctx.lineTo(X(p.t), Y(v)); else ctx.moveTo(X(p.t), Y(v));
      pen = true;
    }
    ctx.stroke();
  }
  if (opts.alarms) {
    ctx.fillStyle = "#c33";
    for (const p of points) if (p.alarm) ctx.fillRect(X(p.t) - 1, T, 2, 5);
  }
}

function drawSeries() {
  plot("ts-forecast", series.forecast,
       [{key: "model", colour: "#1f77b4"}, {key: "persistence", colour: "#ff7f0e"}]);
  plot("ts-surprise", series.surprise, [{key: "z", colour: "#333"}],
       {threshold: alarmZ, alarms: true, zero: true});
  plot("ts-rates", series.stats,
       [{key: "in_hz", colour: "#ff7f0e"}, {key: "proc_hz", colour: "#1f77b4"}], {zero: true});
  plot("ts-drops", series.stats, [{key: "drops_hz", colour: "#c33"}], {zero: true});
  plot("ts-latency", series.stats,
       [{key: "latency_p50_ms", colour: "#1f77b4"}, {key: "latency_p99_ms", colour: "#ff7f0e"}],
       {zero: true});
  plot("ts-synops", series.stats, [{key: "synops_per_event", colour: "#2a7"}], {zero: true});
}

function showLink(u) {
  const link = u.link, badge = document.getElementById("status");
  badge.className = "badge " + link.state;
  if (link.state === "stalled") {
    const st = u.control.reachable && u.control.status ? u.control.status : null;
    badge.textContent = `stalled: nothing for ${link.quiet_s.toFixed(1)} s` + (st
      ? ` (the daemon answers on its control socket: ${st.events_processed} events processed,` +
        ` ${st.published} read-outs published: is its source sending?)`
      : (hello.control ? " (no daemon answers on its control socket: is one running?)" : ""));
  } else if (link.state === "live") {
    badge.textContent = "live";
  } else {
    badge.textContent = "waiting for the daemon…";
  }
  const st = link.stream_t == null ? "–" : link.stream_t.toFixed(3) + " s";
  const missed = Object.entries(link.missed).map(([k, v]) => `${k} ${v}`).join(", ");
  document.getElementById("link").textContent =
    `daemon ${hello.daemon} · stream time ${st} · ${link.received} messages · ` +
    `sequence gaps ${link.gaps}${missed ? " (" + missed + ")" : ""} · restarts ${link.restarts}` +
    (u.stats.source ? ` · source ${u.stats.source}` : "");
}

function showControl(c) {
  const ok = c.reachable;
  for (const b of document.querySelectorAll("#controls button")) b.disabled = !ok;
  document.getElementById("control-state").textContent = hello.control == null
    ? "no control endpoint given"
    : `control socket ${hello.control}: ${ok ? "answering" : "not reachable (buttons off)"}`;
  const learning = ok && c.status ? c.status.learning : null;
  document.getElementById("learning").textContent =
    learning == null ? "" : `learning: ${learning ? "on" : "paused"}`;
}

let hello = {daemon: "?", control: null};
function onUpdate(u) {
  if (u.link.restarts !== restarts) {  // stream time starts again: clear the series
    restarts = u.link.restarts;
    for (const k in series) series[k] = [];
  }
  alarmZ = u.alarm_z;
  document.getElementById("alarm-z").textContent = alarmZ;
  for (const p of u.points) {
    const s = series[p.kind];
    if (!s) continue;
    s.push(p);
    if (s.length > MAX_POINTS) s.splice(0, s.length - MAX_POINTS);
  }
  if (u.maps) for (const [name, m] of Object.entries(u.maps)) if (MAPS[name]) drawMap(name, m);
  const pm = u.prediction;
  if (pm && pm.t_us != null) {
    document.getElementById("maps-time").textContent =
      `(stream time ${(pm.t_us / 1e6).toFixed(3)} s; horizon ${pm.horizon_ms} ms; ` +
      `pool ${pm.pool} px)`;
    document.getElementById("what-difference").textContent = pm.difference_matched
      ? "Observed minus what was predicted for that very window. Red: more events than predicted; blue: fewer."
      : "Observed (last window) minus the current prediction (the publish period is not the horizon). Red: more; blue: fewer.";
  }
  showDictionaryAge(u);
  document.getElementById("forecast-note").textContent = u.forecast_note || "";
  showLink(u);
  showControl(u.control);
  drawSeries();
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

async function sendControl(button) {
  const args = button.dataset.what ? {what: button.dataset.what} : {};
  if (button.dataset.what === "all" && !confirm("Forget everything learned?")) return;
  const out = document.getElementById("control-reply");
  out.textContent = `${button.dataset.cmd}…`;
  const r = await fetch("/api/control", {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify({cmd: button.dataset.cmd, args})});
  const reply = await r.json();
  out.textContent = reply.ok ? `${button.dataset.cmd}: done ${JSON.stringify(
    Object.fromEntries(Object.entries(reply).filter(([k]) => k !== "ok")))}`
    : `${button.dataset.cmd} failed: ${reply.error}`;
}

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onmessage = (ev) => {
    const u = JSON.parse(ev.data);
    if (u.type === "hello") hello = u; else onUpdate(u);
  };
  ws.onclose = () => {
    const badge = document.getElementById("status");
    badge.className = "badge stalled";
    badge.textContent = "dashboard server gone: reconnecting…";
    setTimeout(connect, 1000);
  };
}

for (const b of document.querySelectorAll("#controls button")) b.onclick = () => sendControl(b);
drawSeries();
connect();
