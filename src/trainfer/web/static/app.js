// The page's whole logic: read site.json, load model.onnx into onnxruntime-web (wasm), turn pasted or
// uploaded CSV rows / image files into the graph's raw inputs, and show labels, probabilities and timings.
// The graph does all the preprocessing (imputation, scaling, one-hot, resizing) and the label lookup, so
// this script (with csv.js, which reads CSV text as trainfer predict does, and png.js, which decodes the PNGs a
// browser would alter) only parses text and decodes images. Problems are shown in the page, never thrown.
import * as ort from './ort/ort.wasm.min.mjs';
import { InputProblem, tableRows } from './csv.js';
import { decodePng } from './png.js';

const $ = (id) => document.getElementById(id);
const MAX_SHOWN = 1000;

// What tests and benchmarks read (window.trainfer): state, timings (ms), the last results.
const state = { state: 'loading', done: 0, error: null, spec: null, timings: { calls: [] }, results: [], threads: null };
window.trainfer = state;
let session = null;
let lastFeeds = null;

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
  state.error = message;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
  state.error = null;
}

// A last net: anything unexpected becomes a message in the page, not a console error or a blank page.
window.addEventListener('error', (e) => { showError(`unexpected error: ${e.message}`); e.preventDefault(); });
window.addEventListener('unhandledrejection', (e) => {
  showError(`unexpected error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`);
  e.preventDefault();
});

async function sha256Hex(bytes) {
  if (!globalThis.crypto || !crypto.subtle) return null; // not a secure context (plain http on another host)
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function load() {
  const spec = await (await fetch('site.json')).json();
  state.spec = spec;
  const bytes = new Uint8Array(await (await fetch(spec.model)).arrayBuffer());
  const digest = await sha256Hex(bytes);
  if (digest !== null && digest !== spec.model_sha256) {
    throw new InputProblem(`${spec.model} does not match its sha256 in site.json: the site was changed; build it again`);
  }
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  ort.env.logLevel = 'error'; // onnxruntime's warnings reach the console as errors; real ones still throw
  const t0 = performance.now();
  session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all',
    logSeverityLevel: 3 });
  state.timings.session_ms = performance.now() - t0;
  state.timings.ready_ms = performance.now(); // since navigation start: page, runtime and model loaded
  state.threads = ort.env.wasm.numThreads;
  const names = spec.inputs.map((i) => i.column);
  $('status').textContent = `ready: ${spec.bundle.name} (${spec.kind} ${spec.task}, ${spec.inputs.length} input` +
    `${spec.inputs.length === 1 ? '' : 's'}), onnxruntime-web ${spec.onnxruntime_web}, wasm, ` +
    `${crossOriginIsolated ? 'threads allowed' : 'one thread (the page is not cross-origin isolated)'}`;
  if (spec.kind === 'image') {
    $('image-input').hidden = false;
  } else {
    $('table-input').hidden = false;
    $('columns').textContent = `columns: ${names.join(', ')}`;
  }
  $('about').textContent = `model ${spec.model} from bundle ${spec.bundle.name} (${spec.bundle.variant}, opset ` +
    `${spec.bundle.opset}); loaded in ${state.timings.session_ms.toFixed(1)} ms`;
  state.state = 'ready';
}

// ---- CSV rows -> feeds -------------------------------------------------------------------------

// One row's batch-1 feed: {input name: ort.Tensor}, built just before its run (tens of thousands of rows would
// otherwise hold one tensor per cell at once).
function feedsOf(values) {
  const feeds = {};
  state.spec.inputs.forEach((inp, k) => {
    const v = values[k];
    feeds[inp.name] = inp.dtype === 'string' ? new ort.Tensor('string', [v], [1, 1])
      : new ort.Tensor(inp.dtype, inp.dtype === 'float64' ? Float64Array.of(v) : Float32Array.of(v), [1, 1]);
  });
  return feeds;
}

// ---- images ------------------------------------------------------------------------------------

