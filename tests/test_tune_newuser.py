"""`trainfer tune` as a new user meets it: train's --data/--target, a regression table, SIGTERM, a study rerun with
another --storage, Python arguments of the wrong type, a study dir handed to the other verbs, no optuna, and a
search-space entry given with --set. Each test failed before the fix it covers.

Tiny on purpose: iris or 442 diabetes rows, an MLP of 8 units, 2-3 epochs, one or two trials.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, SRC, assert_user_error, run_cli, run_main, start_cli

import trainfer
from trainfer.errors import ConfigError

BASE = "seed: 0\ndata: {source: iris}\nmodel: {name: mlp, hidden: [8]}\ntrain: {epochs: 3}\n"
TUNED = BASE + "tune:\n  train.lr: {log_uniform: [1.0e-3, 1.0e-2]}\n"  # one key: a small space
LR = "tune.train.lr={log_uniform: [1.0e-3, 1.0e-2]}"  # the same, set from the command line


def _recipe(root: Path, text: str = BASE) -> Path:
    path = root / "r.yaml"
    path.write_text(text)
    return path


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _attrs(study_dir: Path, key: str) -> list[object]:
    """One user attribute of every trial of the default study, straight from its SQLite database."""
    with sqlite3.connect(study_dir / "study.db") as db:
        rows = db.execute("SELECT t.state, a.value_json FROM trials t LEFT JOIN trial_user_attributes a ON "
                          "a.trial_id = t.trial_id AND a.key = ? ORDER BY t.number", (key,)).fetchall()
    return [(state, json.loads(v) if v else None) for state, v in rows]


def test_tune_takes_data_and_target_as_train_does_and_minimizes_rmse(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # The data error's hint said "add --target COLUMN", and tune had no --target: "No such option".
    from sklearn.datasets import load_diabetes

    csv = tmp_path / "diabetes.csv"
    load_diabetes(as_frame=True).frame.to_csv(csv, index=False)
    study = tmp_path / "study"
    args = ["tune", _recipe(tmp_path, TUNED), "--data", csv, "--target", "target", "--model", "mlp", "--epochs", "2",
            "--out", study]
    s = run_main([*args, "--trials", "2", "--json"], capsys).check().json()
    assert (s["task"], s["metric"], s["directions"]) == ("regression", "rmse", ["minimize"])
    values = [t["values"][0] for t in json.loads((study / "summary.json").read_text())["trials"]]
    assert s["best"]["values"][0] == min(values) and len(values) == 2

    shown = run_main([*args, "--trials", "1"], capsys).check().stdout  # the same command continues the study
    assert "val rmse" in shown and "3 trials" in shown, shown

    again = run_cli("train", study / "best.yaml", "--out", tmp_path / "run", "--json").check().json()
    best = json.loads((study / "summary.json").read_text())["best"]
    assert again["test"]["rmse"] == pytest.approx(best["test"]["rmse"], rel=1e-6)  # best.yaml trains the same

    rows = REPO / "examples" / "digits-rows.csv"  # no label column: the hint names --target, which tune now takes
    hint = run_main(["tune", "--data", rows, "--out", tmp_path / "s2"], capsys).stderr
    assert "--target" in hint
    assert_user_error(run_main(["tune", "--data", rows, "--target", "pixel_7_7", "--out", tmp_path / "s2"], capsys),
                      tmp_path / "s2", mentions=["pixel_7_7"])


@pytest.mark.parametrize("verb", ["tune", "run"])
def test_sigterm_stops_the_command_and_its_workers(verb: str, tmp_path: Path) -> None:
    # SIGTERM (kill, timeout, a scheduler) ended the command at once: trials stayed RUNNING, and the workers, in
    # their own process group, trained on as orphans. `trainfer run` of a tuned recipe did the same.
    recipe = _recipe(tmp_path, BASE.replace("epochs: 3}", "epochs: 30, patience: null}") + "tune:\n  train.lr: "
                     "{log_uniform: [1.0e-3, 1.0e-2]}\n  pruner: none\n  trials: 16\n  workers: 2\n")
    out = tmp_path / "out"
    study = out if verb == "tune" else out / "study"
    proc = start_cli([verb, recipe, "--out", out])
    assert proc.stderr is not None
    for line in proc.stderr:  # a trial has finished: the workers are busy with the next ones
        if line.startswith("tuning ") or "] trial " in line:
            break
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("tuning ", "[1/4"))]
    assert len(lines) == 1 and lines[0].startswith("error: terminated: the finished trials are in the study"), err
    # Not a speed goal: a bound on hanging. The command gives its workers' trials 30 s to be recorded, then kills
    # them; a fresh-clone CI run measured 30.9 s for `run` once, so the bound leaves room past that grace.
    assert time.monotonic() - started < 75
    trials = _attrs(study, "pid")
    assert 2 <= len(trials) < 16 and all(state in ("COMPLETE", "FAIL") for state, _ in trials), trials
    for _, pid in trials:  # every worker is gone
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert not (study / ".claims").exists()


def test_a_study_stays_in_the_storage_it_started_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Another --storage was a new study of the same name numbered from 0: it overwrote trials/0000 of the first.
    recipe = _recipe(tmp_path, TUNED)
    study, journal = tmp_path / "study", tmp_path / "j.log"
    run_main(["tune", recipe, "--out", study, "--trials", "1", "-q"], capsys).check()
    before = _files(study)
    line = assert_user_error(run_main(["tune", recipe, "--out", study, "--trials", "1", "--storage",
                                       f"journal:{journal}"], capsys), mentions=["lives in"])
    assert str(study / "study.db") in line
    assert _files(study) == before and not journal.exists()

    other = tmp_path / "other"  # a study in a journal, continued without --storage: refused, with the URL to pass
    run_main(["tune", recipe, "--out", other, "--trials", "1", "--storage", f"journal:{journal}", "-q"],
             capsys).check()
    res = run_main(["tune", recipe, "--out", other, "--trials", "1"], capsys)
    assert_user_error(res, mentions=["lives in", f"journal:{journal}"])
    assert f"--storage journal:{journal}" in res.stderr and not (other / "study.db").exists()

    moved = tmp_path / "moved"  # the default database moves with its study dir
    study.rename(moved)
    s = run_main(["tune", recipe, "--out", moved, "--trials", "1", "--json"], capsys).check().json()
    assert s["counts"]["total"] == 2


@pytest.mark.parametrize(("kw", "words"), [
    ({"trials": "3"}, ["--trials '3'", "whole number"]),
    ({"workers": "2"}, ["--workers '2'", "whole number"]),
    ({"timeout": "10"}, ["--timeout '10'"]),
    ({"seed": "1"}, ["--seed '1'"]),
    ({"storage": 5}, ["--storage 5"]),
    ({"study_name": 3}, ["--study-name 3"]),
    ({"pick": 0.5}, ["--pick 0.5"]),
    ({"overrides": "train.epochs=1"}, ["list of 'key=value' strings"]),
    ({"study_name": ""}, ["--study-name ''"]),
    ({"study_name": "x" * 200}, ["--study-name", "200 characters"]),
])
def test_python_arguments_of_the_wrong_type_are_one_config_error(kw: dict, words: list[str], tmp_path: Path) -> None:
    # Each of these raised a TypeError or AttributeError from deep inside, or (overrides) split a string into
    # characters, or (study_name "") quietly used the default study.
    kw = {"trials": 1, "overrides": ["train.epochs=1"], **kw}
    with pytest.raises(ConfigError) as info:
        trainfer.tune(_recipe(tmp_path), out=tmp_path / "study", **kw)
    for word in words:
        assert word in info.value.message, info.value.message
    assert not (tmp_path / "study").exists()


def test_yes_is_not_a_number_of_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # pydantic read `trials: true` as 1 and ran one trial
    for setting in ("trials: true", "workers: yes", "timeout: true"):
        recipe = _recipe(tmp_path, BASE + f"tune:\n  {setting}\n")
        assert_user_error(run_main(["tune", recipe, "--out", tmp_path / "s"], capsys), tmp_path / "s",
                          mentions=[f"tune.{setting.split(':')[0]}", "not a number"])


def test_a_study_dir_handed_to_the_other_verbs_points_at_its_best_run(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # evaluate, export, optimize and bench said "STUDY/features.json not found"; serve and predict called the
    # study "a training run" and hinted `trainfer export STUDY`, which failed the same way.
    study = tmp_path / "study"
    run_main(["tune", _recipe(tmp_path, TUNED), "--out", study, "--trials", "1", "-q"], capsys).check()
    rows = REPO / "examples" / "digits-rows.csv"
    for args, best in [(["evaluate", study], "best"), (["export", study, "--out", tmp_path / "b"], "best"),
                       (["optimize", study, "--out", tmp_path / "b"], "best"), (["bench", study], "best"),
                       (["predict", study, rows, "--out", tmp_path / "p.csv"], "best"), (["serve", study], "best"),
                       (["train", study, "--out", tmp_path / "r"], "best.yaml")]:
        res = run_main(args, capsys)
        assert_user_error(res, mentions=[str(study), "tuning study"])
        assert str(study / best) in res.stderr, res.stderr
    assert not any((tmp_path / name).exists() for name in ("b", "p.csv", "r"))


BLOCKED = textwrap.dedent("""
    import sys
    class _NotInstalled:  # optuna cannot be imported, exactly as when it is not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "optuna":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, _NotInstalled())
    if sys.argv[1] == "api":
        import trainfer
        try:
            trainfer.tune(None, out=sys.argv[2], trials=1)
        except trainfer.errors.TrainferError as exc:
            print(f"{type(exc).__name__}: {exc.hint}")
    else:
        from trainfer.cli import main
        main(sys.argv[1:])
