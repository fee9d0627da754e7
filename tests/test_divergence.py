"""Divergence: non-finite losses or weights stop the run with the epoch and step named, keep the last good
checkpoint (resumable), and an export of non-finite weights says so."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, read_metrics, run_cli, run_main
from safetensors.torch import load_file, save_file
from torch import nn

import trainfer
from trainfer.errors import ExportError, RunError

TINY = ["model.hidden=[16]", "train.batch_size=32", "train.patience=null"]


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient: the step's loss is finite but its update makes the weights NaN."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class _Exploding(nn.Module):
    """A small MLP that goes wrong at its ``at``-th training forward call of this process.

    The count is a plain attribute, not a buffer: a resumed run builds a fresh model and does not explode,
    as a resumed run with a lower lr would not.
    """

    def __init__(self, n_in: int, n_out: int, at: int, how: str) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, n_out))
        self.at, self.how, self.calls = at, how, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                return out * float("inf") if self.how == "loss" else _NanGrad.apply(out)
        return out


def build_exploding(input_shape: tuple[int, ...], n_outputs: int, at: int, how: str) -> nn.Module:
    return _Exploding(input_shape[0], n_outputs, at, how)


def _state(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "state.json").read_text())


# iris: 105 train rows at batch 32 -> 4 steps an epoch; call 11 is epoch 3, step 3; call 12 its last step.
# A resumed run restarts the count at epoch 3 and ends at call 8: it does not explode again.
@pytest.mark.parametrize(("at", "how", "epoch", "step"), [(11, "loss", 3, 3), (12, "grad", 3, 4)])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, at: int, how: str,
                                                                     epoch: int, step: int) -> None:
    run = tmp_path / "run"
    model = [f"model.name={__name__}:build_exploding", f"model.options={{at: {at}, how: {how}}}"]
    with pytest.raises(RunError) as info:
        trainfer.train(data="iris", epochs=4, out=run, overrides=[*TINY[1:], *model])
    msg, hint = info.value.message, info.value.hint or ""
    assert f"epoch {epoch}" in msg and f"step {step} of 4" in msg, msg
    assert "train.lr" in hint and "train.grad_clip" in hint and "--resume" in hint, hint
    # The bad epoch left no trace: no checkpoint, no metrics line, no finished run.
    assert _state(run)["epoch"] == epoch - 1
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == [f"epoch-{epoch - 1:04d}.safetensors", "state.json"]
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, epoch))
    assert not (run / "summary.json").exists() and not (run / "model.safetensors").exists()
    weights = load_file(str(run / "checkpoints" / _state(run)["last_file"]))
    assert all(torch.isfinite(t).all() for t in weights.values())

    # --resume continues from the last good epoch and finishes the run.
    done = trainfer.train(out=run, resume=True)
    assert done.summary["epochs_run"] == 4
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert all(torch.isfinite(p).all() for p in done.model.parameters())
    # The model is the best epoch's checkpointed weights (taken from memory while the last checkpoint is written).
    from trainfer.training.checkpoint import best_weights

    on_disk = best_weights(run / "checkpoints", _state(run))
    saved = load_file(str(run / "model.safetensors"))
    assert sorted(saved) == sorted(on_disk) and all(torch.equal(saved[k], on_disk[k]) for k in saved)


# The default model on iris diverges in the last step's update (NaN validation loss), the tiny one in a step's loss.
@pytest.mark.parametrize("sets", [[], TINY], ids=["default-model", "tiny-model"])
def test_diverging_cli_run_is_one_error_line_and_leaves_nothing(tmp_path: Path, sets: list[str]) -> None:
    run = tmp_path / "run"
    # A real process: numpy's RuntimeWarnings on NaN outputs would reach the user's stderr there.
    result = run_cli("train", "--data", "iris", "--epochs", "3", "--out", run, "--set", "train.lr=1e9",
                     "--set", "train.grad_clip=null", *[a for t in sets for a in ("--set", t)])
    line = assert_user_error(result, mentions=["diverged", "epoch", "step"])
    assert "train.lr" in result.stderr and "train.grad_clip" in result.stderr
    bad_epoch = int(re.search(r"epoch (\d+)", line).group(1))
    if bad_epoch == 1:  # nothing good to keep: no run directory at all
        assert not run.exists()
    else:
        assert _state(run)["epoch"] == bad_epoch - 1


def test_cli_refuses_non_finite_lr_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    result = run_main(["train", "--data", "iris", "--epochs", "1", "--out", run, "--set", "train.lr=inf"], capsys)
    assert_user_error(result, out=run, mentions=["train.lr", "finite"])


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("div") / "iris"
    trainfer.train(data="iris", epochs=2, out=out, overrides=TINY)
    return out


def test_export_of_non_finite_weights_says_so(iris_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = trainfer.Run.load(iris_run)
    with torch.no_grad():
        next(run.model.parameters())[0, 0] = float("nan")
    with pytest.raises(ExportError) as info:
        trainfer.export(run, tmp_path / "bundle")
    assert "not finite" in info.value.message and "diverged" in info.value.message
    assert "custom" not in info.value.message and not (tmp_path / "bundle").exists()

    # The same through the CLI, on a run whose saved weights hold an inf.
    weights = load_file(str(iris_run / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("inf"))
    save_file(weights, str(iris_run / "model.safetensors"))
    result = run_main(["export", iris_run, "--out", tmp_path / "b2"], capsys)
    line = assert_user_error(result, mentions=["not finite"])
    assert name.split(".")[0] in line and not (tmp_path / "b2").exists()


def test_a_diverged_force_run_puts_the_old_run_back_and_does_not_advise_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    trainfer.train(data="iris", epochs=2, out=out, overrides=TINY)
    summary = (out / "summary.json").read_bytes()
    result = run_main(["train", "--data", "iris", "--epochs", "3", "--out", out, "--force", "--set", "train.lr=1e9",
                       "--set", "train.grad_clip=null", *[a for t in TINY for a in ("--set", t)]], capsys)
    assert_user_error(result, mentions=["diverged"])
    assert (out / "summary.json").read_bytes() == summary, "the previous run must be back, unchanged"
    hint = result.stderr.strip().splitlines()[-1]
    assert "put back" in hint and "--resume" not in hint and "train.lr" in hint, hint


def test_a_run_diverging_in_its_first_epoch_empties_but_keeps_a_folder_the_user_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    result = run_main(["train", "--data", "iris", "--epochs", "2", "--out", out, "--set", "train.lr=1e30",
                       "--set", "train.grad_clip=null", *[a for t in TINY for a in ("--set", t)]], capsys)
    assert "at epoch 1," in assert_user_error(result, mentions=["diverged"])
    assert out.is_dir() and not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_a_learning_rate_that_overflows_the_update_is_a_divergence_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    result = run_main(["train", "--data", "iris", "--epochs", "2", "--out", out, "--set", "train.lr=1e38",
                       "--set", "train.grad_clip=null", *[a for t in TINY for a in ("--set", t)]], capsys)
    line = assert_user_error(result, mentions=["diverged", "overflowed"])
    assert "train.lr" in result.stderr and "at epoch 1, step " in line, line
