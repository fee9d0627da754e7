"""optimize: variants, measurement, selection within the accuracy budget, and the chosen bundle (issue 4).

Each expensive ``optimize`` runs once per module (module-scoped fixtures) and many tests read its record.
Most runs shorten the quick timing (``FAST``) and fine-tune pruned models for one epoch; the CLI ``--json``
run keeps the default quick timing, and the latency-figure checks run on it too.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _inference_fixtures import copy_bundle, flip_byte
from conftest import Result, assert_user_error

import trainfer
from trainfer import _timing
from trainfer.errors import ExportError, TrainferError
from trainfer.exporting import graph_inputs
from trainfer.exporting import variants as variants_module
from trainfer.exporting.select import (
    BASELINE,
    choose,
    drop_upper_bound,
    qualifies,
    quality_drop,
)
from trainfer.runtime import default_threads

optimize_module = importlib.import_module("trainfer.exporting.optimize")

# digits/mlp: 5 epochs is a small model that is still learning (test accuracy ~0.87), so pruning and
# fine-tuning move the accuracy both ways. The cnn learns its 3 synthetic classes in 8 short epochs.
DIGITS = {"data": "digits", "model": "mlp", "epochs": 5, "overrides": ["model.hidden=[32]"]}
CNN = {"data": "synthetic-images", "model": "cnn", "epochs": 8,
       "overrides": ["data.options.n_samples=300", "data.options.size=16", "data.options.n_classes=3",
                     "model.channels=[8,16]"]}
FAST = {"min_count": 64, "min_seconds": 0.3}  # shorter than QUICK; 64 calls keep p90 defined
# Fixtures that do not test the default thread count time with 1 thread: these models are tiny, and torch and
# onnxruntime at 2 threads on a busy 2-core machine spin against each other (the cnn fixture took 3x longer).
# The thread sweep, and so recommended_threads, is independent of it.
COMMON: dict[str, Any] = {"fine_tune_epochs": 1}
CLI_COMMON = ["--fine-tune-epochs", "1"]
ALL_VARIANTS = [v.name for v in variants_module.VARIANTS]
STATUSES = {"kept", "over_budget", "failed", "skipped"}
MEASURED = ("test_accuracy", "val_accuracy", "latency_ms_p50", "latency_ms_p90", "throughput_per_s", "size_mb",
            "params", "flops", "speedup_vs_torch")


# ---- helpers -----------------------------------------------------------------------------------

@contextlib.contextmanager
def patched() -> Iterator[pytest.MonkeyPatch]:
    """A MonkeyPatch usable in module-scoped fixtures, with the shorter quick timing set."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in FAST.items():
            mp.setitem(_timing.QUICK, k, v)  # optimize holds the same dict object
        yield mp


def cli(args: Sequence[object]) -> Result:
    """``trainfer.cli.main(args)`` in this process, with stdout/stderr captured (usable in any fixture scope)."""
    from trainfer.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Result(argv, code, out.getvalue(), err.getvalue())


def raiser(message: str):
    def quantizer(*_args: Any) -> None:
        raise RuntimeError(message)

    return quantizer


def rows_by_name(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in record["variants"]}


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((Path(bundle) / "manifest.json").read_text())


def bundle_test_accuracy(bundle: Path, run: Any) -> float:
    X, y = run.load_split("test")
    return float(np.mean(trainfer.load(bundle).predict(X).astype(object) == y.astype(object)))


