"""`trainfer optimize`: build every variant, measure them with one harness, keep the fastest one that
stays within the accuracy budget, and write it as the bundle with the whole table in its manifest."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainfer._atomic import output_error
from trainfer._timing import FULL, MIN_ROUNDS, QUICK, summarize, time_interleaved
from trainfer.errors import MissingDependencyError, TrainferError
from trainfer.exporting import (
    compare,
    compose_whole,
    export_model,
    graph_inputs,
    graph_standardizes,
    manifest_fields,
    reference_outputs,
    whole_outputs,
)
from trainfer.exporting.prune import fine_tune, prune_structured
from trainfer.exporting.select import (
    BASELINE,
    choose,
    drop_upper_bound,
    qualifies,
    quality_drop,
    rmse_increase_upper_bound,
)
from trainfer.exporting.variants import QUANTIZERS, Variant, by_name
from trainfer.exporting.writer import check_bundle_out, write_bundle
from trainfer.features.raw import RawFeeder
from trainfer.models import count_parameters
from trainfer.models.flops import forward_flops
from trainfer.runtime import MODEL, default_threads, feed_runner, inference_session
from trainfer.runtime.keys import symmetric_key
from trainfer.training import Run
from trainfer.training.metrics import compute_metrics, monitor

THROUGHPUT_BATCH = 64


def _score(out: np.ndarray, y: np.ndarray, run: Run) -> float:
    """The monitored metric (accuracy, or rmse) from the bundle's outputs (probabilities or values)."""
    t = run.features.target
    if t.task == "classification":
        return float(np.mean(out.argmax(1) == y))
    std = (out.reshape(-1) - t.mean) / t.std  # compute_metrics expects standardized outputs
    return compute_metrics(std, y, t)["rmse"]


def _errors(out: np.ndarray, y: np.ndarray, run: Run) -> np.ndarray:
    """Per-row regression errors in standardized target units (the rmse's units do not matter for its ratio)."""
    t = run.features.target
    return (out.reshape(-1).astype(np.float64) - t.mean) / t.std - y.astype(np.float64)


class _Bases:
    """The fp32 sources variants derive from: the run's model, and pruned + fine-tuned copies."""

    def __init__(self, run: Run, X_std: np.ndarray, X_graph: np.ndarray, work: Path, fine_tune_epochs: int,
                 log: Callable[[str], None]) -> None:
        self.run, self.work, self.epochs, self.log = run, work, fine_tune_epochs, log
        self.X_std, self.X_graph = X_std, X_graph
        self._cache: dict[float | None, dict[str, Any]] = {}

    def get(self, ratio: float | None) -> dict[str, Any]:
        if ratio not in self._cache:
            self._cache[ratio] = self._build(ratio)
        base = self._cache[ratio]
        if "error" in base:
            raise base["error"]
        return base

    def _build(self, ratio: float | None) -> dict[str, Any]:
        run, shape = self.run, self.run.features.input_shape
        name = "fp32" if ratio is None else f"pruned-{int(ratio * 100)}"
        try:
            model = run.model
            if ratio is not None:
                self.log(f"pruning {int(ratio * 100)}% and fine-tuning ({self.epochs} epochs)")
                model = fine_tune(run, prune_structured(run.model, shape, ratio), self.work / f"{name}-run",
                                  self.epochs)
            path = self.work / f"{name}.onnx"
            info = export_model(model, run.features, self.X_std, self.X_graph, path)
            return {"name": name, "model": model, "onnx": path, "info": info, "params": count_parameters(model),
                    "flops": forward_flops(model, shape)}
        except TrainferError as exc:
            return {"error": exc}

    def quant_source(self, ratio: float | None) -> tuple[Path, dict[str, Any]]:
        """(graph, onnx info) a quantizer starts from: the base with its input standardization as its own float
        Mul/Add, which the quantizer leaves alone, so that the first layer it quantizes holds the model's own
        weights (folded, they are W / std: a range int8 cannot hold). Exported once per base, when needed."""
        base = self.get(ratio)
        if "quant_onnx" not in base:
            if graph_standardizes(self.run.features):
                path = self.work / f"{base['name']}-unfolded.onnx"
                info = export_model(base["model"], self.run.features, self.X_std, self.X_graph, path,
                                    fold_standardization=False)
                base.update(quant_onnx=path, quant_info=info)
            else:  # numpy standardizes (or there is nothing to standardize): the float graph is the source
                base.update(quant_onnx=base["onnx"], quant_info=base["info"])
        return base["quant_onnx"], base["quant_info"]


