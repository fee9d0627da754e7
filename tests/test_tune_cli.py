"""`trainfer tune` given bad input: one `error:` line, exit 2, no traceback, nothing written; a failing trial
is recorded FAIL and the study goes on; the same command again continues the study; Ctrl-C is exit 130.

Most refusals go through ``trainfer.cli.main`` in this process (torch imported once); a batch of them, the
study-dir checks and Ctrl-C run as real processes, where the exit code and stderr are the user's.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, run_cli_many, run_main, start_cli

# iris with a tiny MLP and 3 epochs: a trial takes well under a second here
BASE = "seed: 0\ndata: {source: iris}\nmodel: {name: mlp, hidden: [8]}\ntrain: {epochs: 3}\n"


def _recipe(root: Path, name: str, tune: str = "", base: str = BASE) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(base + (f"tune:\n{tune}" if tune else ""))
    return path


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: a refusal must change none."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _trials(study_dir: Path, name: str = "default") -> list[tuple[int, str, str | None]]:
    """(number, state, fail reason) of every trial, read straight from the study's SQLite database."""
    with sqlite3.connect(study_dir / "study.db") as db:
        rows = db.execute(
            "SELECT t.number, t.state, (SELECT value_json FROM trial_user_attributes a WHERE a.trial_id = t.trial_id "
            "AND a.key = 'fail_reason') FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = ? ORDER BY t.number", (name,)).fetchall()
    return [(n, state, json.loads(reason) if reason else None) for n, state, reason in rows]


SPACES = {  # name -> (tune: section, words the error line must hold)
    "unknown key": ("  train.lrr: {uniform: [0.1, 0.2]}\n", ["tune.train.lrr", "not a recipe value"]),
    "inverted range": ("  train.lr: {uniform: [0.2, 0.1]}\n", ["tune.train.lr", "inverted"]),
    "empty range": ("  train.lr: {log_uniform: [0.01, 0.01]}\n", ["tune.train.lr", "empty"]),
    "empty choice": ("  model.hidden: {choice: []}\n", ["tune.model.hidden", "empty"]),
    "choice invalid for its key": ("  model.dropout: {choice: [0.1, 1.5]}\n", ["tune.model.dropout", "1.5"]),
    "range invalid for its key": ("  train.epochs: {int_uniform: [0, 4]}\n", ["tune.train.epochs", "0"]),
    "not a distribution": ("  train.lr: 0.01\n", ["tune.train.lr", "not a distribution", "choice"]),
    "two kinds": ("  train.lr: {uniform: [0.1, 0.2], choice: [0.1]}\n", ["tune.train.lr", "exactly one"]),
    "log from zero": ("  train.lr: {log_uniform: [0, 0.1]}\n", ["tune.train.lr", "above 0"]),
    "the split": ("  data.val_fraction: {uniform: [0.1, 0.3]}\n", ["tune.data.val_fraction", "fixed"]),
    "a bad setting": ("  train.lr: {uniform: [0.1, 0.2]}\n  trials: 0\n", ["tune.trials"]),
    "not a mapping": (None, ["tune", "not a search space"]),
}


