// ecg-monitor central station page: plain JS + canvas, no dependencies.
// The server sends one batched update per 100 ms over a WebSocket; only strips on screen
// (IntersectionObserver) receive signal and are drawn (requestAnimationFrame, sweep mode:
// each frame draws only the newest few points and erases just ahead of the cursor).
"use strict";

const STRIP_S = 10;      // seconds across a strip
const KEEP_S = 12;       // signal kept per device on the page
const LAG_S = 1.0;       // the sweep runs this far behind the newest sample (chunks arrive in bursts)
const ERASE_S = 0.35;    // blank band ahead of the cursor
const FPS = 30;
const MAX_ALARM_ROWS = 300;
const QUALITY_LABEL = { lead_off: "LEAD OFF", noisy: "NOISY SIGNAL", gap: "SIGNAL GAP", learning: "LEARNING", good: "" };

const devices = new Map();   // id -> Dev
const alarms = new Map();    // id -> alarm json
let ws = null;
let wsOpen = false;
let meta = { broker: { connected: false }, daemons: [] };
let route = { page: "grid", id: null };
const visible = new Set();
let watchTimer = null;
const stats = { frames: 0, points: 0, updates: 0, msgMs: 0, frameMs: 0, bytes: 0 };
window.__view = { devices, alarms, stats };

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; };
const fmtTime = (t) => { const d = new Date(t * 1000); return d.toTimeString().slice(0, 8); };
const fmtNum = (v, digits) => (v == null ? "–" : Number(v).toFixed(digits));
const fmtP = (p) => (p == null ? "–" : p < 0.001 ? p.toExponential(1) : p.toFixed(3));

// ---------------------------------------------------------------- signal per device

class Dev {
  constructor(summary) {
    this.id = summary.id;
    this.s = summary;
    this.pieces = [];      // {t0, dt, v: Float32Array}
    this.newest = null;    // device time after the newest point
    this.head = null;      // device time the sweep has reached
    this.marks = [];       // device times of alerted beats
    this.tile = null;
    this.strip = null;
  }
  addPieces(list) {
    for (const [t0, dt, values] of list) {
      const v = Float32Array.from(values);
      const last = this.pieces[this.pieces.length - 1];
      if (last && t0 < last.t0 + last.dt * last.v.length - last.dt / 2) continue;  // already have it
      this.pieces.push({ t0, dt, v });
      this.newest = t0 + dt * v.length;
    }
    const cut = this.newest - KEEP_S;
    while (this.pieces.length && this.pieces[0].t0 + this.pieces[0].dt * this.pieces[0].v.length < cut) this.pieces.shift();
  }
  advance(dtWall) {
    if (this.newest == null) return;
    if (this.head == null || this.newest - this.head > 4 || this.head > this.newest + 0.5) {
      this.head = this.newest - LAG_S;
      return;
    }
    const behind = this.newest - this.head;
    const rate = behind > 2 * LAG_S ? 1.15 : behind < 0.3 * LAG_S ? 0.85 : 1.0;
    this.head = Math.min(this.newest, this.head + dtWall * rate);
  }
  // Calls fn(t, v, brk) for each point with t in (a, b]; brk: start a new line here.
  forPoints(a, b, fn) {
    let prevEnd = null;
    for (const p of this.pieces) {
      const end = p.t0 + p.dt * p.v.length;
      if (end <= a || p.t0 > b) { prevEnd = end; continue; }
      let i = Math.max(0, Math.ceil((a - p.t0) / p.dt));
      let brk = prevEnd == null || p.t0 - prevEnd > 1.5 * p.dt;
      for (; i < p.v.length; i++) {
        const t = p.t0 + i * p.dt;
        if (t > b) break;
        if (t <= a) continue;
        fn(t, p.v[i], brk);
        brk = false;
      }
      prevEnd = end;
    }
  }
  range(a, b) {
    let lo = Infinity, hi = -Infinity;
    this.forPoints(a, b, (t, v) => { if (v < lo) lo = v; if (v > hi) hi = v; });
    return lo <= hi ? [lo, hi] : null;
  }
}

