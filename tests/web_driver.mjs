// Drives the trainfer web page in headless Chromium (Debian's /usr/bin/chromium) with puppeteer-core.
// Reads a job from stdin: {"puppeteer": dir with node_modules/puppeteer-core, "chromium": path,
// "pages": [{"url": ..., "steps": [{"do": "paste", "text"} | {"do": "csv_file", "path"} |
// {"do": "images", "paths"} | {"do": "bench", "n"}]}]}; prints one JSON object: for each page, every
// request (url, status, bytes), console messages, page errors, and what each step showed.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const job = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.on('data', (d) => { text += d; });
  process.stdin.on('end', () => resolve(text));
}));
const puppeteer = createRequire(join(job.puppeteer, 'package.json'))('puppeteer-core');
const profile = mkdtempSync(join(tmpdir(), 'trainfer-web-chromium-'));
const browser = await puppeteer.launch({
  executablePath: job.chromium,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
    `--user-data-dir=${profile}`],
  timeout: 60000,
});

async function shown(page) {
  return page.evaluate(() => ({
    state: window.trainfer.state,
    error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
    latency: document.getElementById('latency').textContent,
    headers: [...document.querySelectorAll('#predictions thead th')].map((th) => th.textContent),
    note: document.getElementById('shown')?.textContent ?? null,
    rows: [...document.querySelectorAll('#predictions tbody tr')].map((tr) => ({
      name: tr.dataset.name, label: tr.dataset.label ?? null, prediction: tr.dataset.prediction ?? null,
      cells: [...tr.cells].map((c) => c.textContent),
    })),
    results: window.trainfer.results,
    timings: window.trainfer.timings,
    threads: window.trainfer.threads,
    isolated: window.crossOriginIsolated,
  }));
}

async function act(page, step) {
  const before = await page.evaluate(() => window.trainfer.done);
  if (step.do === 'paste') {
    await page.$eval('#csv-text', (el, text) => { el.value = text; el.dispatchEvent(new Event('input')); }, step.text);
    await page.click('#predict-csv');
  } else if (step.do === 'keys') { // typed into the text box (a short text), then Ctrl+Enter
    await page.$eval('#csv-text', (el) => { el.value = ''; });
    await page.type('#csv-text', step.text);
    await page.keyboard.down('Control');
    await page.keyboard.press('Enter');
    await page.keyboard.up('Control');
  } else if (step.do === 'csv_file') {
    await (await page.$('#csv-file')).uploadFile(step.path);
  } else if (step.do === 'images') {
    await (await page.$('#image-files')).uploadFile(...step.paths);
  } else if (step.do === 'bench') {
    return { samples: await page.evaluate((n) => window.trainfer.bench(n), step.n) };
  } else {
    throw new Error(`unknown step ${step.do}`);
  }
  await page.waitForFunction((n) => window.trainfer.done > n, { timeout: job.timeout_ms || 60000 }, before);
  return shown(page);
}

const out = { pages: [] };
try {
  for (const spec of job.pages) {
    const page = await browser.newPage();
    const record = { url: spec.url, requests: [], console: [], page_errors: [], failed: [], steps: [] };
    const cdp = await page.createCDPSession();
    await cdp.send('Network.enable');
    const byId = new Map();
    cdp.on('Network.requestWillBeSent', (e) => byId.set(e.requestId, { url: e.request.url, bytes: 0, status: null }));
    cdp.on('Network.responseReceived', (e) => { if (byId.has(e.requestId)) byId.get(e.requestId).status = e.response.status; });
    cdp.on('Network.loadingFinished', (e) => { if (byId.has(e.requestId)) byId.get(e.requestId).bytes = e.encodedDataLength; });
    page.on('request', (r) => record.requests.push(r.url()));
    page.on('requestfailed', (r) => record.failed.push(`${r.url()} ${r.failure()?.errorText}`));
    page.on('console', (m) => record.console.push({ type: m.type(), text: m.text() }));
    page.on('pageerror', (e) => record.page_errors.push(String(e.message || e)));
    page.on('workercreated', (w) => record.requests.push(w.url()));
    const t0 = Date.now();
    try {
      await page.goto(spec.url, { waitUntil: 'load', timeout: 60000 });
      if (spec.opened_from_disk) { // app.js never runs there: what the page says instead
        record.said = await page.evaluate(() => ({ status: document.getElementById('status').textContent,
          error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent }));
      } else {
        await page.waitForFunction(() => window.trainfer && window.trainfer.state !== 'loading',
          { timeout: job.timeout_ms || 60000 });
        record.load_wall_ms = Date.now() - t0;
        record.loaded = await shown(page);
        for (const step of spec.steps || []) record.steps.push(await act(page, step));
      }
    } catch (e) {
      // the test reports this beside the console and page errors, which usually say why
      record.driver_error = String(e && e.message ? e.message : e);
      record.html = await page.content().catch(() => null);
    }
    record.network = [...byId.values()];
    record.transfer_bytes = record.network.reduce((a, r) => a + r.bytes, 0);
    await page.close();
    out.pages.push(record);
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + '\n');
