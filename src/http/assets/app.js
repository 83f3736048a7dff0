// Pulse dashboard: polls the JSON API (/api/v1, see README.md "JSON API")
// once a second and draws SVG charts. No dependencies, no build step.
'use strict';

const POLL_MS = 1000;
const RANGES = { '15m': 'last 15 min', '1h': 'last hour', '24h': 'last 24 hours', '7d': 'last 7 days' };
const TYPE_COLORS = { pageview: '#4c6ef5', click: '#12b886', purchase: '#f59f00', sign_up: '#ae3ec9' };
const PALETTE = ['#4c6ef5', '#12b886', '#f59f00', '#ae3ec9', '#fa5252', '#15aabf', '#82c91e', '#fd7e14', '#7950f2', '#868e96'];
const SVG_NS = 'http://www.w3.org/2000/svg';
const KEY_STORAGE = 'pulse.apiKey';

const fmtInt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const fmtMoney = new Intl.NumberFormat('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const fmtNum = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });

const state = {
  range: initialRange(),
  afterId: null,
  notifications: [],
  seenNotes: new Set(),
  refreshes: 0,
  timer: null,
  generation: 0,
  loop: 0,
};

function initialRange() {
  const fromUrl = new URLSearchParams(location.search).get('range');
  if (fromUrl && RANGES[fromUrl]) return fromUrl;
  try {
    const saved = localStorage.getItem('pulse.range');
    if (saved && RANGES[saved]) return saved;
  } catch (_) { /* storage may be off */ }
  return '1h';
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

function metrics(params) {
  const q = new URLSearchParams(Object.assign({ range: state.range }, params));
  return api('/api/v1/metrics?' + q.toString());
}

// ---------------------------------------------------------------- formatting

function unitOf(granularity) {
  return granularity === 'hour' ? 'hour' : granularity === 'day' ? 'day' : 'minute';
}

function compact(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return fmtNum.format(v / 1e9) + 'B';
  if (a >= 1e6) return fmtNum.format(v / 1e6) + 'M';
  if (a >= 1e4) return fmtNum.format(v / 1e3) + 'k';
  if (a >= 100 || Number.isInteger(v)) return fmtInt.format(v);
  return fmtNum.format(v);
}

function formatValue(metric, v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  return metric === 'revenue' ? fmtMoney.format(v) : fmtInt.format(v);
}

function pad(n) { return String(n).padStart(2, '0'); }
function hhmm(d) { return pad(d.getHours()) + ':' + pad(d.getMinutes()); }
function hhmmss(d) { return hhmm(d) + ':' + pad(d.getSeconds()); }
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];

function timeLabel(d, spanMs) {
  if (spanMs > 2 * 86400e3) {
    return d.getHours() === 0 ? DAYS[d.getDay()] + ' ' + d.getDate() : hhmm(d);
  }
  return hhmm(d);
}

function bucketLabel(d, granularity) {
  const day = DAYS[d.getDay()] + ' ' + d.getDate();
  return granularity === 'minute' ? day + ', ' + hhmm(d) : day + ', ' + hhmm(d) + '–' + hhmm(new Date(d.getTime() + 3600e3));
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

function niceMax(max) {
  if (!(max > 0)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(max)));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    if (m * exp >= max) return m * exp;
  }
  return 10 * exp;
}

// Tick step that gives ~`want` ticks on the time axis.
function timeStep(spanMs, want) {
  const steps = [60e3, 120e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3];
  for (const s of steps) if (spanMs / s <= want) return s;
  return 86400e3 * Math.ceil(spanMs / 86400e3 / want);
}

/**
 * Draws a time series chart into `container`.
 * opts: { buckets: [iso], granularity, series: [{ name, color, values }],
 *         kind: 'area' | 'bars', stacked, unit, format(v) }
 */
