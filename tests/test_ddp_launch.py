"""`train --nproc` and the ranks' environment: what is refused up front, and what dies with the launcher.

Most checks here run in this process and must answer before torchrun would start: where a test needs to prove
that torchrun never started, the interpreter it would be started with is replaced by /bin/false.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ddp import ENV, LONG, TINY, _rank_of, _ranks, _tree

FAST = [*TINY, "--epochs", "1", "--set", "train.threads=1", "--quiet"]


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from trainfer.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun would start as `sys.executable -m torch.distributed.run`: here it cannot start at all."""
    monkeypatch.setattr(sys, "executable", "/bin/false")


def test_resuming_with_another_recipe_is_refused_before_torchrun_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_torchrun: None) -> None:
    from trainfer.config import build_recipe

    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text(build_recipe(None, ["model.hidden=[32]"], **{"data.source": "digits"}).to_yaml())
    code, err = _main(["train", "--out", str(out), "--resume", "--nproc", "2", "--set", "train.lr=0.5"], capsys)
    assert code == 2
    assert err.startswith("error: cannot resume") and "train.lr" in err and "torchrun failed" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]


def test_nproc_1_trains_in_this_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_torchrun: None) -> None:
    """One process needs no torchrun (seconds of start-up for the same result)."""
    code, err = _main(["train", *FAST, "--out", str(tmp_path / "run"), "--nproc", "1"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"]["world_size"] == 1 and summary["epochs_run"] == 1
    # resuming a complete run with --nproc 2 has nothing to train: no torchrun either
    code, err = _main(["train", "--out", str(tmp_path / "run"), "--resume", "--nproc", "2", "--quiet"], capsys)
    assert code == 0, err


def test_more_threads_than_cores_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                no_torchrun: None) -> None:
    cores = len(os.sched_getaffinity(0))
    code, err = _main(["train", *FAST, "--set", f"train.threads={cores}", "--out", str(tmp_path / "run"),
                       "--nproc", "2"], capsys)
    assert code == 2  # torchrun could not start (see no_torchrun); the warning came first
    assert f"warning: 2 processes x {cores} threads = {2 * cores} threads on {cores} cores: oversubscribed" in err


@pytest.mark.parametrize(("env", "expect"), [
    ({"RANK": "1"}, "RANK is set but WORLD_SIZE is not"),
    ({"LOCAL_RANK": "0"}, "LOCAL_RANK is set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR and MASTER_PORT are not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_PORT": "29500"}, "MASTER_ADDR is not set"),
])
def test_a_broken_rank_environment_is_one_error(env: dict[str, str], expect: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, err = _main(["train", *FAST, "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert err.startswith("error: ") and expect in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_the_pipeline_refuses_to_run_as_a_torchrun_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    recipe = Path(__file__).resolve().parents[1] / "examples" / "digits.yaml"
    code, err = _main(["run", str(recipe), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "does not run under torchrun" in err, err
    assert not (tmp_path / "out").exists()


def test_killing_the_launcher_takes_torchrun_and_its_ranks_with_it(tmp_path: Path) -> None:
    """SIGKILL cannot be forwarded: torchrun learns of it from the kernel (parent-death signal) and stops its
    ranks, which also get one should torchrun itself die. The run is far longer than the wait (40 epochs): no
    rank may train on to its end."""
    args = [a if a != "6" else "40" for a in LONG]
    assert "40" in args
    proc = subprocess.Popen([sys.executable, "-m", "trainfer", "train", *args, "--out", str(tmp_path / "run"),
                             "--nproc", "2"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = _ranks(proc)  # type: ignore[arg-type]
    torchrun = _tree(proc.pid)[0]
    assert subprocess.run(["ps", "-p", ",".join(map(str, [torchrun, *ranks]))], capture_output=True).returncode == 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while (alive := subprocess.run(["ps", "-o", "pid=", "-p", ",".join(map(str, [torchrun, *ranks]))],
                                   capture_output=True, text=True).stdout.split()):
        if time.monotonic() > deadline:
            for pid in map(int, alive):  # this test's own processes: leave nothing behind
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"still running 15 s after the launcher was killed: {alive}")
        time.sleep(0.2)
    assert not [p for p in ranks if Path(f"/proc/{p}").exists() and _rank_of(p) is not None]
    assert not (tmp_path / "run" / "summary.json").exists()