// A JPEG's EXIF orientation tag set to 1 (as stored) in a copy of its bytes: Pillow, which trainfer predicts
// with, does not turn images by it, and createImageBitmap always does (in Chromium, measured on 156, with
// imageOrientation 'none' too). Other bytes, and files without the tag, are returned unchanged.
function withoutOrientation(bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.byteLength < 4 || v.getUint16(0) !== 0xffd8) return bytes;
  for (let at = 2; at + 4 <= v.byteLength && v.getUint8(at) === 0xff;) {
    const marker = v.getUint8(at + 1);
    const length = v.getUint16(at + 2);
    if (marker === 0xda || marker === 0xd9) break; // image data: no more metadata
    const tiff = at + 10;
    if (marker === 0xe1 && length >= 16 && v.getUint32(at + 4) === 0x45786966 && tiff + 8 <= v.byteLength) {
      const little = v.getUint16(tiff) === 0x4949; // "II": little-endian, "MM": big-endian
      const ifd = tiff + v.getUint32(tiff + 4, little);
      if (ifd + 2 > v.byteLength) return bytes;
      const n = v.getUint16(ifd, little);
      for (let e = ifd + 2; e < ifd + 2 + 12 * n && e + 12 <= v.byteLength; e += 12) {
        if (v.getUint16(e, little) === 0x0112 && v.getUint16(e + 8, little) !== 1) {
          const copy = bytes.slice();
          new DataView(copy.buffer).setUint16(e + 8, 1, little);
          return copy;
        }
      }
      return bytes;
    }
    at += 2 + length;
  }
  return bytes;
}

