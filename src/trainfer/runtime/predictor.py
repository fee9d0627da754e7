"""The inference runtime: a verified bundle on one onnxruntime session, preprocessing in numpy.

Imports numpy, onnxruntime, trainfer.features and trainfer._env only: never torch, so it runs on small edge
machines and starts fast.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from trainfer._env import affinity_cpus
from trainfer.errors import BundleError
from trainfer.features import Features
from trainfer.features.raw import RawFeeder
from trainfer.runtime.bundle import MANIFEST, MODEL, read_listed, read_manifest


def default_threads() -> int:
    """onnxruntime threads when neither the caller nor the bundle says: every CPU this process may use."""
    return affinity_cpus()


def inference_session(model_path: str | Path | bytes, threads: int) -> Any:
    """The onnxruntime session every trainfer graph runs on: the bundle's Predictor, the graphs optimize times
    and sweeps threads on, and the export parity check. One place, so that what optimize measures is what the
    bundle ships (``model_path`` may be the graph's bytes: encrypted bundles never write it to disk): ``threads``
    intra-op threads, one inter-op thread, sequential execution, every graph
    optimization, the CPU provider, and onnxruntime's own logging limited to errors."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    model = model_path if isinstance(model_path, bytes) else str(model_path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def feed_runner(session: Any, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> Any:
    """A zero-argument call of ``session`` on ``feed``, run as a bundle's Predictor runs it, for timing: bound once
    through IO binding when every input is a float32 array (rows of numbers: session.run would convert each of the
    graph's inputs on every call, ~1.2 us each, which the Predictor never pays), else session.run. The arrays
    must stay alive and unchanged while the call is used."""
    names = outputs or [o.name for o in session.get_outputs()]
    if not all(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.flags.c_contiguous for v in feed.values()):
        return lambda: session.run(names, feed)
    io = session.io_binding()
    for name, arr in feed.items():
        io.bind_input(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
    for name in names:
        io.bind_output(name)

    def call() -> list[np.ndarray]:
        session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()

    call.feed = feed  # type: ignore[attr-defined]  # the bound memory lives as long as the call
    return call


class Predictor:
    """A loaded bundle. ``trainfer.load("bundles/digits").predict(rows)``.

    ``predict(X)`` returns labels in the original label space (or values, for regression);
    ``predict_proba(X)`` returns class probabilities. X is raw input exactly as in the training
    data: an ndarray of raw features, a DataFrame, a list of dicts, or image paths.

    ``trust``: a public key file; the bundle must carry a valid signature by its private key (see
    trainfer.runtime.signing). ``key``: the bundle key (32 bytes, or a key file's path) of an encrypted
    bundle; the graph is decrypted into memory only.
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, trust: str | Path | None = None,
                 key: bytes | str | Path | None = None) -> None:
        self.path = Path(path)
        self.signed = False
        signed_manifest = None
        if trust is not None:  # before anything of the bundle is read or parsed
            from trainfer.runtime.signing import verify_bundle

            # The chain from the signature to what runs: the manifest bytes parsed below must have the digest
            # the verified signature gives, and the graph is read once and checked against that manifest.
            signed_manifest = verify_bundle(self.path, trust)["sha256"][MANIFEST]
            self.signed = True
        self.manifest = read_manifest(self.path, signed_manifest)  # verifies every hash before anything is loaded
        self.features = Features.from_dict(self.manifest["preprocessing"])
        self.task = self.manifest["task"]
        # An optimized bundle records the thread count its sweep found fastest; the caller's choice wins.
        self.threads = int(threads or self.manifest.get("runtime", {}).get("threads") or default_threads())
        model = self._model_bytes(key)
        try:
            self.session = inference_session(model, self.threads)
        except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
            raise BundleError(f"{MODEL} in {self.path} cannot be loaded by onnxruntime: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._first_output = self.output_names[:1]
        self.variant = self.manifest.get("variant", "onnx-fp32")
        labels = self.features.target.labels
        self._labels = np.asarray(labels, dtype=object if any(isinstance(v, str) for v in labels) else None)
        # A whole-graph bundle (model.onnx takes raw columns: see exporting.graph) needs only checks, column order
        # and dtypes here; a bundle exported before it takes one preprocessed tensor, made in numpy.
        spec = self.manifest.get("input", {})
        self.whole_graph = spec.get("pipeline") == "in_graph"
        if self.whole_graph:
            self.feeder: RawFeeder | None = RawFeeder(self.features, spec.get("raw_inputs"))
            self._feed = self.feeder.feed
            self._local = threading.local()
            # The graph's own label output, unless labels mix types (the graph holds them as text then).
            kinds = {type(v) for v in labels}
            self._label_output = "label" in self.output_names and len(kinds) <= 1
        else:
            self.feeder = None
            # Bound once: predict is a hot path at batch 1. A graph that standardizes its input itself takes
            # the imputed, one-hot encoded rows; otherwise numpy standardizes them too.
            in_graph = spec.get("standardization") == "in_graph"
            self._transform = self.features.inputs.encode if in_graph else self.features.inputs.transform

    def _model_bytes(self, key: bytes | str | Path | None) -> bytes:
        """The graph's bytes, read once and checked against the manifest (onnxruntime never opens the file
        itself: a file swapped after the check would be loaded unchecked), decrypted for an encrypted bundle."""
        encrypted = "encryption" in self.manifest
        if not encrypted:
            if key is not None:
                raise BundleError(f"bundle {self.path} is not encrypted, and a key was given",
                                  hint="drop the key (or --key), or export the bundle with --encrypt-key")
            return read_listed(self.path, self.manifest, MODEL)
        if key is None:
            raise BundleError(f"bundle {self.path} is encrypted ({self.manifest['encryption'].get('file')}); "
                              "its key is needed to load it",
                              hint="pass key=KEYFILE (CLI: predict --key KEYFILE, serve --key-file KEYFILE)")
        from trainfer.runtime.encryption import ENCRYPTED_MODEL, decrypt
        from trainfer.runtime.keys import symmetric_key

        raw_key = symmetric_key(key, "key")
        data = read_listed(self.path, self.manifest, self.manifest["encryption"].get("file", ENCRYPTED_MODEL))
        return decrypt(self.path, self.manifest, raw_key, data)

    @property
    def labels(self) -> list[Any]:
        return self.features.target.labels

    def prepare(self, X: Any) -> Any:
        """Raw rows -> what ``run`` takes (batch several by concatenating along the first axis, or per input name
        for a dict). For a whole-graph bundle: when every raw input is a float32 number, the checked rows as one
        (n, columns) float32 matrix, which ``run`` copies into memory bound to the session (passing the graph's
        inputs one by one to session.run cost ~1.2 us each: digits' 64 columns ~100 us a call); else the feed
        dict of raw inputs (``feed``). For an older bundle: the preprocessed input tensor."""
        if self.feeder is not None:
            if self.feeder.all_float32:
                return self.feeder.pack(X)
            return self._feed(X)
        return self._transform(X)

    def feed(self, X: Any) -> dict[str, np.ndarray]:
        """Raw rows -> the whole graph's feed dict {input name: array}, checked, as any ONNX runtime takes it."""
        if self.feeder is None:
            raise BundleError(f"bundle {self.path} was exported before the whole graph: its model takes one "
                              "preprocessed tensor (prepare), not raw inputs", hint="export the run again")
        return self._feed(X)

    def run(self, x: Any) -> np.ndarray:
        """The graph on a batch from ``prepare``: probabilities, or predictions for regression."""
        if self.feeder is not None:
            if isinstance(x, np.ndarray):
                buf, io = self._bound(x.shape[0], self._first_output[0])
                np.copyto(buf[:, :, 0], x.T)
                self.session.run_with_iobinding(io)
                return io.copy_outputs_to_cpu()[0]
            return self.session.run(self._first_output, x)[0]
        return self.session.run(self._first_output, {self.input_name: x})[0]

    def predict_proba(self, X: Any) -> np.ndarray:
        if self.task != "classification":
            raise BundleError("predict_proba is for classification bundles; use predict for regression")
        if self.feeder is not None:
            return self._run_raw(X, self._first_output[0])
        return self.session.run(self._first_output, {self.input_name: self._transform(X)})[0]

    def predict(self, X: Any) -> np.ndarray:
        if self.feeder is not None:
            if self.task == "classification" and self._label_output:
                return self._run_raw(X, "label")
            out = self._run_raw(X, self._first_output[0])
        else:
            out = self.session.run(self._first_output, {self.input_name: self._transform(X)})[0]
        if self.task == "classification":
            return self._labels[out.argmax(axis=1)]
        return out.reshape(-1).astype(np.float64)

    def _run_raw(self, X: Any, output: str) -> np.ndarray:
        """One output of the whole graph on raw rows. Rows of numbers (the hot path) go through a per-thread
        buffer bound to the session once per batch size (IO binding): session.run converts each of the graph's
        inputs on every call, ~1.2 us per input (digits' 64 columns: 95 us per call, against 16 us bound)."""
        v = self.feeder.numeric_rows(X)
        if v is None:
            return self.session.run([output], self._feed(X))[0]
        buf, io = self._bound(v.shape[0], output)
        self.feeder.fill(buf, v)
        self.session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]

    def _bound(self, n: int, output: str) -> tuple[np.ndarray, Any]:
        """This thread's float32 (columns, n, 1) buffer bound to the session's inputs, with ``output`` bound: made
        once per batch size (a few recur: 1, a server's batches; beyond 8 sizes the cache starts again)."""
        cache = self._local.__dict__.setdefault("bound", {})
        hit = cache.get((n, output))
        if hit is None:
            if len(cache) > 8:
                cache.clear()
            buf, feed = self.feeder.buffer(n)
            io = self.session.io_binding()
            for name, view in feed.items():
                io.bind_input(name, "cpu", 0, np.float32, list(view.shape), view.ctypes.data)
            io.bind_output(output)
            hit = cache[(n, output)] = (buf, io)
        return hit

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, task={self.task}, variant={self.variant}, threads={self.threads})"


def load(path: str | Path, threads: int | None = None, *, trust: str | Path | None = None,
         key: bytes | str | Path | None = None) -> Predictor:
    """Open a bundle for inference, verifying its hashes first. Example: ``trainfer.load("bundles/digits")``.

    ``trust="keys/trainfer.pub"`` refuses a bundle that is unsigned, signed by another key, or changed since it
    was signed; ``key=`` (bytes, or a key file's path) decrypts an encrypted bundle into memory.
    """
    return Predictor(path, threads, trust=trust, key=key)