@pytest.mark.parametrize("case", list(SPACES))
def test_a_bad_search_space_is_refused_before_anything(case: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    tune, words = SPACES[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + ("tune: [train.lr]\n" if tune is None else f"tune:\n{tune}"))
    out = tmp_path / "study"
    res = run_main(["tune", recipe, "--out", out, "--trials", "1"], capsys)
    line = assert_user_error(res, out, mentions=words)
    assert "trainfer tune --help" in res.stderr  # the hint points at the search-space syntax
    assert line.count("problem") == 1


FLAGS = {  # name -> (extra arguments, words the error line must hold)
    "--trials 0": (["--trials", "0"], ["--trials 0", "1 or more"]),
    "--trials -3": (["--trials", "-3"], ["--trials -3"]),
    "--workers 0": (["--workers", "0"], ["--workers 0", "1 or more"]),
    "--workers 100000": (["--workers", "100000"], ["--workers", "at most 256"]),
    "--sampler foo": (["--sampler", "foo"], ["--sampler 'foo'", "tpe"]),
    "--pruner foo": (["--pruner", "foo"], ["--pruner 'foo'", "median"]),
    "--objectives foo": (["--objectives", "foo"], ["--objectives 'foo'", "accuracy,flops"]),
    "--objectives flops": (["--objectives", "flops"], ["--objectives 'flops'"]),
    "--pick foo": (["--pick", "foo"], ["--pick 'foo'"]),
    "--timeout 0": (["--timeout", "0"], ["--timeout"]),
    "--study-name ../x": (["--study-name", "../x"], ["--study-name '../x'"]),
    "nsga2 with one objective": (["--sampler", "nsga2"], ["nsga2", "two objectives"]),
    "a missing data source": (["--set", "data.source=/no/such/data.csv"], ["/no/such/data.csv"]),
    "an unreachable storage": (["--storage", "sqlite:////no/such/dir/study.db"], ["study storage"]),
    "a storage that is no URL": (["--storage", "study.db"], ["not a storage URL"]),
}


@pytest.mark.parametrize("case", list(FLAGS))
def test_a_bad_setting_is_refused_before_anything(case: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    extra, words = FLAGS[case]
    out = tmp_path / "study"
    res = run_main(["tune", _recipe(tmp_path, "r"), "--out", out, *extra], capsys)
    assert_user_error(res, out, mentions=words)


def test_a_setting_from_the_recipe_is_named_as_the_recipe_writes_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(tmp_path, "r", "  train.lr: {uniform: [0.01, 0.02]}\n  pick: fastest\n")
    out = tmp_path / "study"
    assert_user_error(run_main(["tune", recipe, "--out", out], capsys), out, mentions=["'fastest'"])
    recipe = _recipe(tmp_path, "r", "  train.lr: {uniform: [0.01, 0.02]}\n  study_name: .hidden\n")
    assert_user_error(run_main(["tune", recipe, "--out", out], capsys), out, mentions=["tune.study_name"])


def test_bad_input_through_the_real_command(tmp_path: Path) -> None:
    """The same refusals as a user's shell sees them: exit 2, one error line, no traceback, nothing written."""
    recipe = _recipe(tmp_path, "r")
    bad_space = _recipe(tmp_path, "bad", "  model.dropout: {choice: [0.1, 1.5]}\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    cases = [
        (["tune", recipe, "--out", tmp_path / "s1", "--trials", "0"], tmp_path / "s1", ["--trials 0"]),
        (["tune", recipe, "--out", tmp_path / "s2", "--workers", "0"], tmp_path / "s2", ["--workers 0"]),
        (["tune", recipe, "--out", tmp_path / "s3", "--sampler", "foo"], tmp_path / "s3", ["--sampler"]),
        (["tune", bad_space, "--out", tmp_path / "s4"], tmp_path / "s4", ["tune.model.dropout", "1.5"]),
        (["tune", recipe, "--out", tmp_path / "s5", "--set", "data.source=nope.csv"], tmp_path / "s5", ["nope.csv"]),
        (["tune", recipe, "--out", a_file], None, [str(a_file), "is a file"]),
    ]
    for (_args, out, words), res in zip(cases, run_cli_many([c[0] for c in cases]), strict=True):
        assert_user_error(res, out, mentions=words)
    assert a_file.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "bad.yaml", "r.yaml"]


@pytest.mark.parametrize("problem", ["read-only", "permission"])
def test_an_unwritable_parent_is_refused_before_anything(problem: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # The tests run as root, which writes anywhere: the OS answers are made to be those a read-only mount (or a
    # 0500 directory for another user) gives, through the same calls the check makes.
    place = tmp_path / "place"
    place.mkdir()
    real_access, real_statvfs = os.access, os.statvfs

    def access(path: object, mode: int, **kw: object) -> bool:
        return False if Path(str(path)) == place and mode & os.W_OK else real_access(path, mode, **kw)

    def statvfs(path: object) -> os.statvfs_result:
        st = real_statvfs(path)
        if Path(str(path)) != place or problem != "read-only":
            return st
        fields = list(st)
        fields[8] |= os.ST_RDONLY
        return os.statvfs_result(fields)

    def no_trial(*_a: object, **_k: object) -> None:
        raise AssertionError("a trial started although the study dir could not be written")

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr("trainfer.tuning.work", no_trial)
    out = place / "studies" / "iris"
    line = assert_user_error(run_main(["tune", _recipe(tmp_path, "r"), "--out", out], capsys), out,
                             mentions=[str(out)])
    assert {"read-only": "read-only", "permission": "permission denied"}[problem] in line
    assert list(place.iterdir()) == []


def test_a_study_dir_is_continued_by_its_recipe_and_refused_to_another(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "a", "  train.lr: {log_uniform: [1.0e-3, 3.0e-2]}\n  trials: 2\n")
    other = _recipe(tmp_path, "b", "  train.lr: {log_uniform: [1.0e-3, 3.0e-2]}\n  trials: 2\n",
                    base=BASE.replace("epochs: 3", "epochs: 4"))
    study = tmp_path / "study"
    first = run_cli("tune", recipe, "--out", study, "--json").check().json()
    assert first["counts"]["total"] == 2 and first["command"]["trials"] == 2

    # the same command again continues the study: its trials add up, numbered on
    again = run_cli("tune", recipe, "--out", study, "--trials", "1", "--json").check().json()
    assert again["counts"]["total"] == 3 and again["command"]["trials"] == 1
    assert [n for n, _, _ in _trials(study)] == [0, 1, 2]
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["0000", "0001", "0002"]

    # another recipe (here: 4 epochs instead of 3) is refused, and nothing in the study changes
    before = _files(study)
    line = assert_user_error(run_cli("tune", other, "--out", study), mentions=["tunes another recipe"])
    assert "'default'" in line
    assert _files(study) == before

    # ... unless it is a second study of its own name, which lives in STUDY/studies/NAME
    second = run_cli("tune", other, "--out", study, "--study-name", "wider", "--json").check().json()
    root = study / "studies" / "wider"
    assert second["path"] == str(root) and second["counts"]["total"] == 2
    assert {"best.yaml", "best", "summary.json", "trials"} <= {p.name for p in root.iterdir()}
    assert "epochs: 4" in (root / "best.yaml").read_text()
    assert [n for n, _, _ in _trials(study, "wider")] == [0, 1]
    assert set(json.loads((study / "tune.json").read_text())["studies"]) == {"default", "wider"}
    assert json.loads((study / "summary.json").read_text())["counts"]["total"] == 3  # the first study: as it was
    assert not (study / ".claims").exists() and not (root / ".claims").exists()


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    # SGD at lr 1e6 without clipping diverges at once; lr 0.01 trains. Random sampling, seeded: both are drawn.
    recipe = _recipe(tmp_path, "r", "  train.lr: {choice: [1.0e+6, 0.01]}\n",
                     base=BASE.replace("epochs: 3}", "epochs: 3, optimizer: sgd, grad_clip: null}"))
    study = tmp_path / "study"
    s = run_cli("tune", recipe, "--out", study, "--trials", "5", "--sampler", "random", "--pruner", "none",
                "--json").check().json()
    trials = _trials(study)
    failed = [t for t in trials if t[1] == "FAIL"]
    assert failed and len(failed) < len(trials) == 5, trials
    assert all("diverged" in (reason or "") for _, _, reason in failed), failed
    assert s["counts"]["FAIL"] == len(failed) and s["best"]["params"] == {"train.lr": 0.01}
    records = json.loads((study / "summary.json").read_text())["trials"]
    assert [r["fail_reason"] for r in records] == [reason for _, _, reason in trials]  # the reason, in summary.json


def test_every_trial_failing_is_one_error_line(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "r", "  train.lr: {log_uniform: [1.0e+3, 1.0e+6]}\n",
                     base=BASE.replace("epochs: 3}", "epochs: 3, optimizer: sgd, grad_clip: null}"))
    study = tmp_path / "study"
    line = assert_user_error(run_cli("tune", recipe, "--out", study, "--trials", "2", "-q"),
                             mentions=["no trial of the study completed", "2 failed", "diverged"])
    assert "first failure" in line
    assert [state for _, state, _ in _trials(study)] == ["FAIL", "FAIL"]  # the study keeps them, as evidence
    assert not (study / "best.yaml").exists() and not (study / "summary.json").exists()


def test_ctrl_c_is_exit_130_with_one_line_and_the_same_command_continues(tmp_path: Path) -> None:
    # 30 epochs without early stopping: about a second per trial, so the signal lands while trials run. Workers
    # that missed it would run all 16 (or be killed after the 30 s the command waits for them).
    recipe = _recipe(tmp_path, "r", "  train.lr: {log_uniform: [1.0e-3, 1.0e-2]}\n  pruner: none\n",
                     base=BASE.replace("epochs: 3}", "epochs: 30, patience: null}"))
    study = tmp_path / "study"
    args = ["tune", recipe, "--out", study, "--trials", "16", "--workers", "2"]
    proc = start_cli(args)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the first progress line: a trial has finished and the workers are busy
        seen.append(line)
        if line.startswith("tuning "):
            break
    proc.send_signal(signal.SIGINT)  # as `kill -INT` does: to the command alone, not its process group
    started = time.monotonic()
    _, err = proc.communicate(timeout=120)
    stopped_in = time.monotonic() - started
    assert proc.returncode == 130, "".join(seen) + err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("tuning ")]  # not progress
    assert len(lines) == 1 and lines[0].startswith("error: interrupted: the finished trials are in the study"), err
    trials = _trials(study)
    assert len(trials) < 16 and stopped_in < 30, (trials, stopped_in)  # the workers stopped too
    assert all(state in ("COMPLETE", "FAIL") for _, state, _ in trials), trials  # none left RUNNING
    assert all(reason == "interrupted (Ctrl-C)" for _, state, reason in trials if state == "FAIL"), trials
    assert not (study / ".claims").exists()

    res = run_cli(*args[:4], "--trials", "1", "--json").check()
    assert res.json()["counts"]["total"] == len(trials) + 1
    assert (study / "best.yaml").is_file()


def test_help_and_readme_explain_tuning(capsys: pytest.CaptureFixture[str]) -> None:
    """Acceptance 7: `--help` shows the search-space syntax; the README's Tuning section shows the commands."""
    help_text = run_main(["tune", "--help"], capsys).check().stdout
    for word in ("tune:", "log_uniform", "uniform", "int_uniform", "choice", "trials:", "test split"):
        assert word in help_text, word
    assert "tune:" in run_main(["run", "--help"], capsys).check().stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Tuning\n", 1)[1].split("\n## ", 1)[0]
    for command in ("trainfer tune examples/", "trainfer train studies/digits/best.yaml", "trainfer report studies/",
                    "trainfer run examples/digits-tuned.yaml", "--storage postgresql://", "--workers",
                    "--objectives accuracy,flops", "--pick fastest-within=", "trainfer.tune(", "log_uniform",
                    "int_uniform", "choice", "study.db", "best.yaml", "summary.json", "--study-name"):
        assert command in section, command
