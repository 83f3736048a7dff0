// Pulse dashboard: asks the JSON API for every panel in one request
// (/api/v1/dashboard, see docs/dashboard.md) once a second while the tab is
// visible, and draws SVG charts. No dependencies, no build step.
'use strict';

const POLL_MS = 1000;
const RANGES = { '15m': 'last 15 min', '1h': 'last hour', '24h': 'last 24 hours', '7d': 'last 7 days', custom: 'chosen range' };
const PREVIOUS = { '15m': 'the 15 min before', '1h': 'the hour before', '24h': 'the 24 h before', '7d': 'the 7 days before', custom: 'the period before' };
const TYPE_COLORS = { pageview: '#4c6ef5', click: '#12b886', purchase: '#f59f00', sign_up: '#ae3ec9' };
const PALETTE = ['#4c6ef5', '#12b886', '#f59f00', '#ae3ec9', '#fa5252', '#15aabf', '#82c91e', '#fd7e14', '#7950f2', '#868e96'];
const SVG_NS = 'http://www.w3.org/2000/svg';
const KEY_STORAGE = 'pulse.apiKey';
const NOTES_SHOWN = 30;

const fmtInt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const fmtNum = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });
const fmtCompact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });
const fmtCompactFine = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 2 });
const fmtPercent = new Intl.NumberFormat('en-US', { style: 'percent', maximumFractionDigits: 1 });

const state = {
  range: '1h',
  custom: null, // { from, to } in ms since the epoch, when range is 'custom'
  afterId: null,
  notifications: [],
  seenNotes: new Set(),
  refreshes: 0,
  timer: null,
  generation: 0,
  loop: 0,
  last: null, // the last answer, redrawn on resize without asking again
  currency: null,
  money: null,
};
readInitialRange();

function readInitialRange() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get('range');
  if (fromUrl === 'custom') {
    const from = Date.parse(params.get('from') || '');
    const to = Date.parse(params.get('to') || '');
    if (from < to) {
      state.range = 'custom';
      state.custom = { from, to };
      return;
    }
  }
  if (fromUrl && RANGES[fromUrl] && fromUrl !== 'custom') { state.range = fromUrl; return; }
  try {
    const saved = localStorage.getItem('pulse.range');
    if (saved && RANGES[saved] && saved !== 'custom') state.range = saved;
  } catch (_) { /* storage may be off */ }
}

// ---------------------------------------------------------------- API

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: 'application/json' };
  let key = null;
  try { key = sessionStorage.getItem(KEY_STORAGE); localStorage.removeItem(KEY_STORAGE); } catch (_) { /* storage may be off */ }
  if (key) headers.Authorization = 'Bearer ' + key;
  const res = await fetch(path, { headers, cache: 'no-store' });
  if (res.status === 401 || res.status === 403) throw new Unauthorized(path);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const msg = body && body.error ? body.error.code + ': ' + body.error.message : 'HTTP ' + res.status;
    throw new Error(msg);
  }
  return body;
}

// ---------------------------------------------------------------- formatting