class Strip {
  constructor(canvas, dev) {
    this.c = canvas;
    this.ctx = canvas.getContext("2d", { alpha: true });
    this.dev = dev;
    this.drawn = null;  // device time drawn up to
    this.w = 0; this.h = 0;
    this.mid = 0; this.gain = 1;
    this.lastX = null; this.lastY = null;
  }
  x(t) { return ((((t % STRIP_S) + STRIP_S) % STRIP_S) / STRIP_S) * this.w; }
  y(v) { return this.h / 2 - (v - this.mid) * this.gain; }
  rescale(head) {
    const r = this.dev.range(head - STRIP_S, head);
    if (!r) return;
    const span = Math.max(r[1] - r[0], 0.6);
    this.mid = (r[0] + r[1]) / 2;
    this.gain = (this.h * 0.78) / span;
  }
  sized() {
    const w = this.c.clientWidth, h = this.c.clientHeight;
    if (w !== this.w || h !== this.h) { this.c.width = this.w = w; this.c.height = this.h = h; this.drawn = null; }
    return w > 0 && h > 0;
  }
  clearSpan(x0, x1) {
    const ctx = this.ctx;
    if (x1 >= x0) ctx.clearRect(x0, 0, x1 - x0, this.h);
    else { ctx.clearRect(x0, 0, this.w - x0, this.h); ctx.clearRect(0, 0, x1, this.h); }
  }
  mark(t) {
    const ctx = this.ctx, x = this.x(t);
    ctx.fillStyle = "#ff3b3b";
    ctx.beginPath(); ctx.moveTo(x - 5, 1); ctx.lineTo(x + 5, 1); ctx.lineTo(x, 9); ctx.closePath(); ctx.fill();
    ctx.strokeStyle = "rgba(255,59,59,0.55)"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(x + 0.5, 10); ctx.lineTo(x + 0.5, this.h); ctx.stroke();
  }
  trace(a, b) {
    const ctx = this.ctx, dev = this.dev;
    const q = dev.s.quality;
    ctx.strokeStyle = q === "lead_off" || q === "noisy" ? "#d9a437" : "#35f06a";
    ctx.lineWidth = 1.4; ctx.lineJoin = "round";
    ctx.beginPath();
    let px = this.lastX, n = 0;
    if (px != null) ctx.moveTo(px, this.lastY);
    dev.forPoints(a, b, (t, v, brk) => {
      const x = this.x(t), y = this.y(v);
      if (px == null || brk || x < px) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      px = x; this.lastY = y; n++;
    });
    ctx.stroke();
    this.lastX = px;
    for (const m of dev.marks) if (m > a && m <= b) this.mark(m);
    stats.points += n;
  }
  frame() {
    const dev = this.dev;
    if (!this.sized() || dev.head == null) return;
    const head = dev.head;
    if (this.drawn == null || head - this.drawn > STRIP_S - ERASE_S || head < this.drawn) {
      this.ctx.clearRect(0, 0, this.w, this.h);
      this.rescale(head);
      this.lastX = null;
      const from = head - STRIP_S + ERASE_S;
      this.trace(from, head);
      this.drawn = head;
      return;
    }
    if (head <= this.drawn) return;
    if (Math.floor(head / STRIP_S) !== Math.floor(this.drawn / STRIP_S)) this.rescale(head);
    const eraseTo = this.x(head + ERASE_S);
    this.clearSpan(Math.ceil(this.x(this.drawn)) + 1, Math.min(eraseTo + 1, this.w));
    this.trace(this.drawn, head);
    this.drawn = head;
  }
  markNow(t) {  // an alarm that arrived after the sweep passed its beat
    if (this.drawn != null && t <= this.drawn && t > this.drawn - STRIP_S + ERASE_S) this.mark(t);
  }
}

// ---------------------------------------------------------------- grid tiles

const io = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const id = e.target.dataset.id;
    if (e.isIntersecting) visible.add(id); else visible.delete(id);
  }
  scheduleWatch();
}, { rootMargin: "100px" });

function makeTile(dev) {
  const t = el("div", "tile");
  t.dataset.id = dev.id;
  const head = el("div", "tile-head");
  head.append(el("span", "dev-id", dev.id), el("span", "rejects"), el("span", "badge", "ALARM"), el("span", "pill q"));
  const body = el("div", "tile-body");
  const wrap = el("div", "strip-wrap");
  const canvas = el("canvas", "strip");
  wrap.append(canvas, el("div", "overlay"));
  const hr = el("div", "hr");
  hr.append(el("span", "hr-val", "--"), el("span", "hr-unit", "bpm"));
  body.append(wrap, hr);
  t.append(head, body);
  t.addEventListener("click", () => { location.hash = "#/device/" + encodeURIComponent(dev.id); });
  dev.tile = t;
  dev.strip = new Strip(canvas, dev);
  // keep the grid sorted by device id
  const grid = $("grid");
  let before = null;
  for (const other of grid.children) if (other.dataset.id > dev.id) { before = other; break; }
  grid.insertBefore(t, before);
  io.observe(t);
  $("empty").hidden = true;
}

