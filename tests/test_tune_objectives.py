"""Accuracy and inference cost searched together (issue 11, acceptance 5): `--objectives accuracy,flops` and
`accuracy,latency` give a Pareto front in summary.json; `--pick fastest-within=POINTS` chooses best.yaml from it.

The space varies the model's size widely (16 to 512+256 hidden units: 2.4 to 333 kFLOPs per prediction) so
that the front has points to find; a few epochs keep a trial to seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import assert_user_error, run_main

import trainfer

HIDDEN = [[16], [64], [256, 128], [512, 256]]
SPACE = {"model.hidden": {"choice": HIDDEN}, "train.lr": {"choice": [0.003, 0.01]}}
BUDGET = 10  # trials per study: the same for the two-objective study and the single-objective one


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """Run the studies here as on a one-CPU machine: tune then gives its worker one torch thread.

    tune sizes a worker's threads from the CPUs it may use (CPUs / workers, capped by train.threads and
    OMP_NUM_THREADS); on this shared 2-core machine a trial with 2 threads took 14 s where 1 thread took 0.84 s
    (spinning threads).
    Only this thread's affinity changes (tune's one worker trains in it), and it is restored after."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def _recipe(folder: Path) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 0, "data": {"source": "digits"},
        "model": {"name": "mlp", "hidden": [64], "dropout": 0.1},
        "train": {"epochs": 4, "batch_size": 64, "patience": None},
        "tune": SPACE}))
    return path


def _summary(study_dir: Path) -> dict:
    return json.loads((study_dir / "summary.json").read_text())


def _hidden_of(best_yaml: Path) -> list[int]:
    return yaml.safe_load(best_yaml.read_text())["model"]["hidden"]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One accuracy,flops study and one single-objective study on the same space and budget."""
    root = tmp_path_factory.mktemp("objectives")
    recipe = _recipe(root)
    log: list[str] = []
    with one_cpu():
        multi = trainfer.tune(recipe, out=root / "multi", trials=BUDGET, objectives="accuracy,flops",
                              log=log.append)
        # An independent search (its own sampler seed: otherwise both studies share their 8 random start-up
        # trials), and no pruning: a pruned trial has no final accuracy, which could only lower the reference
        # the front is held to.
        single = trainfer.tune(recipe, out=root / "single", trials=BUDGET, pruner="none", seed=1)
    return {"recipe": recipe, "multi": multi, "single": single, "log": log}


def test_flops_front_keeps_the_accuracy_and_finds_a_4x_cheaper_model(studies: dict) -> None:
    multi, single = studies["multi"], studies["single"]
    s = _summary(multi.path)
    assert s["objectives"] == ["accuracy", "flops"] and s["directions"] == ["maximize", "minimize"]
    assert s["counts"]["COMPLETE"] == BUDGET and s["counts"]["PRUNED"] == 0
    front = s["pareto"]
    # Each point carries what the report draws and what a user weighs: accuracy, FLOPs, parameters, latency.
    for p in front:
        assert p["accuracy"] == p["values"][0] and p["flops"] == p["values"][1] > 0
        assert p["params_count"] > 0 and p["latency_ms"] > 0 and p["latency_raw_p50_ms"] > 0
    # A real front: no point of it is dominated by any complete trial, and every complete trial off it is.
    done = [t for t in s["trials"] if t["state"] == "COMPLETE"]

    def dominates(a: dict, b: dict) -> bool:
        (acc_a, f_a), (acc_b, f_b) = a["values"], b["values"]
        return acc_a >= acc_b and f_a <= f_b and (acc_a > acc_b or f_a < f_b)

    on_front = {p["number"] for p in front}
    for t in done:
        assert any(dominates(o, t) for o in done) == (t["number"] not in on_front), t
    points = sorted({tuple(p["values"]) for p in front}, reverse=True)
    assert len(points) >= 3, f"the front has {len(points)} distinct points: {points}"
    most_accurate, cheapest = points[0], points[-1]
    single_best = _summary(single.path)["best"]["values"][0]
    print(f"front {points}; single-objective best {single_best:.4f}")
    assert (single_best - most_accurate[0]) * 100 <= 0.5, (most_accurate, single_best)
    assert cheapest[1] <= most_accurate[1] / 4, (cheapest, most_accurate)
    # best.yaml is the most accurate point (ties: the cheaper), and trains the model the front says.
    assert s["best"]["values"] == list(most_accurate)
    assert _hidden_of(multi.best_recipe) == s["best"]["params"]["model.hidden"]
    assert s["pruner"] == "none" and not any("pruning is off" in line for line in studies["log"])


def test_pick_fastest_within_budget(studies: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Continuing the study with --pick fastest-within=POINTS: best.yaml is the cheapest front point whose
    validation accuracy is within POINTS of the most accurate one (optimize's rule)."""
    import shutil

    study = tmp_path / "multi"
    shutil.copytree(studies["multi"].path, study)
    for points in ("0.5", "3"):
        with one_cpu():
            r = run_main(["tune", studies["recipe"], "--out", study, "--trials", "1", "--objectives",
                          "accuracy,flops", "--pick", f"fastest-within={points}", "--quiet"], capsys)
        assert r.returncode == 0, r.stderr
        s = _summary(study)
        top = max(p["values"][0] for p in s["pareto"])
        within = [p for p in s["pareto"] if (top - p["values"][0]) * 100 <= float(points) + 1e-9]
        want = min(within, key=lambda p: (p["values"][1], -p["values"][0]))
        assert s["pick"] == f"fastest-within={points}"
        assert s["best"]["number"] == want["number"] and s["best"]["values"] == want["values"]
        assert _hidden_of(study / "best.yaml") == want["params"]["model.hidden"]
        assert json.loads((study / "best" / "trial.json").read_text())["number"] == want["number"]
    # With 3 points to spend, a smaller model than the most accurate one is within reach on digits: the pick
    # then really differs from the default one.
    assert s["best"]["values"][1] < max(p["values"][1] for p in s["pareto"] if p["values"][0] == top)