def check_rows(record: dict[str, Any], names: list[str]) -> None:
    """The table: one row per variant tried (in table order), each with a status; measured rows carry
    every figure; drops are consistent with the accuracies; exactly one row is the chosen one."""
    assert [r["name"] for r in record["variants"]] == names
    rows = rows_by_name(record)
    base = rows[BASELINE]
    assert base["status"] == "kept" and base["val_drop"] == 0 and base["test_drop"] == 0
    for r in record["variants"]:
        assert r["status"] in STATUSES, r
        assert isinstance(r["chosen"], bool)
        if r["status"] in ("failed", "skipped"):
            assert r["reason"], f"{r['name']} is {r['status']} without a reason"
            assert r.get("latency_ms_p50") is None
            continue
        for key in MEASURED:
            assert isinstance(r.get(key), (int, float)) and math.isfinite(r[key]), (r["name"], key, r.get(key))
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0
        assert r["latency_ms_p50"] > 0 and r["latency_ms_p90"] >= r["latency_ms_p50"]
        assert r["throughput_per_s"] > 0 and r["size_mb"] > 0 and r["speedup_vs_torch"] > 0
        assert r["params"] > 0 and r["flops"] > 0
        assert r["val_drop"] == pytest.approx(quality_drop(base["val_accuracy"], r["val_accuracy"], "classification"))
        assert r["test_drop"] == pytest.approx(
            quality_drop(base["test_accuracy"], r["test_accuracy"], "classification"))
        budget = record["max_accuracy_drop"]
        assert r["status"] == ("kept" if qualifies(r, budget) else "over_budget"), r
        if r.get("val_drop_bound") is not None:  # the budget is checked against the upper bound, never below
            assert r["val_drop_bound"] >= r["val_drop"] - 1e-9  # the observed drop
    assert [r["name"] for r in record["variants"] if r["chosen"]] == [record["chosen"]]


def check_choice(record: dict[str, Any]) -> None:
    """The chosen variant is within the budget (on validation: what selection sees), its p50 is within 5%
    of the fastest kept variant's (or it is onnx-fp32 and the reason says the win was noise), and it is
    never slower than onnx-fp32."""
    rows = rows_by_name(record)
    chosen, base = rows[record["chosen"]], rows[BASELINE]
    budget = record["max_accuracy_drop"]
    assert chosen["status"] == "kept" and chosen["val_drop"] <= budget + 1e-9
    kept = [r for r in rows.values() if r["status"] == "kept"]
    fastest = min(kept, key=lambda r: r["latency_ms_p50"])
    if chosen["latency_ms_p50"] > 1.05 * fastest["latency_ms_p50"]:
        assert chosen["name"] == BASELINE, (chosen["name"], fastest["name"], record["reason"])
        assert "not faster than onnx-fp32 beyond noise" in record["reason"], record["reason"]
        assert fastest["name"] in record["reason"]
    if chosen["name"] == BASELINE:
        assert fastest["name"] == BASELINE or fastest["name"] in record["reason"], record["reason"]
    else:
        assert chosen["latency_ms_p50"] < base["latency_ms_p50"], "chose a variant slower than onnx-fp32"
        assert re.search(rf"{re.escape(chosen['name'])} is [0-9.]+x faster than onnx-fp32", record["reason"])


def check_bundle(record: dict[str, Any], bundle: Path, run: Any) -> dict[str, Any]:
    """The written bundle: verified load, names the variant, carries the whole table and the thread
    sweep's choice, and predicts exactly as well as the record says."""
    m = read_manifest(bundle)
    assert m["variant"] == record["chosen"]
    assert m["optimization"] == json.loads(json.dumps(record))  # the whole record, table included
    assert [r["name"] for r in m["optimization"]["variants"]] == [r["name"] for r in record["variants"]]
    assert m["runtime"]["threads"] == record["recommended_threads"]
    sweep = {str(t): s for t, s in record["thread_sweep"].items()}  # int keys, or str once through JSON
    assert str(record["recommended_threads"]) == min(sweep, key=lambda t: sweep[t]["latency_ms_p50"])
    pred = trainfer.load(bundle)
    assert pred.variant == record["chosen"] and pred.threads == record["recommended_threads"]
    row = rows_by_name(record)[record["chosen"]]
    assert bundle_test_accuracy(bundle, run) == row["test_accuracy"]
    assert m["variant_metrics"]["test_accuracy"] == row["test_accuracy"]
    return m


# ---- runs (each trained once per module) -------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("optimize")


@pytest.fixture(scope="module")
def digits_run(root: Path):
    from trainfer.training import train

    return train(out=root / "run-digits", seed=0, quiet=True, **DIGITS)


@pytest.fixture(scope="module")
def cnn_run(root: Path):
    from trainfer.training import train

    return train(out=root / "run-cnn", seed=0, quiet=True, **CNN)