// Revenue in the server's currency (`--currency`), e.g. $1,234.50 or ¥1,235.
function moneyFormats(currency) {
  if (state.currency !== currency || !state.money) {
    let full;
    let compact;
    try {
      full = new Intl.NumberFormat('en-US', { style: 'currency', currency });
      compact = new Intl.NumberFormat('en-US', { style: 'currency', currency, notation: 'compact', maximumFractionDigits: 2 });
    } catch (_) { // a code this browser does not know: the number and the code
      const n = new Intl.NumberFormat('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
      full = { format: (v) => n.format(v) + ' ' + currency };
      compact = { format: (v) => fmtCompactFine.format(v) + ' ' + currency };
    }
    state.currency = currency;
    state.money = { full, compact };
  }
  return state.money;
}

function money(v) { return (state.money || moneyFormats('USD')).full.format(v); }
function moneyCompact(v) { return (state.money || moneyFormats('USD')).compact.format(v); }

function unitOf(granularity) {
  return granularity === 'hour' ? 'hour' : granularity === 'day' ? 'day' : 'minute';
}
function shortUnit(per) { return per === 'minute' ? 'min' : per; }

// Axis labels: 2,500 · 25k · 1.5M; small steps keep their decimals.
function compact(v) {
  if (Math.abs(v) >= 1e4) return fmtCompactFine.format(v);
  return fmtNum.format(v);
}

function formatValue(metric, v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  return metric === 'revenue' ? money(v) : fmtInt.format(v);
}

function pad(n) { return String(n).padStart(2, '0'); }
function hhmm(d) { return pad(d.getHours()) + ':' + pad(d.getMinutes()); }
function hhmmss(d) { return hhmm(d) + ':' + pad(d.getSeconds()); }
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function timeLabel(d, spanMs) {
  if (spanMs > 40 * 86400e3) return MONTHS[d.getMonth()] + ' ' + d.getDate();
  if (spanMs > 2 * 86400e3) {
    return d.getHours() === 0 ? DAYS[d.getDay()] + ' ' + d.getDate() : hhmm(d);
  }
  return hhmm(d);
}

function bucketLabel(d, granularity) {
  const day = DAYS[d.getDay()] + ' ' + d.getDate() + ' ' + MONTHS[d.getMonth()];
  if (granularity === 'day') return day;
  if (granularity === 'minute') return day + ', ' + hhmm(d);
  return day + ', ' + hhmm(d) + '–' + hhmm(new Date(d.getTime() + 3600e3));
}

function colorFor(group, i) {
  return TYPE_COLORS[group] || PALETTE[i % PALETTE.length];
}

// ---------------------------------------------------------------- SVG charts

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// The y axis: about `want` intervals of a round step (1, 2, 2.5 or 5 × 10^k;
// no 2.5 below 10 for whole counts), from 0 to the first multiple of the
// step at or above `max`.
function yTicks(max, want, whole) {
  if (!(max > 0)) max = whole ? want : 1;
  const raw = max / want;
  const exp = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = 10 * exp;
  for (const m of [1, 2, 2.5, 5]) {
    if (whole && m === 2.5 && exp < 10) continue;
    if (m * exp >= raw * (1 - 1e-9)) { step = m * exp; break; }
  }
  if (whole) step = Math.max(1, step);
  const count = Math.max(1, Math.ceil(max / step - 1e-9));
  const ticks = [];
  // Multiply (not add) so labels are exact: 0.1 * 3, not 0.1 + 0.1 + 0.1.
  for (let i = 0; i <= count; i++) ticks.push(Number((step * i).toPrecision(12)));
  return { step, top: ticks[count], ticks };
}

// Tick step that gives ~`want` ticks on the time axis.
function timeStep(spanMs, want) {
  const steps = [60e3, 120e3, 300e3, 600e3, 900e3, 1200e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3];
  for (const s of steps) if (spanMs / s <= want) return s;
  return 86400e3 * Math.ceil(spanMs / 86400e3 / want);
}

/**
 * Draws a time series chart into `container`.
 * opts: { buckets: [iso], granularity, series: [{ name, color, values }],
 *         partial: Set of bucket indices not over yet (drawn dashed and faded),
 *         kind: 'area' | 'bars', stacked, whole (values are counts), unit, format(v, axis) }
 */
function drawChart(container, opts) {
  const width = Math.max(container.clientWidth, 160);
  const height = Math.max(container.clientHeight, 100);
  const times = opts.buckets.map((b) => new Date(b).getTime());
  const n = times.length;
  const partial = opts.partial || new Set();
  const step = n > 1 ? times[1] - times[0] : ({ hour: 3600e3, day: 86400e3 }[opts.granularity] || 60e3);
  const t0 = times[0];
  const t1 = times[n - 1] + step;

  // Stack (or not) the series.
  const layers = [];
  const base = new Array(n).fill(0);
  for (const s of opts.series) {
    const lo = opts.stacked ? base.slice() : new Array(n).fill(0);
    const hi = s.values.map((v, i) => lo[i] + v);
    if (opts.stacked) hi.forEach((v, i) => { base[i] = v; });
    layers.push({ s, lo, hi });
  }
  let max = 0;
  for (const l of layers) for (const v of l.hi) if (v > max) max = v;
  const axis = yTicks(max, height < 160 ? 3 : 4, opts.whole);
  const label = (v) => (opts.format ? opts.format(v, true) : compact(v));
  // Room on the left for the longest y label.
  const longest = Math.max(...axis.ticks.map((v) => label(v).length));
  const m = { top: 18, right: 8, bottom: 22, left: Math.max(30, 8 + longest * 6.6) };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const x = (t) => m.left + ((t - t0) / (t1 - t0)) * w;
  const y = (v) => m.top + h - (v / axis.top) * h;

  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': opts.label || 'chart' });
  // Y grid and labels.
  axis.ticks.forEach((v, i) => {
    const yy = y(v);
    el('line', { class: i === 0 ? 'axis' : 'gridline', x1: m.left, x2: width - m.right, y1: yy, y2: yy }, svg);
    const t = el('text', { class: 'ytick', x: m.left - 6, y: yy + 3.5, 'text-anchor': 'end', 'data-value': v }, svg);
    t.textContent = label(v);
  });
  const unit = el('text', { class: 'unit', x: 0, y: 10, 'text-anchor': 'start' }, svg);
  unit.textContent = opts.unit || '';

  // X ticks on round local times.
  const span = t1 - t0;
  const tickStep = timeStep(span, Math.max(3, Math.floor(w / 75)));
  const tzOffset = new Date(t0).getTimezoneOffset() * 60e3;
  let tick = Math.ceil((t0 - tzOffset) / tickStep) * tickStep + tzOffset;
  for (; tick <= t1; tick += tickStep) {
    const xx = x(tick);
    if (xx < m.left + 14 || xx > width - m.right - 14) continue;
    el('line', { class: 'axis', x1: xx, x2: xx, y1: m.top + h, y2: m.top + h + 4 }, svg);
    const t = el('text', { x: xx, y: height - 6, 'text-anchor': 'middle' }, svg);
    t.textContent = timeLabel(new Date(tick), span);
  }

  const mid = (i) => x(times[i] + step / 2);
  if (opts.kind === 'bars') {
    const bw = Math.max(1, (w / n) * 0.72);
    for (const l of layers) {
      const g = el('g', { fill: l.s.color, class: 'series', 'data-name': l.s.name }, svg);
      l.hi.forEach((v, i) => {
        if (v - l.lo[i] <= 0) return;
        const xx = x(times[i]) + (w / n - bw) / 2;
        const attrs = { x: xx.toFixed(1), y: y(v).toFixed(1), width: bw.toFixed(1), height: Math.max(1, y(l.lo[i]) - y(v)).toFixed(1), rx: bw > 4 ? 1.5 : 0 };
        if (partial.has(i)) Object.assign(attrs, { class: 'partial', 'fill-opacity': 0.35, stroke: l.s.color, 'stroke-dasharray': '2 2' });
        el('rect', attrs, g);
      });
    }
  } else {
    const dashed = [];
    for (const l of layers) {
      let line = '';
      let dash = '';
      for (let i = 0; i < n; i++) {
        const pt = mid(i).toFixed(1) + ',' + y(l.hi[i]).toFixed(1);
        if (i === 0) { line += 'M' + pt; continue; }
        if (partial.has(i) || partial.has(i - 1)) {
          dash += 'M' + mid(i - 1).toFixed(1) + ',' + y(l.hi[i - 1]).toFixed(1) + 'L' + pt;
          line += 'M' + pt;
        } else {
          line += 'L' + pt;
        }
      }
      let area = 'M' + mid(0).toFixed(1) + ',' + y(l.hi[0]).toFixed(1);
      for (let i = 1; i < n; i++) area += 'L' + mid(i).toFixed(1) + ',' + y(l.hi[i]).toFixed(1);
      for (let i = n - 1; i >= 0; i--) area += 'L' + mid(i).toFixed(1) + ',' + y(l.lo[i]).toFixed(1);
      el('path', { d: area + 'Z', fill: l.s.color, 'fill-opacity': opts.stacked ? 0.55 : 0.14, stroke: 'none', class: 'series area', 'data-name': l.s.name }, svg);
      el('path', { d: line, fill: 'none', stroke: l.s.color, 'stroke-width': 1.6, 'stroke-linejoin': 'round', class: 'series line', 'data-name': l.s.name }, svg);
      if (dash) dashed.push({ d: dash, color: l.s.color });
    }
    // Buckets not over yet: the area behind a veil, the line dashed. A
    // segment is partial when either end is; runs of them get one veil.
    for (let j = 0; j < n - 1; j++) {
      if (!(partial.has(j) || partial.has(j + 1))) continue;
      let k = j;
      while (k + 1 < n - 1 && (partial.has(k + 1) || partial.has(k + 2))) k++;
      el('rect', { class: 'partial veil', x: mid(j).toFixed(1), y: m.top, width: (mid(k + 1) - mid(j)).toFixed(1), height: Math.max(0, h) }, svg);
      j = k;
    }
    for (const dsh of dashed) {
      el('path', { d: dsh.d, fill: 'none', stroke: dsh.color, 'stroke-width': 1.6, 'stroke-dasharray': '4 3', class: 'series partial' }, svg);
    }
  }

  // Hover: a guide line and a tooltip with every series' value.
  const guide = el('line', { class: 'hover', y1: m.top, y2: m.top + h, visibility: 'hidden' }, svg);
  const overlay = el('rect', { x: m.left, y: m.top, width: Math.max(0, w), height: Math.max(0, h), fill: 'transparent' }, svg);
  const tooltip = document.getElementById('tooltip');
  overlay.addEventListener('mousemove', (ev) => {
    const rect = svg.getBoundingClientRect();
    const px = ((ev.clientX - rect.left) / rect.width) * width;
    const i = Math.min(n - 1, Math.max(0, Math.floor(((px - m.left) / w) * n)));
    const gx = x(times[i] + step / 2);
    guide.setAttribute('x1', gx); guide.setAttribute('x2', gx); guide.setAttribute('visibility', 'visible');
    let html = '<div class="t">' + bucketLabel(new Date(times[i]), opts.granularity) +
      (partial.has(i) ? ' <em>(partial)</em>' : '') + '</div>';
    for (const s of opts.series.slice().reverse()) {
      html += '<div class="row"><span><i style="background:' + s.color + '"></i>' + escapeHtml(s.name) + '</span><b>' +
        (opts.format ? opts.format(s.values[i], false) : fmtNum.format(s.values[i])) + '</b></div>';
    }
    tooltip.innerHTML = html;
    tooltip.hidden = false;
    tooltip.style.left = Math.max(4, Math.min(ev.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8)) + 'px';
    tooltip.style.top = (ev.clientY + 14) + 'px';
  });
  overlay.addEventListener('mouseleave', () => { guide.setAttribute('visibility', 'hidden'); tooltip.hidden = true; });

  container.replaceChildren(svg);
  if (max === 0) {
    const empty = document.createElement('div');
    empty.className = 'empty';
    empty.textContent = 'No data in the ' + RANGES[state.range];
    container.appendChild(empty);
  }
  container.dataset.points = String(n);
  container.dataset.partial = [...partial].join(',');
}

function drawSpark(svg, values, partial, color) {
  const width = svg.clientWidth || 200;
  const height = svg.clientHeight || 34;
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const max = Math.max(...values, 0);
  const n = values.length;
  if (n === 0) { svg.replaceChildren(); return; }
  const x = (i) => (n === 1 ? width / 2 : (i / (n - 1)) * width);
  const y = (v) => height - 2 - (max > 0 ? (v / max) * (height - 4) : 0);
  let d = '';
  let dash = '';
  values.forEach((v, i) => {
    const pt = x(i).toFixed(1) + ',' + y(v).toFixed(1);
    if (i > 0 && (partial.has(i) || partial.has(i - 1))) {
      dash += 'M' + x(i - 1).toFixed(1) + ',' + y(values[i - 1]).toFixed(1) + 'L' + pt;
      d += 'M' + pt;
    } else {
      d += (i ? 'L' : 'M') + pt;
    }
  });
  let outline = '';
  values.forEach((v, i) => { outline += (i ? 'L' : 'M') + x(i).toFixed(1) + ',' + y(v).toFixed(1); });
  const a = el('path', { d: outline + `L${width},${height}L0,${height}Z`, fill: color, 'fill-opacity': 0.12 });
  const l = el('path', { d, fill: 'none', stroke: color, 'stroke-width': 1.4 });
  const p = el('path', { d: dash, fill: 'none', stroke: color, 'stroke-width': 1.4, 'stroke-dasharray': '3 2', 'stroke-opacity': 0.7 });
  svg.replaceChildren(a, l, p);
}

// ---------------------------------------------------------------- renderers

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// Shows the first of `texts` that fits the element's width; if none does,
// the last one in a smaller font. A KPI is never cut off.
function fitText(node, texts) {
  node.style.fontSize = '';
  for (const t of texts) {
    node.textContent = t;
    if (node.scrollWidth <= node.clientWidth) return;
  }
  const size = parseFloat(getComputedStyle(node).fontSize);
  node.style.fontSize = Math.max(10, Math.floor(size * node.clientWidth / node.scrollWidth) - 1) + 'px';
}

function deltaHtml(change) {
  if (change === null || change === undefined) return '<span class="delta none" title="nothing in the previous period">—</span>';
  if (change === 0) return '<span class="delta flat">0%</span>';
  const up = change > 0;
  // From +1,000 % on, a factor reads better: "▲ 111×", not "▲ 10,975.9%".
  const amount = change >= 10 ? fmtInt.format(1 + change) + '×' : fmtPercent.format(Math.abs(change));
  return '<span class="delta ' + (up ? 'up' : 'down') + '" title="' + fmtPercent.format(change) + '">' + (up ? '▲ ' : '▼ ') + amount + '</span>';
}

function setKpi(metric, kpi, answer, values, color) {
  const card = document.getElementById('kpi-' + metric);
  const valueEl = card.querySelector('.value');
  const old = card.dataset.value;
  const v = kpi.value;
  const full = formatValue(metric, v);
  const short = metric === 'revenue' ? moneyCompact(v) : fmtCompact.format(v);
  fitText(valueEl, full === short ? [full] : [full, short]);
  valueEl.title = full;
  card.dataset.value = String(v);
  card.dataset.previous = String(kpi.previous);
  card.dataset.change = kpi.change === null ? '' : String(kpi.change);
  card.dataset.start = answer.start;
  card.dataset.end = answer.end;
  const sub = card.querySelector('.sub');
  sub.innerHTML = deltaHtml(kpi.change) + ' <span class="vs">vs ' + PREVIOUS[answer.range] + '</span>';
  sub.title = 'previous period: ' + formatValue(metric, kpi.previous) + ' (' + answer.previous.start + ' – ' + answer.previous.end + ')';
  if (old !== undefined && old !== String(v)) {
    card.classList.remove('changed');
    void card.offsetWidth; // restart the animation
    card.classList.add('changed');
  }
  drawSpark(card.querySelector('.spark'), values, new Set(answer.partial), color);
}

function renderTop(id, answer, rows, metric, color) {
  const body = document.querySelector('#' + id + ' tbody');
  rows = rows.filter((s) => s.total > 0);
  const table = document.getElementById(id);
  table.dataset.start = answer.start;
  table.dataset.end = answer.end;
  if (rows.length === 0) {
    body.innerHTML = '<tr><td class="empty" colspan="3">Nothing in the ' + RANGES[answer.range] + '</td></tr>';
    return;
  }
  const max = rows[0].total;
  body.innerHTML = rows.map((s, i) =>
    '<tr data-group="' + escapeHtml(s.group) + '" data-value="' + s.total + '">' +
    '<td class="rank">' + (i + 1) + '</td>' +
    '<td class="label"><div class="bar"><b style="width:' + (100 * s.total / max).toFixed(1) + '%;background:' + color + '"></b><span title="' +
    escapeHtml(s.group) + '">' + escapeHtml(s.group) + '</span></div></td>' +
    '<td class="num">' + formatValue(metric, s.total) + '</td></tr>').join('');
}

const COMPARISONS = { greater_than: '>', greater_or_equal: '≥', less_than: '<', less_or_equal: '≤' };
const METRIC_NAMES = { events: 'events', unique_users: 'unique users', pageviews: 'pageviews', purchases: 'purchases', revenue: 'revenue', quantity: 'quantity' };

function duration(s) {
  if (s % 86400 === 0) return s / 86400 + ' d';
  if (s % 3600 === 0) return s / 3600 + ' h';
  if (s % 60 === 0) return s / 60 + ' min';
  return s + ' s';
}

function describeRule(r) {
  const f = r.filter || {};
  const parts = [];
  if (f.event_types && f.event_types.length) parts.push(f.event_types.join(', '));
  if (f.page_url) parts.push('page ' + f.page_url);
  if (f.product_id) parts.push('product ' + f.product_id);
  if (f.user_id) parts.push('user ' + f.user_id);
  const what = METRIC_NAMES[r.metric] + (parts.length ? ' (' + parts.join('; ') + ')' : '');
  const threshold = r.metric === 'revenue' ? money(r.threshold) : fmtNum.format(r.threshold);
  return what + ' ' + COMPARISONS[r.comparison] + ' ' + threshold + ' over ' + duration(r.window_seconds) +
    (r.for_seconds ? ', for ' + duration(r.for_seconds) : '');
}

const STATE_LABEL = { inactive: 'OK', pending: 'Pending', firing: 'Firing', disabled: 'Disabled' };

function renderRules(rules) {
  const body = document.querySelector('#rules tbody');
  const firing = rules.filter((r) => r.state === 'firing').length;
  document.getElementById('rules-count').textContent = rules.length
    ? rules.length + ' rule' + (rules.length === 1 ? '' : 's') + (firing ? ' · ' + firing + ' firing' : '')
    : '';
  if (rules.length === 0) {
    body.innerHTML = '<tr><td class="empty" colspan="3">No alert rules. Create one with <code>CreateAlertRule</code>.</td></tr>';
    return;
  }
  // Firing first, then pending, then the rest; by name within a state.
  const order = { firing: 0, pending: 1, inactive: 2, disabled: 3 };
  const sorted = rules.slice().sort((a, b) => order[a.state] - order[b.state] || a.name.localeCompare(b.name));
  body.innerHTML = sorted.map((r) =>
    '<tr class="' + r.state + '" data-rule-id="' + r.id + '" data-state="' + r.state + '">' +
    '<td class="rule"><div class="n">' + escapeHtml(r.name) + '</div><div class="c">' + escapeHtml(describeRule(r)) + '</div></td>' +
    '<td class="num">' + (r.value === null || r.value === undefined ? '–' : formatValue(r.metric === 'revenue' ? 'revenue' : 'x', r.value)) + '</td>' +
    '<td><span class="pill ' + r.state + '">' + STATE_LABEL[r.state] + '</span></td></tr>').join('');
}

function renderNotifications(rules) {
  const list = document.getElementById('notifications');
  const notes = state.notifications;
  const revenueRules = new Set(rules.filter((r) => r.metric === 'revenue').map((r) => r.id));
  document.getElementById('notes-count').textContent = notes.length ? 'latest ' + notes.length : '';
  if (notes.length === 0) {
    list.innerHTML = '<li class="empty">No notifications yet.</li>';
    return;
  }
  list.innerHTML = notes.map((n) => {
    const isNew = !state.seenNotes.has(n.id) && state.refreshes > 0;
    const when = new Date(n.fired_at);
    const cmp = n.state === 'firing' ? 'crossed' : 'back within';
    const fmt = revenueRules.has(n.rule_id) ? money : (v) => fmtNum.format(v);
    return '<li class="' + n.state + (isNew ? ' new' : '') + '" data-id="' + n.id + '" data-state="' + n.state + '">' +
      '<span class="pill ' + n.state + '">' + n.state + '</span>' +
      '<span class="what" title="' + escapeHtml(n.rule_name) + '">' + escapeHtml(n.rule_name) + '</span>' +
      '<span class="when" title="' + when.toString() + '">' + hhmmss(when) + '</span>' +
      '<span class="detail">value ' + fmt(n.value) + ' ' + cmp + ' threshold ' + fmt(n.threshold) + '</span></li>';
  }).join('');
  for (const n of notes) state.seenNotes.add(n.id);
}

function render(d) {
  moneyFormats(d.currency);
  const per = unitOf(d.granularity);
  const unit = shortUnit(per);
  const partial = new Set(d.partial);
  document.getElementById('title-by-type').textContent = 'Events per ' + per + ' by type';
  document.getElementById('title-pageviews').textContent = 'Pageviews per ' + per;
  document.getElementById('title-users').textContent = 'Unique users per ' + per;
  document.getElementById('title-revenue').textContent = 'Revenue per ' + per + ' (' + d.currency + ')';

  const s = d.series;
  setKpi('events', d.kpis.events, d, s.events.values, '#4c6ef5');
  setKpi('pageviews', d.kpis.pageviews, d, s.pageviews.values, '#4c6ef5');
  setKpi('unique_users', d.kpis.unique_users, d, s.unique_users.values, '#12b886');
  setKpi('revenue', d.kpis.revenue, d, s.revenue.values, '#f59f00');
  setKpi('purchases', d.kpis.purchases, d, s.purchases.values, '#ae3ec9');

  const typeSeries = s.events_by_type.map((x, i) => ({ name: x.group, color: colorFor(x.group, i), values: x.values }));
  document.getElementById('legend-by-type').innerHTML = typeSeries.map((x) =>
    '<span><i style="background:' + x.color + '"></i>' + escapeHtml(x.name) + '</span>').join('');
  const common = { buckets: d.buckets, granularity: d.granularity, partial };
  drawChart(document.getElementById('chart-by-type'), Object.assign({}, common, {
    kind: 'area', stacked: true, whole: true,
    series: typeSeries.length ? typeSeries : [{ name: 'events', color: '#4c6ef5', values: d.buckets.map(() => 0) }],
    unit: 'events / ' + unit, label: 'events per ' + per + ' by type',
  }));
  drawChart(document.getElementById('chart-pageviews'), Object.assign({}, common, {
    kind: 'area', whole: true,
    series: [{ name: 'pageviews', color: '#4c6ef5', values: s.pageviews.values }],
    unit: 'pageviews / ' + unit, label: 'pageviews per ' + per,
  }));
  drawChart(document.getElementById('chart-users'), Object.assign({}, common, {
    kind: 'bars', whole: true,
    series: [{ name: 'unique users', color: '#12b886', values: s.unique_users.values }],
    unit: 'users / ' + unit, label: 'unique users per ' + per,
  }));
  drawChart(document.getElementById('chart-revenue'), Object.assign({}, common, {
    kind: 'bars',
    series: [{ name: 'revenue', color: '#f59f00', values: s.revenue.values }],
    unit: d.currency + ' / ' + unit, label: 'revenue per ' + per,
    format: (v, axis) => (axis ? (Math.abs(v) >= 1e4 ? moneyCompact(v) : money(v).replace(/\.00$/, '')) : money(v)),
  }));
  renderTop('top-pages', d, d.top_pages, 'pageviews', '#4c6ef5');
  renderTop('top-products', d, d.top_products, 'revenue', '#f59f00');
  renderRules(d.rules);
  renderNotifications(d.rules);
}

// ---------------------------------------------------------------- the loop

function dashboardPath() {
  const q = state.range === 'custom'
    ? new URLSearchParams({ start: new Date(state.custom.from).toISOString(), end: new Date(state.custom.to).toISOString() })
    : new URLSearchParams({ range: state.range });
  if (state.afterId === null) {
    q.set('limit', String(NOTES_SHOWN));
  } else {
    q.set('after_id', String(state.afterId));
    q.set('limit', '200');
  }
  return '/api/v1/dashboard?' + q.toString();
}

async function refresh() {
  const generation = state.generation;
  const answer = await api(dashboardPath());
  // Notifications do not depend on the range: keep them even if it changed.
  const fresh = answer.notifications;
  if (fresh.length) {
    state.afterId = fresh[fresh.length - 1].id;
    state.notifications = fresh.slice().reverse().concat(state.notifications).slice(0, NOTES_SHOWN);
  } else if (state.afterId === null) {
    state.afterId = answer.last_id;
  }
  if (generation !== state.generation) return; // the range changed meanwhile

  state.last = answer;
  render(answer);
  state.refreshes += 1;
  document.body.dataset.range = answer.range;
  document.body.dataset.refreshes = String(state.refreshes);
  document.body.dataset.ready = '1';
  setStatus('live', 'Live · updated ' + hhmmss(new Date()));
}

function setStatus(kind, text) {
  const node = document.getElementById('status');
  node.className = 'status ' + kind;
  document.getElementById('status-text').textContent = text;
}

// One polling loop at a time: starting a new one (range change, key entry,
// tab shown again) retires the old one when its refresh returns.
async function tick() {
  clearTimeout(state.timer);
  const loop = ++state.loop;
  const started = performance.now();
  try {
    await refresh();
    document.body.dataset.refreshMs = String(Math.round(performance.now() - started));
  } catch (err) {
    if (err instanceof Unauthorized) {
      setStatus('error', 'API key required');
      askForKey();
      return; // polling resumes once a key is entered
    }
    if (state.range === 'custom' && /^INVALID_ARGUMENT/.test(err.message)) {
      showRangeError('The server refused this range: ' + err.message.replace(/^INVALID_ARGUMENT: /, ''));
      setStatus('error', 'Invalid range');
      return; // polling resumes once another range is chosen
    }
    setStatus('error', 'Cannot reach Pulse (' + err.message + ') · retrying');
  }
  // One refresh per second, start to start: new data shows within about a
  // second plus one refresh, however long a refresh takes. A hidden tab
  // asks nothing until it is shown again.
  if (loop !== state.loop || document.hidden) return;
  state.timer = setTimeout(tick, Math.max(100, POLL_MS - (performance.now() - started)));
}

function askForKey() {
  const dialog = document.getElementById('key-dialog');
  if (dialog.open) return;
  dialog.showModal();
}

document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    clearTimeout(state.timer);
    state.loop += 1; // an answer in flight schedules nothing
    setStatus('paused', 'Paused while the tab is hidden');
  } else {
    tick();
  }
});

