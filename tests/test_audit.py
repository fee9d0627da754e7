"""`trainfer audit RUN`: the membership-inference audit (issue 12, item 2 and acceptance 3).

Two real runs, trained once per module: a deliberately overfit one (digits, a wide MLP, no dropout, no weight
decay, no early stopping, a small train split) whose audit must find leakage (bootstrap AUC interval above
0.5), and an honest control: the same data and split sizes, trained 1 epoch at lr 1e-5, so its weights are
its seeded initialization and carry nothing about its training rows; its AUC intervals must include 0.5.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_user_error, run_main

# digits with a small train split (15%, 270 rows) against 808 test rows: members, and non-members to count
SPLIT = ["data.test_fraction=0.45", "data.val_fraction=0.4"]
OVERFIT = [*SPLIT, "model.hidden=[512]", "model.dropout=0", "model.batchnorm=false", "train.weight_decay=0",
           "train.patience=null", "train.grad_clip=null", "train.threads=1"]
CONTROL = [*SPLIT, "model.hidden=[64]", "train.lr=1e-5", "train.threads=1"]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The overfit run, audited through the CLI with --json (2 references): its run dir, stdout, stderr."""
    from trainfer.training import train

    out = tmp_path_factory.mktemp("audit") / "overfit"
    train(data="digits", model="mlp", epochs=40, seed=0, out=out, quiet=True, overrides=OVERFIT)
    result = _Capture().run(["audit", out, "--references", "2", "--json"])
    assert result.returncode == 0, result.stderr
    return {"run": out, "stdout": result.stdout, "stderr": result.stderr,
            "json": json.loads(result.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import trainfer

    out = tmp_path_factory.mktemp("audit") / "control"
    run = trainfer.train(data="digits", model="mlp", epochs=1, seed=0, out=out, quiet=True, overrides=CONTROL)
    return {"run": out, "audit": trainfer.audit(run, references=2)}


class _Capture:
    """run_main for a module fixture (capsys is function-scoped): the CLI in this process, output captured."""

    def run(self, args: list[Any]) -> Any:
        import contextlib
        import io

        from conftest import Result

        from trainfer.cli import main

        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return Result([str(a) for a in args], code, out.getvalue(), err.getvalue())


def test_an_overfit_run_measurably_leaks(overfit: dict[str, Any]) -> None:
    a = overfit["json"]
    for name in ("loss", "calibrated"):
        lo, hi = a["attacks"][name]["auc_ci95"]
        assert lo <= a["attacks"][name]["auc"] <= hi
    # acceptance 3: the interval excludes 0.5 (the calibrated attack is the stronger one)
    assert a["attacks"]["calibrated"]["auc_ci95"][0] > 0.5, a["line"]
    assert a["leaks"] is True
    assert a["line"].startswith("membership-inference AUC ") and "(loss)" in a["line"] and "(calibrated)" in a["line"]


def test_the_control_run_is_at_chance_and_below_the_overfit_run(control: dict[str, Any],
                                                                 overfit: dict[str, Any]) -> None:
    a = control["audit"]
    for name in ("loss", "calibrated"):
        lo, hi = a["attacks"][name]["auc_ci95"]
        assert lo <= 0.5 <= hi, f"{name}: a model that learned nothing must not look leaky: {a['line']}"
    assert a["leaks"] is False
    assert overfit["json"]["attacks"]["calibrated"]["auc"] > a["attacks"]["calibrated"]["auc"] + 0.05


def test_audit_json_is_what_the_command_printed(overfit: dict[str, Any]) -> None:
    written = json.loads((overfit["run"] / "audit.json").read_text())
    assert written == overfit["json"]
    split = json.loads((overfit["run"] / "split.json").read_text())
    assert written["members"] == len(split["train"]) and written["non_members"] == len(split["test"])
    refs = written["references"]
    # 2 references: each scored row is trained on by exactly one, so their training rows partition the pool
    assert refs["count"] == 2 and refs["out_models_per_row"] == 1
    assert sum(refs["trained_on_rows"]) == written["members"] + written["non_members"]
    assert len(refs["seconds"]) == 2
    # stderr carried the progress of the reference trainings; stdout's last line is the JSON object
    assert "reference 1/2" in overfit["stderr"] and "reference 2/2" in overfit["stderr"]


def test_low_fpr_figures_are_reported_only_where_measurable(overfit: dict[str, Any]) -> None:
    a = overfit["json"]
    assert a["non_members"] < 1000  # 808: 0.1% FPR would allow no false positive at all
    for attack in a["attacks"].values():
        at1, at01 = attack["tpr_at_fpr"]
        assert at1["fpr_target"] == 0.01 and at1["measurable"] is True
        assert at1["fpr"] <= 0.01 and at1["false_positives"] <= math.floor(0.01 * a["non_members"])
        assert at1["tpr"] == at1["true_positives"] / a["members"]
        assert at1["tpr_ci95"][0] <= at1["tpr"] <= at1["tpr_ci95"][1]
        assert at01 == {"fpr_target": 0.001, "measurable": False, "why": at01["why"]}
        assert "1000 non-members" in at01["why"] and str(a["non_members"]) in at01["why"]
    eps = a["epsilon_lower_bound"]
    assert eps["epsilon"] >= 0 and eps["confidence"] == 0.95 and eps["fpr_target"] == 0.01
    assert eps["delta"] == pytest.approx(1 / (10 * a["members"]))  # no DP delta recorded: delta auto


def test_terminal_table(control: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(["audit", control["run"], "--references", "2", "-q"], capsys)
    assert result.returncode == 0, result.stderr
    assert "calibrated" in result.stdout and "not measurable" in result.stdout
    assert "no leakage measurable" in result.stdout and "audit.json" in result.stdout
    assert result.stderr == ""  # -q: no progress


def test_the_same_seed_gives_the_same_audit(control: dict[str, Any]) -> None:
    import trainfer

    again = trainfer.audit(control["run"], references=2, write=False)
    first = control["audit"]
    for name in ("loss", "calibrated"):
        assert again["attacks"][name] == first["attacks"][name]
    other = trainfer.audit(control["run"], references=2, seed=1, write=False)
    assert other["references"]["seed"] == 1
    assert other["attacks"]["calibrated"]["auc"] != first["attacks"]["calibrated"]["auc"]


def test_a_regression_run_is_audited(tmp_path: Path) -> None:
    import trainfer

    run = trainfer.train(data="synthetic-regression", model="mlp", epochs=3, seed=0, out=tmp_path / "reg",
                         quiet=True, overrides=["data.options.n_samples=300", "model.hidden=[32]"])
    a = trainfer.audit(run, references=2, resamples=200)
    assert a["task"] == "regression"
    for attack in a["attacks"].values():
        assert 0 <= attack["auc"] <= 1 and not math.isnan(attack["auc"])
        assert attack["tpr_at_fpr"][0]["measurable"] is False  # 45 non-members: not even 1% FPR
    assert a["epsilon_lower_bound"]["epsilon"] is None
    assert (tmp_path / "reg" / "audit.json").is_file()


def test_the_report_section_shows_the_audit(overfit: dict[str, Any], control: dict[str, Any]) -> None:
    from trainfer.reporting import audit as report_audit

    summary = json.loads((overfit["run"] / "summary.json").read_text())
    html = report_audit.section(overfit["run"], summary)
    a = overfit["json"]
    lo, hi = a["attacks"]["calibrated"]["auc_ci95"]
    assert f"{a['attacks']['calibrated']['auc']:.2f} [{lo:.2f}, {hi:.2f}] (calibrated)" in html
    assert "membership-inference AUC" in html and "not trained with DP" in html
    bare = overfit["run"].parent / "not-audited"
    bare.mkdir()
    assert "Not audited" in report_audit.section(bare, summary)


# ---- bad input: one error line, exit 2, nothing written ------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "file", "bundle", "incomplete"])
def test_not_a_run_is_refused(case: str, tmp_path: Path, digits_bundle: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    target = {"missing": tmp_path / "nope", "file": tmp_path / "f.txt", "bundle": digits_bundle,
              "incomplete": tmp_path / "half"}[case]
    if case == "file":
        target.write_text("x")
    if case == "incomplete":
        target.mkdir()
        (target / "recipe.yaml").write_text("seed: 0\n")
    line = assert_user_error(run_main(["audit", target], capsys))
    assert {"missing": "not found", "file": "not a run directory", "bundle": "is a bundle",
            "incomplete": "incomplete"}[case] in line
    assert not (Path(target) / "audit.json").exists()


@pytest.mark.parametrize("args, mention", [(["--references", "0"], "--references"), (["--references", "1"], "2 to 64"),
                                           (["--references", "x"], "--references"),
                                           (["--resamples", "5"], "--resamples"), (["--seed", "-1"], "--seed")])
def test_bad_options_are_refused(args: list[str], mention: str, control: dict[str, Any],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = (control["run"] / "audit.json").read_bytes()
    line = assert_user_error(run_main(["audit", control["run"], *args], capsys))
    assert mention in line
    assert (control["run"] / "audit.json").read_bytes() == before


def test_api_rejects_bad_references(control: dict[str, Any]) -> None:
    import trainfer

    for bad in (0, 1, 65, 2.5, True):
        with pytest.raises(trainfer.TrainferError, match="references"):
            trainfer.audit(control["run"], references=bad)


def test_a_read_only_run_is_refused_before_any_training(control: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "ro-run"
    shutil.copytree(control["run"], run)
    (run / "audit.json").unlink()
    real_access, real_statvfs = os.access, os.statvfs

    def access(path: object, mode: int, **kw: object) -> bool:  # the tests run as root: a read-only mount
        return False if Path(str(path)) == run and mode & os.W_OK else real_access(path, mode, **kw)

    def statvfs(path: object) -> os.statvfs_result:
        st = real_statvfs(path)
        if Path(str(path)) != run:
            return st
        fields = list(st)
        fields[8] |= os.ST_RDONLY
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", statvfs)
    result = run_main(["audit", run], capsys)
    line = assert_user_error(result)
    assert "read-only" in line and "audit.json" in line
    assert "reference" not in result.stderr  # refused before minutes of reference training
    assert not (run / "audit.json").exists()


# ---- the statistics, against brute force ----------------------------------------------------------------------

def test_auc_matches_brute_force_with_ties() -> None:
    from trainfer.auditing import stats

    rng = np.random.default_rng(0)
    m, n = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)  # many ties
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in m for b in n])
    assert stats.auc(m, n) == pytest.approx(brute)
    assert stats.auc(np.ones(3), np.zeros(3)) == 1.0 and stats.auc(np.zeros(3), np.ones(3)) == 0.0


def test_tpr_at_fpr_and_the_epsilon_bound() -> None:
    from trainfer.auditing import stats

    non = np.arange(200, dtype=float)  # 0..199: at 1% FPR, 2 may lie above the threshold
    mem = np.array([199.5, 198.5, 197.5, 150.0])
    r = stats.tpr_at(mem, non, 0.01)
    assert r["false_positives"] == 2 and r["true_positives"] == 3 and r["threshold"] == 197.0
    assert stats.min_non_members(0.001) == 1000 and stats.min_non_members(0.01) == 100
    lo, hi = stats.clopper_pearson(0, 100, 0.025)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100))
    # a perfect attack on many rows implies a large ε; a chance-level one implies none
    strong = stats.epsilon_lower_bound(900, 1000, 0, 1000, 1e-5, 0.025)["epsilon"]
    assert strong > 4
    assert stats.epsilon_lower_bound(10, 1000, 10, 1000, 1e-5, 0.025)["epsilon"] == 0.0
