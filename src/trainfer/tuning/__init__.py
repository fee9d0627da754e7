"""Hyperparameter tuning on Optuna: many runs of the one training loop, on a study in a real database.

`tune()` checks everything it can before any trial (the space, the data, the storage, the study dir),
then runs trials in this process (one worker) or in W worker processes on the same study, and finally
writes summary.json, best.yaml and best/ (the best trial's run, scored on the test split once).

The parts: space.py (search spaces), studydir.py (the study dir and its checks), storage.py (databases,
dead workers), processes.py (worker processes), worker.py and trial.py (what a worker runs), cost.py
(latency objective), results.py (summary.json, best.yaml, best/), progress.py (what the terminal shows).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainfer._imports import require_extras
from trainfer.config import Recipe, TuneConfig, build_recipe
from trainfer.errors import ConfigError, RunError
from trainfer.tuning import studydir
from trainfer.tuning.processes import run_workers, usable_cpus, worker_threads
from trainfer.tuning.results import PRIVACY_NOTE, finish, parse_pick
from trainfer.tuning.space import apply, describe, space_of
from trainfer.tuning.storage import _redact, recover_stale, recovered, storage_url
from trainfer.tuning.trial import Plan, directions, prepared_data
from trainfer.tuning.worker import reason, work

DEFAULT_STUDY = "default"
# The default sampler for two objectives: TPE (multi-objective TPE once its 8 random start-up trials are done).
# NSGA-II's default population is 50, more than the default budget of 30 trials, so it never leaves its random
# first generation. benchmarks/tune_mo_sampler.py, digits, accuracy,flops, default space, 30 trials, 4 seeds:
# hypervolume of the validation front 0.1699 +- 0.0023 (TPE) vs 0.1682 +- 0.0010 (NSGA-II); TPE ahead on 2
# seeds, level on 1, behind on 1; best validation accuracy 0.9963 on 4/4 seeds vs 3/4.
MULTI_OBJECTIVE_SAMPLER = "tpe"
DEFAULTS = {"trials": 30, "workers": 1, "sampler": "tpe", "pruner": "median", "objectives": "accuracy",
            "pick": "most-accurate"}


@dataclass
class Study:
    """The result of `tune()`: where everything is, and summary.json's content."""

    path: Path
    summary: dict[str, Any]

    @property
    def best_recipe(self) -> Path:
        return self.path / "best.yaml"

    @property
    def best_run(self) -> Path:
        return self.path / "best"

    @property
    def best(self) -> dict[str, Any]:
        return self.summary["best"]

    @property
    def pareto(self) -> list[dict[str, Any]]:
        return self.summary["pareto"]

    def __repr__(self) -> str:
        c = self.summary["counts"]
        return (f"Study({str(self.path)!r}, {c['total']} trials ({c['COMPLETE']} complete, {c['PRUNED']} pruned, "
                f"{c['FAIL']} failed), best trial {self.best['number']}: {self.best['values']})")