function overlayFor(s) {
  if (!s.stream) return ["window", s.alarms ? "WINDOW DEVICE · NO STREAM" : "NO STREAM"];
  if (!s.live) return ["nodata", "NO DATA"];
  const q = s.quality;
  if (q === "lead_off" || q === "noisy" || q === "gap") return [q, QUALITY_LABEL[q]];
  return [null, ""];
}

function renderTile(dev) {
  const s = dev.s, t = dev.tile;
  if (!t) return;
  t.dataset.quality = s.quality || "";
  t.dataset.live = s.live ? "1" : "0";
  t.dataset.alarm = s.unacked > 0 ? "1" : "0";
  t.querySelector(".hr-val").textContent = s.hr != null && s.live ? String(s.hr) : "--";
  const q = t.querySelector(".q");
  q.dataset.q = s.quality || "";
  q.textContent = s.quality ? s.quality.replace("_", " ") : "";
  q.title = s.quality_reason || "";
  t.querySelector(".rejects").textContent = s.rejects ? `${s.rejects} rejected` : "";
  const [cls, text] = overlayFor(s);
  const ov = t.querySelector(".overlay");
  ov.className = "overlay" + (cls ? " show " + cls : "");
  ov.textContent = text;
}

function upsertDevice(summary) {
  let dev = devices.get(summary.id);
  if (!dev) { dev = new Dev(summary); devices.set(summary.id, dev); makeTile(dev); }
  else dev.s = summary;
  renderTile(dev);
  if (route.page === "device" && route.id === dev.id) renderDeviceHead(dev);
  return dev;
}

// ---------------------------------------------------------------- alarms

function alarmRow(a) {
  const tr = el("tr", "alarm");
  tr.dataset.id = a.id; tr.dataset.device = a.device; tr.dataset.acked = a.acked ? "1" : "0";
  const dev = el("td", "dev", a.device);
  dev.addEventListener("click", () => { location.hash = "#/device/" + encodeURIComponent(a.device); });
  const btn = el("button", "ack", a.acked ? "ack'd" : "Ack");
  btn.disabled = a.acked;
  btn.addEventListener("click", (ev) => { ev.stopPropagation(); send({ t: "ack", ids: [a.id] }); });
  const tdb = el("td"); tdb.append(btn);
  tr.append(el("td", "", fmtTime(a.ts)), dev, el("td", "kind", a.kind === "stream" ? "beat" : "window"),
    el("td", "", fmtNum(a.score, 1)), el("td", "", fmtP(a.p_value)), tdb);
  tr.title = `seq ${a.seq} · threshold ${fmtNum(a.threshold, 1)}` + (a.hr_bpm ? ` · ${Math.round(a.hr_bpm)} bpm` : "") + (a.model ? ` · ${a.model}` : "");
  return tr;
}

function addAlarms(list, initial) {
  const body = $("alarm-list");
  for (const a of list) {
    if (alarms.has(a.id)) continue;
    if (!initial) a.shown_at = Date.now() / 1000;  // bench/view.py reads alert -> page latency
    alarms.set(a.id, a);
    body.insertBefore(alarmRow(a), body.firstChild);
    const dev = devices.get(a.device);
    if (dev) {
      const t = a.ts;  // device time of the beat (stream) or of the window
      dev.marks.push(t);
      if (dev.marks.length > 20) dev.marks.shift();
      if (dev.strip && !initial) dev.strip.markNow(t);
      if (bigStrip && bigStrip.dev === dev && !initial) bigStrip.markNow(t);
      if (!initial && route.page === "device" && route.id === a.device) setTimeout(() => send({ t: "device", id: a.device }), 1500);
    }
  }
  while (body.children.length > MAX_ALARM_ROWS) { const last = body.lastChild; alarms.delete(Number(last.dataset.id)); last.remove(); }
  renderCounts();
}

function markAcked(ids) {
  for (const id of ids) {
    const a = alarms.get(id);
    if (!a || a.acked) continue;
    a.acked = true;
    const tr = $("alarm-list").querySelector(`tr[data-id="${id}"]`);
    if (tr) { tr.dataset.acked = "1"; const b = tr.querySelector("button"); b.disabled = true; b.textContent = "ack'd"; }
  }
  renderCounts();
}

