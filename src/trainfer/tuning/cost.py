"""Inference cost of a trial for ``--objectives accuracy,latency``: its exported graph's batch-1 p50.

Trials run minutes apart, in several workers, on a machine others share: two raw p50s taken at different
times say as much about the machine's load then as about the models. So each trial's graph is timed
interleaved (MEASURE.md) against a fixed reference graph, built the same in every process, and its latency is
recorded as ``ratio x reference p50``: the ratio (median over interleaved rounds of trial/reference) cancels
the load both saw, and the reference's p50 is measured once per study dir and thread count (the first worker
to need it writes STUDY_DIR/latency-reference-tN.json; everyone, later commands included, reads that one),
so every trial's figure is in the same unit: milliseconds as the reference ran when the study began.
Measured here (two digits runs, 4 windows alone and 4 beside a busy process on the same core): raw p50 varied
with a CV of 5.4-5.6%, the figure recorded here by 0.5-2.6%.

The graph is what a bundle would ship: the whole graph (issue 14: raw columns in, the preprocessing, the model with
BatchNorm and standardization folded, probabilities and the label lookup out), parity-checked against torch on raw
validation rows, run on the bundle's session settings at the study's thread count and as its Predictor runs it (IO
binding for rows of numbers), fed one raw validation row: the test split is never read while tuning
(``trainfer.export`` would check parity on it, so it is not used here). A trial's figure is therefore what a user
of its bundle would see, preprocessing included (for digits' 64 raw inputs, about twice the model alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainfer._timing import MIN_ROUNDS, interleave, paired_ratio, summarize
from trainfer.errors import TrainferError
from trainfer.tuning.trial import Plan, prepared_data

WINDOW_S = 1.0  # the interleaved window per measurement: with the export, about 1.5 s per trial
PARITY_ROWS = 64  # validation rows the exported graph is checked on against torch
REFERENCE = "reference"
_REF_SHAPE = (64, 256, 10)  # inputs, hidden units, classes: a small tabular MLP, ~8 us a call here (1 thread)
_sessions: dict[int, Any] = {}  # the reference graph's session per thread count, built once per process
_constants: dict[tuple[str, int], float] = {}


def measure(run_dir: Path, plan: Plan) -> dict[str, Any]:
    """The trial run's exported graph's batch-1 latency_ms on the study's scale (see the module docstring), with
    what it came from (raw p50, ratio, the reference's p50s): the trial's user attrs."""
    return measure_runs([Path(run_dir)], Path(plan.study_dir), plan.threads)[0]


def measure_runs(run_dirs: list[Path], study_dir: Path, threads: int, strict: bool = True) -> list[dict[str, Any]]:
    """Latency records of several runs, timed in one interleaved window with the reference (so that they are
    directly comparable, as optimize's variants are): one record per run, in order. A run that cannot be
    exported raises, or with ``strict=False`` gets latency_ms None and a latency_note saying why."""
    from trainfer.runtime import feed_runner, inference_session

    ref_ms = reference_ms(study_dir, threads)
    out: list[dict[str, Any]] = [{} for _ in run_dirs]
    with tempfile.TemporaryDirectory(prefix="trainfer-latency-") as tmp:
        fns = {REFERENCE: _call(_reference_session(threads), np.zeros((1, _REF_SHAPE[0]), np.float32))}
        for i, run_dir in enumerate(run_dirs):
            try:
                path, x = _export(Path(run_dir), Path(tmp) / f"{i}.onnx")
            except TrainferError as exc:
                if strict:
                    raise
                out[i] = {"latency_ms": None, "latency_note": f"not measured: {exc.message}"}
                continue
            fns[str(i)] = feed_runner(inference_session(path, threads), x)
        timed = interleave(fns, min_count=100, min_seconds=WINDOW_S, min_rounds=MIN_ROUNDS)
    ref_now = summarize(timed.samples[REFERENCE])["latency_ms_p50"]
    for i in range(len(run_dirs)):
        if str(i) not in timed.samples:
            continue
        ratio = paired_ratio(timed.samples[str(i)], timed.samples[REFERENCE], timed.block)
        out[i] = {"latency_ms": ratio * ref_ms, "latency_raw_p50_ms": summarize(timed.samples[str(i)])
                  ["latency_ms_p50"], "latency_ratio": ratio, "latency_reference_ms": ref_ms,
                  "latency_reference_now_ms": ref_now, "latency_threads": threads, "latency_rounds": timed.rounds}
    return out


def reference_ms(study_dir: Path, threads: int) -> float:
    """The reference graph's batch-1 p50 in ms for this study dir and thread count: measured by the first
    process that needs it, kept in the study dir, and the same for every trial after that."""
    key = (str(Path(study_dir).resolve()), threads)
    if key in _constants:
        return _constants[key]
    path = Path(study_dir) / f"latency-reference-t{threads}.json"
    if not path.is_file():
        timed = interleave({REFERENCE: _call(_reference_session(threads), np.zeros((1, _REF_SHAPE[0]), np.float32))},
                           min_count=1000, min_seconds=WINDOW_S)
        record = {"latency_ms_p50": summarize(timed.samples[REFERENCE])["latency_ms_p50"], "threads": threads,
                  "reference": "MLP {}-{}-{} fp32 (fixed weights), batch 1".format(*_REF_SHAPE),
                  "samples": len(timed.samples[REFERENCE]), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "host": platform.node(), "pid": os.getpid()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        try:
            os.link(tmp, path)  # atomic and exclusive: when two workers measured at once, the first one's stands
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: the last writer's stands
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    _constants[key] = float(json.loads(path.read_text())["latency_ms_p50"])
    return _constants[key]


def reference_records(study_dir: Path) -> dict[str, Any]:
    """The reference measurements kept in the study dir, by thread count (for summary.json)."""
    out = {}
    for path in sorted(Path(study_dir).glob("latency-reference-t*.json")):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            out[str(record["threads"])] = record
    return out


def _call(sess: Any, x: np.ndarray) -> Any:
    from trainfer.exporting.onnx_export import INPUT_NAME

    feed = {INPUT_NAME: np.ascontiguousarray(x)}
    return lambda: sess.run(None, feed)


def _export(run_dir: Path, path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The run's whole graph as a bundle ships it, parity-checked on raw validation rows; and the feed of one raw
    validation row to time it on."""
    import io

    from trainfer.exporting import check_whole_parity, compose_whole, export_model, graph_inputs
    from trainfer.features.raw import RawFeeder
    from trainfer.training import Run

    run = Run.load(run_dir)
    data = prepared_data(run.recipe)  # the worker's cached train/val preparation: no test row is touched
    X_raw = data.dataset.rows(data.split.val[:PARITY_ROWS])
    X_std, X_graph = graph_inputs(run.features, X_raw)
    model_only = io.BytesIO()
    export_model(run.model, run.features, X_std, X_graph, model_only)
    whole = compose_whole(model_only.getvalue(), run.features)
    check_whole_parity(run.model, run.features, whole, X_raw, X_std)
    path.write_bytes(whole)
    return path, RawFeeder(run.features).feed(X_raw[:1] if not hasattr(X_raw, "iloc") else X_raw.iloc[:1])


def _reference_session(threads: int) -> Any:
    """A fixed MLP graph (seeded weights, built with onnx.helper: no torch export), its session cached."""
    if threads not in _sessions:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from trainfer.exporting.onnx_export import INPUT_NAME
        from trainfer.runtime import inference_session

        n_in, n_hidden, n_out = _REF_SHAPE
        rng = np.random.default_rng(0)
        weights = {"w1": rng.normal(0, n_in ** -0.5, (n_in, n_hidden)), "b1": np.zeros(n_hidden),
                   "w2": rng.normal(0, n_hidden ** -0.5, (n_hidden, n_out)), "b2": np.zeros(n_out)}
        nodes = [helper.make_node("MatMul", [INPUT_NAME, "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
                 helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
                 helper.make_node("Add", ["z0", "b2"], ["z1"]), helper.make_node("Softmax", ["z1"], ["p"], axis=1)]
        graph = helper.make_graph(
            nodes, "trainfer-latency-reference",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_in])],
            [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", n_out])],
            [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8  # what every onnxruntime of the supported range loads
        onnx.checker.check_model(model)
        with tempfile.TemporaryDirectory(prefix="trainfer-latency-ref-") as tmp:
            path = Path(tmp) / "reference.onnx"
            onnx.save(model, str(path))
            _sessions[threads] = inference_session(path, threads)  # the session holds the graph: the file may go
    return _sessions[threads]
