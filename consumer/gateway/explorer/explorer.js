// Meshmarket explorer: polls /api/market and renders models, providers, jobs and two SVG charts.
// No library, no build step. Everything from the market (addresses, builds, model names) comes
// from other peers: it is only ever inserted as text (textContent), never as HTML.
// Money: integers in base units (6 decimals), as JSON numbers or, beyond 2^53, decimal strings;
// formatted from their digits, never through a float.
'use strict';

const DECIMALS = 6;
const SVG_NS = 'http://www.w3.org/2000/svg';
const PALETTE = ['#2f6fdf', '#0f9d58', '#c77700', '#8e44ad', '#d81b60', '#00838f'];

let pollMs = 2000;
let timer = null;
let seenJobs = null;  // Set of job ids already shown (null before the first render)

// ------------------------------------------------------------------ formatting

/** Base units (number, bigint or digit string) -> "1,234.5 MESH", exact. */
function formatAmount(v, unit = true) {
  let s = typeof v === 'bigint' ? v.toString() : String(v);
  let neg = false;
  if (s.startsWith('-')) { neg = true; s = s.slice(1); }
  if (!/^\d+$/.test(s)) return '?';  // not an integer: refuse to guess
  s = s.replace(/^0+(?=\d)/, '').padStart(DECIMALS + 1, '0');
  const whole = s.slice(0, -DECIMALS).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  const frac = s.slice(-DECIMALS).replace(/0+$/, '');
  return (neg ? '-' : '') + whole + (frac ? '.' + frac : '') + (unit ? ' MESH' : '');
}

function toBig(v) {
  const s = String(v);
  return /^-?\d+$/.test(s) ? BigInt(s) : 0n;
}

function short(hex, n = 6) {
  const s = String(hex || '');
  return s.length > 2 * n + 3 ? s.slice(0, n + 2) + '…' + s.slice(-n) : s;
}