def settings(recipe: Recipe, **given: Any) -> dict[str, Any]:
    """Study settings: a CLI flag or argument, else the recipe's tune section, else the default. With two
    objectives there is no pruning and the sampler defaults to MULTI_OBJECTIVE_SAMPLER; ``notes`` are lines to
    print at the start."""
    tune = recipe.tune or TuneConfig()
    out = {k: given.get(k) if given.get(k) is not None else getattr(tune, k, None) for k in
           ("trials", "timeout", "workers", "sampler", "pruner", "objectives", "pick", "study_name")}
    asked = {k: out[k] for k in ("sampler", "pruner")}

    def name(key: str) -> str:  # a bad value is named where the user wrote it
        return f"--{key.replace('_', '-')}" if given.get(key) is not None else f"tune.{key}"

    for key, value in DEFAULTS.items():
        if out[key] is None:
            out[key] = value
    if given.get("study_name") == "":  # an empty --study-name silently meant the default study
        raise ConfigError("--study-name '' names no study; leave it out for the default study, or give a name")
    out["study_name"] = out["study_name"] or DEFAULT_STUDY
    for key, low in (("trials", 1), ("workers", 1)):
        if not isinstance(out[key], int) or isinstance(out[key], bool):  # trainfer.tune(trials="3"), trials: true
            raise ConfigError(f"{name(key)} {out[key]!r} is not allowed; it must be a whole number, {low} or more")
        if out[key] < low:
            raise ConfigError(f"{name(key)} {out[key]} is not allowed; it must be {low} or more")
    if out["workers"] > 256:
        raise ConfigError(f"{name('workers')} {out['workers']} is too many; at most 256")
    if out["timeout"] is not None and (not isinstance(out["timeout"], int | float) or isinstance(out["timeout"], bool)
                                       or not out["timeout"] > 0):
        raise ConfigError(f"{name('timeout')} {out['timeout']!r} must be a positive number of seconds")
    for key in ("sampler", "pruner", "objectives", "pick", "study_name"):  # a number here raised a TypeError deep in
        if given.get(key) is not None and not isinstance(given[key], str):
            raise ConfigError(f"{name(key)} {given[key]!r} must be a string")
    for key, allowed in (("sampler", ("tpe", "random", "nsga2")), ("pruner", ("median", "hyperband", "none")),
                         ("objectives", ("accuracy", "accuracy,flops", "accuracy,latency"))):
        if out[key] not in allowed:
            raise ConfigError(f"{name(key)} {out[key]!r} is not one of {', '.join(allowed)}")
    if out["sampler"] == "nsga2" and out["objectives"] == "accuracy":
        raise ConfigError("--sampler nsga2 searches for a Pareto front and needs two objectives",
                          hint="add --objectives accuracy,flops (or accuracy,latency), or use --sampler tpe")
    parse_pick(out["pick"])
    out["notes"] = []  # lines tune() prints at the start
    if out["objectives"] != "accuracy":
        # Optuna's Trial.report and should_prune raise NotImplementedError in a study with two objectives.
        if asked["pruner"] not in (None, "none"):
            out["notes"].append(f"pruning is off: Optuna cannot prune trials of a study with two objectives "
                                f"(--pruner {asked['pruner']} ignored)")
        out["pruner"] = "none"
        out["sampler"] = asked["sampler"] or MULTI_OBJECTIVE_SAMPLER
    if not all(c.isalnum() or c in "-_." for c in out["study_name"]) or out["study_name"].startswith("."):
        raise ConfigError(f"{name('study_name')} {out['study_name']!r}: use letters, digits, '-', '_' and '.' only, "
                          "not starting with '.'")
    if len(out["study_name"]) > 128:  # it names a folder (STUDY/studies/NAME): 300 characters failed after the
        raise ConfigError(f"{name('study_name')} is {len(out['study_name'])} characters long; at most 128")  # database
    return out