// Pixels as PIL decodes them: no colour-space conversion, no premultiplied alpha, no EXIF rotation; RGB uint8
// NHWC at the file's own size (the graph resizes to the trained size).
async function imageFeed(file) {
  const tensor = (rgb, height, width) =>
    ({ [state.spec.inputs[0].name]: new ort.Tensor('uint8', rgb, [1, height, width, 3]) });
  let bitmap;
  try {
    const bytes = withoutOrientation(new Uint8Array(await file.arrayBuffer()));
    // PNGs with transparency or 16-bit samples: decoded here, as Pillow does (png.js); a damaged one falls
    // through to the browser's decoder, whose refusal is the message
    const png = await decodePng(bytes).catch(() => null);
    if (png) return tensor(png.rgb, png.height, png.width);
    bitmap = await createImageBitmap(new Blob([bytes], { type: file.type }),
      { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch (e) {
    throw new InputProblem(`${file.name}: cannot be read as an image (${file.type || 'unknown type'}, ` +
      `${file.size} bytes); use PNG, JPEG, BMP or WebP (the files trainfer predict reads)`);
  }
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let p = 0, q = 0; p < rgba.length; p += 4, q += 3) {
    rgb[q] = rgba[p]; rgb[q + 1] = rgba[p + 1]; rgb[q + 2] = rgba[p + 2];
  }
  return tensor(rgb, height, width);
}

// ---- running and showing -------------------------------------------------------------------------

function plain(v) { return typeof v === 'bigint' ? Number(v) : v; }
// Labels as `trainfer predict` writes them: Python's str(), so booleans are True and False.
function labelText(v) { return typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v); }

async function runOne(feeds) {
  const t0 = performance.now();
  const out = await session.run(feeds);
  const ms = performance.now() - t0;
  state.timings.calls.push(ms);
  if (state.timings.first_call_ms === undefined) {
    state.timings.first_call_ms = ms;
    // what a visitor with input at hand waits: page, runtime and model load, then one (cold) call
    state.timings.first_prediction_ms = state.timings.ready_ms + ms;
  }
  lastFeeds = feeds;
  if (state.spec.task === 'regression') return { value: plain(out.prediction.data[0]) };
  const probs = Array.from(out.probabilities.data, Number);
  const label = out.label.type === 'bool' ? Boolean(out.label.data[0]) : plain(out.label.data[0]);
  return { label: labelText(label), probabilities: probs };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

function showLatency() {
  const t = state.timings;
  const calls = t.calls;
  $('latency').textContent = `time to first prediction ${t.first_prediction_ms.toFixed(0)} ms ` +
    `(page, runtime and model ${t.ready_ms.toFixed(0)} ms + first call ${t.first_call_ms.toFixed(1)} ms); ` +
    `per call (one row): p50 ${median(calls).toFixed(2)} ms, last ${calls[calls.length - 1].toFixed(2)} ms ` +
    `over ${calls.length} call${calls.length === 1 ? '' : 's'}`;
}

function showResults(results, what) {
  const spec = state.spec;
  const table = document.createElement('table');
  table.id = 'predictions';
  const head = table.createTHead().insertRow();
  const labels = spec.labels || [];
  const cols = spec.task === 'regression' ? ['prediction'] : ['label', ...labels.map((l) => `p(${labelText(l)})`)];
  for (const name of [what, ...cols]) head.appendChild(document.createElement('th')).textContent = name;
  const body = table.createTBody();
  // a table of tens of thousands of rows takes the browser seconds to lay out: the first MAX_SHOWN are shown,
  // and every result stays in window.trainfer.results
  for (const r of results.slice(0, MAX_SHOWN)) {
    const tr = body.insertRow();
    tr.dataset.name = r.name;
    tr.insertCell().textContent = r.name;
    if (spec.task === 'regression') {
      tr.dataset.prediction = String(r.value);
      tr.insertCell().textContent = Number(r.value).toPrecision(6);
      continue;
    }
    tr.dataset.label = r.label;
    const lc = tr.insertCell();
    lc.textContent = r.label;
    lc.className = 'label';
    const top = r.probabilities.indexOf(Math.max(...r.probabilities));
    r.probabilities.forEach((p, k) => {
      const td = tr.insertCell();
      td.textContent = p.toFixed(4);
      if (k === top) td.className = 'top';
    });
  }
  const note = document.createElement('p');
  note.className = 'muted';
  note.id = 'shown';
  note.textContent = results.length > MAX_SHOWN ? `${results.length} predictions; the first ${MAX_SHOWN} are shown`
    : `${results.length} prediction${results.length === 1 ? '' : 's'}`;
  $('results').replaceChildren(note, table);
  state.results = results;
  showLatency();
}

// Long inputs: the page shows how far it is and stays responsive (it yields to the browser every 100 ms), and
// the inputs wait until the run ends, so a second click cannot interleave two runs on one session.
let busy = false;
function setBusy(on) {
  busy = on;
  for (const id of ['predict-csv', 'csv-file', 'image-files']) $(id).disabled = on;
  if (!on) $('progress').textContent = '';
}

async function eachWithProgress(items, what, fn) {
  let shown = performance.now();
  for (let k = 0; k < items.length; k++) {
    if (performance.now() - shown > 100) {
      $('progress').textContent = `predicting ${what} ${k + 1} of ${items.length}…`;
      await new Promise((resolve) => setTimeout(resolve, 0));
      shown = performance.now();
    }
    await fn(items[k]);
  }
}

async function predictTable(text) {
  if (busy) return;
  clearError();
  setBusy(true);
  try {
    if (state.state !== 'ready') throw new InputProblem('the model is not loaded yet');
    const rows = tableRows(text, state.spec);
    const results = [];
    await eachWithProgress(rows, 'row', async (row) =>
      results.push({ name: row.name, ...(await runOne(feedsOf(row.values))) }));
    showResults(results, rows.idName || 'row');
  } catch (e) {
    // no stale table under the message: what is shown is always the answer to the last input
    $('results').replaceChildren();
    state.results = [];
    showError(e instanceof InputProblem ? e.message : `prediction failed: ${e.message || e}`);
  } finally {
    setBusy(false);
    state.done++; // tests and benchmarks wait for this
  }
}

async function predictImages(files) {
  if (busy) return;
  clearError();
  setBusy(true);
  try {
    if (state.state !== 'ready') return showError('the model is not loaded yet');
    const results = [];
    const problems = [];
    await eachWithProgress(files, 'image', async (file) => {
      try {
        results.push({ name: file.name, ...(await runOne(await imageFeed(file))) });
      } catch (e) {
        problems.push(e instanceof InputProblem ? e.message : `${file.name}: prediction failed: ${e.message || e}`);
      }
    });
    // no stale table: what is shown is always the answer to the last input
    if (results.length) showResults(results, 'file');
    else { $('results').replaceChildren(); state.results = []; }
    if (problems.length) showError(problems.join('\n'));
  } finally {
    setBusy(false);
    state.done++;
  }
}

// Benchmarks: n more calls on the last input at batch 1; returns every sample (ms).
state.bench = async (n) => {
  const samples = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await session.run(lastFeeds);
    samples.push(performance.now() - t0);
  }
  return samples;
};

$('predict-csv').addEventListener('click', () => predictTable($('csv-text').value));
// Ctrl+Enter (Cmd+Enter on a Mac) in the text box predicts, as the button does
$('csv-text').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); predictTable($('csv-text').value); }
});
$('csv-file').addEventListener('change', async (e) => {
  const file = e.target.files[0];
  e.target.value = ''; // so choosing the same file again (after fixing it) is a change too
  if (!file) return;
  let text;
  try { text = await file.text(); } catch (err) { return showError(`${file.name}: cannot be read (${err.message})`); }
  await predictTable(text);
});
$('image-files').addEventListener('change', (e) => {
  const files = [...e.target.files];
  e.target.value = ''; // so choosing the same files again is a change too
  predictImages(files);
});
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  predictImages([...e.dataTransfer.files]);
});

load().catch((e) => {
  state.state = 'error';
  $('status').textContent = 'the model could not be loaded';
  showError(e instanceof InputProblem ? e.message : `the model could not be loaded: ${e.message || e}`);
});
