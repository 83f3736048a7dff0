// Headless-Chromium test of the Pulse dashboard, run by tests/api/dashboard.rs
// against a seeded server (it can also be run by hand against any server):
//
//   node tests/browser/dashboard.test.mjs <http host:port> <grpc host:port> [screenshot.png] [currency]
//
// Checks, through the real page: the numbers shown, and each KPI's previous
// period, equal GetMetrics (called with grpcurl) for the same range; every
// chart is drawn with round y ticks and the unfinished minute marked
// partial; a firing alert is shown; one request per refresh, none while the
// tab is hidden; the custom range and its error messages; no overflow and
// no cut KPI at 360 px and 2560 px; events ingested while the page is open
// show up within 2 s without a reload. Saves screenshots beside the given
// path (default artifacts/dashboard.png, -360.png, -2560.png, …).
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { randomUUID } from 'node:crypto';
import { chromium } from 'playwright-core';

const [httpAddr, grpcAddr, shotArg, currencyArg] = process.argv.slice(2);
if (!httpAddr || !grpcAddr) {
  console.error('usage: node dashboard.test.mjs <http host:port> <grpc host:port> [screenshot.png] [currency]');
  process.exit(2);
}
const screenshot = resolve(shotArg || 'artifacts/dashboard.png');
const shot = (suffix) => screenshot.replace(/\.png$/, '') + suffix + '.png';
const currency = currencyArg || 'USD';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const GRPCURL = process.env.GRPCURL || 'grpcurl';
const FRESH_WITHIN_MS = 2000;

function grpc(method, request) {
  const out = execFileSync(GRPCURL, ['-plaintext', '-d', '@', grpcAddr, method], {
    input: JSON.stringify(request),
    encoding: 'utf8',
  });
  return JSON.parse(out);
}

function getMetrics(request) {
  return grpc('pulse.v1.QueryService/GetMetrics', request);
}

function total(request) {
  const answer = getMetrics(Object.assign({ granularity: 'GRANULARITY_TOTAL' }, request));
  return answer.series && answer.series[0] ? (answer.series[0].total || 0) : 0;
}

function close(a, b, tolerance) {
  return Math.abs(a - b) <= tolerance * Math.max(1, Math.abs(b));
}

