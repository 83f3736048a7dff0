// Headless-Chromium test of the Pulse dashboard, run by tests/api/dashboard.rs
// against a seeded server (it can also be run by hand against any server):
//
//   node tests/browser/dashboard.test.mjs <http host:port> <grpc host:port> [screenshot.png]
//
// Checks, through the real page: the numbers shown equal GetMetrics (called
// with grpcurl) for the same range; every chart is drawn; a firing alert is
// shown; events ingested while the page is open show up within 2 s without
// a reload. Saves a screenshot (default artifacts/dashboard.png).
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { randomUUID } from 'node:crypto';
import { chromium } from 'playwright-core';

const [httpAddr, grpcAddr, shotArg] = process.argv.slice(2);
if (!httpAddr || !grpcAddr) {
  console.error('usage: node dashboard.test.mjs <http host:port> <grpc host:port> [screenshot.png]');
  process.exit(2);
}
const screenshot = resolve(shotArg || 'artifacts/dashboard.png');
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

function close(a, b, tolerance) {
  return Math.abs(a - b) <= tolerance * Math.max(1, Math.abs(b));
}

const checks = [];
function check(ok, what) {
  checks.push(what);
  if (!ok) throw new Error('FAILED: ' + what);
  console.log('ok   ' + what);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
const outside = [];
page.on('request', (r) => {
  const url = new URL(r.url());
  if (url.host !== httpAddr) outside.push(r.url());
});

let failed = false;
try {
  await page.goto(`http://${httpAddr}/?range=1h`);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 15000 });

  // 1. Every headline number equals GetMetrics over the range the page used.
  const kpis = await page.evaluate(() => [...document.querySelectorAll('.kpi')].map((k) => ({
    metric: k.dataset.metric, value: Number(k.dataset.value), start: k.dataset.start, end: k.dataset.end,
    text: k.querySelector('.value').textContent,
  })));
  for (const k of kpis) {
    const answer = getMetrics({
      metric: 'METRIC_' + k.metric.toUpperCase(), start: k.start, end: k.end, granularity: 'GRANULARITY_TOTAL',
    });
    const total = answer.series && answer.series[0] ? (answer.series[0].total || 0) : 0;
    check(close(k.value, total, 1e-9), `${k.metric}: page shows ${k.text} (${k.value}), GetMetrics says ${total} for [${k.start}, ${k.end})`);
  }
  const events = kpis.find((k) => k.metric === 'events');
  check(events.value > 0, 'the seeded events are on the page');

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

  // 3. Every chart is drawn: an SVG with non-empty series paths or bars, and labelled axes.
  for (const id of ['chart-by-type', 'chart-pageviews', 'chart-users', 'chart-revenue']) {
    const drawn = await page.evaluate((id) => {
      const svg = document.querySelector('#' + id + ' svg');
      if (!svg) return null;
      const paths = [...svg.querySelectorAll('path.series')].filter((p) => (p.getAttribute('d') || '').length > 20).length;
      const bars = svg.querySelectorAll('g.series rect').length;
      const labels = [...svg.querySelectorAll('text')].map((t) => t.textContent).filter(Boolean);
      return { paths, bars, labels: labels.length, unit: svg.querySelector('text.unit')?.textContent };
    }, id);
    check(drawn && (drawn.paths > 0 || drawn.bars > 0) && drawn.labels >= 6 && /\//.test(drawn.unit || ''),
      `${id} is drawn: ${JSON.stringify(drawn)}`);
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

  // 5. The time-range selector re-queries with the new range.
  await page.click('#ranges button[data-range="15m"]');
  await page.waitForFunction(() => document.body.dataset.range === '15m' && document.querySelector('#chart-by-type').dataset.points === '15', null, { timeout: 5000 });
  check(true, 'the 15 min range shows 15 minute buckets');
  await page.click('#ranges button[data-range="1h"]');
  await page.waitForFunction(() => document.body.dataset.range === '1h' && document.querySelector('#chart-by-type').dataset.points === '60', null, { timeout: 5000 });

  await mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log('screenshot: ' + screenshot);

  // 6. New events appear within 2 s of their ack, without a reload.
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
    const path = screenshot.replace(/\.png$/, '-failure.png');
    await page.screenshot({ path, fullPage: true });
    console.error('failure screenshot: ' + path);
  } catch (_) { /* best effort */ }
} finally {
  await browser.close();
}
console.log(`${checks.length - (failed ? 1 : 0)} passed, ${failed ? 1 : 0} failed`);
process.exit(failed ? 1 : 0);