def tune(recipe: str | Path | dict[str, Any] | Recipe | None = None, *, out: str | Path,
         trials: int | None = None, timeout: float | None = None, workers: int | None = None,
         storage: str | None = None, sampler: str | None = None, pruner: str | None = None,
         objectives: str | None = None, pick: str | None = None, study_name: str | None = None,
         seed: int | None = None, overrides: list[str] | None = None, quiet: bool = True,
         log: Any = None, on_progress: Any = None) -> Study:
    """Tune ``recipe`` (its `tune:` section, or the default space for its model) into the study dir ``out``.

    Example: ``study = trainfer.tune("examples/digits.yaml", out="studies/digits", trials=30, workers=2)``.
    Running it again continues the study: ``trials`` more trials add to those already there.
    ``log(message)`` gets the start-up messages, ``on_progress(line)`` a line per finished trial.
    """
    say = log or (lambda _msg: None)
    require_extras("tune")  # before anything is written (the study dir was created, then optuna failed to import)
    _check_arguments(overrides=overrides, seed=seed, storage=storage)
    base = build_recipe(recipe, overrides)
    if base.privacy is not None and base.privacy.noise_seed is not None:
        # every trial would draw the same noise and batches: trials must be independent DP runs
        raise ConfigError(f"privacy.noise_seed={base.privacy.noise_seed} would give every trial the same DP noise",
                          hint="remove privacy.noise_seed from the recipe: each trial then draws its own secret seed")
    conf = settings(base, trials=trials, timeout=timeout, workers=workers, sampler=sampler, pruner=pruner,
                    objectives=objectives, pick=pick, study_name=study_name)
    objs = conf["objectives"].split(",")
    space, is_default = space_of(base, objs)
    study_dir = Path(out)
    root = study_dir if conf["study_name"] == DEFAULT_STUDY else study_dir / "studies" / conf["study_name"]
    fp = studydir.fingerprint(base, space, objs)
    url = storage_url(study_dir, storage)
    own_db = url == storage_url(study_dir, None)  # STUDY_DIR/study.db, however it was named
    studydir.check_study_dir(study_dir, conf["study_name"], fp, url, default=own_db)
    plain = base.without_tune()
    data = prepared_data(plain)  # data errors surface now, before anything is written
    task = data.features.task
    # What train refuses at once (a cnn on a table, a custom builder that fails, cuda on a machine without it)
    # would fail every trial, one by one, into a study dir: refused now, before anything is written.
    if "model.name" not in space:
        from trainfer.models import build_model

        build_model(plain.model, data.features.input_shape, data.features.n_outputs)
    if "train.device" not in space:
        from trainfer.training.loop import pick_device

        pick_device(plain.train.device)
    if storage is None or storage.startswith(("sqlite", "journal:")):
        study_dir.mkdir(parents=True, exist_ok=True)  # SQLite and the journal create their file, not the folder
    try:
        study = studydir.open_study(url, conf["study_name"], directions(task, objs), fp)
    except BaseException:
        studydir.remove_if_empty(study_dir)
        raise
    root.mkdir(parents=True, exist_ok=True)
    studydir.record(study_dir, conf["study_name"], fp, url, own_db, objs, root, base, space)

    say(f"study {conf['study_name']!r} in {_redact(url)}: {len(study.trials)} trials so far")
    for note in conf["notes"]:
        say(note)
    if base.privacy is not None:
        say(f"warning: privacy: {PRIVACY_NOTE}")
    say(("default search space for " + base.model.name if is_default else "search space") + ":\n  "
        + "\n  ".join(describe(space)))
    failed = recover_stale(study)
    if failed:
        say(f"found trials a dead worker left RUNNING: {recovered(study, failed)}")
    n_cpu = usable_cpus()
    n_workers = conf["workers"]
    threads = worker_threads(n_cpu, n_workers, plain.train.threads)
    if n_workers > n_cpu:
        say(f"warning: {n_workers} workers on {n_cpu} CPUs: each gets 1 thread and they share the CPUs")
    started = time.time()
    claims, others = studydir.claims_folder(root, started)
    # Commands drawing from one study at once must not draw the same values: on a shared database they may
    # start at the same moment on other machines (unseen), on this one they are seen by their claims folder.
    # A lone command on its own study.db keeps the stream a seed gives, so that it can be repeated.
    salt = os.getpid() + int(started) if others or not own_db else 0
    plan = Plan(study_dir=str(root.resolve()), storage=url, study_name=conf["study_name"],
                recipe=plain.model_dump(mode="json", exclude={"tune"}),
                space={k: d.to_plain() for k, d in space.items()}, objectives=objs, sampler=conf["sampler"],
                pruner=conf["pruner"], seed=base.seed if seed is None else seed, threads=threads,
                budget=conf["trials"], deadline=started + conf["timeout"] if conf["timeout"] else None,
                claims=str(claims), workers=n_workers, command=claims.name,
                extra={"start": len(study.trials), "salt": salt})
    from trainfer.tuning.progress import StudyProgress

    with StudyProgress(study, conf["trials"], plan.command, plan.deadline, enabled=not quiet,
                       emit=on_progress) as progress:
        try:
            if n_workers == 1:
                work(plan, 0, on_trial=progress.refresh)
            else:
                run_workers(plan, n_workers, progress, say)
        finally:
            shutil.rmtree(claims, ignore_errors=True)
            studydir.remove_if_empty(claims.parent)
    wall = time.time() - started
    with studydir.locked(study_dir):
        try:
            summary = finish(study, root, base, space, objs, conf, task, plan.command, wall, n_workers, threads,
                             _redact(url), is_default)
        except Exception as exc:
            # The database went away after the workers were done with it (one died of it, another had finished
            # its trials): the study cannot be read. The database's own words, not SQLAlchemy's traceback.
            if (why := reason(exc)).startswith("the study database: "):
                raise RunError(f"cannot read the study to finish it: {why}",
                               hint="the finished trials are in the study; running the command again continues "
                                    "it once the database answers") from None
            raise
    return Study(root, summary)


def _check_arguments(*, overrides: Any, seed: Any, storage: Any) -> None:
    """Python callers' types (the CLI's are typed): each of these failed with a TypeError deep inside."""
    if overrides is not None and (isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"overrides {overrides!r} must be a list of 'key=value' strings",
                          hint="e.g. overrides=['train.epochs=5', 'data.source=iris']")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"--seed {seed!r} must be a whole number")
    if storage is not None and not isinstance(storage, str):
        raise ConfigError(f"--storage {storage!r} must be a storage URL string, e.g. sqlite:///study.db")


__all__ = ["Study", "apply", "settings", "tune", "usable_cpus", "worker_threads"]
