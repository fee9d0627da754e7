"""End-to-end training through the CLI: built-in data, CSV/Parquet/NPZ files, image folders."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_MLP, read_metrics, read_summary, run_cli

pytestmark = pytest.mark.slow


def test_digits_mlp_reaches_97_percent_quickly(tmp_path: Path) -> None:
    run = tmp_path / "digits"
    t0 = time.perf_counter()
    run_cli("train", "--data", "digits", "--model", "mlp", "--epochs", "30", "--out", run, "--seed", "0").check()
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, f"digits took {elapsed:.1f} s"
    summary = read_summary(run)
    assert summary["task"] == "classification"
    assert summary["test"]["accuracy"] >= 0.97, summary["test"]
    # The run dir contract: resolved recipe, features, one metrics line per epoch, best weights.
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["data"]["source"] == "digits" and recipe["train"]["epochs"] == 30 and recipe["seed"] == 0
    assert (run / "features.json").is_file() and (run / "model.safetensors").is_file()
    epochs = [r["epoch"] for r in read_metrics(run)]
    assert epochs == list(range(1, summary["epochs_run"] + 1))
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 30
    assert summary["samples"]["test"] > 0 and summary["params"] > 0


def test_breast_cancer_mlp_reaches_95_percent(tmp_path: Path) -> None:
    run = tmp_path / "bc"
    result = run_cli("train", "--data", "breast_cancer", "--model", "mlp", "--epochs", "30", "--out", run,
                     "--seed", "0", "--json").check()
    summary = read_summary(run)
    assert summary["test"]["accuracy"] >= 0.95, summary["test"]
    # --json prints the summary as the last stdout line
    printed = result.json()
    assert printed["run"] == str(run)
    assert printed["test"] == summary["test"]


def test_csv_with_strings_and_missing_values_trains_and_evaluates(tmp_path: Path, mixed_csv: Path) -> None:
    run = tmp_path / "animals"
    run_cli("train", "--data", mixed_csv, "--target", "label", "--model", "mlp", "--epochs", "8",
            "--out", run, "--seed", "0", *TINY_MLP).check()
    summary = read_summary(run)
    assert summary["test"]["accuracy"] > 0.6, summary["test"]  # chance is about 0.4

    result = run_cli("evaluate", run, "--json").check()
    record = result.json()
    assert record["split"] == "test"
    assert record["samples"] == summary["samples"]["test"]
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    # Evaluating the recorded test split reproduces the number training reported.
    assert record["metrics"]["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)


def test_image_folder_cnn_learns(tmp_path: Path, image_folder: Path) -> None:
    run = tmp_path / "shapes"
    run_cli("train", "--data", image_folder, "--model", "cnn", "--epochs", "6", "--out", run, "--seed", "0",
            "--set", "data.image_size=16", "--set", "model.channels=[8,16]", "--set", "train.batch_size=16").check()
    summary = read_summary(run)
    assert summary["samples"]["test"] >= 6
    assert summary["test"]["accuracy"] >= 0.8, summary["test"]  # chance is 1/3

    import trainfer

    loaded = trainfer.Run.load(run)
    assert loaded.features.kind == "image"
    assert loaded.features.input_shape == (3, 16, 16)
    assert list(loaded.features.target.labels) == ["blue", "green", "red"]
    # Raw image paths in, folder names out.
    files = sorted(image_folder.glob("*/*.png"))
    predicted = loaded.predict(files)
    truth = np.asarray([f.parent.name for f in files], dtype=object)
    assert set(predicted.tolist()) <= {"blue", "green", "red"}
    assert np.mean(predicted == truth) >= 0.8