const checks = [];
function check(ok, what) {
  checks.push(what);
  if (!ok) throw new Error('FAILED: ' + what);
  console.log('ok   ' + what);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
page.on('console', (m) => { if (m.type() === 'error') pageErrors.push('console: ' + m.text()); });
const outside = [];
const apiRequests = [];
page.on('request', (r) => {
  const url = new URL(r.url());
  if (url.host !== httpAddr) outside.push(r.url());
  else if (url.pathname.startsWith('/api/')) apiRequests.push({ at: Date.now(), path: url.pathname + url.search });
});

const refreshes = () => page.evaluate(() => Number(document.body.dataset.refreshes || 0));
async function nextRefresh(timeout = 5000) {
  const now = await refreshes();
  await page.waitForFunction((n) => Number(document.body.dataset.refreshes) > n, now, { timeout });
}

// The KPIs as the page shows them.
const readKpis = () => page.evaluate(() => [...document.querySelectorAll('.kpi')].map((k) => ({
  metric: k.dataset.metric, value: Number(k.dataset.value), previous: Number(k.dataset.previous),
  change: k.dataset.change, start: k.dataset.start, end: k.dataset.end,
  text: k.querySelector('.value').textContent, delta: k.querySelector('.delta')?.textContent,
})));

// Layout checks at the current viewport width.
async function layout(width) {
  return page.evaluate((width) => {
    const doc = document.documentElement;
    const kpis = [...document.querySelectorAll('.kpi .value')].map((v) => ({
      text: v.textContent, scroll: v.scrollWidth, client: v.clientWidth,
    }));
    const buttons = [...document.querySelectorAll('#ranges button')].map((b) => b.getBoundingClientRect());
    const charts = [...document.querySelectorAll('.chart')].map((c) => ({
      id: c.id, box: c.clientWidth, svg: c.querySelector('svg')?.getBoundingClientRect().width || 0,
    }));
    // Any element wider than the viewport, or reaching past its right edge.
    const wide = [...document.querySelectorAll('body *')].filter((e) => {
      const r = e.getBoundingClientRect();
      return r.width > 0 && (r.right > width + 0.5 || r.left < -0.5) && getComputedStyle(e).position !== 'fixed';
    }).map((e) => e.tagName + '#' + e.id + '.' + e.className);
    // Any text reaching out of its card (a number pushed past the border),
    // unless a box on the way clips it on purpose (ellipsis labels).
    for (const card of document.querySelectorAll('.card, .kpi')) {
      // The card's content box: text may not run into its padding.
      const box = card.getBoundingClientRect();
      const cs = getComputedStyle(card);
      const c = {
        left: box.left + parseFloat(cs.borderLeftWidth) + parseFloat(cs.paddingLeft),
        right: box.right - parseFloat(cs.borderRightWidth) - parseFloat(cs.paddingRight),
      };
      const walker = document.createTreeWalker(card, NodeFilter.SHOW_TEXT);
      for (let t = walker.nextNode(); t; t = walker.nextNode()) {
        if (!t.textContent.trim()) continue;
        let clipped = false;
        for (let e = t.parentElement; e && e !== card; e = e.parentElement) {
          if (getComputedStyle(e).overflowX !== 'visible') { clipped = true; break; }
        }
        if (clipped) continue;
        const range = document.createRange();
        range.selectNodeContents(t);
        const r = range.getBoundingClientRect();
        if (r.width > 0 && (r.right > c.right + 0.5 || r.left < c.left - 0.5)) {
          wide.push('in "' + (card.querySelector('h2')?.textContent || card.id) + '": "' + t.textContent.slice(0, 30) + '"');
        }
      }
    }
    return {
      scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, kpis, wide: wide.slice(0, 8),
      buttonRows: new Set(buttons.map((b) => Math.round(b.top))).size,
      buttonsFit: buttons.every((b) => b.width > 0 && b.right <= width),
      charts,
    };
  }, width);
}

let failed = false;
try {
  await page.goto(`http://${httpAddr}/?range=1h`);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 15000 });

  // 1. Every headline number equals GetMetrics over the range the page used,
  //    and so does its previous period (the same length just before).
  const kpis = await readKpis();
  for (const k of kpis) {
    const metric = 'METRIC_' + k.metric.toUpperCase();
    const now = total({ metric, start: k.start, end: k.end });
    check(close(k.value, now, 1e-9), `${k.metric}: page shows ${k.text} (${k.value}), GetMetrics says ${now} for [${k.start}, ${k.end})`);
    const span = Date.parse(k.end) - Date.parse(k.start);
    const prevStart = new Date(Date.parse(k.start) - span).toISOString();
    const before = total({ metric, start: prevStart, end: k.start });
    check(close(k.previous, before, 1e-9), `${k.metric}: previous period ${k.previous} equals GetMetrics ${before} for [${prevStart}, ${k.start})`);
    const want = before === 0 ? '—' : k.value === before ? '0%' : k.value > before ? '▲ ' : '▼ ';
    check(k.delta && k.delta.startsWith(want),
      `${k.metric}: the comparison reads "${k.delta}" (${k.value} vs ${before})`);
  }
  const events = kpis.find((k) => k.metric === 'events');
  check(events.value > 0, 'the seeded events are on the page');
  check(kpis.some((k) => k.delta === '—') && kpis.some((k) => /^[▲▼] /.test(k.delta)),
    'KPIs show both a ▲/▼ % and a "—" for an empty previous period: ' + kpis.map((k) => k.delta).join(' '));
  const revenue = kpis.find((k) => k.metric === 'revenue');
  const moneyText = new Intl.NumberFormat('en-US', { style: 'currency', currency }).format(revenue.value);
  check(revenue.text === moneyText, `revenue is shown in ${currency}: "${revenue.text}" (expected "${moneyText}")`);

  // 2. Top pages and top products equal GetMetrics' top-N.
  for (const [id, metric, dim] of [['top-pages', 'METRIC_PAGEVIEWS', 'DIMENSION_PAGE_URL'], ['top-products', 'METRIC_REVENUE', 'DIMENSION_PRODUCT_ID']]) {
    const shown = await page.evaluate((id) => {
      const t = document.getElementById(id);
      return { start: t.dataset.start, end: t.dataset.end,
        rows: [...t.querySelectorAll('tr[data-group]')].map((r) => [r.dataset.group, Number(r.dataset.value)]) };
    }, id);
    const answer = getMetrics({ metric, start: shown.start, end: shown.end, granularity: 'GRANULARITY_TOTAL', group_by: dim, limit: 10 });
    const expected = (answer.series || []).filter((s) => (s.total || 0) > 0).map((s) => [s.group, s.total]);
    check(shown.rows.length > 0 && JSON.stringify(shown.rows) === JSON.stringify(expected),
      `${id}: page ${JSON.stringify(shown.rows)} equals GetMetrics ${JSON.stringify(expected)}`);
  }

  // 3. Every chart is drawn: an SVG with non-empty series paths or bars,
  //    labelled axes, round y ticks, and the current minute marked partial.
  for (const id of ['chart-by-type', 'chart-pageviews', 'chart-users', 'chart-revenue']) {
    const drawn = await page.evaluate((id) => {
      const box = document.getElementById(id);
      const svg = box.querySelector('svg');
      if (!svg) return null;
      const paths = [...svg.querySelectorAll('path.series')].filter((p) => (p.getAttribute('d') || '').length > 20).length;
      const bars = svg.querySelectorAll('g.series rect').length;
      const labels = [...svg.querySelectorAll('text')].map((t) => t.textContent).filter(Boolean);
      const ticks = [...svg.querySelectorAll('text.ytick')].map((t) => Number(t.dataset.value));
      return { paths, bars, labels: labels.length, unit: svg.querySelector('text.unit')?.textContent, ticks,
        tickText: [...svg.querySelectorAll('text.ytick')].map((t) => t.textContent),
        points: Number(box.dataset.points), partial: box.dataset.partial,
        partialMarks: svg.querySelectorAll('.partial').length };
    }, id);
    check(drawn && (drawn.paths > 0 || drawn.bars > 0) && drawn.labels >= 5 && /\//.test(drawn.unit || ''),
      `${id} is drawn: ${JSON.stringify(drawn)}`);
    const steps = drawn.ticks.slice(1).map((v, i) => v - drawn.ticks[i]);
    const step = steps[0];
    const mantissa = step / Math.pow(10, Math.floor(Math.log10(step)));
    check(drawn.ticks[0] === 0 && steps.every((s) => Math.abs(s - step) < 1e-9 * step) &&
      [1, 2, 2.5, 5].some((m) => Math.abs(m - mantissa) < 1e-9),
      `${id}: y ticks are round: ${drawn.tickText.join(' / ')}`);
    check(drawn.partial === String(drawn.points - 1) && drawn.partialMarks > 0,
      `${id}: the current minute (bucket ${drawn.points - 1}) is drawn as partial (${drawn.partialMarks} marks)`);
  }
  const legend = await page.locator('#legend-by-type span').allTextContents();
  check(legend.includes('pageview') && legend.includes('purchase'), `events-by-type legend names the types: ${legend.join(', ')}`);

  // 4. The firing alert stands out: its rule and its notification.
  await page.waitForSelector('#rules tr[data-state="firing"]', { timeout: 10000 });
  await page.waitForSelector('#notifications li[data-state="firing"]', { timeout: 10000 });
  const firing = await page.evaluate(() => ({
    rule: document.querySelector('#rules tr[data-state="firing"] .n').textContent,
    pill: getComputedStyle(document.querySelector('#rules tr[data-state="firing"] .pill')).backgroundColor,
    note: document.querySelector('#notifications li[data-state="firing"] .what').textContent,
  }));
  check(firing.rule.length > 0 && firing.note === firing.rule && firing.pill !== 'rgba(0, 0, 0, 0)',
    `firing alert shown as rule "${firing.rule}" and notification "${firing.note}" (pill ${firing.pill})`);

  // 5. One request per refresh (every panel comes from /api/v1/dashboard).
  await nextRefresh();
  const r0 = await refreshes();
  const c0 = apiRequests.length;
  await page.waitForFunction((n) => Number(document.body.dataset.refreshes) >= n + 3, r0, { timeout: 8000 });
  const r1 = await refreshes();
  const during = apiRequests.slice(c0);
  // ±1: a request may be in flight at either end of the window (ten per
  // refresh, as before the combined route, would be 30).
  check(Math.abs(during.length - (r1 - r0)) <= 1 && during.every((r) => r.path.startsWith('/api/v1/dashboard?')),
    `${r1 - r0} refreshes took ${during.length} requests, all /api/v1/dashboard`);

  // 6. The time-range selector re-queries with the new range.
  await page.click('#ranges button[data-range="15m"]');
  await page.waitForFunction(() => document.body.dataset.range === '15m' && document.querySelector('#chart-by-type').dataset.points === '15', null, { timeout: 5000 });
  check(true, 'the 15 min range shows 15 minute buckets');

  // 7. A custom range (UTC): wrong input gets a message; a valid one is shown.
  await page.click('#ranges button[data-range="custom"]');
  check(await page.isVisible('#custom-range'), 'the Custom button shows the from/to form');
  await page.fill('#custom-from', '2026-03-02T10:00');
  await page.fill('#custom-to', '2026-03-02T09:00');
  await page.click('#custom-apply');
  const wrongOrder = await page.textContent('#custom-error');
  check(await page.isVisible('#custom-error') && /before/.test(wrongOrder) &&
    await page.evaluate(() => document.body.dataset.range) === '15m',
  `a range ending before it starts is refused with "${wrongOrder}" and the old range stays`);
  await page.fill('#custom-to', '');
  await page.click('#custom-apply');
  const missing = await page.textContent('#custom-error');
  check(/Enter both/.test(missing), `a missing end is refused with "${missing}"`);
  // Too long for the server (more than 10,080 daily buckets): its message is
  // shown. (Chromium logs that 400 on the console: the one error expected.)
  const errorsBefore = pageErrors.length;
  await page.fill('#custom-from', '1990-01-01T00:00');
  await page.fill('#custom-to', '2090-01-01T00:00');
  await page.click('#custom-apply');
  await page.waitForFunction(() => !document.getElementById('custom-error').hidden, null, { timeout: 5000 });
  const refused = await page.textContent('#custom-error');
  check(/refused/.test(refused) && /buckets/.test(refused), `a range the server refuses shows its reason: "${refused}"`);
  const expected = pageErrors.splice(errorsBefore);
  check(expected.length <= 1 && expected.every((e) => /status of 400/.test(e)), 'the refused range logged only its 400: ' + JSON.stringify(expected));
  const end = new Date(Math.ceil(Date.now() / 60e3) * 60e3);
  const start = new Date(end.getTime() - 2 * 3600e3);
  const utc = (d) => d.toISOString().slice(0, 16);
  await page.fill('#custom-from', utc(start));
  await page.fill('#custom-to', utc(end));
  await page.click('#custom-apply');
  await page.waitForFunction(() => document.body.dataset.range === 'custom', null, { timeout: 5000 });
  const custom = (await readKpis()).find((k) => k.metric === 'events');
  const customTotal = total({ metric: 'METRIC_EVENTS', start: start.toISOString(), end: end.toISOString() });
  check(Date.parse(custom.start) === start.getTime() && Date.parse(custom.end) === end.getTime() &&
    custom.value === customTotal && await page.isHidden('#custom-error'),
  `custom range [${custom.start}, ${custom.end}) shows ${custom.value} events, GetMetrics says ${customTotal}`);
  check(new URL(page.url()).searchParams.get('range') === 'custom', 'the custom range is in the URL: ' + page.url());

  await page.click('#ranges button[data-range="1h"]');
  await page.waitForFunction(() => document.body.dataset.range === '1h' && document.querySelector('#chart-by-type').dataset.points === '60', null, { timeout: 5000 });
  check(await page.isHidden('#custom-range'), 'a named range closes the custom form');

  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log('screenshot: ' + screenshot);

  // 8. From a phone to a wide screen: nothing overflows, no KPI is cut,
  //    the range buttons stay on one row, charts fill their cards.
  for (const width of [360, 2560]) {
    await page.setViewportSize({ width, height: width < 600 ? 780 : 1300 });
    await nextRefresh();
    await sleep(250); // the resize redraw
    const l = await layout(width);
    check(l.scrollWidth <= l.clientWidth && l.wide.length === 0,
      `${width} px: nothing overflows the page or its card (page ${l.scrollWidth} px in ${l.clientWidth} px; too wide: ${JSON.stringify(l.wide)})`);
    for (const k of l.kpis) {
      check(k.scroll <= k.client && !k.text.includes('…'), `${width} px: KPI "${k.text}" is not cut (${k.scroll} ≤ ${k.client} px)`);
    }
    check(l.buttonRows === 1 && l.buttonsFit, `${width} px: the range buttons sit on one row inside the page`);
    check(l.charts.every((c) => c.svg > 0 && Math.abs(c.svg - c.box) <= 1),
      `${width} px: every chart fills its card: ${JSON.stringify(l.charts)}`);
    await page.screenshot({ path: shot('-' + width), fullPage: true });
    console.log('screenshot: ' + shot('-' + width));
    if (width === 360) {
      await page.click('#ranges button[data-range="custom"]');
      const open = await layout(width);
      check(open.scrollWidth <= open.clientWidth && open.wide.length === 0,
        `360 px: the open custom-range form fits (${JSON.stringify(open.wide)})`);
      await page.screenshot({ path: shot('-360-custom'), fullPage: false });
      await page.click('#ranges button[data-range="custom"]');
    }
  }
  await page.setViewportSize({ width: 1440, height: 900 });

  // 9. A hidden tab asks nothing; shown again, it refreshes at once.
  await nextRefresh();
  await page.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await sleep(500); // a request already in flight may finish
  const hiddenFrom = apiRequests.length;
  await sleep(2500);
  const whileHidden = apiRequests.length - hiddenFrom;
  const status = await page.textContent('#status-text');
  check(whileHidden === 0 && /Paused/.test(status), `no request in 2.5 s while hidden (${whileHidden}); status "${status}"`);
  const shownAt = Date.now();
  await page.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => false });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await page.waitForFunction((n) => Number(document.body.dataset.refreshes) > n, await refreshes(), { timeout: 2000 });
  const firstAfter = apiRequests.slice(hiddenFrom)[0];
  // Stopped polling would never ask again; 700 ms leaves room for a loaded machine.
  check(firstAfter && firstAfter.at - shownAt < 700, `shown again, it asked at once (${firstAfter ? firstAfter.at - shownAt : '–'} ms)`);

  // 10. New events appear within 2 s of their ack, without a reload.
  await page.evaluate(() => { window.__sameDocument = true; });
  const before = await page.evaluate(() => Number(document.getElementById('kpi-events').dataset.value));
  const added = 7;
  const batch = [];
  for (let i = 0; i < added; i++) {
    batch.push({ event_id: randomUUID(), event_type: 'click', user_id: 'browser-test', data: { n: i } });
  }
  const ack = grpc('pulse.v1.IngestService/IngestEvents', { events: batch });
  const acked = Date.now();
  check(Number(ack.accepted) === added, `ingested ${added} events: ${JSON.stringify(ack)}`);
  await page.waitForFunction((want) => Number(document.getElementById('kpi-events').dataset.value) >= want,
    before + added, { timeout: FRESH_WITHIN_MS, polling: 50 });
  const after = await page.evaluate(() => ({ value: Number(document.getElementById('kpi-events').dataset.value), same: window.__sameDocument === true, refreshMs: document.body.dataset.refreshMs }));
  check(after.same && after.value === before + added,
    `events went ${before} → ${after.value} within ${Date.now() - acked} ms of the ack, without a reload (a refresh takes ${after.refreshMs} ms)`);

  check(pageErrors.length === 0, 'no script errors: ' + JSON.stringify(pageErrors));
  check(outside.length === 0, 'no request leaves the server (works offline): ' + JSON.stringify(outside));
} catch (err) {
  failed = true;
  console.error(err.message || err);
  try {
    const path = shot('-failure');
    await page.screenshot({ path, fullPage: true });
    console.error('failure screenshot: ' + path);
  } catch (_) { /* best effort */ }
} finally {
  await browser.close();
}
console.log(`${checks.length - (failed ? 1 : 0)} passed, ${failed ? 1 : 0} failed`);
process.exit(failed ? 1 : 0);