function renderCounts() {
  let open = 0;
  for (const a of alarms.values()) if (!a.acked) open++;
  $("alarm-count").textContent = `${open} open`;
  let alarmed = 0;
  for (const d of devices.values()) if (d.s.unacked > 0) alarmed++;
  $("counts").textContent = `${devices.size} device${devices.size === 1 ? "" : "s"} · ${alarmed} in alarm`;
}

// ---------------------------------------------------------------- header: link and daemons

function renderLink() {
  const link = $("link"), banner = $("banner");
  let state, text, msg = "";
  if (!wsOpen) { state = "server-down"; text = "view offline"; msg = "Lost the view server; reconnecting. Showing the last known state."; }
  else if (!meta.broker.connected) { state = "broker-down"; text = "broker down"; msg = "The MQTT broker is unreachable; reconnecting. Showing the last known state."; }
  else { state = "live"; text = "live"; }
  link.dataset.state = state; link.textContent = text;
  banner.hidden = !msg; banner.textContent = msg;
  const box = $("daemons");
  box.replaceChildren();
  for (const d of meta.daemons) {
    const p = el("span", "pill " + (d.state === "online" ? "ok" : "bad"), `daemon ${d.instance_id} ${d.state}`);
    p.title = `${d.model} ${d.model_version}`;
    box.append(p);
  }
}

// ---------------------------------------------------------------- device page

let bigStrip = null;

function renderDeviceHead(dev) {
  const s = dev.s;
  $("dv-id").textContent = dev.id;
  const q = $("dv-quality"); q.dataset.q = s.quality || ""; q.textContent = s.quality ? s.quality.replace("_", " ") : "no quality report";
  $("dv-hr").textContent = s.hr != null && s.live ? String(s.hr) : "--";
  const [cls, text] = overlayFor(s);
  const ov = $("dv-overlay"); ov.className = "overlay" + (cls ? " show " + cls : ""); ov.textContent = text;
}

function drawBeat(canvas, beat) {
  const w = canvas.width = canvas.clientWidth, h = canvas.height = canvas.clientHeight;
  const ctx = canvas.getContext("2d");
  const v = beat.values;
  let lo = Infinity, hi = -Infinity;
  for (const x of v) { if (x < lo) lo = x; if (x > hi) hi = x; }
  const span = Math.max(hi - lo, 0.5), mid = (hi + lo) / 2, gain = (h * 0.8) / span;
  const X = (i) => (i / (v.length - 1)) * w, Y = (x) => h / 2 - (x - mid) * gain;
  ctx.strokeStyle = "rgba(53,240,106,0.12)"; ctx.lineWidth = 1;
  for (let s = 0; s <= v.length / beat.fs; s += 0.2) { const x = X(s * beat.fs) + 0.5; ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke(); }
  ctx.strokeStyle = "rgba(255,59,59,0.8)"; ctx.setLineDash([4, 3]);
  ctx.beginPath(); ctx.moveTo(X(beat.r) + 0.5, 0); ctx.lineTo(X(beat.r) + 0.5, h); ctx.stroke(); ctx.setLineDash([]);
  ctx.strokeStyle = "#35f06a"; ctx.lineWidth = 1.5; ctx.beginPath();
  v.forEach((x, i) => (i ? ctx.lineTo(X(i), Y(x)) : ctx.moveTo(X(i), Y(x))));
  ctx.stroke();
}

function renderDeviceDetail(d) {
  if (route.page !== "device" || route.id !== d.id) return;
  const box = $("dv-beats");
  box.replaceChildren();
  const withBeat = d.beats.filter((b) => b.beat);
  $("dv-note").textContent = d.beats.length === 0
    ? "No alarms for this device yet."
    : "The daemon does not publish reconstructions: each alerted beat is drawn from the stream around its R peak (red dashed line)."
      + (withBeat.length < d.beats.length ? ` ${d.beats.length - withBeat.length} alarm(s) without signal (window device, or outside the view's buffer).` : "");
  for (const b of d.beats) {
    const card = el("div", "beat");
    card.dataset.alarm = b.id;
    const cap = el("div", "cap");
    const left = el("span"); left.append(el("b", "", `score ${fmtNum(b.score, 1)}`), document.createTextNode(` · p ${fmtP(b.p_value)} · ${b.kind === "stream" ? "beat" : "window"}`));
    cap.append(left, el("span", "", fmtTime(b.ts)));
    card.append(cap);
    if (b.beat) { const c = el("canvas"); card.append(c); box.append(card); drawBeat(c, b.beat); }
    else { card.append(el("p", "note", "no signal for this alarm")); box.append(card); }
  }
  const qh = $("dv-qhist"); qh.replaceChildren();
  for (const q of d.quality_history.slice().reverse()) qh.append(el("li", "", `${fmtTime(q.since_ts || q.received_at)} ${q.state}${q.reason ? " — " + q.reason : ""}`));
  if (!d.quality_history.length) qh.append(el("li", "", "no quality reports"));
}