@pytest.fixture(scope="module")
def digits_all(root: Path, digits_run) -> tuple[dict[str, Any], Path]:
    """digits/mlp, every variant (the default list), budget 0.5 points."""
    out = root / "digits-all"
    with patched():
        record = trainfer.optimize(digits_run, out, max_accuracy_drop=0.5, **COMMON)
    return record, out


@pytest.fixture(scope="module")
def cnn_opt(root: Path, cnn_run) -> tuple[dict[str, Any], Path]:
    out = root / "cnn-opt"
    with patched():
        record = trainfer.optimize(cnn_run, out, max_accuracy_drop=0.5, variants=["int8-dynamic", "pruned-25"],
                                   threads=1, **COMMON)
    return record, out


@pytest.fixture(scope="module")
def cli_json(root: Path, digits_run) -> tuple[Result, Path]:
    """The end-to-end run at the default quick timing, through the CLI."""
    out = root / "cli-json"
    res = cli(["optimize", digits_run.path, "--out", out, "--variant", "int8-dynamic", "--json", *CLI_COMMON])
    return res.check(), out


@pytest.fixture(scope="module")
def cli_failing(root: Path, digits_run) -> tuple[Result, Path]:
    """Budget 0 points; int8-dynamic's quantizer raises and pruning by 50% raises: the others
    (int8-static-minmax, pruned-25) must still be built and measured."""
    out = root / "cli-failing"
    real_prune = optimize_module.prune_structured

    def prune_fails_at_half(model: Any, shape: Any, ratio: float) -> Any:
        if ratio == 0.5:
            raise ExportError("structured pruning failed: injected by the test")
        return real_prune(model, shape, ratio)

    with patched() as mp:
        mp.setitem(variants_module.QUANTIZERS, "int8-dynamic", raiser("injected quantizer failure"))
        mp.setattr(optimize_module, "prune_structured", prune_fails_at_half)
        res = cli(["optimize", digits_run.path, "--out", out, "--max-accuracy-drop", "0", "--variant", "int8-dynamic",
                   "--variant", "int8-static-minmax", "--variant", "pruned-25", "--variant", "pruned-50",
                   "--threads", "1", *CLI_COMMON])
    return res.check(), out


@pytest.fixture(scope="module")
def all_failing(root: Path, digits_run) -> tuple[dict[str, Any], Path]:
    """Every non-baseline variant fails: the lossless baseline is chosen."""
    out = root / "all-failing"
    with patched() as mp:
        for name in variants_module.QUANTIZERS:
            mp.setitem(variants_module.QUANTIZERS, name, raiser(f"{name} broke"))
        record = trainfer.optimize(digits_run, out, max_accuracy_drop=0.5,
                                   variants=["int8-dynamic", "int8-static-minmax"], threads=1, **COMMON)
    return record, out


@pytest.fixture(scope="module")
def int8_chosen(root: Path, digits_run) -> tuple[dict[str, Any], Path]:
    """An int8 variant written as the bundle (the selection is forced: on a tiny MLP int8 is not faster)."""
    out = root / "int8-chosen"
    with patched() as mp:
        mp.setattr(optimize_module, "choose", lambda rows, samples, max_drop: ("int8-dynamic", "forced by the test"))
        record = trainfer.optimize(digits_run, out, max_accuracy_drop=100.0, variants=["int8-dynamic"], threads=1,
                                   **COMMON)
    return record, out


# ---- 1. digits/mlp with every variant ----------------------------------------------------------

def test_digits_table_has_every_variant_measured(digits_all) -> None:
    record, _ = digits_all
    check_rows(record, ALL_VARIANTS)
    assert record["metric"] == "accuracy" and record["drop_unit"] == "points"
    assert record["threads"] == default_threads() and record["batch_size"] == 1
    failed = {r["name"]: r["reason"] for r in record["variants"] if r["status"] in ("failed", "skipped")}
    assert not failed, f"variants failed on digits/mlp: {failed}"


