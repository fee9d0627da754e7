"""The test split during tuning (acceptance 6), and `trainfer run` with a tune: step (issue 11, point 4).

The guard wraps the split that data.prepare makes (its ``test`` fails on access) and the raw rows
(``Dataset.rows`` fails when given any row of the test split). A study runs under it with no trial failing;
the same guard stops ``trainfer.train`` at once, so it is real; and the test rows are read exactly once, when
the best trial is scored after the last trial (write_best).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import assert_user_error, run_main

import trainfer
from trainfer.config import build_recipe
from trainfer.data import Split, load_dataset, split_indices
from trainfer.data.dataset import Dataset

RECIPE = {"seed": 0, "data": {"source": "iris"}, "model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 4},
          "tune": {"train.lr": {"log_uniform": [1e-3, 3e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}}}


class ReadTheTestSplit(AssertionError):
    """Raised by the guard: something read the test split while it must not."""


class Guard:
    def __init__(self, test: np.ndarray) -> None:
        self.test = {int(i) for i in test}
        self.scoring = False  # True while the study scores its best trial: reads are then counted, not refused
        self.reads: list[tuple[str, str, int]] = []  # (what, when, test rows touched)

    def touch(self, what: str, rows: int) -> None:
        self.reads.append((what, "scoring" if self.scoring else "tuning", rows))
        if not self.scoring:
            raise ReadTheTestSplit(f"{what}: {rows} test row(s) read outside the final scoring")


class GuardedSplit(Split):
    """The split prepare() makes, whose test rows cannot be asked for; recording them (split.json) still works."""

    def __init__(self, split: Split, guard: Guard) -> None:
        self.train, self.val, self._test, self._guard = split.train, split.val, split.test, guard

    @property  # type: ignore[override]
    def test(self) -> np.ndarray:
        self._guard.touch("split.test", len(self._test))
        return self._test

    def arrays(self) -> dict[str, np.ndarray]:  # what split.json records (Split.to_dict goes through it)
        return {"train": self.train, "val": self.val, "test": self._test}


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> tuple[Guard, np.ndarray]:
    """Install the guard around the split the recipe's data gets; returns it and the test rows it protects."""
    recipe = build_recipe(RECIPE)
    ds = load_dataset(recipe.data)  # the split every run of this recipe makes, computed before the guard is on
    test = split_indices(ds.y, recipe.data.val_fraction, recipe.data.test_fraction, recipe.seed, stratify=True).test
    guard = Guard(test)
    real_rows, real_split = Dataset.rows, split_indices

    def rows(self: Dataset, index: np.ndarray) -> Any:
        hit = guard.test.intersection(np.asarray(index).ravel().tolist())
        if hit:
            guard.touch("Dataset.rows", len(hit))
        return real_rows(self, index)

    monkeypatch.setattr(Dataset, "rows", rows)
    monkeypatch.setattr("trainfer.data.split_indices", lambda *a, **k: GuardedSplit(real_split(*a, **k), guard))
    monkeypatch.setattr("trainfer.tuning.trial._PREPARED", {})  # no data prepared before the guard was on
    real_write_best = trainfer.tuning.results.write_best

    def write_best(*args: Any, **kwargs: Any) -> Any:
        guard.scoring = True
        try:
            return real_write_best(*args, **kwargs)
        finally:
            guard.scoring = False

    monkeypatch.setattr("trainfer.tuning.results.write_best", write_best)
    return guard, test


def test_tuning_never_reads_the_test_split(guarded: tuple[Guard, np.ndarray], tmp_path: Path) -> None:
    guard, test = guarded
    study = trainfer.tune(RECIPE, out=tmp_path / "study", trials=4, workers=1, pruner="none")

    # every trial ran under the guard and completed: nothing of the test split was read while tuning
    assert [t["state"] for t in study.summary["trials"]] == ["COMPLETE"] * 4, study.summary["trials"]
    assert [r for r in guard.reads if r[1] == "tuning"] == []
    for n in range(4):  # the trials split the data as the guard assumed: it protected the right rows
        recorded = json.loads((tmp_path / "study" / "trials" / f"{n:04d}" / "split.json").read_text())
        assert recorded["test"] == test.tolist()
        assert "test" not in json.loads((tmp_path / "study" / "trials" / f"{n:04d}" / "summary.json").read_text())

    # the test split is read exactly once, after the trials, when best/ is scored: all of its rows, one call
    assert guard.reads == [("Dataset.rows", "scoring", len(test))]
    assert study.best["test"]["accuracy"] == json.loads((study.best_run / "summary.json").read_text())["test"][
        "accuracy"]

    # the guard is real: the same recipe trained, or the best run evaluated, trips it at once
    with pytest.raises(ReadTheTestSplit, match=r"split\.test"):
        trainfer.train({k: v for k, v in RECIPE.items() if k != "tune"}, out=tmp_path / "run")
    with pytest.raises(ReadTheTestSplit, match=r"Dataset\.rows"):
        trainfer.evaluate(trainfer.Run.load(study.best_run))