def optimize(run: Run | str | Path, out: str | Path, *, max_accuracy_drop: float = 0.5, batch_size: int = 1,
             variants: list[str] | None = None, threads: int | None = None, quick: bool = True,
             fine_tune_epochs: int = 5, force: bool = False,
             log: Callable[[str], None] | None = None, encrypt_key: bytes | str | Path | None = None) -> dict[str, Any]:
    """Try the variants on ``run``, write the chosen one to ``out`` as a bundle, return the record.

    ``encrypt_key`` (a bundle key, or its file's path) writes the chosen graph as model.onnx.enc. onnxruntime's
    quantizers and the pruning fine-tune read and write files, so the candidates are built in a scratch
    directory in memory (tmpfs: /dev/shm), never on disk, and every library's temporary files go there too;
    where no such directory exists, encrypted optimize is refused (``export --encrypt-key`` needs none).

    Example: ``trainfer.optimize("runs/digits", "bundles/digits-fast", max_accuracy_drop=0.5)``.
    """
    out = check_bundle_out(out, force)  # a file, no permission, no space, not a bundle: said before the work
    key = None if encrypt_key is None else symmetric_key(encrypt_key, "--encrypt-key")
    scratch = memory_scratch() if key is not None else None
    run = run if isinstance(run, Run) else Run.load(run)
    log = log or (lambda _msg: None)
    threads = int(threads or default_threads())
    enc = run.features.target.encode
    # X: what the ONNX graphs take; X_std: what the torch models take (they differ when the graph standardizes)
    # X_raw: what the whole graphs (the bundles) take, and what accuracy and latency are measured on
    X, X_std, X_raw = {}, {}, {}
    for s in ("train", "val", "test"):
        X_raw[s] = run.load_split(s)[0]
        X_std[s], X[s] = graph_inputs(run.features, X_raw[s])
    y = {s: enc(run.load_split(s)[1]) for s in ("val", "test")}
    rng = np.random.default_rng(run.recipe.seed)
    # A DP run's guarantee covers its train rows: static int8 calibration (activation min/max, percentiles) is
    # fitted outside DP-SGD, so it reads the validation rows instead, which model selection already reads.
    pool = X["val"] if run.summary.get("privacy") else X["train"]
    calib = pool[rng.choice(len(pool), size=min(256, len(pool)), replace=False)]
    metric, _ = monitor(run.task)
    work = Path(tempfile.mkdtemp(prefix="trainfer-optimize-", dir=scratch))
    saved_tempdir = tempfile.tempdir
    if scratch is not None:  # onnxruntime's quantizers write their intermediate graphs to temporary directories
        tempfile.tempdir = str(work)
    try:
        bases = _Bases(run, X_std["test"], X["test"], work, fine_tune_epochs, log)
        rows, sessions = [], {}
        for v in by_name(variants):
            log(f"building {v.name}")
            row, sess = _build_variant(v, bases, run, X_raw, X_std["test"], y, calib, threads, work)
            rows.append(row)
            if sess is not None:
                sessions[v.name] = sess
        ref = next((r for r in rows if r["name"] == BASELINE and r["status"] == "ok"), None)
        if ref is None:
            if disk := rows[0].get("_os_error"):  # scratch space, not the model: say where and what to free
                raise disk
            raise TrainferError(f"the onnx-fp32 baseline could not be built: {rows[0].get('reason')}")
        for r in rows:
            if r["status"] == "ok":
                r["val_drop"] = quality_drop(ref[f"val_{metric}"], r[f"val_{metric}"], run.task)
                r["test_drop"] = quality_drop(ref[f"test_{metric}"], r[f"test_{metric}"], run.task)
                r["val_rows"] = len(y["val"])
                if r["name"] == BASELINE:  # the reference has no doubt of itself
                    continue
                bound = drop_upper_bound(ref["_val_correct"], r["_val_correct"]) if run.task == "classification" \
                    else rmse_increase_upper_bound(ref["_val_err"], r["_val_err"])
                r["val_drop_bound"] = bound if np.isfinite(bound) else None  # None (JSON null): too few rows

        log("measuring latency and throughput (interleaved)")
        timing = QUICK if quick else FULL
        lat = _latency(sessions, run, X_raw["test"], X_std["test"], 1, threads, timing)
        thr = _latency(sessions, run, X_raw["test"], X_std["test"], THROUGHPUT_BATCH, threads,
                       {"min_count": 20, "min_seconds": 0.5 if quick else 3.0})
        deploy = lat if batch_size == 1 else thr if batch_size == THROUGHPUT_BATCH else \
            _latency(sessions, run, X_raw["test"], X_std["test"], batch_size, threads, timing)
        torch_p50 = float(np.median(lat["torch-eager"]))
        for r in rows:
            if r["name"] in sessions:
                r.update({k: v for k, v in summarize(lat[r["name"]]).items() if k != "samples"})
                r["throughput_per_s"] = THROUGHPUT_BATCH / float(np.median(thr[r["name"]]))
                r["speedup_vs_torch"] = torch_p50 / float(np.median(lat[r["name"]]))
        chosen, why = choose(rows, {k: v for k, v in deploy.items() if k != "torch-eager"}, max_accuracy_drop)
        for r in rows:
            if r["status"] == "ok":
                r["status"] = "kept" if qualifies(r, max_accuracy_drop) else "over_budget"
            r["chosen"] = r["name"] == chosen
        log(f"chose {chosen}; sweeping thread counts")
        sweep = _thread_sweep(next(r for r in rows if r["chosen"])["path"],
                              RawFeeder(run.features).feed(_take(X_raw["test"], np.arange(batch_size))), timing)
        record = {
            "run": str(run.path), "bundle": str(out), "chosen": chosen, "reason": why,
            "max_accuracy_drop": max_accuracy_drop, "drop_unit": "points" if run.task == "classification" else "%",
            "metric": metric, "batch_size": batch_size, "threads": threads,
            "torch_eager": summarize(lat["torch-eager"]),
            "thread_sweep": sweep, "recommended_threads": min(sweep, key=lambda k: sweep[k]["latency_ms_p50"]),
            "variants": [{k: v for k, v in r.items() if k != "path" and not k.startswith("_")} for r in rows],
        }
        _write(run, out, rows, chosen, record, force, key)
        return record
    finally:
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(work, ignore_errors=True)


