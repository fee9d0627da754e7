"""DP-SGD and the audit as a new user meets them: the defects a review found, each pinned by a test.

One tiny DP run on iris (2 epochs, an 8-unit MLP: seconds) is shared by the module.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import assert_user_error, run_main

import trainfer


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("newuser") / "iris-dp"
    trainfer.train(data="iris", epochs=2, seed=0, out=out, overrides=["model.hidden=[8]", "privacy.epsilon=8"])
    return out


def test_an_epsilon_no_noise_reaches_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --dp-epsilon 1e9 sent Opacus's noise search bisecting towards 0 noise, where one PRV evaluation takes
    # minutes: the command hung (over 5 minutes, nothing printed) instead of saying what ε is possible.
    out = tmp_path / "run"
    t0 = time.perf_counter()
    result = run_main(["train", "--data", "iris", "--epochs", "2", "--out", out, "--dp-epsilon", "1e9"], capsys)
    line = assert_user_error(result, out, mentions=["privacy.epsilon=1e+09", "least noise"])
    assert time.perf_counter() - t0 < 60
    # the largest ε it names is a real one: asking just below it trains (checked in the DP suite for the floor)
    ceiling = float(line.rsplit("ε ", 1)[1].split()[0])
    assert 10 < ceiling < 1e3, line


def test_resuming_a_dp_run_from_a_recipe_without_privacy_is_refused(dp_run: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # The recipe file a user trained from, minus its privacy section: a TypeError traceback before the fix.
    recorded = yaml.safe_load((dp_run / "recipe.yaml").read_text())
    recorded.pop("privacy")
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(recorded))
    before = sorted(p.name for p in dp_run.iterdir())
    result = run_main(["train", plain, "--out", dp_run, "--resume"], capsys)
    assert_user_error(result, mentions=["cannot resume", "privacy"])
    assert sorted(p.name for p in dp_run.iterdir()) == before


def test_optimize_of_a_dp_run_neither_fine_tunes_nor_calibrates_on_the_private_rows(
        dp_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pruned variants fine-tuned on the train rows again (more ε than the manifest claims, with the same noise
    # seed), and static int8 calibration read 256 train rows outside DP-SGD. A spy records what calibrates.
    from trainfer.exporting import variants

    seen: list[np.ndarray] = []
    original = variants.quantize_static_int8

    def spy(src, dst, work, calibration, method):  # the quantizer's own signature
        seen.append(np.array(calibration))
        return original(src, dst, work, calibration, method)

    monkeypatch.setattr(variants, "quantize_static_int8", spy)
    record = trainfer.optimize(dp_run, tmp_path / "bundle",
                               variants=["onnx-fp32", "pruned-25", "int8-static-minmax"], max_accuracy_drop=100)
    rows = {v["name"]: v for v in record["variants"]}
    assert rows["pruned-25"]["status"] == "skipped" and "ε" in rows["pruned-25"]["reason"]
    assert record["chosen"] != "pruned-25"
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["privacy"]["epsilon"] == pytest.approx(8, abs=0.05)
    # every calibration row is a validation row, none a training row, as the graph takes them
    from trainfer.exporting import graph_inputs

    run = trainfer.Run.load(dp_run)
    train_x, val_x = (graph_inputs(run.features, run.load_split(s)[0])[1] for s in ("train", "val"))
    assert seen and all(len(c) for c in seen)
    rows_of = {s: {tuple(r) for r in x.reshape(len(x), -1).round(5)} for s, x in (("train", train_x), ("val", val_x))}
    for calib in seen:
        used = {tuple(r) for r in calib.reshape(len(calib), -1).round(5)}
        assert used <= rows_of["val"] and not used & (rows_of["train"] - rows_of["val"]), "calibrated on train rows"


# -- tune of a DP recipe: independent noise per trial, and the cost of choosing among trials is said -----------
TUNE_RECIPE = {"data": {"source": "iris"}, "seed": 0, "model": {"name": "mlp", "hidden": [8]},
               "train": {"epochs": 1, "patience": None}, "privacy": {"epsilon": 8},
               "tune": {"train.lr": {"log_uniform": [0.001, 0.01]}}}


def test_tuning_a_dp_recipe_says_that_choosing_among_trials_spends_n_epsilon(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "dp.yaml"
    recipe.write_text(yaml.safe_dump(TUNE_RECIPE))
    result = run_main(["tune", str(recipe), "--out", tmp_path / "study", "--trials", "2"], capsys).check()
    warnings_ = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "N·ε" in line]
    assert len(warnings_) == 1 and warnings_[0].startswith("warning: privacy:"), result.stderr
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    p = summary["privacy"]
    trials = [json.loads((tmp_path / "study" / r["run"] / "summary.json").read_text())["privacy"]
              for r in summary["trials"]]
    assert p["trials"] == len(trials) == 2 and "N·ε" in p["note"]
    assert p["trial_epsilon"] == max(t["epsilon"] for t in trials) <= 8
    assert p["study_epsilon_bound"] == pytest.approx(2 * p["trial_epsilon"])
    # each trial drew its own secret noise seed
    seeds = {json.loads((tmp_path / "study" / r["run"] / "checkpoints" / "state.json").read_text())
             ["privacy"]["noise_seed"] for r in summary["trials"]}
    assert len(seeds) == 2 and all(t["noise_seed"] == "secret" for t in trials)


def test_tuning_a_dp_recipe_with_a_fixed_noise_seed_is_refused(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "dp.yaml"
    recipe.write_text(yaml.safe_dump({**TUNE_RECIPE, "privacy": {"epsilon": 8, "noise_seed": 3}}))
    result = run_main(["tune", str(recipe), "--out", tmp_path / "study", "--trials", "2"], capsys)
    assert_user_error(result, tmp_path / "study", mentions=["privacy.noise_seed", "same DP noise"])


def test_help_says_what_auc_and_epsilon_mean(capsys: pytest.CaptureFixture[str]) -> None:
    audit = " ".join(run_main(["audit", "--help"], capsys).check().stdout.split())
    assert "AUC 0.5 means chance" in audit
    train = " ".join(run_main(["train", "--help"], capsys).check().stdout.split())
    assert "smaller ε is more private" in train