# ---- trainfer run with a tune: step --------------------------------------------------------------------------

def _tuned_recipe(root: Path, trials: int = 3, **train: Any) -> Path:
    raw = {**RECIPE, "train": {**RECIPE["train"], **train}, "tune": {**RECIPE["tune"], "trials": trials}}
    path = root / "tuned.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# optimize and bench measured briefly: this test is about what `run` hands them and where their outputs go,
# not about their figures (tests/test_optimize.py and tests/test_bench.py check those at the shipped settings)
SHORT_TIMING = {"min_count": 64, "min_seconds": 0.3}
SHORT_BENCH = {"min_duration_s": 0.1, "min_queries": 10, "offline_batches": [1, 8], "server_steps": 1,
               "coldstart_repeats": 1}


@pytest.mark.slow
def test_run_tunes_then_optimizes_benches_and_reports_the_best_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from trainfer import _timing
    from trainfer.benching import inference as bench_inference

    for key, value in SHORT_TIMING.items():  # optimize holds the same dict object: patch its entries
        monkeypatch.setitem(_timing.QUICK, key, value)
    for key, value in SHORT_BENCH.items():  # bench imported QUICK by name: patch the dict's entries
        monkeypatch.setitem(bench_inference.QUICK, key, value)
    out = tmp_path / "out"
    res = run_main(["run", _tuned_recipe(tmp_path), "--out", out, "--json"], capsys).check()
    result = res.json()
    study = json.loads((out / "study" / "summary.json").read_text())
    assert result["study"] == str(out / "study") and result["run"] == str(out / "run")
    assert study["counts"]["total"] == 3

    # the stages, numbered as the run goes: tune (with its progress) instead of train
    stages = [line.split("]")[0] + "]" for line in res.stderr.splitlines() if line.startswith("[")]
    assert stages[0] == "[1/4 tune]" and "[1/4 train]" not in stages
    assert {"[2/4 optimize]", "[3/4 bench]", "[4/4 report]"} <= set(stages)
    assert any(line.startswith("[1/4 tune] trial 3/3: ") for line in res.stderr.splitlines()), res.stderr

    # out/run is the best trial's run, not a retrained one, scored on the test split once (in study/best)
    best = study["best"]
    trial_run = out / "study" / best["run"]
    assert (out / "run" / "model.safetensors").read_bytes() == (trial_run / "model.safetensors").read_bytes()
    assert (out / "run" / "metrics.jsonl").read_text() == (trial_run / "metrics.jsonl").read_text()
    marker = json.loads((out / "run" / "trial.json").read_text())
    assert marker["number"] == best["number"] and (out / "run" / marker["study"]).resolve() == (out / "study").resolve()
    assert json.loads((out / "run" / "summary.json").read_text())["test"] == best["test"]

    # ... and what optimize, bench and report worked on
    manifest = json.loads((out / "run" / "bundle" / "manifest.json").read_text())
    assert manifest["metrics"]["test"]["accuracy"] == pytest.approx(best["test"]["accuracy"], abs=0.05)
    assert (out / "run" / "bench.json").is_file() and (out / "run" / "report.html").is_file()
    # the run's report finds its study through trial.json and draws the study's charts
    assert "The tuning study this run came from" in (out / "run" / "report.html").read_text()
    assert Path(result["report"]) == out / "run" / "report.html"


