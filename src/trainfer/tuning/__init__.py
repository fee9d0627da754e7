"""Hyperparameter tuning on Optuna: many runs of the one training loop, on a study in a real database.

`tune()` checks everything it can before any trial (the space, the data, the storage, the study dir),
then runs trials in this process (one worker) or in W worker processes on the same study, and finally
writes summary.json, best.yaml and best/ (the best trial's run, scored on the test split once).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainfer._atomic import check_output, write_json, write_text
from trainfer.config import Recipe, TuneConfig, build_recipe
from trainfer.errors import ConfigError, OutputError, RunError
from trainfer.tuning.results import importances, parse_pick, pick_best, trial_record, write_best
from trainfer.tuning.space import apply, describe, space_of
from trainfer.tuning.storage import _redact, open_storage, recover_stale, storage_url
from trainfer.tuning.trial import Plan, directions, prepared_data
from trainfer.tuning.worker import work

DEFAULT_STUDY = "default"
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
    """Study settings: a CLI flag or argument, else the recipe's tune section, else the default."""
    tune = recipe.tune or TuneConfig()
    out = {k: given.get(k) if given.get(k) is not None else getattr(tune, k, None) for k in
           ("trials", "timeout", "workers", "sampler", "pruner", "objectives", "pick", "study_name")}
    for key, value in DEFAULTS.items():
        if out[key] is None:
            out[key] = value
    out["study_name"] = out["study_name"] or DEFAULT_STUDY
    for key, low in (("trials", 1), ("workers", 1)):
        if not isinstance(out[key], int) or out[key] < low:
            raise ConfigError(f"--{key} {out[key]} is not allowed; it must be {low} or more")
    if out["workers"] > 256:
        raise ConfigError(f"--workers {out['workers']} is too many; at most 256")
    if out["timeout"] is not None and not out["timeout"] > 0:
        raise ConfigError(f"--timeout {out['timeout']} must be a positive number of seconds")
    for key, allowed in (("sampler", ("tpe", "random", "nsga2")), ("pruner", ("median", "hyperband", "none")),
                         ("objectives", ("accuracy", "accuracy,flops", "accuracy,latency"))):
        if out[key] not in allowed:
            raise ConfigError(f"--{key} {out[key]!r} is not one of {', '.join(allowed)}")
    if out["sampler"] == "nsga2" and out["objectives"] == "accuracy":
        raise ConfigError("--sampler nsga2 searches for a Pareto front and needs two objectives",
                          hint="add --objectives accuracy,flops (or accuracy,latency), or use --sampler tpe")
    parse_pick(out["pick"])
    if not all(c.isalnum() or c in "-_." for c in out["study_name"]):
        raise ConfigError(f"--study-name {out['study_name']!r}: use letters, digits, '-', '_' and '.' only")
    return out


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def tune(recipe: str | Path | dict[str, Any] | Recipe | None = None, *, out: str | Path,
         trials: int | None = None, timeout: float | None = None, workers: int | None = None,
         storage: str | None = None, sampler: str | None = None, pruner: str | None = None,
         objectives: str | None = None, pick: str | None = None, study_name: str | None = None,
         seed: int | None = None, overrides: list[str] | None = None, quiet: bool = True,
         log: Any = None) -> Study:
    """Tune ``recipe`` (its `tune:` section, or the default space for its model) into the study dir ``out``.

    Example: ``study = trainfer.tune("examples/digits.yaml", out="studies/digits", trials=30, workers=2)``.
    Running it again continues the study: ``trials`` more trials add to those already there.
    """
    say = log or (lambda _msg: None)
    base = build_recipe(recipe, overrides)
    conf = settings(base, trials=trials, timeout=timeout, workers=workers, sampler=sampler, pruner=pruner,
                    objectives=objectives, pick=pick, study_name=study_name)
    objs = conf["objectives"].split(",")
    space, is_default = space_of(base, objs)
    study_dir = Path(out)
    root = study_dir if conf["study_name"] == DEFAULT_STUDY else study_dir / "studies" / conf["study_name"]
    fingerprint = _fingerprint(base, space, objs)
    _check_study_dir(study_dir, conf["study_name"], fingerprint)
    plain = base.without_tune()
    data = prepared_data(plain)  # data errors surface now, before anything is written
    task = data.features.task
    url = storage_url(study_dir, storage)
    if storage is None or storage.startswith("sqlite"):
        study_dir.mkdir(parents=True, exist_ok=True)  # SQLite creates its file, not the folder
    try:
        study = _open_study(url, conf["study_name"], directions(task, objs))
    except BaseException:
        _remove_if_empty(study_dir)
        raise
    root.mkdir(parents=True, exist_ok=True)
    _record(study_dir, conf["study_name"], fingerprint, url, objs, root, base, space)

    say(f"study {conf['study_name']!r} in {_redact(url)}: {len(study.trials)} trials so far")
    say(("default search space for " + base.model.name if is_default else "search space") + ":\n  "
        + "\n  ".join(describe(space)))
    failed = recover_stale(study)
    if failed:
        say(f"trial(s) {', '.join(map(str, failed))} were left RUNNING by a dead worker: marked FAIL, "
            "their parameters queued again once")
    n_cpu = usable_cpus()
    n_workers = conf["workers"]
    threads = max(1, n_cpu // n_workers)
    if n_workers > n_cpu:
        say(f"warning: {n_workers} workers on {n_cpu} CPUs: each gets 1 thread and they share the CPUs")
    started = time.time()
    claims = root / ".claims" / f"{int(started * 1000)}-{os.getpid()}"
    claims.mkdir(parents=True)
    plan = Plan(study_dir=str(root.resolve()), storage=url, study_name=conf["study_name"],
                recipe=plain.model_dump(mode="json", exclude={"tune"}),
                space={k: d.to_plain() for k, d in space.items()}, objectives=objs, sampler=conf["sampler"],
                pruner=conf["pruner"], seed=base.seed if seed is None else seed, threads=threads,
                budget=conf["trials"], deadline=started + conf["timeout"] if conf["timeout"] else None,
                claims=str(claims), workers=n_workers, extra={"start": len(study.trials)})
    first = len(study.trials)
    from trainfer.tuning.progress import StudyProgress

    with StudyProgress(study, conf["trials"], first, n_workers, plan.deadline, enabled=not quiet) as progress:
        try:
            if n_workers == 1:
                work(plan, 0, on_trial=progress.refresh)
            else:
                _run_workers(plan, n_workers, progress)
        finally:
            shutil.rmtree(claims, ignore_errors=True)
    wall = time.time() - started
    summary = _finish(study, root, base, space, objs, conf, task, first, wall, n_workers, threads, _redact(url),
                      is_default)
    return Study(root, summary)


def _fingerprint(base: Recipe, space: dict[str, Any], objectives: list[str]) -> str:
    """What makes two commands the same study: the recipe, the space and the objectives (not the budget)."""
    raw = {"recipe": base.without_tune().model_dump(mode="json", exclude={"tune"}),
           "space": {k: d.to_plain() for k, d in space.items()}, "objectives": objectives}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def _check_study_dir(study_dir: Path, name: str, fingerprint: str) -> None:
    """A new or empty folder, or a study dir whose study of this name has the same recipe; nothing else."""
    if study_dir.exists() and not study_dir.is_dir():
        raise OutputError(f"--out {study_dir} is a file; a study directory is written there",
                          hint="choose another --out")
    record = study_dir / "tune.json"
    if study_dir.is_dir() and any(study_dir.iterdir()):
        if not record.is_file():
            raise OutputError(f"--out {study_dir} holds other files but no study (no tune.json)",
                              hint="choose a new or empty --out, or the --out of the study to continue")
        try:
            known = json.loads(record.read_text())["studies"]
        except (OSError, ValueError, KeyError, TypeError):
            raise OutputError(f"{record} is damaged; it records which recipe each study tunes",
                              hint="choose another --out") from None
        if name in known and known[name]["fingerprint"] != fingerprint:
            raise ConfigError(f"the study {name!r} in {study_dir} tunes another recipe, search space or objectives",
                              hint="tune into another --out, or start a second study there with "
                                   "--study-name NAME")
        check_output(study_dir, kind="dir", force=True)
    else:
        check_output(study_dir, kind="dir", force=True)


def _open_study(url: str, name: str, dirs: list[str]) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url)
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=dirs, load_if_exists=True)
    except Exception as exc:  # a database that accepts the connection and then refuses the tables
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot create the study in {_redact(url)}: {first}") from None
    if [d.name.lower() for d in study.directions] != dirs:
        raise ConfigError(f"the study {name!r} in {_redact(url)} has other objectives "
                          f"({', '.join(d.name.lower() for d in study.directions)})",
                          hint="use the same --objectives, or another --study-name")
    return study


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _record(study_dir: Path, name: str, fingerprint: str, url: str, objectives: list[str], root: Path,
            base: Recipe, space: dict[str, Any]) -> None:
    record = study_dir / "tune.json"
    known = json.loads(record.read_text())["studies"] if record.is_file() else {}
    if name not in known:
        known[name] = {"fingerprint": fingerprint, "storage": _redact(url), "objectives": objectives,
                       "dir": str(root.relative_to(study_dir)) or "."}
        write_json(record, {"format": 1, "studies": known})
    tuned = base.model_copy(update={"tune": TuneConfig(space=space)})
    write_text(root / "recipe.yaml", tuned.to_yaml())


