"""Training on several processes: `trainfer train --nproc 2` (torchrun, DDP on gloo) against one process.

Each torchrun start costs ~5-10 s here, so the runs are few: one 2-process/1-process pair (equivalence), one
run killed and resumed, one interrupted. The tiny MLP has no BatchNorm (SyncBatchNorm is CUDA-only) and no
dropout (the ranks draw their own masks), so 2 processes compute the same global batches as 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
TINY = ["--data", "digits", "--model", "mlp", "--seed", "0", "--set", "model.hidden=[32]",
        "--set", "model.batchnorm=false", "--set", "model.dropout=0", "--set", "train.batch_size=64"]


def _train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainfer", "train", *args], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _tree(pid: int) -> list[int]:
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in _tree(k)]


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)


def _start_long(out: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """A 2-process run long enough to be stopped mid-epoch, once its first checkpoint is on disk."""
    proc = subprocess.Popen([sys.executable, "-m", "trainfer", "train", *TINY, "--epochs", "8",
                             "--set", "train.batch_size=8", "--set", "train.patience=null", "--out", str(out),
                             "--nproc", "2"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (out / "checkpoints" / "state.json").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    ranks = [p for p in _tree(proc.pid) if _rank_of(p) is not None]
    assert sorted(_rank_of(p) for p in ranks) == [0, 1]
    return proc, ranks


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    one, two = root / "one", root / "two"
    # threads=1 on both sides: the 2-process run has one thread per process on this 2-core machine
    r1 = _train(*TINY, "--epochs", "4", "--set", "train.threads=1", "--out", str(one), "--quiet")
    assert r1.returncode == 0, r1.stderr
    r2 = _train(*TINY, "--epochs", "4", "--set", "train.threads=1", "--out", str(two), "--nproc", "2", "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout.splitlines()[-1])["processes"]["world_size"] == 2  # rank 0's result, printed once
    return one, two


def test_two_processes_follow_the_one_process_loss_curve(pair: tuple[Path, Path]) -> None:
    """Acceptance 2: the loss curve is the per-step train loss (train_loss_steps: each global batch's mean,
    all-reduced over ranks): the first epoch's steps agree within 1e-3, and so do the later epochs."""
    one, two = (_metrics(p) for p in pair)
    assert len(one) == len(two) == 4
    first_one, first_two = one[0]["train_loss_steps"], two[0]["train_loss_steps"]
    assert len(first_one) == len(first_two) >= 15  # digits: 1149 train rows / 64 per global batch
    assert max(abs(a - b) for a, b in zip(first_one, first_two, strict=True)) < 1e-3
    assert first_one[0] > first_one[-1] + 0.3  # a curve that actually descends, not a flat line
    for a, b in zip(one, two, strict=True):
        assert max(abs(x - y) for x, y in zip(a["train_loss_steps"], b["train_loss_steps"], strict=True)) < 1e-3
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-3


def test_two_processes_reach_the_same_test_accuracy_and_say_how_they_ran(pair: tuple[Path, Path]) -> None:
    one, two = (json.loads((p / "summary.json").read_text()) for p in pair)
    assert two["test"]["accuracy"] > 0.85
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) * 100 <= 1.0
    assert one["processes"]["world_size"] == 1 and one["processes"]["backend"] is None
    assert two["processes"]["world_size"] == 2 and two["processes"]["backend"] == "gloo"
    assert two["processes"]["threads_per_process"] == 1
    assert "fixed world size" in two["processes"]["reproducibility"]
    # rank 0 alone wrote the run: one checkpoint series, a complete run directory
    assert sorted(p.name for p in pair[1].iterdir()) == ["checkpoints", "features.json", "metrics.jsonl",
                                                          "model.safetensors", "recipe.yaml", "split.json",
                                                          "summary.json"]


def test_a_killed_rank_fails_the_run_naming_it_and_resume_finishes(tmp_path: Path) -> None:
    """Acceptance 3: SIGKILL to rank 1 mid-epoch -> one error naming rank 1 within 60 s, no rank left running;
    `--resume --nproc 2` continues from the last checkpoint and finishes."""
    out = tmp_path / "run"
    proc, ranks = _start_long(out)
    victim = next(p for p in ranks if _rank_of(p) == 1)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 60
    assert proc.returncode == 2
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: rank 1 (pid {victim}) was killed by SIGKILL; the other ranks were stopped"], stderr
    assert "--resume --nproc 2" in stderr and "Traceback" not in stderr
    assert not [p for p in ranks if Path(f"/proc/{p}").exists() and _rank_of(p) is not None]
    kept = json.loads((out / "checkpoints" / "state.json").read_text())["epoch"]
    assert 1 <= kept < 8

    resumed = _train("--out", str(out), "--resume", "--nproc", "2", "--quiet", timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    history = _metrics(out)
    assert [r["epoch"] for r in history] == list(range(1, 9))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 8 and summary["processes"]["world_size"] == 2


def test_ctrl_c_stops_every_rank_and_keeps_the_last_checkpoint_whole(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc, ranks = _start_long(out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: interrupted: last checkpoint epoch"), stderr
    assert not [p for p in ranks if Path(f"/proc/{p}").exists() and _rank_of(p) is not None]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    from safetensors.torch import load_file

    assert any(k.startswith("model.") for k in load_file(str(out / "checkpoints" / state["last_file"])))
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_nproc_is_one_error_before_anything_starts(value: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from trainfer.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "digits", "--out", str(tmp_path / "run"), "--nproc", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--nproc" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_nproc_refuses_dp_and_an_existing_run_before_starting(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from trainfer.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "digits", "--out", str(tmp_path / "dp"), "--nproc", "2", "--dp-epsilon", "3"])
    assert exc.value.code == 2
    assert "DP-SGD" in capsys.readouterr().err and not (tmp_path / "dp").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "recipe.yaml").write_text("x: 1\n")
    with pytest.raises(SystemExit):
        main(["train", "--data", "digits", "--out", str(tmp_path / "taken"), "--nproc", "2"])
    assert "already exists" in capsys.readouterr().err


def test_a_rendezvous_endpoint_that_does_not_answer_fails_within_its_timeout(tmp_path: Path) -> None:
    """Plain torchrun (the several-machines form): an endpoint that never answers (TEST-NET address) fails
    after about twice read_timeout, not after the default minutes."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1",
                           "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "192.0.2.1:29400",
                           "--rdzv-conf", "join_timeout=5,read_timeout=5", "--max-restarts", "0",
                           "-m", "trainfer", "train", "--data", "digits", "--out", str(tmp_path / "run")],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - t0 < 30
    assert "RendezvousConnectionError" in done.stderr
    assert not (tmp_path / "run").exists()