function drawChart(container, opts) {
  const width = Math.max(container.clientWidth, 200);
  const height = Math.max(container.clientHeight, 100);
  const m = { top: 18, right: 8, bottom: 22, left: 46 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const times = opts.buckets.map((b) => new Date(b).getTime());
  const n = times.length;
  const step = n > 1 ? times[1] - times[0] : (unitOf(opts.granularity) === 'hour' ? 3600e3 : 60e3);
  const t0 = times[0];
  const t1 = times[n - 1] + step;
  const x = (t) => m.left + ((t - t0) / (t1 - t0)) * w;

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
  const top = niceMax(max);
  const y = (v) => m.top + h - (v / top) * h;

  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': opts.label || 'chart' });
  // Y grid and labels.
  const ticks = 4;
  for (let i = 0; i <= ticks; i++) {
    const v = (top / ticks) * i;
    const yy = y(v);
    el('line', { class: i === 0 ? 'axis' : 'gridline', x1: m.left, x2: width - m.right, y1: yy, y2: yy }, svg);
    const t = el('text', { x: m.left - 6, y: yy + 3.5, 'text-anchor': 'end' }, svg);
    t.textContent = opts.format ? opts.format(v, true) : compact(v);
  }
  const unit = el('text', { class: 'unit', x: m.left - 6, y: 10, 'text-anchor': 'end' }, svg);
  unit.textContent = opts.unit || '';
  unit.setAttribute('x', 0);
  unit.setAttribute('text-anchor', 'start');

  // X ticks on round times.
  const span = t1 - t0;
  const tickStep = timeStep(span, Math.max(3, Math.floor(w / 110)));
  const tzOffset = new Date(t0).getTimezoneOffset() * 60e3;
  let tick = Math.ceil((t0 - tzOffset) / tickStep) * tickStep + tzOffset;
  for (; tick <= t1; tick += tickStep) {
    const xx = x(tick);
    if (xx < m.left + 14 || xx > width - m.right - 14) continue;
    el('line', { class: 'axis', x1: xx, x2: xx, y1: m.top + h, y2: m.top + h + 4 }, svg);
    const t = el('text', { x: xx, y: height - 6, 'text-anchor': 'middle' }, svg);
    t.textContent = timeLabel(new Date(tick), span);
  }

  if (opts.kind === 'bars') {
    const bw = Math.max(1, (w / n) * 0.72);
    for (const l of layers) {
      const g = el('g', { fill: l.s.color, class: 'series', 'data-name': l.s.name }, svg);
      l.hi.forEach((v, i) => {
        if (v - l.lo[i] <= 0) return;
        const xx = x(times[i]) + (w / n - bw) / 2;
        el('rect', { x: xx.toFixed(1), y: y(v).toFixed(1), width: bw.toFixed(1), height: Math.max(1, y(l.lo[i]) - y(v)).toFixed(1), rx: bw > 4 ? 1.5 : 0 }, g);
      });
    }
  } else {
    for (const l of layers) {
      const mid = (i) => x(times[i] + step / 2);
      let line = '';
      let area = '';
      for (let i = 0; i < n; i++) line += (i ? 'L' : 'M') + mid(i).toFixed(1) + ',' + y(l.hi[i]).toFixed(1);
      area = line;
      for (let i = n - 1; i >= 0; i--) area += 'L' + mid(i).toFixed(1) + ',' + y(l.lo[i]).toFixed(1);
      el('path', { d: area + 'Z', fill: l.s.color, 'fill-opacity': opts.stacked ? 0.55 : 0.14, stroke: 'none', class: 'series area', 'data-name': l.s.name }, svg);
      el('path', { d: line, fill: 'none', stroke: l.s.color, 'stroke-width': 1.6, 'stroke-linejoin': 'round', class: 'series line', 'data-name': l.s.name }, svg);
    }
  }

  // Hover: a guide line and a tooltip with every series' value.
  const guide = el('line', { class: 'hover', y1: m.top, y2: m.top + h, visibility: 'hidden' }, svg);
  const overlay = el('rect', { x: m.left, y: m.top, width: w, height: h, fill: 'transparent' }, svg);
  const tooltip = document.getElementById('tooltip');
  overlay.addEventListener('mousemove', (ev) => {
    const rect = svg.getBoundingClientRect();
    const px = ((ev.clientX - rect.left) / rect.width) * width;
    const i = Math.min(n - 1, Math.max(0, Math.floor(((px - m.left) / w) * n)));
    const gx = x(times[i] + step / 2);
    guide.setAttribute('x1', gx); guide.setAttribute('x2', gx); guide.setAttribute('visibility', 'visible');
    let html = '<div class="t">' + bucketLabel(new Date(times[i]), opts.granularity) + '</div>';
    for (const s of opts.series.slice().reverse()) {
      html += '<div class="row"><span><i style="background:' + s.color + '"></i>' + escapeHtml(s.name) + '</span><b>' +
        (opts.format ? opts.format(s.values[i], false) : fmtNum.format(s.values[i])) + '</b></div>';
    }
    tooltip.innerHTML = html;
    tooltip.hidden = false;
    tooltip.style.left = Math.min(ev.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8) + 'px';
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
}

function drawSpark(svg, values, color) {
  const width = svg.clientWidth || 200;
  const height = svg.clientHeight || 34;
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const max = Math.max(...values, 0);
  const n = values.length;
  if (n === 0) { svg.replaceChildren(); return; }
  const x = (i) => (n === 1 ? width / 2 : (i / (n - 1)) * width);
  const y = (v) => height - 2 - (max > 0 ? (v / max) * (height - 4) : 0);
  let d = '';
  values.forEach((v, i) => { d += (i ? 'L' : 'M') + x(i).toFixed(1) + ',' + y(v).toFixed(1); });
  const area = d + `L${width},${height}L0,${height}Z`;
  const a = el('path', { d: area, fill: color, 'fill-opacity': 0.12 });
  const l = el('path', { d, fill: 'none', stroke: color, 'stroke-width': 1.4 });
  svg.replaceChildren(a, l);
}

// ---------------------------------------------------------------- renderers

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function seriesOrZero(answer) {
  const s = answer.series[0];
  return s ? s : { group: '', total: 0, values: answer.buckets.map(() => 0) };
}

function setKpi(metric, answer, total, color) {
  const card = document.getElementById('kpi-' + metric);
  const valueEl = card.querySelector('.value');
  const old = card.dataset.value;
  const text = formatValue(metric, total);
  // Keep big amounts on one line; the exact value is in the tooltip.
  valueEl.textContent = metric === 'revenue' && total >= 1e6 ? fmtMoney.format(total / 1e6) + 'M' : text;
  valueEl.title = text;
  card.dataset.value = String(total);
  card.dataset.start = answer.start;
  card.dataset.end = answer.end;
  card.querySelector('.sub').textContent = RANGES[state.range];
  if (old !== undefined && old !== String(total)) {
    card.classList.remove('changed');
    void card.offsetWidth; // restart the animation
    card.classList.add('changed');
  }
  drawSpark(card.querySelector('.spark'), seriesOrZero(answer).values, color);
}

function renderTop(id, answer, metric, color) {
  const body = document.querySelector('#' + id + ' tbody');
  const rows = answer.series.filter((s) => s.total > 0);
  const table = document.getElementById(id);
  table.dataset.start = answer.start;
  table.dataset.end = answer.end;
  if (rows.length === 0) {
    body.innerHTML = '<tr><td class="empty" colspan="3">Nothing in the ' + RANGES[state.range] + '</td></tr>';
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
  const threshold = r.metric === 'revenue' ? fmtMoney.format(r.threshold) : fmtNum.format(r.threshold);
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

function renderNotifications() {
  const list = document.getElementById('notifications');
  const notes = state.notifications;
  document.getElementById('notes-count').textContent = notes.length ? 'latest ' + notes.length : '';
  if (notes.length === 0) {
    list.innerHTML = '<li class="empty">No notifications yet.</li>';
    return;
  }
  list.innerHTML = notes.map((n) => {
    const isNew = !state.seenNotes.has(n.id) && state.refreshes > 0;
    const when = new Date(n.fired_at);
    const cmp = n.state === 'firing' ? 'crossed' : 'back within';
    return '<li class="' + n.state + (isNew ? ' new' : '') + '" data-id="' + n.id + '" data-state="' + n.state + '">' +
      '<span class="pill ' + n.state + '">' + n.state + '</span>' +
      '<span class="what" title="' + escapeHtml(n.rule_name) + '">' + escapeHtml(n.rule_name) + '</span>' +
      '<span class="when" title="' + when.toString() + '">' + hhmmss(when) + '</span>' +
      '<span class="detail">value ' + fmtNum.format(n.value) + ' ' + cmp + ' threshold ' + fmtNum.format(n.threshold) + '</span></li>';
  }).join('');
  for (const n of notes) state.seenNotes.add(n.id);
}

// ---------------------------------------------------------------- the loop

async function loadNotifications() {
  const path = state.afterId === null
    ? '/api/v1/alerts/notifications?limit=30'
    : '/api/v1/alerts/notifications?after_id=' + state.afterId + '&limit=200';
  const answer = await api(path);
  const fresh = answer.notifications;
  if (fresh.length) {
    state.afterId = fresh[fresh.length - 1].id;
    state.notifications = fresh.slice().reverse().concat(state.notifications).slice(0, 30);
  } else if (state.afterId === null) {
    state.afterId = answer.last_id;
  }
}

async function refresh() {
  const generation = state.generation;
  const range = state.range;
  const [byType, events, pageviews, usersSeries, usersTotal, revenue, purchases, topPages, topProducts, rules] = await Promise.all([
    metrics({ metric: 'events', group_by: 'event_type', limit: 10 }),
    metrics({ metric: 'events' }),
    metrics({ metric: 'pageviews' }),
    metrics({ metric: 'unique_users' }),
    metrics({ metric: 'unique_users', granularity: 'total' }),
    metrics({ metric: 'revenue' }),
    metrics({ metric: 'purchases' }),
    metrics({ metric: 'pageviews', granularity: 'total', group_by: 'page_url', limit: 10 }),
    metrics({ metric: 'revenue', granularity: 'total', group_by: 'product_id', limit: 10 }),
    api('/api/v1/alerts/rules'),
    loadNotifications(),
  ]);
  if (generation !== state.generation) return; // the range changed meanwhile

  const per = unitOf(events.granularity);
  document.getElementById('title-by-type').textContent = 'Events per ' + per + ' by type';
  document.getElementById('title-pageviews').textContent = 'Pageviews per ' + per;
  document.getElementById('title-users').textContent = 'Unique users per ' + per;
  document.getElementById('title-revenue').textContent = 'Revenue per ' + per;

  setKpi('events', events, seriesOrZero(events).total, '#4c6ef5');
  setKpi('pageviews', pageviews, seriesOrZero(pageviews).total, '#4c6ef5');
  const users = seriesOrZero(usersTotal).total;
  setKpi('unique_users', Object.assign({}, usersTotal, { series: usersSeries.series, buckets: usersSeries.buckets }), users, '#12b886');
  setKpi('revenue', revenue, seriesOrZero(revenue).total, '#f59f00');
  setKpi('purchases', purchases, seriesOrZero(purchases).total, '#ae3ec9');

  const typeSeries = byType.series.map((s, i) => ({ name: s.group, color: colorFor(s.group, i), values: s.values }));
  document.getElementById('legend-by-type').innerHTML = typeSeries.map((s) =>
    '<span><i style="background:' + s.color + '"></i>' + escapeHtml(s.name) + '</span>').join('');
  drawChart(document.getElementById('chart-by-type'), {
    buckets: byType.buckets, granularity: byType.granularity, kind: 'area', stacked: true,
    series: typeSeries.length ? typeSeries : [{ name: 'events', color: '#4c6ef5', values: byType.buckets.map(() => 0) }],
    unit: 'events / ' + (per === 'minute' ? 'min' : per), label: 'events per ' + per + ' by type',
  });
  drawChart(document.getElementById('chart-pageviews'), {
    buckets: pageviews.buckets, granularity: pageviews.granularity, kind: 'area',
    series: [{ name: 'pageviews', color: '#4c6ef5', values: seriesOrZero(pageviews).values }],
    unit: 'pageviews / ' + (per === 'minute' ? 'min' : per), label: 'pageviews per ' + per,
  });
  drawChart(document.getElementById('chart-users'), {
    buckets: usersSeries.buckets, granularity: usersSeries.granularity, kind: 'bars',
    series: [{ name: 'unique users', color: '#12b886', values: seriesOrZero(usersSeries).values }],
    unit: 'users / ' + (per === 'minute' ? 'min' : per), label: 'unique users per ' + per,
  });
  drawChart(document.getElementById('chart-revenue'), {
    buckets: revenue.buckets, granularity: revenue.granularity, kind: 'bars',
    series: [{ name: 'revenue', color: '#f59f00', values: seriesOrZero(revenue).values }],
    unit: 'revenue / ' + (per === 'minute' ? 'min' : per), label: 'revenue per ' + per,
    format: (v, axis) => (axis ? compact(v) : fmtMoney.format(v)),
  });
  renderTop('top-pages', topPages, 'pageviews', '#4c6ef5');
  renderTop('top-products', topProducts, 'revenue', '#f59f00');
  renderRules(rules.rules);
  renderNotifications();

  state.refreshes += 1;
  document.body.dataset.range = range;
  document.body.dataset.refreshes = String(state.refreshes);
  document.body.dataset.ready = '1';
  setStatus('live', 'Live · updated ' + hhmmss(new Date()));
}

function setStatus(kind, text) {
  const el = document.getElementById('status');
  el.className = 'status ' + kind;
  document.getElementById('status-text').textContent = text;
}

// One polling loop at a time: starting a new one (range change, key entry,
// resize) retires the old one when its refresh returns.
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
    setStatus('error', 'Cannot reach Pulse (' + err.message + ') · retrying');
  }
  // One refresh per second, start to start: new data shows within about a
  // second plus one refresh, however long a refresh takes.
  if (loop !== state.loop) return;
  state.timer = setTimeout(tick, Math.max(100, POLL_MS - (performance.now() - started)));
}

function askForKey() {
  const dialog = document.getElementById('key-dialog');
  if (dialog.open) return;
  dialog.showModal();
}

function selectRange(range) {
  state.range = range;
  state.generation += 1;
  try { localStorage.setItem('pulse.range', range); } catch (_) { /* storage may be off */ }
  const url = new URL(location.href);
  url.searchParams.set('range', range);
  history.replaceState(null, '', url);
  for (const b of document.querySelectorAll('#ranges button')) {
    b.setAttribute('aria-pressed', String(b.dataset.range === range));
  }
  tick();
}

document.getElementById('ranges').addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-range]');
  if (b && b.dataset.range !== state.range) selectRange(b.dataset.range);
});
document.getElementById('key-form').addEventListener('submit', () => {
  const key = document.getElementById('key-input').value.trim();
  try { sessionStorage.setItem(KEY_STORAGE, key); } catch (_) { /* storage may be off */ }
  tick();
});
let resizeTimer = null;
window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(tick, 150); });

selectRange(state.range);
