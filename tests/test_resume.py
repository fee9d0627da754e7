"""Resume: a run killed mid-training and resumed ends bitwise identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CLI_TIMEOUT_S,
    assert_user_error,
    finish_cli,
    read_metrics,
    read_summary,
    run_cli,
    run_main,
    start_cli,
)
from safetensors.numpy import load_file

import trainfer
from trainfer.training import train

EPOCHS = 12
TRAIN = [
    "train", "--data", "synthetic-classification", "--model", "mlp", "--epochs", str(EPOCHS), "--seed", "3",
    "--set", "data.options.n_samples=4000", "--set", "train.patience=null", "--set", "train.batch_size=16",
    "--set", "model.hidden=[64,32]",
]


def _state_epoch(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoints" / "state.json").read_text())["epoch"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _kill_after_epoch(run: Path, epoch: int) -> int:
    """Start training into ``run``, SIGKILL it once a checkpoint of ``epoch`` exists; returns the epoch then."""
    args = [*TRAIN, "--out", str(run)]
    proc = start_cli(args)
    deadline = time.monotonic() + CLI_TIMEOUT_S
    try:
        while _state_epoch(run) < epoch:
            if proc.poll() is not None:
                result = finish_cli(proc, args)
                pytest.fail(f"training ended (exit {result.returncode}) before epoch {epoch} could be "
                            f"interrupted; make the run longer\n{result.stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint of epoch {epoch} after {CLI_TIMEOUT_S} s")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed (exit {proc.returncode})"
    return _state_epoch(run)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, reference = tmp_path / "killed", tmp_path / "uninterrupted"
    ref_proc = start_cli([*TRAIN, "--out", str(reference)])  # in parallel: it is independent
    try:
        killed_at = _kill_after_epoch(run, 2)
        # The kill really happened mid-run.
        assert 2 <= killed_at < EPOCHS, killed_at
        assert not (run / "summary.json").exists(), "the run finished before it was killed"
        assert not (run / "model.safetensors").exists()
        # metrics.jsonl is rewritten right after each checkpoint: the kill may land between the two
        assert killed_at - 1 <= len(read_metrics(run)) <= killed_at

        # An incomplete run cannot be loaded; the error says how to finish it.
        with pytest.raises(trainfer.TrainferError, match="incomplete"):
            trainfer.Run.load(run)

        # Resuming with a different recipe is refused, and leaves the run resumable.
        refused = run_main(["train", "--out", run, "--resume", "--epochs", "99"], capsys)
        line = assert_user_error(refused, mentions=["epochs"])
        assert "resume" in line
        assert _state_epoch(run) == killed_at and not (run / "summary.json").exists()

        # Resume with no other flags: the recorded recipe is used.
        checkpointed = json.loads((run / "checkpoints" / "state.json").read_text())["history"]
        assert [r["epoch"] for r in checkpointed] == list(range(1, killed_at + 1))
        resumed = run_cli("train", "--out", run, "--resume", "--json").check()
    finally:
        ref_result = finish_cli(ref_proc, ["train", "--out", str(reference)])
    ref_result.check()

    assert resumed.json()["epochs_run"] == EPOCHS
    ours, theirs = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert sorted(ours) == sorted(theirs) and ours
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype
        assert np.array_equal(ours[name], theirs[name]), f"tensor {name} differs after resume"

    metrics, ref_metrics = read_metrics(run), read_metrics(reference)
    assert [r["epoch"] for r in metrics] == list(range(1, EPOCHS + 1)), "one metrics line per epoch, no duplicates"
    # It really continued from the checkpoint: the epochs before the kill are the recorded ones (with their
    # original timings), not a silent retraining from scratch.
    assert metrics[:killed_at] == checkpointed
    assert [r["train_loss"] for r in metrics] == [r["train_loss"] for r in ref_metrics]
    assert [r["val_loss"] for r in metrics] == [r["val_loss"] for r in ref_metrics]
    summary, ref_summary = read_summary(run), read_summary(reference)
    assert summary["test"] == ref_summary["test"]
    assert summary["best_epoch"] == ref_summary["best_epoch"]

    # Resuming a complete run changes nothing.
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    again = train(out=run, resume=True)
    assert again.summary == summary
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_training_into_a_nonempty_dir_needs_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "existing"
    run.mkdir()
    (run / "notes.txt").write_text("keep me\n")
    (run / "summary.json").write_text("{}\n")

    result = run_main(["train", "--data", "iris", "--model", "mlp", "--epochs", "2", "--out", run,
                       "--set", "model.hidden=[8]"], capsys)
    line = assert_user_error(result)
    assert str(run) in line and "not empty" in line and "--resume" in result.stderr
    # Nothing of the existing content was touched or added to.
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "summary.json"]
    assert (run / "notes.txt").read_text() == "keep me\n" and (run / "summary.json").read_text() == "{}\n"


def test_the_best_epochs_checkpoint_is_kept_until_a_better_one_and_holds_its_weights(tmp_path: Path) -> None:
    import torch

    from trainfer.training.checkpoint import best_weights, save_checkpoint, save_tensors

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    state: dict = {"history": []}
    weights = {}
    for epoch, improved in ((1, True), (2, False), (3, False)):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        weights[epoch] = model.weight.clone()
        save_checkpoint(tmp_path, epoch, model, opt, state, improved)
    # one file per epoch written; the best epoch's stays (it is the best weights), older ones go
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["epoch-0001.safetensors",
                                                                    "epoch-0003.safetensors"]
    assert state["best_file"] == "epoch-0001.safetensors" and state["last_file"] == "epoch-0003.safetensors"
    assert torch.equal(best_weights(tmp_path, state)["weight"], weights[1])
    save_checkpoint(tmp_path, 4, model, opt, state, True)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["epoch-0004.safetensors"]
    # runs written before kept the best weights alone in best-*.safetensors, without the "model." prefix
    save_tensors(tmp_path / "best-0002.safetensors", {"weight": weights[2], "bias": model.bias})
    old = best_weights(tmp_path, {"best_file": "best-0002.safetensors"})
    assert set(old) == {"weight", "bias"} and torch.equal(old["weight"], weights[2])


def test_background_checkpoints_are_snapshots_and_a_failed_write_is_raised(tmp_path: Path) -> None:
    import torch

    from trainfer.training.checkpoint import CheckpointWriter, load_checkpoint, snapshot

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    state: dict = {"history": [{"epoch": 1}]}
    with CheckpointWriter(tmp_path / "ckpt") as writer:
        with torch.no_grad():
            model.weight.fill_(1.0)
        writer.save(snapshot(1, model, opt, state, True, {str(tmp_path / "metrics.jsonl"): "one\n"}))
        with torch.no_grad():  # training goes on while the write is in flight: the checkpoint must not see it
            model.weight.fill_(2.0)
    saved, tensors = load_checkpoint(tmp_path / "ckpt")
    assert saved["epoch"] == 1 and saved["history"] == [{"epoch": 1}]
    assert torch.equal(tensors["model.weight"], torch.ones(2, 3))
    assert (tmp_path / "metrics.jsonl").read_text() == "one\n"

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the checkpoints should go\n")
    writer = CheckpointWriter(blocked)
    writer.save(snapshot(2, model, opt, state, False))
    with pytest.raises(OSError):
        writer.close()  # the loop sees the failure (at the next save or at the end), not a silent thread
