// A classic script, which a browser runs even from a page opened as a file on disk; app.js, a module, is not run
// there (browsers refuse module scripts, wasm and fetch on file:// URLs), so without this the page would say
// "loading the model…" for ever.
if (window.location.protocol === 'file:') {
  document.getElementById('status').textContent = 'the model cannot be loaded from a file opened on disk';
  const box = document.getElementById('error');
  box.textContent = 'This page must be served over HTTP: run `trainfer web BUNDLE --serve`, or put this folder on any ' +
    'static host (one that sends Cross-Origin-Opener-Policy: same-origin and ' +
    'Cross-Origin-Embedder-Policy: require-corp lets wasm use threads).';
  box.hidden = false;
}