function applyRoute() {
  const m = location.hash.match(/^#\/device\/(.+)$/);
  route = m ? { page: "device", id: decodeURIComponent(m[1]) } : { page: "grid", id: null };
  $("grid-view").hidden = route.page !== "grid";
  $("device-view").hidden = route.page !== "device";
  bigStrip = null;
  if (route.page === "device") {
    const dev = devices.get(route.id) || upsertDevice({ id: route.id, stream: false, live: false, unacked: 0, alarms: 0, rejects: 0 });
    bigStrip = new Strip($("dv-strip"), dev);
    renderDeviceHead(dev);
    $("dv-beats").replaceChildren(); $("dv-note").textContent = "";
    send({ t: "device", id: route.id });
  }
  scheduleWatch();
}

// ---------------------------------------------------------------- wire

function send(obj) { if (ws && wsOpen) ws.send(JSON.stringify(obj)); }

function scheduleWatch() {
  if (watchTimer) return;
  watchTimer = setTimeout(() => {
    watchTimer = null;
    const list = route.page === "device" ? [route.id] : [...visible];
    send({ t: "watch", devices: list });
  }, 100);
}

function onMessage(msg) {
  stats.updates++;
  if (msg.t === "snapshot") {
    meta = msg.meta;
    for (const d of msg.devices) upsertDevice(d);
    addAlarms(msg.alarms, true);
    markAcked(msg.alarms.filter((a) => a.acked).map((a) => a.id));
    renderLink(); renderCounts();
    for (const dev of devices.values()) { dev.pieces = []; dev.newest = null; dev.head = null; if (dev.strip) dev.strip.drawn = null; }
    applyRoute();
    return;
  }
  if (msg.t === "device") { renderDeviceDetail(msg); return; }
  if (msg.meta) { meta = msg.meta; renderLink(); }
  if (msg.devices) for (const d of msg.devices) upsertDevice(d);
  if (msg.hr) for (const id in msg.hr) {
    const dev = devices.get(id);
    if (!dev) continue;
    dev.s.hr = msg.hr[id];
    const text = dev.s.hr != null && dev.s.live ? String(dev.s.hr) : "--";
    if (dev.tile) dev.tile.querySelector(".hr-val").textContent = text;
    if (route.page === "device" && route.id === id) $("dv-hr").textContent = text;
  }
  if (msg.signal) for (const id in msg.signal) { const dev = devices.get(id); if (dev) dev.addPieces(msg.signal[id]); }
  if (msg.alarms) addAlarms(msg.alarms, false);
  if (msg.acked) markAcked(msg.acked);
  if (msg.devices) renderCounts();
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/ws`);
  ws.onopen = () => { wsOpen = true; renderLink(); };
  ws.onmessage = (e) => {
    const t0 = performance.now();
    stats.bytes += e.data.length;
    onMessage(JSON.parse(e.data));
    stats.msgMs += performance.now() - t0;
  };
  ws.onclose = () => { wsOpen = false; renderLink(); setTimeout(connect, 1000); };
}

// ---------------------------------------------------------------- animation

let lastFrame = 0;
function loop(now) {
  requestAnimationFrame(loop);
  if (now - lastFrame < 1000 / FPS - 2) return;
  const dtWall = lastFrame ? Math.min((now - lastFrame) / 1000, 1) : 0;
  lastFrame = now;
  stats.frames++;
  const t0 = performance.now();
  for (const dev of devices.values()) dev.advance(dtWall);
  if (route.page === "grid") {
    for (const id of visible) { const dev = devices.get(id); if (dev && dev.strip) dev.strip.frame(); }
  } else if (bigStrip) bigStrip.frame();
  stats.frameMs += performance.now() - t0;
}

setInterval(() => { $("clock").textContent = new Date().toTimeString().slice(0, 8); }, 1000);
window.addEventListener("hashchange", applyRoute);
$("ack-all").addEventListener("click", () => send({ t: "ack", ids: null }));
$("dv-ack").addEventListener("click", () => { if (route.id) send({ t: "ack", ids: null, device: route.id }); });
connect();
requestAnimationFrame(loop);
