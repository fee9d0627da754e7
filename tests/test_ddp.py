"""Training on several processes: `trainfer train --nproc 2` (torchrun, DDP on gloo) against one process.

Each torchrun start costs ~5-10 s here, so the runs are few and each serves several tests: a 1-process run, a
2-process run and a streamed 2-process run of one table (equivalence); one run killed and resumed, whose
checkpoint is also resumed as two torchrun "nodes" with their own --out, and an uninterrupted two-node run as the
reference for both (resume exactness, nothing read or written by rank 1); one interrupted run. The tiny MLP has
no BatchNorm (SyncBatchNorm is CUDA-only) and no dropout (the ranks draw their own masks), so 2 processes
compute the same global batches as 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
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


# A run long enough to be stopped mid-epoch; one thread per rank, so that every 2-process run of it (launched,
# resumed, or as two torchrun nodes) sums its gradients the same way and ends with the same weights.
LONG = [*TINY, "--epochs", "6", "--set", "train.batch_size=8", "--set", "train.patience=null",
        "--set", "train.threads=1"]


def _spawn_long(out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "trainfer", "train", *LONG, "--out", str(out), "--nproc", "2"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ranks(proc: subprocess.Popen[str], wait_s: float = 90) -> list[int]:
    deadline = time.monotonic() + wait_s
    while len(ranks := [p for p in _tree(proc.pid) if _rank_of(p) is not None]) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no ranks"
        time.sleep(0.05)
    return ranks


def _start_long(out: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """A 2-process run stopped mid-epoch, once its first checkpoint is on disk."""
    proc = _spawn_long(out)
    deadline = time.monotonic() + 90
    while not (out / "checkpoints" / "state.json").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    ranks = _ranks(proc)
    assert sorted(_rank_of(p) for p in ranks) == [0, 1]
    return proc, ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_nodes(outs: tuple[Path, Path], *args: str) -> list[subprocess.CompletedProcess[str]]:
    """The several-machines form, both "machines" here: one plain torchrun per node, each with its own --out
    (static rendezvous: node 0 holds rank 0). Nothing is shared between them but the network."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
                               "--max-restarts", "0", "-m", "trainfer", "train", *args, "--out", str(outs[r])],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _weights(run: Path) -> dict[str, Any]:
    """The run's model and its last checkpoint (weights, optimizer moments, RNG state)."""
    from safetensors.torch import load_file

    state = json.loads((run / "checkpoints" / "state.json").read_text())
    return {**{f"best.{k}": v for k, v in load_file(str(run / "model.safetensors")).items()},
            **load_file(str(run / "checkpoints" / state["last_file"]))}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """digits as a Parquet table, trained by 1 process, by 2 processes, and by 2 processes streaming it."""
    import pandas as pd
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("ddp")
    digits = load_digits()
    table = pd.DataFrame(digits.data.astype("float32"), columns=[f"p{i}" for i in range(64)])
    table["label"] = digits.target
    table.to_parquet(root / "digits.parquet")
    table_args = [str(root / "digits.parquet") if a == "digits" else a for a in TINY]
    args = [*table_args, "--target", "label", "--epochs", "4", "--set", "train.threads=1"]  # 1 thread per process
    one, two, streamed = root / "one", root / "two", root / "streamed"
    r1 = _train(*args, "--out", str(one), "--quiet")
    assert r1.returncode == 0, r1.stderr
    r2 = _train(*args, "--out", str(two), "--nproc", "2", "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout.splitlines()[-1])["processes"]["world_size"] == 2  # rank 0's result, printed once
    r3 = _train(*args, "--set", "data.streaming=true", "--out", str(streamed), "--nproc", "2", "--quiet")
    assert r3.returncode == 0, r3.stderr
    assert "(streamed; 2 processes x 1 thread, gloo): test" in r3.stdout, r3.stdout  # the result says how it ran
    return one, two, streamed


def test_two_processes_follow_the_one_process_loss_curve(pair: tuple[Path, Path, Path]) -> None:
    """Acceptance 2: the loss curve is the per-step train loss (train_loss_steps: each global batch's mean,
    all-reduced over ranks): the first epoch's steps agree within 1e-3, and so do the later epochs."""
    one, two = (_metrics(p) for p in pair[:2])
    assert len(one) == len(two) == 4
    first_one, first_two = one[0]["train_loss_steps"], two[0]["train_loss_steps"]
    assert len(first_one) == len(first_two) >= 15  # digits: 1149 train rows / 64 per global batch
    assert max(abs(a - b) for a, b in zip(first_one, first_two, strict=True)) < 1e-3
    assert first_one[0] > first_one[-1] + 0.3  # a curve that actually descends, not a flat line
    for a, b in zip(one, two, strict=True):
        assert max(abs(x - y) for x, y in zip(a["train_loss_steps"], b["train_loss_steps"], strict=True)) < 1e-3
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-3


def test_two_processes_streaming_the_table_train_as_they_do_in_memory(pair: tuple[Path, Path, Path]) -> None:
    """data.streaming=true with --nproc 2: each rank reads its rows of each global batch from the row cache;
    the metrics match the in-memory 2-process run, and the loss curve the 1-process one."""
    one, two, streamed = (_metrics(p) for p in pair)
    assert json.loads((pair[2] / "summary.json").read_text())["data"]["streamed"] is True
    assert json.loads((pair[1] / "summary.json").read_text())["data"]["streamed"] is False
    assert len(streamed) == 4
    for a, b, c in zip(one, two, streamed, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert abs(b[key] - c[key]) < 1e-5, key
        assert max(abs(x - y) for x, y in zip(a["train_loss_steps"], c["train_loss_steps"], strict=True)) < 1e-3
    s_two, s_streamed = (json.loads((p / "summary.json").read_text()) for p in pair[1:])
    assert abs(s_two["test"]["accuracy"] - s_streamed["test"]["accuracy"]) < 1e-9


def test_two_processes_reach_the_same_test_accuracy_and_say_how_they_ran(pair: tuple[Path, Path, Path]) -> None:
    one, two = (json.loads((p / "summary.json").read_text()) for p in pair[:2])
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


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Acceptance 3's run: SIGKILL to rank 1 mid-epoch, then `--resume --nproc 2`; its checkpoint (copied before
    the resume) resumed again as two nodes with their own --out; and the same run uninterrupted, as two nodes."""
    root = tmp_path_factory.mktemp("killed")
    out = root / "run"
    proc, ranks = _start_long(out)
    victim = next(p for p in ranks if _rank_of(p) == 1)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    found: dict[str, Any] = {"out": out, "victim": victim, "ranks": ranks, "stderr": stderr, "rc": proc.returncode,
                             "stop_s": time.monotonic() - t0,
                             "alive": [p for p in ranks if Path(f"/proc/{p}").exists() and _rank_of(p) is not None],
                             "kept": json.loads((out / "checkpoints" / "state.json").read_text())["epoch"]}
    shutil.copytree(out, root / "node0")
    found["resumed"] = _train("--out", str(out), "--resume", "--nproc", "2", "--quiet", timeout=240)
    (root / "node1").mkdir()
    t0 = time.monotonic()  # the machines the other way round: rank 0's machine has no run to resume
    before = {p: p.stat().st_mtime_ns for p in (root / "node0").rglob("*")}
    found["nodes_swapped"] = _two_nodes((root / "empty", root / "node0"), "--resume", "--quiet")
    found["swapped_s"] = time.monotonic() - t0
    found["node0_untouched"] = before == {p: p.stat().st_mtime_ns for p in (root / "node0").rglob("*")}
    found["nodes_resumed"] = _two_nodes((root / "node0", root / "node1"), "--resume", "--quiet")
    found["nodes_fresh"] = _two_nodes((root / "fresh0", root / "fresh1"), *LONG, "--quiet")
    found["root"] = root
    return found


def test_a_killed_rank_fails_the_run_naming_it_and_resume_finishes(killed: dict[str, Any]) -> None:
    """Acceptance 3: SIGKILL to rank 1 mid-epoch -> one error naming rank 1 within 60 s, no rank left running;
    `--resume --nproc 2` continues from the last checkpoint and finishes."""
    stderr, victim = killed["stderr"], killed["victim"]
    assert killed["stop_s"] < 60
    assert killed["rc"] == 2
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: rank 1 (pid {victim}) was killed by SIGKILL; the other ranks were stopped"], stderr
    assert "--resume --nproc 2" in stderr and "Traceback" not in stderr
    assert not killed["alive"]
    assert 1 <= killed["kept"] < 6

    resumed = killed["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    out = killed["out"]
    assert [r["epoch"] for r in _metrics(out)] == list(range(1, 7))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 6 and summary["processes"]["world_size"] == 2


def test_a_resumed_two_process_run_ends_with_the_uninterrupted_runs_weights(killed: dict[str, Any]) -> None:
    """Resume is exact distributed too: killed and resumed (launched, or as two nodes) = never interrupted."""
    import torch

    for run in killed["nodes_fresh"] + killed["nodes_resumed"]:
        assert run.returncode == 0, run.stderr
    reference = _weights(killed["root"] / "fresh0")
    for run in (killed["out"], killed["root"] / "node0"):
        got = _weights(run)
        assert sorted(got) == sorted(reference)
        assert any(k.startswith("optim.") for k in got)  # the optimizer state is compared too
        assert all(torch.equal(got[k], reference[k]) for k in reference), run
    assert _metrics(killed["out"]) != [] and \
        [r["train_loss"] for r in _metrics(killed["out"])] == [r["train_loss"] for r in _metrics(killed["root"] /
                                                                                                   "fresh0")]


def test_ranks_on_other_machines_never_touch_their_out(killed: dict[str, Any]) -> None:
    """Several machines need no shared disk: rank 1 gets the recipe, split and checkpoint from rank 0 and
    neither reads nor writes its own --out (its folder stays empty, or is never made)."""
    root = killed["root"]
    assert not (root / "fresh1").exists()
    assert list((root / "node1").iterdir()) == []
    fresh0 = json.loads((root / "fresh0" / "summary.json").read_text())
    assert fresh0["processes"]["world_size"] == 2 and fresh0["epochs_run"] == 6
    assert [r["epoch"] for r in _metrics(root / "node0")] == list(range(1, 7))
    # resuming with rank 0 on the machine without the run is refused (not restarted from scratch there), and
    # the run on the other machine is not touched
    swapped0, swapped1 = killed["nodes_swapped"]
    assert swapped0.returncode != 0 and swapped1.returncode != 0 and killed["swapped_s"] < 60
    assert "error: --resume: rank 0 runs on" in swapped0.stderr and "--node-rank 0" in swapped0.stderr
    assert not (root / "empty").exists()
    assert killed["node0_untouched"]
    # rank 0 printed the result once; rank 1 printed nothing
    assert "trained" not in killed["nodes_fresh"][1].stdout and "error" not in killed["nodes_fresh"][1].stderr


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


def test_a_machine_given_another_recipe_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Each machine has its own command line: rank 1's recipe must be rank 0's (it gets rank 0's on --resume)."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
                               "--max-restarts", "0", "-m", "trainfer", "train", *TINY, "--epochs", "1", "--quiet",
                               "--set", f"train.lr={lr}", "--out", str(tmp_path / f"node{r}")],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, lr in ((0, "0.01"), (1, "0.02"))]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert "error: rank 1 was given another recipe than rank 0 (differs in: train.lr)" in errs[1], errs[1]
    assert "Traceback" not in errs[1].split("error: rank 1")[0]
    assert not (tmp_path / "node0").exists() and not (tmp_path / "node1").exists()