@pytest.fixture
def later_stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """optimize, bench and report replaced by recorders: these tests are about the tune stage and its outputs."""
    calls: list[str] = []

    def stage(name: str, value: Any) -> Any:
        def fn(target: Any, *_a: Any, **_k: Any) -> Any:
            calls.append(f"{name} {Path(str(getattr(target, 'path', target)))}")
            return value
        return fn

    monkeypatch.setattr("trainfer.exporting.optimize.optimize", stage("optimize", {}))
    monkeypatch.setattr("trainfer.benching.bench", stage("bench", {}))
    monkeypatch.setattr("trainfer.reporting.report", stage("report", {"report": "r.html", "infographic": "i.png"}))
    return calls


def _total(out: Path) -> int:
    return json.loads((out / "study" / "summary.json").read_text())["counts"]["total"]


def test_run_resumes_a_study_refuses_one_without_resume_and_force_starts_again(
        tmp_path: Path, later_stages: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    recipe, out = _tuned_recipe(tmp_path, trials=2), tmp_path / "out"
    run_main(["run", recipe, "--out", out, "--json"], capsys).check()
    assert _total(out) == 2
    assert later_stages == [f"optimize {out / 'run'}", f"bench {out / 'run'}", f"report {out / 'run'}"]

    # again without --resume: refused before any work, nothing changed
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    line = assert_user_error(run_main(["run", recipe, "--out", out, "-q"], capsys), mentions=["already exists"])
    assert str(out / "study") in line
    assert_user_error(run_main(["run", recipe, "--out", out, "--resume", "--force"], capsys), mentions=["contradict"])
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before

    # --resume adds the recipe's trials to the study, and out/run follows its best trial
    run_main(["run", recipe, "--out", out, "--resume", "--json"], capsys).check()
    summary = json.loads((out / "study" / "summary.json").read_text())
    assert summary["counts"]["total"] == 4 and summary["command"]["trials"] == 2
    assert json.loads((out / "run" / "trial.json").read_text())["number"] == summary["best"]["number"]

    # --force starts a new study
    run_main(["run", recipe, "--out", out, "--force", "--json"], capsys).check()
    assert _total(out) == 2
    assert not any(p.name.endswith(".replaced") for p in out.iterdir())


def test_run_with_force_puts_the_previous_study_back_when_tuning_fails(
        tmp_path: Path, later_stages: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    run_main(["run", _tuned_recipe(tmp_path, trials=2), "--out", out, "--json"], capsys).check()
    kept = (out / "run" / "model.safetensors").read_bytes()
    # SGD at lr 1e3..1e6 without clipping diverges in every trial: the new study fails as a whole
    raw = {**RECIPE, "train": {"epochs": 3, "optimizer": "sgd", "grad_clip": None},
           "tune": {"train.lr": {"log_uniform": [1e3, 1e6]}, "trials": 2}}
    diverging = tmp_path / "diverging.yaml"
    diverging.write_text(yaml.safe_dump(raw))
    assert_user_error(run_main(["run", diverging, "--out", out, "-q", "--force"], capsys),
                      mentions=["no trial of the study completed"])
    assert _total(out) == 2 and (out / "run" / "model.safetensors").read_bytes() == kept  # the previous one, whole
    assert sorted(p.name for p in out.iterdir()) == ["run", "study"]
    assert len(later_stages) == 3  # the first command's stages only


@pytest.mark.parametrize("case", ["bad space", "missing data", "study is a file"])
def test_run_refuses_bad_input_before_writing_anything(case: str, tmp_path: Path, later_stages: list[str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    raw: dict[str, Any] = {**RECIPE, "tune": {**RECIPE["tune"], "trials": 1}}
    if case == "bad space":
        raw["tune"]["model.dropout"] = {"choice": [0.1, 1.5]}
    if case == "missing data":
        raw["data"] = {"source": str(tmp_path / "nope.csv"), "target": "y"}
    if case == "study is a file":
        out.mkdir()
        (out / "study").write_text("mine\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert_user_error(run_main(["run", recipe, "--out", out, "-q"], capsys),
                      None if case == "study is a file" else out,
                      mentions={"bad space": ["tune.model.dropout"], "missing data": ["nope.csv"],
                                "study is a file": ["is a file"]}[case])
    if case == "study is a file":
        assert sorted(p.name for p in out.iterdir()) == ["study"] and (out / "study").read_text() == "mine\n"
    assert later_stages == []
