"""trainfer.tune through the public API: the loop's epoch hook, the tune: section, and a study that resumes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SRC

import trainfer
from trainfer.config import build_recipe
from trainfer.errors import ConfigError

IRIS = {"data": {"source": "iris"}, "model": {"hidden": [16]}, "train": {"epochs": 6, "batch_size": 16}}
SPACE = {"train.lr": {"log_uniform": [1e-3, 3e-2]}, "model.hidden": {"choice": [[8], [16, 8]]},
         "train.batch_size": {"choice": [8, 16]}}


def test_epoch_hook_stops_the_loop_and_summary_scores_only_the_asked_splits(tmp_path):
    import torch

    from trainfer.data import prepare
    from trainfer.models import build_model
    from trainfer.training.loop import fit

    recipe = build_recipe(IRIS)
    data = prepare(recipe.data, recipe.seed, splits=("train", "val"))
    assert set(data.X) == {"train", "val"}  # the test rows were never transformed
    torch.manual_seed(0)
    model = build_model(recipe.model, data.features.input_shape, data.features.n_outputs)
    seen = []

    def hook(record):
        seen.append(record["epoch"])
        return "stopped by the test" if record["epoch"] == 2 else None

    summary = fit(model, data, recipe, tmp_path / "run", on_epoch=hook, splits=("train", "val"))
    assert seen == [1, 2]
    assert summary["epochs_run"] == 2 and summary["stopped_by"] == "stopped by the test"
    assert "test" not in summary and {"train", "val"} <= set(summary)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_tune_section_round_trips_and_is_left_out_of_trial_recipes():
    from trainfer.tuning.space import apply

    recipe = build_recipe({**IRIS, "tune": {**SPACE, "trials": 4, "sampler": "random"}})
    again = build_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe
    assert recipe.tune.trials == 4 and set(recipe.tune.space) == set(SPACE)
    trial = apply(recipe, {"train.lr": 0.01, "model.hidden": [16, 8]})
    assert trial.tune is None and "tune" not in yaml.safe_load(trial.to_yaml())
    assert trial.train.lr == 0.01 and trial.model.hidden == [16, 8] and trial.train.epochs == 6


@pytest.mark.parametrize(("space", "says"), [
    ({"train.lrr": {"uniform": [0, 1]}}, "tune.train.lrr: not a recipe value"),
    ({"train.lr": {"uniform": [0.2, 0.1]}}, "empty or inverted"),
    ({"train.lr": {"log_uniform": [0.1, 0.1]}}, "empty or inverted"),
    ({"model.hidden": {"choice": []}}, "is empty"),
    ({"model.dropout": {"uniform": [0, 1.5]}}, "tune.model.dropout: 1.5 is not a valid value"),
    ({"train.lr": {"log_uniform": [0, 1]}}, "low above 0"),
    ({"train.lr": {"uniform": [0.1, 0.2], "choice": [0.1]}}, "exactly one of"),
    ({"train": {"uniform": [0.1, 0.2]}}, "tune.train: unknown key"),
])
def test_a_bad_space_is_one_message_naming_the_key(space, says):
    with pytest.raises(ConfigError) as err:
        build_recipe({**IRIS, "tune": space})
    assert says in err.value.message


def test_a_study_resumes_adding_trials_and_its_best_recipe_trains(tmp_path):
    study_dir = tmp_path / "study"
    recipe = {**IRIS, "tune": SPACE}
    first = trainfer.tune(recipe, out=study_dir, trials=3, sampler="random", pruner="none")
    assert first.summary["counts"]["total"] == 3 and first.summary["counts"]["COMPLETE"] == 3
    second = trainfer.tune(recipe, out=study_dir, trials=2, sampler="random", pruner="none")
    counts = second.summary["counts"]
    assert counts["total"] == 5 and second.summary["command"]["trials"] == 2
    params = [json.dumps(t["params"], sort_keys=True) for t in second.summary["trials"]]
    assert len(set(params)) == 5  # the second command's sampler did not replay the first's values
    assert sorted(p.name for p in (study_dir / "trials").iterdir()) == [f"{i:04d}" for i in range(5)]
    for t in second.summary["trials"]:  # every trial is an ordinary run, scored on train and val only
        trial_summary = json.loads((study_dir / t["run"] / "summary.json").read_text())
        assert "test" not in trial_summary and trial_summary["val"]["accuracy"] == t["values"][0]
    best = second.best
    assert best["values"][0] == max(t["values"][0] for t in second.summary["trials"])
    assert set(json.loads((study_dir / "best" / "summary.json").read_text())["test"]) >= {"accuracy"}
    assert json.loads((study_dir / "best" / "trial.json").read_text())["number"] == best["number"]
    run = trainfer.train(study_dir / "best.yaml", out=tmp_path / "retrained")
    assert run.recipe.train.lr == pytest.approx(best["params"]["train.lr"])
    assert run.recipe.model.hidden == best["params"]["model.hidden"] and run.recipe.tune is None


def _claiming_command(root: Path) -> subprocess.Popen:
    """A process that holds a claims folder in ``root`` as a running `trainfer tune` does, until killed."""
    code = ("import sys, time; from pathlib import Path; from trainfer.tuning.studydir import claims_folder; "
            "claims_folder(Path(sys.argv[1]), time.time()); print('ready', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_command_beside_another_on_the_same_study_dir_draws_its_own_values(tmp_path):
    # Two commands started together on one study dir see the same trial count; with the same seed they drew the
    # same values (twice the cost, half the search) unless each sees the other: its live claims folder.
    recipe = {**IRIS, "tune": SPACE}

    def drawn(out):
        study = trainfer.tune(recipe, out=out, trials=1, sampler="random", pruner="none")
        return study.summary["trials"][-1]["params"]

    trainfer.tune(recipe, out=tmp_path / "alone", trials=1, sampler="random", pruner="none")
    for name in ("beside", "after"):  # the same study, so the same trial count as the lone one
        shutil.copytree(tmp_path / "alone", tmp_path / name)
    alone = drawn(tmp_path / "alone")

    other = _claiming_command(tmp_path / "beside")
    try:
        beside = drawn(tmp_path / "beside")
    finally:
        other.kill()
        other.wait()
    assert beside != alone

    # A command that was killed left its folder: no reason to leave the seed's stream, and it is cleaned up.
    dead = _claiming_command(tmp_path / "after")
    dead.kill()
    dead.wait()
    assert drawn(tmp_path / "after") == alone
    assert not (tmp_path / "after" / ".claims").exists()


def test_commands_finishing_together_write_the_study_dir_one_at_a_time(tmp_path):
    # summary.json, best.yaml and best/ of one study dir are written under its lock: a command that finishes
    # while another writes them waits, so the three agree (before, the later best/ was dropped, or a rename
    # between the two raised FileNotFoundError).
    import threading
    import time

    import optuna

    from trainfer.tuning.storage import storage_url
    from trainfer.tuning.studydir import locked

    recipe, out = {**IRIS, "tune": SPACE}, tmp_path / "study"
    trainfer.tune(recipe, out=out, trials=1, sampler="random", pruner="none")
    written = (out / "summary.json").stat().st_mtime_ns
    study = optuna.load_study(study_name="default", storage=storage_url(out, None))
    done: dict = {}
    command = threading.Thread(target=lambda: done.update(study=trainfer.tune(
        recipe, out=out, trials=1, sampler="random", pruner="none")))
    command.start()
    while len(study.get_trials(deepcopy=False)) < 2:  # its trial runs: it has recorded itself in tune.json
        time.sleep(0.05)
    with locked(out):  # another command writing the study dir's results
        while study.get_trials(deepcopy=False)[1].state.name == "RUNNING":
            time.sleep(0.05)
        command.join(timeout=3)
        assert command.is_alive() and (out / "summary.json").stat().st_mtime_ns == written
    command.join(timeout=60)
    summary = json.loads((out / "summary.json").read_text())
    assert done["study"].summary["counts"]["total"] == summary["counts"]["total"] == 2
    assert json.loads((out / "best" / "trial.json").read_text())["number"] == summary["best"]["number"]
    assert not list(out.glob(".best.*"))