// ---------------------------------------------------------------- ranges

function selectRange(range) {
  state.range = range;
  state.generation += 1;
  if (range !== 'custom') {
    try { localStorage.setItem('pulse.range', range); } catch (_) { /* storage may be off */ }
  }
  const url = new URL(location.href);
  url.searchParams.set('range', range);
  if (range === 'custom') {
    url.searchParams.set('from', new Date(state.custom.from).toISOString());
    url.searchParams.set('to', new Date(state.custom.to).toISOString());
  } else {
    url.searchParams.delete('from');
    url.searchParams.delete('to');
    showCustomForm(false);
  }
  history.replaceState(null, '', url);
  for (const b of document.querySelectorAll('#ranges button')) {
    b.setAttribute('aria-pressed', String(b.dataset.range === range));
  }
  showRangeError(null);
  tick();
}

// datetime-local values are read and written as UTC.
function toInput(ms) { return new Date(ms).toISOString().slice(0, 16); }
function fromInput(value) {
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(value)) return NaN;
  return Date.parse(value + (value.length === 16 ? ':00' : '') + 'Z');
}

function showRangeError(message) {
  const node = document.getElementById('custom-error');
  node.hidden = !message;
  node.textContent = message || '';
}

function showCustomForm(show) {
  const form = document.getElementById('custom-range');
  form.hidden = !show;
  document.getElementById('custom-toggle').setAttribute('aria-expanded', String(show));
  if (show) {
    const from = document.getElementById('custom-from');
    const to = document.getElementById('custom-to');
    const shown = state.custom || (state.last && { from: Date.parse(state.last.start), to: Date.parse(state.last.end) });
    if (shown && !from.value) from.value = toInput(shown.from);
    if (shown && !to.value) to.value = toInput(shown.to);
  }
}