def memory_scratch() -> str:
    """A scratch directory held in memory (a tmpfs), for graphs that must not reach the disk."""
    try:
        with open("/proc/mounts") as fh:
            mounts = {parts[1]: parts[2] for parts in (line.split() for line in fh) if len(parts) > 2}
    except OSError:
        mounts = {}
    for place in ("/dev/shm", "/run/shm"):
        if mounts.get(place) == "tmpfs" and os.access(place, os.W_OK | os.X_OK):
            return place
    raise TrainferError("optimize --encrypt-key builds its candidate graphs in memory (a tmpfs such as /dev/shm), "
                        "and this machine has none that can be written",
                        hint="export with `trainfer export RUN --out B --encrypt-key KEY` (no scratch files), or run "
                             "optimize where /dev/shm is mounted")


def _build_variant(v: Variant, bases: _Bases, run: Run, X_raw: dict[str, Any], X_test_std: np.ndarray,
                   y: dict[str, np.ndarray], calib: np.ndarray, threads: int,
                   work: Path) -> tuple[dict[str, Any], Any]:
    row: dict[str, Any] = {"name": v.name, "status": "ok", "reason": None}
    if v.prune is not None and run.summary.get("privacy"):
        # Pruning fine-tunes on the train rows again: that spends privacy beyond the run's recorded ε, which the
        # bundle's manifest would still claim (and with the recipe's seed, the same noise a second time).
        row.update(status="skipped", reason="not built for a DP-SGD run: the fine-tuning after pruning would "
                                            "spend privacy budget beyond the run's recorded ε")
        return row, None
    try:
        base = bases.get(v.prune)
        path, info = base["onnx"], base["info"]
        if v.quant is not None:
            source, info = bases.quant_source(v.prune)
            path = work / f"{v.name}.onnx"
            QUANTIZERS[v.quant](source, path, work, calib)
        # The model part (quantized or pruned) between the float preprocessing and the label lookup: the graph
        # the bundle would ship, measured on raw rows as the bundle runs them.
        whole = work / f"{v.name}-whole.onnx"
        whole.write_bytes(compose_whole(path, run.features))
        path = whole
        sess = inference_session(path, threads)
        outs = {s: whole_outputs(sess, run.features, X_raw[s]) for s in ("val", "test")}
        metric, _ = monitor(run.task)
        parity = compare(outs["test"], reference_outputs(base["model"], X_test_std, run.features.target), run.task)
        row.update({
            "path": path, "size_mb": path.stat().st_size / 1e6, "params": base["params"], "flops": base["flops"],
            "flops_note": "fp32 reference count (int8 ops are not counted)" if v.quant else None,
            f"val_{metric}": _score(outs["val"], y["val"], run), f"test_{metric}": _score(outs["test"], y["test"], run),
            "_val_correct": outs["val"].argmax(1) == y["val"] if run.task == "classification" else None,
            "_val_err": None if run.task == "classification" else _errors(outs["val"], y["val"], run),
            "lossless": v.lossless, "onnx": {k: x for k, x in info.items() if k != "parity"},
            "parity": {**parity, "reference": "torch fp32" if v.prune is None else f"torch pruned-{int(v.prune*100)}"},
        })
        return row, sess
    except MissingDependencyError as exc:
        row.update(status="skipped", reason=f"{exc.message} ({exc.hint})")
    except Exception as exc:  # one variant failing must not stop the others; the table shows why
        msg = exc.message if isinstance(exc, TrainferError) else f"{type(exc).__name__}: {exc}"
        row.update(status="failed", reason=msg.splitlines()[0][:200] if msg else type(exc).__name__)
        disk = output_error(exc, work)
        if disk is not None:
            row.update(reason=disk.message, _os_error=disk)
    return row, None


