"""The Python API: train / Run.load / evaluate, file sources, regression, incomplete runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_mixed_frame, read_metrics

import trainfer
from trainfer.errors import RunError, TrainferError
from trainfer.training import train

TINY = ["model.hidden=[32]"]


def test_csv_run_dir_and_predictions(csv_run: trainfer.Run, mixed_csv: Path) -> None:
    run = csv_run
    for name in ("recipe.yaml", "features.json", "metrics.jsonl", "split.json", "summary.json", "model.safetensors"):
        assert (run.path / name).is_file(), name
    assert not list(run.path.rglob("*.tmp")), "temporary files left behind"
    assert run.task == "classification"
    assert run.features.target.labels == ["bird", "cat", "dog"]
    assert "colour" in run.features.inputs.column_names and "label" not in run.features.inputs.column_names
    assert [r["epoch"] for r in read_metrics(run.path)] == list(range(1, run.summary["epochs_run"] + 1))

    raw = pd.read_csv(mixed_csv)
    rows = raw.drop(columns=["label"]).head(10)
    labels = run.predict(rows)
    assert labels.shape == (10,) and set(labels.tolist()) <= {"bird", "cat", "dog"}
    proba = run.predict_proba(rows)
    assert proba.shape == (10, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(np.asarray(run.features.target.labels, dtype=object)[proba.argmax(1)], labels)
    # raw rows as dicts, with missing values and an unseen category, are fine too
    one = run.predict([{"x1": None, "colour": "purple", "x2": float("nan")}])
    assert one.shape == (1,)


def test_loaded_run_matches_trained_run(csv_run: trainfer.Run) -> None:
    again = trainfer.Run.load(csv_run.path)
    assert again.recipe == csv_run.recipe
    assert again.summary == csv_run.summary
    X = csv_run.load_split("test")[0]
    np.testing.assert_array_equal(again.outputs(X), csv_run.outputs(X))
    assert "test" in repr(again)


def test_evaluate_on_test_split_and_on_new_data(csv_run: trainfer.Run, mixed_csv: Path) -> None:
    on_test = trainfer.evaluate(csv_run)
    assert on_test["split"] == "test" and on_test["samples"] == csv_run.summary["samples"]["test"]
    assert on_test["metrics"]["accuracy"] == pytest.approx(csv_run.summary["test"]["accuracy"], abs=1e-9)

    on_all = trainfer.evaluate(csv_run, str(mixed_csv))
    assert on_all["split"] == "all"
    assert on_all["samples"] == sum(csv_run.summary["samples"].values())
    assert set(on_all["metrics"]) >= {"accuracy", "loss", "f1_macro"}


def test_evaluate_refuses_changed_data(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    make_mixed_frame(n=120, seed=2).to_csv(csv, index=False)
    run = train(data=str(csv), target="label", model="mlp", epochs=1, out=tmp_path / "run",
                overrides=TINY)
    make_mixed_frame(n=120, seed=3).to_csv(csv, index=False)
    with pytest.raises(TrainferError, match="changed"):
        trainfer.evaluate(run)


def test_parquet_and_npz_train(tmp_path: Path) -> None:
    parquet = tmp_path / "table.parquet"
    make_mixed_frame(n=200, seed=1).to_parquet(parquet, index=False)
    run = train(data=str(parquet), target="label", model="mlp", epochs=3, out=tmp_path / "pq",
                overrides=TINY)
    assert run.summary["epochs_run"] == 3 and 0.0 <= run.summary["test"]["accuracy"] <= 1.0
    assert run.features.target.labels == ["bird", "cat", "dog"]

    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, X=X, y=y)
    run = train(data=str(npz), model="mlp", epochs=3, out=tmp_path / "npz", overrides=TINY)
    assert run.task == "classification" and run.features.input_shape == (6,)
    assert sum(run.summary["samples"].values()) == 240
    assert run.predict(X[:5]).shape == (5,)


def test_regression_trains_and_reports_rmse_and_r2(tmp_path: Path) -> None:
    run = train(data="synthetic-regression", model="mlp", epochs=6, out=tmp_path / "reg", seed=0,
                overrides=[*TINY, "data.options.n_samples=600"])
    s = run.summary
    assert s["task"] == run.task == "regression"
    assert s["monitor"] == "val_rmse"
    for split in ("train", "val", "test"):
        assert {"rmse", "r2", "mae", "loss"} <= set(s[split])
        assert np.isfinite(s[split]["rmse"]) and s[split]["rmse"] > 0
    assert s["test"]["r2"] > 0.5, s["test"]  # a few epochs already beat predicting the mean
    first = read_metrics(run.path)[0]
    assert "val_rmse" in first and "train_accuracy" not in first
    pred = run.predict(run.load_split("test")[0])
    assert pred.dtype == np.float64 and pred.shape == (s["samples"]["test"],)
    with pytest.raises(RunError, match="classification"):
        run.predict_proba(run.load_split("test")[0])
    result = trainfer.evaluate(run)
    assert result["metrics"]["rmse"] == pytest.approx(s["test"]["rmse"], rel=1e-6)


def test_run_load_of_incomplete_or_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(TrainferError, match="not found"):
        trainfer.Run.load(tmp_path / "nothing-here")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "recipe.yaml").write_text(trainfer.Recipe().to_yaml())
    with pytest.raises(RunError) as info:
        trainfer.Run.load(partial)
    assert "incomplete" in info.value.message and "--resume" in (info.value.hint or "")


def test_run_load_of_damaged_dir(tmp_path: Path, csv_run: trainfer.Run) -> None:
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(csv_run.path, damaged)
    (damaged / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(TrainferError):
        trainfer.Run.load(damaged)


def test_seed_makes_training_reproducible(tmp_path: Path) -> None:
    kwargs = dict(data="iris", model="mlp", epochs=3, seed=5, overrides=["model.hidden=[16]"])
    a = train(out=tmp_path / "a", **kwargs)
    b = train(out=tmp_path / "b", **kwargs)
    assert a.summary["test"] == b.summary["test"]
    assert json.loads((a.path / "split.json").read_text()) == json.loads((b.path / "split.json").read_text())
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and bool((va == vb).all()), ka


def test_train_threads_setting_is_applied(tmp_path: Path) -> None:
    # train.threads is documented as "torch intra-op threads"; the run must actually use that many.
    import torch

    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    try:
        run = train(data="iris", model="mlp", epochs=1, out=tmp_path / "t",
                    overrides=["model.hidden=[8]", f"train.threads={want}"])
    finally:
        torch.set_num_threads(before)
    assert run.recipe.train.threads == want
    assert run.summary["threads"] == want


@pytest.mark.parametrize(("name", "package"), [("train", "training"), ("export", "exporting"),
                                               ("optimize", "exporting.optimize")])
def test_top_level_train_is_the_function(name: str, package: str) -> None:
    # The documented API is `trainfer.train(...) -> Run` and `trainfer.export(run, out)`. Importing the
    # package that implements it (which the lazy attribute itself does) must not replace the function with
    # a module: calling it twice, or after `import trainfer.training`, has to keep working.
    import importlib

    importlib.import_module(f"trainfer.{package}")
    value = getattr(trainfer, name)
    assert callable(value), f"trainfer.{name} is {value!r}, not the {name} function"
    assert callable(trainfer.evaluate) and isinstance(trainfer.Run, type)