// The custom range's checks; the server checks again (and says why it refuses).
function readCustomRange() {
  const fromText = document.getElementById('custom-from').value;
  const toText = document.getElementById('custom-to').value;
  if (!fromText || !toText) return { error: 'Enter both a start (From) and an end (To), in UTC.' };
  const from = fromInput(fromText);
  const to = fromInput(toText);
  if (Number.isNaN(from)) return { error: 'From is not a valid date and time.' };
  if (Number.isNaN(to)) return { error: 'To is not a valid date and time.' };
  if (from >= to) return { error: 'From must be before To (both in UTC).' };
  if (from < 0) return { error: 'From must not be before 1970.' };
  return { from, to };
}

document.getElementById('ranges').addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-range]');
  if (!b) return;
  if (b.dataset.range === 'custom') {
    showCustomForm(document.getElementById('custom-range').hidden);
    return;
  }
  if (b.dataset.range !== state.range) selectRange(b.dataset.range);
});
document.getElementById('custom-range').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const range = readCustomRange();
  if (range.error) { showRangeError(range.error); return; }
  state.custom = range;
  selectRange('custom');
});
document.getElementById('key-form').addEventListener('submit', () => {
  const key = document.getElementById('key-input').value.trim();
  try { sessionStorage.setItem(KEY_STORAGE, key); } catch (_) { /* storage may be off */ }
  tick();
});
let resizeTimer = null;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (state.last) render(state.last); }, 100);
});

if (state.range === 'custom') {
  showCustomForm(true);
}
selectRange(state.range);