def _run_workers(plan: Plan, n: int, progress: Any) -> None:
    """W processes on the study; each gets its share of the CPUs for torch, OpenMP and BLAS."""
    path = Path(plan.claims) / "plan.json"
    write_text(path, plan.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads), "MKL_NUM_THREADS": str(plan.threads)}
    procs = [subprocess.Popen([sys.executable, "-m", "trainfer.tuning.worker", str(path), str(i)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(n)]
    progress.workers = procs
    try:
        while any(p.poll() is None for p in procs):
            progress.refresh()
            time.sleep(1.0)
        progress.refresh()
    except BaseException:
        for p in procs:  # Ctrl-C reaches the workers too (same process group); wait for their trials to close
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    errors = [(p.returncode, p.stderr.read() if p.stderr else "") for p in procs if p.returncode not in (0, None)]
    for p in procs:
        if p.stderr:
            p.stderr.close()
    if errors and len(errors) == n:
        code, err = errors[0]
        last = err.strip().splitlines()[-1] if err.strip() else f"exit code {code}"
        raise RunError(f"every tuning worker stopped with an error: {last}")


def _finish(study: Any, root: Path, base: Recipe, space: dict[str, Any], objectives: list[str],
            conf: dict[str, Any], task: str, first: int, wall: float, n_workers: int, threads: int, url: str,
            is_default: bool) -> dict[str, Any]:
    """summary.json, best.yaml and best/ from the study as it stands (every command's trials)."""
    import optuna

    records = [trial_record(t, space) for t in study.get_trials(deepcopy=False)]
    counts = {s.name: sum(r["state"] == s.name for r in records) for s in optuna.trial.TrialState}
    counts["total"] = len(records)
    done = [r for r in records if r["state"] == "COMPLETE"]
    if not done:
        reasons = sorted({r["fail_reason"] for r in records if r["fail_reason"]})
        raise RunError(f"no trial of the study completed ({counts['FAIL']} failed, {counts['PRUNED']} pruned)"
                       + (f"; first failure: {reasons[0]}" if reasons else ""),
                       hint="check the failures in the study, widen or move the search space, or run more trials")
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    front_numbers = {t.number for t in study.best_trials} if len(objectives) > 1 else set()
    front = sorted((r for r in done if r["number"] in front_numbers), key=lambda r: r["values"][0], reverse=maximize)
    best = pick_best(done, front, objectives, maximize, task, parse_pick(conf["pick"]))
    best["test"] = write_best(root, base.without_tune(), best, {k: v for k, v in space.items()})
    imp, method = importances(study)
    mine = [r for r in records if r["number"] >= first and r["duration_s"] is not None]
    trial_s = sum(r["duration_s"] for r in mine)
    summary = {
        "study": conf["study_name"], "storage": url, "objectives": objectives,
        "directions": [d.name.lower() for d in study.directions],
        "metric": "accuracy" if task == "classification" else "rmse", "task": task,
        "space": {k: d.to_plain() for k, d in space.items()}, "default_space": is_default,
        "sampler": conf["sampler"], "pruner": conf["pruner"], "pick": conf["pick"],
        "counts": counts, "best": best, "pareto": front, "importances": imp, "importance_method": method,
        "best_recipe": "best.yaml", "best_run": "best",
        "command": {"trials": len(mine), "workers": n_workers, "threads_per_worker": threads, "wall_s": wall,
                    "trial_s": trial_s,
                    "outside_trials_share": max(0.0, 1 - trial_s / (n_workers * wall)) if wall > 0 else 0.0},
        "trials": records,
    }
    write_json(root / "summary.json", summary)
    return summary


__all__ = ["Study", "apply", "tune"]