def _take(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of raw input (DataFrame, array or list)."""
    if hasattr(X, "iloc"):
        return X.iloc[idx]
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]


def _latency(sessions: dict[str, Any], run: Run, X: Any, X_std: np.ndarray, batch: int, threads: int,
             timing: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-call seconds at ``batch`` for every variant (whole graphs, on a ready feed of raw rows) and torch eager
    (on the same rows, preprocessed), interleaved, same threads."""
    feed = RawFeeder(run.features).feed(_take(X, np.resize(np.arange(len(X)), batch)))
    # run as the bundle's Predictor runs them (IO binding for rows of numbers), so the figures are the bundle's
    fns: dict[str, Callable[[], Any]] = {n: feed_runner(s, feed) for n, s in sessions.items()}
    model = run.model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(np.resize(X_std, (batch, *X_std.shape[1:]))))
    head = torch.softmax if run.task == "classification" else (lambda t, dim: t)

    def torch_eager() -> None:
        with torch.inference_mode():
            head(model(xt), dim=1)

    fns["torch-eager"] = torch_eager
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # as many rounds as the selection rule needs to compare latencies (slow models reach the count
        # and the window in fewer rounds, and would then always keep onnx-fp32 as "cannot tell")
        return time_interleaved(fns, max_seconds=60, min_rounds=MIN_ROUNDS, **timing)
    finally:
        torch.set_num_threads(prev)


def _thread_sweep(path: Path, feed: dict[str, np.ndarray], timing: dict[str, Any]) -> dict[int, dict[str, Any]]:
    counts = sorted({1, *[2**k for k in range(1, 8) if 2**k <= default_threads()], default_threads()})
    sessions = {str(t): inference_session(path, t) for t in counts}
    samples = time_interleaved({t: feed_runner(s, feed) for t, s in sessions.items()},
                               min_count=timing["min_count"] // 2, min_seconds=timing["min_seconds"] / 2)
    return {int(t): summarize(s) for t, s in samples.items()}


def _write(run: Run, out: Path, rows: list[dict[str, Any]], chosen: str, record: dict[str, Any],
           force: bool, key: bytes | None = None) -> None:
    row = next(r for r in rows if r["name"] == chosen)

    def fill(tmp: Path) -> dict[str, Any]:
        fields = manifest_fields(run, chosen, row["onnx"], row["parity"], row["path"].read_bytes())
        if key is None:
            shutil.copyfile(row["path"], tmp / MODEL)
        else:  # from the in-memory scratch directory, encrypted by the writer
            fields["model_bytes"] = row["path"].read_bytes()
        fields["variant_metrics"] = {k: row.get(k) for k in row if k.startswith(("val_", "test_", "latency_"))}
        # The bundle is the variant, not the run: its own size, parameters and FLOPs.
        fields["provenance"]["params"] = row["params"]
        fields["variant_facts"] = {"params": row["params"], "flops": row["flops"], "flops_note": row["flops_note"],
                                   "size_mb": row["size_mb"], "run_params": run.summary.get("params")}
        fields["runtime"] = {"threads": record["recommended_threads"]}
        fields["optimization"] = record
        return fields

    write_bundle(out, fill, force=force, key=key)