def test_latency_objective(tmp_path: Path) -> None:
    """accuracy,latency: every complete trial has its exported graph's latency, on the study's scale (ratio to
    the fixed reference graph x the reference's p50, kept in the study dir); pruning asked for is turned off
    and said so."""
    recipe = _recipe(tmp_path)
    log: list[str] = []
    with one_cpu():
        study = trainfer.tune(recipe, out=tmp_path / "lat", trials=3, objectives="accuracy,latency",
                              pruner="median", overrides=["train.epochs=2"], log=log.append)
    assert any("pruning is off" in line and "median" in line for line in log), log
    s = _summary(study.path)
    assert s["objectives"] == ["accuracy", "latency"] and s["pruner"] == "none"
    done = [t for t in s["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 3
    reference = json.loads(next(study.path.glob("latency-reference-t*.json")).read_text())
    for t in done:
        assert t["latency_ms"] > 0 and t["latency_raw_p50_ms"] > 0 and t["values"][1] == t["latency_ms"]
        assert t["latency_ms"] == pytest.approx(t["latency_ratio"] * reference["latency_ms_p50"])
        assert t["intermediate"] == {}  # nothing was reported to a pruner
    assert s["pareto"] and all(p["latency_ms"] > 0 and p["flops"] > 0 for p in s["pareto"])
    assert s["latency_reference"][str(reference["threads"])] == reference
    assert (study.path / "best.yaml").is_file()


@pytest.mark.parametrize("pick", ["fastest-within=abc", "cheapest", "fastest-within=-1", "fastest-within"])
def test_bad_pick_is_a_user_error(pick: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    r = run_main(["tune", "--out", out, "--set", "data.source=digits", "--objectives", "accuracy,flops",
                  "--pick", pick], capsys)
    assert_user_error(r, out, mentions=["--pick"])


def test_two_objectives_default_to_no_pruning(tmp_path: Path) -> None:
    from trainfer.config import build_recipe
    from trainfer.tuning import MULTI_OBJECTIVE_SAMPLER, settings

    base = build_recipe(_recipe(tmp_path))
    one = settings(base)
    assert one["pruner"] == "median" and one["sampler"] == "tpe" and one["notes"] == []
    two = settings(base, objectives="accuracy,flops")
    assert two["pruner"] == "none" and two["sampler"] == MULTI_OBJECTIVE_SAMPLER and two["notes"] == []
    asked = settings(base, objectives="accuracy,latency", pruner="hyperband", sampler="random")
    assert asked["pruner"] == "none" and asked["sampler"] == "random"
    assert asked["notes"] and "hyperband" in asked["notes"][0]