""")


def test_without_optuna_nothing_is_written(tmp_path: Path) -> None:
    # `trainfer run` of a tuned recipe printed its tune stage line and left an empty OUT behind; trainfer.tune
    # created the study dir, then raised ModuleNotFoundError.
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    recipe = _recipe(tmp_path, TUNED)

    def blocked(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BLOCKED, *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)

    for args in (["run", recipe, "--out", tmp_path / "out"], ["tune", recipe, "--out", tmp_path / "out"]):
        res = blocked(*args)
        assert res.returncode == 2 and res.stderr.splitlines() == [
            "error: optuna is needed for this and is not installed", "hint: pip install 'trainfer[tune]'"], res.stderr
    res = blocked("api", tmp_path / "out")
    assert res.stdout.strip() == "MissingDependencyError: pip install 'trainfer[tune]'", res.stdout + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_set_adds_a_search_space_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `--set tune.train.lr={...}` was "tune.train: unknown key": the dotted key was split into sections.
    s = run_main(["tune", _recipe(tmp_path), "--out", tmp_path / "s", "--set", LR, "--set", "tune.trials=1",
                  "--json"], capsys).check().json()
    assert s["space"] == {"train.lr": {"log_uniform": [0.001, 0.01]}} and not s["default_space"]
    assert s["counts"]["total"] == 1
    tuned = _recipe(tmp_path, BASE + "tune:\n  model.dropout: {uniform: [0.0, 0.3]}\n")  # beside the recipe's own
    s = run_main(["tune", tuned, "--out", tmp_path / "s2", "--set", LR, "--trials", "1", "--json"],
                 capsys).check().json()
    assert set(s["space"]) == {"model.dropout", "train.lr"}


def test_an_empty_tune_section_is_tuned_by_run(tmp_path: Path) -> None:
    # `tune:` with its lines commented out was read as no section: `trainfer run` trained instead of tuning.
    recipe = _recipe(tmp_path, BASE + "tune:\n  # trials: 30\n")
    proc = start_cli(["run", recipe, "--out", tmp_path / "out"])
    assert proc.stderr is not None
    first = proc.stderr.readline()
    proc.kill()
    proc.communicate()
    assert first.startswith("[1/4 tune] tuning mlp on iris"), first


def test_a_trial_dir_is_a_run_for_every_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A trial's summary.json has no "test" split (tuning never reads it): report raised KeyError: 'test'.
    from trainfer.benching import inference as bench_inference

    study = tmp_path / "study"
    run_main(["tune", _recipe(tmp_path, TUNED), "--out", study, "--trials", "1", "-q"], capsys).check()
    trial = study / "trials" / "0000"
    assert "test" not in json.loads((trial / "summary.json").read_text())
    assert run_main(["evaluate", trial, "--json"], capsys).check().json()["split"] == "test"
    run_main(["export", trial, "--out", tmp_path / "bundle"], capsys).check()
    for key, value in {"min_duration_s": 0.1, "min_queries": 10, "offline_batches": [1, 8], "server_steps": 1,
                       "coldstart_repeats": 1}.items():  # a brief bench: bench imported QUICK by name
        monkeypatch.setitem(bench_inference.QUICK, key, value)
    run_main(["bench", trial, "--bundle", tmp_path / "bundle", "--quick", "-q"], capsys).check()
    page = Path(run_main(["report", trial, "--json"], capsys).check().json()["report"]).read_text()
    assert "val accuracy" in page and "not scored on the test split" in page


def _unrunnable() -> list[tuple[tuple[str, str], list[str]]]:
    import torch

    cases = [(("name: mlp", "name: cnn"), ["cnn needs image input"]),
             (("name: mlp", "name: no_such_pkg.mod:build"), ["no_such_pkg.mod"])]
    if not torch.cuda.is_available():  # on a machine with a GPU, device: cuda is a recipe that runs
        cases.append((("epochs: 3}", "epochs: 3, device: cuda}"), ["no CUDA device"]))
    return cases


@pytest.mark.parametrize(("change", "words"), _unrunnable())
def test_what_train_refuses_is_refused_before_any_trial(change: tuple[str, str], words: list[str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Every trial failed on it, one by one, and the study dir stayed behind; train refuses it at once.
    out = tmp_path / "study"
    recipe = _recipe(tmp_path, TUNED.replace(*change))
    assert_user_error(run_main(["tune", recipe, "--out", out, "--trials", "3"], capsys), out, mentions=words)
