"""DP-SGD training (privacy: section, --dp-epsilon): the guarantee, recomputed by Opacus; accuracy against the
non-private run; exact resume after a kill; export; and bad input as one `error:` line with nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    CLI_TIMEOUT_S,
    SRC,
    Result,
    assert_user_error,
    finish_cli,
    read_metrics,
    read_summary,
    run_cli,
    run_cli_many,
    run_main,
    start_cli,
)
from safetensors.numpy import load_file
from torch import nn

import trainfer

# Acceptance 1: (data, --dp-epsilon, epochs, most points the DP run may lose against the non-private one)
CASES = {"breast_cancer": (3.0, 15, 5.0), "digits": (8.0, 15, 8.0)}
SMALL = ["--seed", "0", "--set", "model.hidden=[64]", "--set", "train.patience=null", "--json"]


def recomputed_epsilon(privacy: dict) -> float:
    """ε from the recorded noise multiplier, sampling rate and steps, by Opacus's own accountant."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=privacy["accountant"])
    acc.history = [(privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"])]
    return float(acc.get_epsilon(delta=privacy["delta"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], tuple[Path, Result]]:
    """Each dataset trained with the same recipe without and with DP, all four processes at once."""
    tmp = tmp_path_factory.mktemp("dp")
    keys = [(data, dp) for data in CASES for dp in (False, True)]
    commands = [["train", "--data", data, "--epochs", CASES[data][1], *SMALL, "--out", tmp / f"{data}-{dp}",
                 # noise_seed: the figures stay reproducible (the default draws a secret seed per run)
                 *(["--dp-epsilon", CASES[data][0], "--set", "privacy.noise_seed=0"] if dp else [])]
                for data, dp in keys]
    results = run_cli_many(commands)
    return {key: (tmp / f"{key[0]}-{key[1]}", result.check()) for key, result in zip(keys, results, strict=True)}


@pytest.mark.parametrize("data", list(CASES))
def test_dp_run_spends_at_most_its_epsilon_and_stays_near_the_private_free_accuracy(runs, data: str) -> None:
    target, epochs, max_drop = CASES[data]
    run, result = runs[(data, True)]
    summary = result.json()
    p = summary["privacy"]
    assert p == read_summary(run)["privacy"]
    assert p["target_epsilon"] == target and p["accountant"] == "prv" and p["max_grad_norm"] == 1.0
    assert p["noise_seed"] == "recipe"  # set on purpose: the summary says the noise is not secret
    assert p["delta"] == pytest.approx(1 / (10 * summary["samples"]["train"]))
    assert p["steps"] == epochs * round(1 / p["sample_rate"])
    # the guarantee, recomputed from what the run recorded: not just the run's own word
    eps = recomputed_epsilon(p)
    assert eps <= target and eps == pytest.approx(p["epsilon"], rel=1e-6), (eps, p)
    assert eps > 0.8 * target, f"ε {eps} is far below the target {target}: the noise search overshot"
    # ε per epoch in metrics.jsonl, growing to the final one
    spent = [r["epsilon"] for r in read_metrics(run)]
    assert len(spent) == epochs and spent == sorted(spent) and spent[-1] == pytest.approx(p["epsilon"])
    # BatchNorm became GroupNorm, and the run said so
    assert "GroupNorm" in p["model_changes"] and "64 units: 8 groups" in p["model_changes"]
    plain = runs[(data, False)][1].json()
    assert "privacy" not in plain and "epsilon" not in read_metrics(runs[(data, False)][0])[0]
    drop = 100 * (plain["test"]["accuracy"] - summary["test"]["accuracy"])
    print(f"{data}: non-private {plain['test']['accuracy']:.4f}, ε={p['epsilon']:.3f} {summary['test']['accuracy']:.4f}"
          f" (drop {drop:.1f} points, noise {p['noise_multiplier']:.3f})")
    assert drop <= max_drop, f"DP costs {drop:.1f} points on {data} (at most {max_drop})"


def test_terminal_summary_of_a_dp_run_names_the_guarantee(runs, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = runs[("breast_cancer", True)]
    # `--resume` on a finished run prints its summary without training again
    shown = run_main(["train", "--out", run, "--resume"], capsys).check().stdout
    p = read_summary(run)["privacy"]
    assert "GroupNorm" in shown and f"(ε {p['epsilon']:.3g}, δ {p['delta']:.2g})-DP" in shown, shown
    assert f"noise multiplier {p['noise_multiplier']:.4g}" in shown and "prv accountant" in shown


def test_a_dp_run_exports_with_its_groupnorm_and_the_manifest_carries_the_guarantee(
        runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = runs[("digits", True)]
    loaded = trainfer.Run.load(run)  # rebuilt with GroupNorm: its weights load
    assert any(isinstance(m, nn.GroupNorm) for m in loaded.model.modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in loaded.model.modules())
    exported = run_main(["export", run, "--out", tmp_path / "bundle", "--json"], capsys).check().json()
    assert exported["parity"]["ok"] and exported["parity"]["max_abs_diff"] < 1e-4
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["privacy"] == read_summary(run)["privacy"]
    X, _ = loaded.load_split("test")
    assert (trainfer.load(tmp_path / "bundle").predict(X) == loaded.predict(X)).mean() > 0.99


def test_the_ledger_has_a_privacy_row_with_the_recorded_figures(runs) -> None:
    from trainfer.reporting.ledger import rows

    p = read_summary(runs[("digits", True)][0])["privacy"]
    label, train_cell, infer_cell = rows({"training": {"privacy": p}}, "bundle:onnx-fp32")[-1]
    assert label == "Privacy budget"
    shown = "".join(part if isinstance(part, str) else part[1](p[part[0].split(".")[-1]]) for part in train_cell)
    assert f"ε {p['epsilon']:.3f}" in shown and f"noise multiplier {p['noise_multiplier']:.4f}" in shown, shown
    assert "post-processing" in "".join(infer_cell)
    label, train_cell, _ = rows({"training": {"privacy": None}}, "bundle:onnx-fp32")[-1]
    assert label == "Privacy budget" and "not trained with DP" in train_cell[0]


# -- Acceptance 2: a DP run killed mid-training and resumed ends bitwise equal, with the same ε -----------------
RESUMABLE = ["train", "--data", "breast_cancer", "--epochs", "6", "--seed", "5", "--set", "model.hidden=[32]",
             "--set", "train.batch_size=32", "--set", "train.patience=null", "--dp-epsilon", "4", "--json"]


def _state_epoch(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoints" / "state.json").read_text())["epoch"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_a_killed_dp_run_resumes_to_identical_weights_and_epsilon(tmp_path: Path) -> None:
    # The default noise seed is a secret drawn per run: the reference is given, as privacy.noise_seed, the secret
    # the killed run's checkpoint holds. Equal weights then show the resume continued with that secret's noise
    # and batches from exactly where the kill left them.
    run, reference = tmp_path / "killed", tmp_path / "uninterrupted"
    proc = start_cli([*RESUMABLE, "--out", run])
    deadline = time.monotonic() + CLI_TIMEOUT_S
    ref_proc = None
    try:
        while _state_epoch(run) < 2:
            assert proc.poll() is None, finish_cli(proc, RESUMABLE).stderr
            assert time.monotonic() < deadline, "no checkpoint of epoch 2"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        killed_at = _state_epoch(run)
        assert 2 <= killed_at < 6 and not (run / "summary.json").exists(), killed_at
        state = json.loads((run / "checkpoints" / "state.json").read_text())
        # what the resume needs is in the checkpoint: the accountant's history, the secret and the RNG states
        assert state["privacy"]["history"][0][2] == killed_at * round(1 / state["privacy"]["sample_rate"])
        secret = state["privacy"]["noise_seed"]
        assert isinstance(secret, int) and 0 <= secret < 2**64
        ckpt = load_file(str(run / "checkpoints" / state["last_file"]))
        assert {"rng.dp_noise", "rng.dp_sampler", "rng.torch"} <= set(ckpt)
        ref_cmd = [*RESUMABLE, "--set", f"privacy.noise_seed={secret}", "--out", reference]
        ref_proc = start_cli(ref_cmd)
        resumed = run_cli("train", "--out", run, "--resume", "--json").check()
    finally:
        if proc.poll() is None:
            proc.kill()
        ref = finish_cli(ref_proc, ref_cmd).check() if ref_proc is not None else None

    ours, theirs = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert sorted(ours) == sorted(theirs) and any("weight" in k for k in ours)
    for name in ours:
        assert (ours[name] == theirs[name]).all() and ours[name].dtype == theirs[name].dtype, name
    mine, other = resumed.json()["privacy"], ref.json()["privacy"]
    assert mine.pop("noise_seed") == "secret" and other.pop("noise_seed") == "recipe"
    assert mine == other  # same ε, δ, noise, steps
    assert [r["epsilon"] for r in read_metrics(run)] == [r["epsilon"] for r in read_metrics(reference)]
    assert [r["train_loss"] for r in read_metrics(run)] == [r["train_loss"] for r in read_metrics(reference)]
    # the secret is still the checkpoint's after the resume, and nowhere else in the run
    assert json.loads((run / "checkpoints" / "state.json").read_text())["privacy"]["noise_seed"] == secret
    assert_secret_absent(run, secret)


def secret_forms(secret: int) -> list[bytes]:
    """How a 64-bit seed could be written: decimal, hex (both cases, with and without 0x), 8 raw bytes."""
    forms = [str(secret).encode(), f"{secret:x}".encode(), f"{secret:X}".encode(),
             secret.to_bytes(8, "little"), secret.to_bytes(8, "big")]
    return forms


def assert_secret_absent(root: Path, secret: int) -> None:
    """No file under ``root`` outside checkpoints/ holds ``secret`` in any of its forms."""
    files = [f for f in root.rglob("*") if f.is_file() and "checkpoints" not in f.relative_to(root).parts]
    assert files
    for f in files:
        data = f.read_bytes()
        for form in secret_forms(secret):
            assert form not in data, f"{f} holds the secret noise seed ({form!r})"


def test_two_default_dp_runs_of_one_recipe_draw_different_noise_and_keep_the_secret_in_the_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--data", "iris", "--epochs", "2", "--seed", "0", "--set", "model.hidden=[8]",
            "--dp-epsilon", "8", "--json"]
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert run_main([*args, "--out", run], capsys).check().json()["privacy"]["noise_seed"] == "secret"
    secrets_ = [json.loads((r / "checkpoints" / "state.json").read_text())["privacy"]["noise_seed"] for r in runs]
    assert secrets_[0] != secrets_[1]
    # the one file that holds the secret is its owner's alone (it was written 0644, as every other output is)
    assert all((r / "checkpoints" / "state.json").stat().st_mode & 0o777 == 0o600 for r in runs)
    # same recipe, same seed, same initial weights: only the noise and batches differ, and so do the weights
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert any(not (a[k] == b[k]).all() for k in a)
    assert (runs[0] / "recipe.yaml").read_text() == (runs[1] / "recipe.yaml").read_text()
    # nothing a run shares (summary, recipe, metrics, the bundle and its manifest) holds its secret
    run_main(["export", runs[0], "--out", tmp_path / "bundle"], capsys).check()
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    assert_secret_absent(runs[0], secrets_[0])
    assert_secret_absent(tmp_path / "bundle", secrets_[0])


@pytest.mark.parametrize(("value", "mentions"), [("-1", ["privacy.noise_seed"]), ("1.5", ["privacy.noise_seed"]),
                                                 ("abc", ["privacy.noise_seed"]),
                                                 (str(2**64), ["privacy.noise_seed"])])
def test_a_bad_noise_seed_is_one_error(value: str, mentions: list[str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    result = run_main(["train", "--data", "iris", "--epochs", "1", "--dp-epsilon", "8", "--out", out,
                       "--set", f"privacy.noise_seed={value}"], capsys)
    assert_user_error(result, out, mentions=mentions)


# -- bad input: one error line, exit 2, nothing written ---------------------------------------------------------
@pytest.mark.parametrize(("extra", "mentions"), [
    (["--dp-epsilon", "0"], ["privacy.epsilon", "above 0"]),
    (["--dp-epsilon", "-3"], ["privacy.epsilon"]),
    (["--dp-epsilon", "nan"], ["privacy.epsilon", "finite"]),
    (["--dp-epsilon", "3", "--set", "privacy.noise_multiplier=1.0"], ["exactly one"]),
    (["--set", "privacy.noise_multiplier=1.0", "--set", "privacy.delta=1.5"], ["privacy.delta"]),
    (["--dp-epsilon", "3", "--set", "privacy.accountant=moments"], ["privacy.accountant"]),
    (["--dp-epsilon", "3", "--set", "privacy.max_grad_norm=0"], ["privacy.max_grad_norm"]),
    (["--dp-epsilon", "3", "--set", f"model.name={__name__}:build_unfixable"], ["DP-SGD cannot train", "buffers"]),
])
def test_bad_privacy_settings_are_one_error_and_write_nothing(extra: list[str], mentions: list[str], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    result = run_main(["train", "--data", "iris", "--epochs", "1", "--out", out, *extra], capsys)
    assert_user_error(result, out, mentions=mentions)


def test_dp_epsilon_must_be_a_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(["train", "--data", "iris", "--out", tmp_path / "run", "--dp-epsilon", "abc"], capsys)
    assert_user_error(result, tmp_path / "run", mentions=["--dp-epsilon"])


def test_an_unreachable_epsilon_names_the_smallest_reachable_one_and_that_one_trains(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", "iris", "--epochs", "2", "--set", "model.hidden=[8]", "--json"]
    line = assert_user_error(run_main([*args, "--out", out, "--dp-epsilon", "0.0005"], capsys), out,
                             mentions=["privacy.epsilon=0.0005", "smallest reachable"])
    floor = float(line.rsplit("smallest reachable ε here is ", 1)[1].split()[0])
    assert 0.0005 < floor < 1, line
    # the hint's suggestion is reachable, and spent within itself
    done = run_main([*args, "--out", out, "--dp-epsilon", str(floor * 1.05)], capsys).check().json()
    assert done["privacy"]["epsilon"] <= floor * 1.05 and recomputed_epsilon(done["privacy"]) <= floor * 1.05


def test_without_opacus_a_dp_recipe_is_refused_before_any_work(tmp_path: Path) -> None:
    from test_cli_contract import BLOCKED

    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", BLOCKED, "opacus", "train", "--data", "iris", "--out", str(out),
                           "--dp-epsilon", "3"], capture_output=True, text=True, env=env, timeout=120)
    res = Result(["train"], proc.returncode, proc.stdout, proc.stderr)
    assert_user_error(res, out, mentions=["opacus"])
    assert "pip install 'trainfer[privacy]'" in proc.stderr


class _RunningScale(nn.Module):
    """A trainable layer that keeps a running statistic across examples in a buffer: not DP, and not fixable."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.register_buffer("running", torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.running.mul_(0.9).add_(0.1 * x.detach().mean(0))
        return (x - self.running) * self.scale


def build_unfixable(input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    return nn.Sequential(_RunningScale(input_shape[0]), nn.Linear(input_shape[0], n_outputs))