def test_digits_chosen_variant_is_within_budget_on_test_and_fast(digits_all) -> None:
    record, _ = digits_all
    check_choice(record)
    chosen = rows_by_name(record)[record["chosen"]]
    # The acceptance figure: the drop on the test split (selection only saw the validation split, 269 rows:
    # one row is 0.37 points). NB: on a 3-epoch model optimize picks pruned-50 at val drop 0.37, test drop 1.86.
    assert chosen["test_drop"] <= record["max_accuracy_drop"] + 1e-9, (record["chosen"], chosen["test_drop"])


def test_pruned_variants_report_fewer_params_and_flops(digits_all) -> None:
    rows = rows_by_name(digits_all[0])
    base, p25, p50 = rows[BASELINE], rows["pruned-25"], rows["pruned-50"]
    assert base["flops"] > 0 and p25["flops"] > 0 and p50["flops"] > 0
    assert base["params"] > p25["params"] > p50["params"] > 0
    assert base["flops"] > p25["flops"] > p50["flops"]
    for name, r in rows.items():  # quantized variants count the fp32 network they come from
        source = rows["pruned-25" if name.startswith("pruned-25") else "pruned-50" if name.startswith("pruned-50")
                      else BASELINE]
        assert (r["params"], r["flops"]) == (source["params"], source["flops"]), name
        assert (r["flops_note"] is not None) == ("int8" in name), name