function ago(seconds) {
  if (!Number.isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}

function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fillTable(id, rows, emptyText, columns) {
  const body = document.querySelector('#' + id + ' tbody');
  const fresh = rows.map((r) => {
    const tr = el('tr', r.attrs || {});
    if (r.fresh) tr.classList.add('fresh');
    r.cells.forEach((c, i) => {
      const td = el('td', { class: (columns && columns[i]) || '' });
      td.append(c instanceof Node ? c : document.createTextNode(String(c)));
      tr.append(td);
    });
    return tr;
  });
  if (!fresh.length) {
    const cols = document.querySelectorAll('#' + id + ' thead th').length;
    fresh.push(el('tr', {}, el('td', { class: 'empty', colspan: String(cols) }, emptyText)));
  }
  body.replaceChildren(...fresh);
}

function modelColors(models) {
  const colors = new Map();
  models.forEach((m, i) => colors.set(m.id, PALETTE[i % PALETTE.length]));
  return colors;
}

// ------------------------------------------------------------------ tables

function amountOrDash(v) {
  return v === null || v === undefined ? '–' : formatAmount(v);
}

function renderModels(models) {
  fillTable('models', models.map((m) => ({
    attrs: { 'data-model': m.id },
    cells: [m.id, el('span', { class: 'mono', title: m.model_hash || '' }, short(m.model_hash)), m.providers ?? '–',
            amountOrDash(m.min_price), m.context_length ?? '–', el('span', { class: 'mono' }, m.system_fingerprint || '–')],
  })), 'no models on the market', ['', '', 'num', 'num', 'num', '']);
}

function reputation(r) {
  if (r === null || r === undefined) return '–';
  const x = Math.max(0, Math.min(1, Number(r) || 0));
  const fill = el('div', { class: 'fill' + (x < 0.5 ? ' low' : '') });
  fill.style.width = Math.round(x * 100) + '%';
  return el('span', { class: 'rep' }, el('span', { class: 'track' }, fill), x.toFixed(2));
}

function renderProviders(providers, now) {
  const rows = [...providers].sort((a, b) => String(a.model).localeCompare(String(b.model)) || Number(a.price) - Number(b.price));
  fillTable('providers', rows.map((p) => ({
    attrs: { 'data-address': p.address },
    cells: [el('span', { class: 'mono', title: p.address }, short(p.address)), p.model || '–', amountOrDash(p.price),
            amountOrDash(p.stake), reputation(p.reputation), p.build || '–',
            Number.isFinite(p.first_token_ms) ? p.first_token_ms + ' ms' : '–',
            toBig(p.slashed) > 0n ? el('span', { class: 'slash' }, formatAmount(p.slashed)) : amountOrDash(p.slashed),
            p.jobs ?? '–', p.last_seen ? ago(now - p.last_seen) : '–'],
  })), 'no providers', ['', '', 'num', 'num', '', 'mono', 'num', 'num', 'num', 'muted']);
}

function agreementBadge(a) {
  const s = String(a || '–');
  const m = /^(\d)\/(\d)$/.exec(s);
  let cls = 'pending';
  if (m) cls = m[1] === m[2] && Number(m[2]) >= 2 ? 'full' : Number(m[1]) >= 2 ? 'partial' : 'none';
  return el('span', { class: 'badge ' + cls }, s);
}

function outcomeBadge(o) {
  const s = String(o || '–');
  const cls = { agreed: 'full', provisional: 'partial', judged: 'partial', contested: 'partial', disputed: 'partial',
                refunded: 'none' }[s] || 'pending';
  return el('span', { class: 'badge ' + cls }, s);
}

function renderJobs(jobs) {
  const first = seenJobs === null;
  const seen = seenJobs || new Set();
  fillTable('jobs', jobs.map((j) => {
    const row = {
      attrs: { 'data-job-id': j.id },
      fresh: !first && !seen.has(j.id),
      cells: [clock(j.time), el('span', { class: 'mono', title: j.id }, short(j.id)), j.model || '–',
              outcomeBadge(j.outcome), agreementBadge(j.agreement), j.tokens ?? '–', amountOrDash(j.paid),
              toBig(j.slashed) > 0n ? el('span', { class: 'slash' }, formatAmount(j.slashed)) : amountOrDash(j.slashed),
              amountOrDash(j.refund)],
    };
    if (j.local) row.attrs['data-local'] = '1';
    seen.add(j.id);
    return row;
  }), 'no jobs yet', ['muted', '', '', '', '', 'num', 'num', 'num', 'num']);
  seenJobs = seen;
}

// ------------------------------------------------------------------ charts

/** About `count` round steps covering [lo, hi]; integers when `integer`. */
function ticks(lo, hi, count, integer) {
  if (!(hi > lo)) hi = lo + 1;
  let step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
  for (const m of [1, 2, 5, 10]) { if ((hi - lo) / (step * m) <= count) { step *= m; break; } }
  if (integer) step = Math.max(1, Math.round(step));
  const out = [];
  for (let v = Math.floor(lo / step) * step; ; v += step) {  // up to the first tick at or over hi
    out.push(integer ? Math.round(v) : v);
    if (v >= hi - 1e-9 || out.length > 50) break;
  }
  return out;
}

const BOX = { w: 480, h: 260, l: 78, r: 16, t: 12, b: 36 };

function axes(root, xTicks, yTicks, xScale, yScale, xFmt, yFmt, xLabel) {
  for (const y of yTicks) {
    root.append(svg('line', { class: 'grid', x1: BOX.l, x2: BOX.w - BOX.r, y1: yScale(y), y2: yScale(y) }));
    root.append(svg('text', { x: BOX.l - 6, y: yScale(y) + 4, 'text-anchor': 'end' }, yFmt(y)));
  }
  xTicks.forEach((x, i) => {
    const anchor = i === xTicks.length - 1 && xScale(x) > BOX.w - BOX.r - 20 ? 'end' : 'middle';
    root.append(svg('text', { x: xScale(x), y: BOX.h - BOX.b + 16, 'text-anchor': anchor }, xFmt(x)));
  });
  root.append(svg('line', { class: 'axis', x1: BOX.l, x2: BOX.w - BOX.r, y1: BOX.h - BOX.b, y2: BOX.h - BOX.b }));
  root.append(svg('line', { class: 'axis', x1: BOX.l, x2: BOX.l, y1: BOX.t, y2: BOX.h - BOX.b }));
  root.append(svg('text', { x: (BOX.l + BOX.w - BOX.r) / 2, y: BOX.h - 4, 'text-anchor': 'middle' }, xLabel));
}

function renderLatencyChart(providers, colors) {
  const root = document.getElementById('chart-latency');
  root.replaceChildren();
  const pts = providers.filter((p) => Number.isFinite(p.first_token_ms) && p.price !== null && p.price !== undefined);
  if (!pts.length) { root.append(svg('text', { x: BOX.w / 2, y: BOX.h / 2, 'text-anchor': 'middle' }, 'no latency measured yet')); return; }
  // positions may use floats; the labels are formatted from integers
  const xs = pts.map((p) => p.first_token_ms), ys = pts.map((p) => Number(p.price));
  const xT = ticks(0, Math.max(...xs) * 1.1, 6, true), yT = ticks(0, Math.max(...ys) * 1.15, 5, true);
  const xMax = xT[xT.length - 1], yMax = yT[yT.length - 1];
  const xScale = (v) => BOX.l + (v / xMax) * (BOX.w - BOX.l - BOX.r);
  const yScale = (v) => BOX.h - BOX.b - (v / yMax) * (BOX.h - BOX.t - BOX.b);
  axes(root, xT, yT, xScale, yScale, (v) => v + ' ms', (v) => formatAmount(v, false), 'first-token latency (ms); y: price per token (MESH)');
  for (const p of pts) {
    const dot = svg('circle', { class: 'dot' + (Number(p.reputation) < 0.5 ? ' low' : ''), cx: xScale(p.first_token_ms),
                                cy: yScale(Number(p.price)), r: 4 + 6 * Math.max(0, Math.min(1, Number(p.reputation) || 0)),
                                fill: colors.get(p.model) || '#888', 'data-address': p.address });
    dot.append(svg('title', {}, `${p.address}\n${p.model}\nprice ${formatAmount(p.price)} / token\nfirst token ${p.first_token_ms} ms\nreputation ${p.reputation}`));
    root.append(dot);
  }
  let y = BOX.t + 10;  // legend, right-aligned in the top corner
  for (const [model, color] of colors) {
    root.append(svg('circle', { cx: BOX.w - BOX.r - 4, cy: y - 4, r: 4, fill: color }));
    root.append(svg('text', { class: 'label', x: BOX.w - BOX.r - 12, y, 'text-anchor': 'end' }, model));
    y += 14;
  }
}

function renderJobsChart(series, jobs, now) {
  const root = document.getElementById('chart-jobs');
  root.replaceChildren();
  let buckets = series && Array.isArray(series.jobs_per_minute) ? series.jobs_per_minute : null;
  if (!buckets) {  // no series from the backend: bucket the jobs we have
    const start = now - (now % 60) - 29 * 60;
    buckets = Array.from({ length: 30 }, (_, i) => ({ t: start + 60 * i, jobs: 0, slashed: 0 }));
    for (const j of jobs) {
      const k = Math.floor((j.time - start) / 60);
      if (k >= 0 && k < 30) { buckets[k].jobs += 1; if (toBig(j.slashed) > 0n) buckets[k].slashed += 1; }
    }
  }
  const n = buckets.length || 1;
  const yT = ticks(0, Math.max(1, ...buckets.map((b) => b.jobs)), 4, true), yMax = yT[yT.length - 1];
  const width = (BOX.w - BOX.l - BOX.r) / n;
  const xScale = (i) => BOX.l + (i + 0.5) * width;
  const yScale = (v) => BOX.h - BOX.b - (v / yMax) * (BOX.h - BOX.t - BOX.b);
  const xT = buckets.map((_, i) => i).filter((i) => i % 5 === 0);
  const minute = (i) => new Date(buckets[i].t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  axes(root, xT, yT, xScale, yScale, minute, (v) => String(v), 'minute');
  buckets.forEach((b, i) => {
    const x = BOX.l + i * width + 1, w = Math.max(1, width - 2);
    if (b.jobs > 0) {
      const bar = svg('rect', { class: 'bar', x, width: w, y: yScale(b.jobs), height: yScale(0) - yScale(b.jobs) });
      bar.append(svg('title', {}, `${minute(i)}: ${b.jobs} job(s), ${b.slashed} with a slash`));
      root.append(bar);
    }
    if (b.slashed > 0) {
      root.append(svg('rect', { class: 'bar slashed', x, width: w, y: yScale(b.slashed), height: yScale(0) - yScale(b.slashed) }));
    }
  });
}

// ------------------------------------------------------------------ polling

function setStatus(kind, text) {
  const s = document.getElementById('status');
  s.className = 'status ' + kind;
  s.textContent = text;
}

function render(snap) {
  const models = Array.isArray(snap.models) ? snap.models : [];
  const providers = Array.isArray(snap.providers) ? snap.providers : [];
  const jobs = Array.isArray(snap.jobs) ? snap.jobs : [];
  const gw = snap.gateway || {};
  const now = Number(snap.time || gw.time || Date.now() / 1000);
  const chainNow = Number(snap.chain_time || now);
  const colors = modelColors(models);
  document.getElementById('stat-models').textContent = models.length;
  document.getElementById('stat-providers').textContent = providers.length;
  document.getElementById('stat-jobs').textContent = jobs.length;
  document.getElementById('stat-spent').textContent = gw.spent_today === undefined ? '–'
    : gw.daily_cap == null ? formatAmount(gw.spent_today)
    : formatAmount(gw.spent_today, false) + ' of ' + formatAmount(gw.daily_cap);
  renderModels(models);
  renderProviders(providers, now);
  renderJobs(jobs);
  renderLatencyChart(providers, colors);
  renderJobsChart(snap.series, jobs, chainNow);
  if (Number.isFinite(gw.poll_ms) && gw.poll_ms >= 250) pollMs = gw.poll_ms;
  setStatus('live', 'live · updated ' + clock(Date.now() / 1000));
}

async function poll() {
  clearTimeout(timer);
  try {
    const res = await fetch('/api/market', { cache: 'no-store', headers: { accept: 'application/json' } });
    const body = await res.json().catch(() => null);
    if (!res.ok) throw new Error((body && body.error && body.error.message) || 'HTTP ' + res.status);
    render(body);
  } catch (e) {
    setStatus('error', 'market unavailable: ' + e.message + ' (retrying)');
  }
  if (!document.hidden) timer = setTimeout(poll, pollMs);
}

document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
poll();