def test_digits_bundle_manifest_and_verification(digits_all, digits_run, tmp_path: Path) -> None:
    record, bundle = digits_all
    m = check_bundle(record, bundle, digits_run)
    row = rows_by_name(record)[record["chosen"]]
    assert m["parity"] == row["parity"]
    X_test, _ = digits_run.load_split("test")
    if record["chosen"] == BASELINE:
        got = trainfer.load(bundle).predict_proba(X_test)
        assert float(np.abs(got.astype(np.float64) - digits_run.predict_proba(X_test)).max()) <= 1e-4
    if row["lossless"]:
        assert m["parity"]["ok"] is True and m["parity"]["max_abs_diff"] <= 1e-4
    else:
        assert "argmax_agreement" in m["parity"]
    # the hash check: one flipped byte in model.onnx and the bundle no longer loads
    copy = copy_bundle(bundle, tmp_path / "tampered")
    onnx_file = copy / "model.onnx"
    flip_byte(onnx_file, onnx_file.stat().st_size // 2)
    with pytest.raises(TrainferError, match=r"model\.onnx"):
        trainfer.load(copy)


# ---- 1. the cnn on synthetic images ------------------------------------------------------------

def test_cnn_table_includes_int8_dynamic_measured(cnn_opt, cnn_run) -> None:
    record, bundle = cnn_opt
    assert cnn_run.summary["test"]["accuracy"] > 0.6, "the cnn should have learned something"
    check_rows(record, [BASELINE, "int8-dynamic", "pruned-25"])
    rows = rows_by_name(record)
    assert rows["int8-dynamic"]["status"] in ("kept", "over_budget"), rows["int8-dynamic"]
    # structured pruning removes channels from the convolutions
    assert rows["pruned-25"]["params"] < rows[BASELINE]["params"]
    assert 0 < rows["pruned-25"]["flops"] < rows[BASELINE]["flops"]
    check_choice(record)
    assert rows[record["chosen"]]["test_drop"] <= record["max_accuracy_drop"] + 1e-9
    check_bundle(record, bundle, cnn_run)


# ---- 3. failures, the fallback, the budget -----------------------------------------------------

def test_failed_variants_are_reported_and_do_not_stop_the_others(cli_failing) -> None:
    res, bundle = cli_failing
    record = read_manifest(bundle)["optimization"]
    names = [BASELINE, "int8-dynamic", "int8-static-minmax", "pruned-25", "pruned-50"]
    check_rows(record, names)
    rows = rows_by_name(record)
    assert rows["int8-dynamic"]["status"] == "failed"
    assert "RuntimeError: injected quantizer failure" in rows["int8-dynamic"]["reason"]
    assert rows["pruned-50"]["status"] == "failed"
    assert "structured pruning failed: injected by the test" in rows["pruned-50"]["reason"]
    for name in ("int8-static-minmax", "pruned-25"):  # built and measured after the failures
        assert rows[name]["status"] in ("kept", "over_budget") and rows[name]["latency_ms_p50"] > 0, rows[name]
    # the table printed by the CLI: every variant with its status glyph, then each failure's reason
    out = res.stdout
    for name in names:
        assert name in out, f"{name} missing from the table:\n{out}"
    assert out.count("❌ failed") == 2 * 2, out  # in the table, and on the reason lines
    assert "✅ kept" in out
    assert "❌ failed int8-dynamic: RuntimeError: injected quantizer failure" in out
    assert "❌ failed pruned-50: structured pruning failed: injected by the test" in out
    assert f"chosen: {record['chosen']}" in out


def test_zero_budget_only_chooses_a_variant_that_loses_nothing(cli_failing) -> None:
    record = read_manifest(cli_failing[1])["optimization"]
    assert record["max_accuracy_drop"] == 0
    measured = [r for r in record["variants"] if r["status"] in ("kept", "over_budget") and r["name"] != BASELINE]
    assert len(measured) == 2
    chosen = rows_by_name(record)[record["chosen"]]
    assert chosen["val_drop"] <= 0
    for r in measured:
        assert r["status"] == ("kept" if qualifies(r, 0.0) else "over_budget"), r
    check_choice(record)


def test_when_every_other_variant_fails_the_lossless_baseline_is_chosen(all_failing, digits_run,
                                                                         tmp_path: Path) -> None:
    record, bundle = all_failing
    check_rows(record, [BASELINE, "int8-dynamic", "int8-static-minmax"])
    assert record["chosen"] == BASELINE
    assert {r["name"]: r["status"] for r in record["variants"]} == {
        BASELINE: "kept", "int8-dynamic": "failed", "int8-static-minmax": "failed"}
    assert "int8-static-minmax broke" in rows_by_name(record)["int8-static-minmax"]["reason"]
    m = check_bundle(record, bundle, digits_run)
    # parity of a lossless bundle with the torch model, from raw rows
    X_test, _ = digits_run.load_split("test")
    got = trainfer.load(bundle).predict_proba(X_test)
    want = digits_run.predict_proba(X_test)
    assert got.shape == want.shape
    assert float(np.abs(got.astype(np.float64) - want).max()) <= 1e-4
    assert m["parity"]["ok"] is True and m["parity"]["max_abs_diff"] <= 1e-4
    copy = copy_bundle(bundle, tmp_path / "tampered")
    flip_byte(copy / "model.onnx", 100)
    with pytest.raises(TrainferError, match=r"model\.onnx"):
        trainfer.load(copy)


def test_int8_bundle_reports_agreement_and_its_exact_accuracy(int8_chosen, digits_run) -> None:
    record, bundle = int8_chosen
    assert record["chosen"] == "int8-dynamic"
    m = check_bundle(record, bundle, digits_run)  # includes: bundle test accuracy == the record's, exactly
    assert m["parity"]["reference"] == "torch fp32"
    assert 0.0 < m["parity"]["argmax_agreement"] <= 1.0
    assert m["parity"]["samples"] == len(digits_run.load_split("test")[1])
    assert rows_by_name(record)["int8-dynamic"]["lossless"] is False


def test_static_percentile_calibration_handles_a_partial_last_batch(all_failing, digits_run, tmp_path: Path) -> None:
    """Bug: calibration is fed in batches of 32; onnxruntime's histogram (percentile) calibrator stacks the
    batches' activations, so a last batch of another size raises ValueError ("inhomogeneous shape").
    optimize calibrates on min(256, len(train)) rows: every run whose train split has fewer than 256 rows
    (not a multiple of 32) loses int8-static-percentile; the cnn on 300 synthetic images (210 train rows)
    reports it failed."""
    from trainfer.exporting import export_model
    from trainfer.exporting.quantize import quantize_static_int8

    X_std, X_graph = graph_inputs(digits_run.features, digits_run.load_split("train")[0])
    # the model part, as the quantizers get it (a bundle's model.onnx is the whole pipeline since issue 14)
    export_model(digits_run.model, digits_run.features, X_std[:64], X_graph[:64], tmp_path / "fp32.onnx")
    calib = np.ascontiguousarray(X_graph[:50])
    quantize_static_int8(tmp_path / "fp32.onnx", tmp_path / "q.onnx", tmp_path, calib, "percentile")
    assert (tmp_path / "q.onnx").stat().st_size > 0


# ---- 6. the CLI (and the end-to-end run at the default quick timing) ---------------------------

def test_cli_json_prints_the_record_last(cli_json, digits_run) -> None:
    res, bundle = cli_json
    record = res.json()
    assert record["chosen"] in (BASELINE, "int8-dynamic")
    assert record["bundle"] == str(bundle)
    check_rows(record, [BASELINE, "int8-dynamic"])
    check_bundle(record, bundle, digits_run)


def test_default_quick_timing_measures_enough(cli_json) -> None:
    record = cli_json[0].json()
    # interleaved blocks: every variant got as many calls as torch eager
    assert record["torch_eager"]["samples"] >= _timing.QUICK["min_count"] == 100
    assert record["torch_eager"]["latency_ms_p90"] is not None
    for r in record["variants"]:
        assert r["latency_ms_p90"] is not None and r["latency_ms_p50"] > 0
        assert r["speedup_vs_torch"] == pytest.approx(record["torch_eager"]["latency_ms_p50"] / r["latency_ms_p50"],
                                                      rel=1e-9)
    sweep = record["thread_sweep"]  # JSON: the thread counts are strings
    assert "1" in sweep and all(s["samples"] >= 50 for s in sweep.values())
    assert str(record["recommended_threads"]) == min(sweep, key=lambda t: sweep[t]["latency_ms_p50"])
    check_choice(record)


def test_cli_unknown_variant_is_a_user_error(digits_run, tmp_path: Path) -> None:
    out = tmp_path / "b"
    res = cli(["optimize", digits_run.path, "--out", out, "--variant", "foo"])
    line = assert_user_error(res, mentions=["foo"])
    assert "variant" in line
    assert not out.exists()


def test_cli_existing_out_without_force_is_a_user_error(digits_run, tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = cli(["optimize", digits_run.path, "--out", out, "--variant", "int8-dynamic"])
    assert_user_error(res, mentions=["already exists"])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


# ---- 5. choose() and quality_drop(), on synthetic figures --------------------------------------

def _samples(median_us: float, spread_us: float, n: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(median_us, spread_us, n) * 1e-6


def _row(name: str, val_drop: float | None = 0.0, status: str = "ok") -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "status": status}
    if status == "ok":
        row["val_drop"] = val_drop
    return row


def test_choose_a_clearly_faster_qualifying_variant_wins() -> None:
    rows = [_row(BASELINE), _row("int8-dynamic", 0.2), _row("pruned-25", -0.1)]
    samples = {BASELINE: _samples(100, 3, seed=1), "int8-dynamic": _samples(60, 3, seed=2),
               "pruned-25": _samples(80, 3, seed=3)}
    name, why = choose(rows, samples, 0.5)
    assert name == "int8-dynamic"
    assert "faster than onnx-fp32" in why


def test_choose_a_win_within_the_noise_keeps_the_baseline() -> None:
    rows = [_row(BASELINE), _row("pruned-25", 0.0)]
    samples = {BASELINE: _samples(100, 15, n=100, seed=1), "pruned-25": _samples(99, 15, n=100, seed=2)}
    assert np.median(samples["pruned-25"]) < np.median(samples[BASELINE])  # faster, but only by noise
    name, why = choose(rows, samples, 0.5)
    assert name == BASELINE
    assert "not faster than onnx-fp32 beyond noise" in why and "pruned-25" in why


def test_choose_ignores_an_over_budget_fastest_variant() -> None:
    # 0.5 points computed from accuracies carries float error (0.50000000000000044): it still meets a 0.5 budget
    at_budget = quality_drop(0.9, 0.895, "classification")
    assert at_budget != 0.5 and at_budget == pytest.approx(0.5)
    rows = [_row(BASELINE), _row("int8-dynamic", 3.0), _row("pruned-25", at_budget)]
    samples = {BASELINE: _samples(100, 3, seed=1), "int8-dynamic": _samples(40, 3, seed=2),
               "pruned-25": _samples(70, 3, seed=3)}
    assert choose(rows, samples, 0.5)[0] == "pruned-25"  # exactly at the budget qualifies
    assert choose(rows, samples, 0.49)[0] == BASELINE
    assert choose(rows, samples, 5.0)[0] == "int8-dynamic"


def test_choose_with_zero_budget_takes_only_lossless_or_better() -> None:
    rows = [_row(BASELINE), _row("int8-dynamic", 0.37), _row("pruned-25", -0.37)]
    samples = {BASELINE: _samples(100, 3, seed=1), "int8-dynamic": _samples(50, 3, seed=2),
               "pruned-25": _samples(80, 3, seed=3)}
    assert choose(rows, samples, 0.0)[0] == "pruned-25"
    rows[2]["val_drop"] = 0.37
    assert choose(rows, samples, 0.0)[0] == BASELINE


def test_choose_ignores_failed_and_skipped_rows() -> None:
    rows = [_row(BASELINE), _row("int8-dynamic", status="failed"), _row("pruned-25", status="skipped"),
            _row("pruned-50", 0.1)]
    samples = {BASELINE: _samples(100, 3, seed=1), "int8-dynamic": _samples(10, 1, seed=2),
               "pruned-25": _samples(10, 1, seed=3), "pruned-50": _samples(90, 3, seed=4)}
    assert choose(rows, samples, 0.5)[0] == "pruned-50"


def test_choose_falls_back_to_the_baseline_when_nothing_else_qualifies() -> None:
    rows = [_row(BASELINE), _row("int8-dynamic", 2.0), _row("pruned-50", 4.0), _row("pruned-25", status="failed")]
    samples = {BASELINE: _samples(100, 3, seed=1), "int8-dynamic": _samples(50, 3, seed=2),
               "pruned-50": _samples(40, 3, seed=3)}
    assert choose(rows, samples, 0.5)[0] == BASELINE
    # not even the baseline was measured: still the baseline, and the reason says so
    name, why = choose(rows, {"int8-dynamic": samples["int8-dynamic"]}, 5.0)
    assert name == BASELINE and "no variant qualifies" in why


def test_drop_upper_bound_counts_paired_disagreements() -> None:
    ref = np.array([True] * 90 + [False] * 10)
    # the same predictions on 100 rows: no change seen, but 100 rows cannot rule out one in ~60 (Agresti-Min)
    assert drop_upper_bound(ref, ref.copy()) == pytest.approx(100 * 1.645 / 102)
    one_worse = ref.copy()
    one_worse[0] = False
    # one sample of 100 lost: observed drop 1 point; cells b = 1.5, c = 0.5 of n + 2 = 102
    assert drop_upper_bound(ref, one_worse) == pytest.approx(
        100 * (1 / 102 + 1.645 * np.sqrt((2 / 102 - (1 / 102) ** 2) / 102)))
    swapped = ref.copy()
    swapped[0], swapped[95] = False, True  # one lost, one gained: drop 0, but the noise is real
    assert drop_upper_bound(ref, swapped) == pytest.approx(100 * 1.645 * np.sqrt(3 / 102) / np.sqrt(102))
    assert drop_upper_bound(ref, swapped) > drop_upper_bound(ref, ref.copy())
    assert drop_upper_bound(np.array([], bool), np.array([], bool)) == float("inf")
    rows = [_row(BASELINE), {**_row("int8"), "val_drop": 0.0, "val_drop_bound": 0.9}]
    assert not qualifies(rows[1], 0.5) and qualifies(rows[1], 1.0)


def test_quality_drop_units() -> None:
    # classification: percentage points of accuracy; a better variant has a negative drop
    assert quality_drop(0.95, 0.94, "classification") == pytest.approx(1.0)
    assert quality_drop(0.90, 0.93, "classification") == pytest.approx(-3.0)
    assert quality_drop(0.9, 0.9, "classification") == 0.0
    # regression: % increase of rmse
    assert quality_drop(0.20, 0.21, "regression") == pytest.approx(5.0)
    assert quality_drop(2.0, 1.5, "regression") == pytest.approx(-25.0)
    assert quality_drop(0.0, 0.1, "regression") == 0.0
