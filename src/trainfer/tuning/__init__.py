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
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainfer._atomic import check_output, write_json, write_text
from trainfer._imports import require_extras
from trainfer.config import Recipe, TuneConfig, build_recipe
from trainfer.errors import ConfigError, OutputError, RunError
from trainfer.tuning.results import describe_front, importances, parse_pick, pick_best, trial_record, write_best
from trainfer.tuning.space import apply, describe, space_of
from trainfer.tuning.storage import _redact, open_storage, recover_stale, storage_url
from trainfer.tuning.trial import Plan, directions, prepared_data
from trainfer.tuning.worker import work

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


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(n_cpu: int, n_workers: int, asked: int | None) -> int:
    """Torch threads per worker: an equal share of the CPUs, never more than the recipe's train.threads or
    OMP_NUM_THREADS ask for (a busy shared machine is often faster with fewer threads than cores)."""
    share = max(1, n_cpu // n_workers)
    caps = [asked] if asked else []
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        caps.append(int(omp))
    return min([share, *caps])


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
    conf = settings(base, trials=trials, timeout=timeout, workers=workers, sampler=sampler, pruner=pruner,
                    objectives=objectives, pick=pick, study_name=study_name)
    space, is_default = space_of(base)
    objs = conf["objectives"].split(",")
    study_dir = Path(out)
    root = study_dir if conf["study_name"] == DEFAULT_STUDY else study_dir / "studies" / conf["study_name"]
    fingerprint = _fingerprint(base, space, objs)
    _check_study_dir(study_dir, conf["study_name"], fingerprint)
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
    url = storage_url(study_dir, storage)
    _check_same_storage(study_dir, conf["study_name"], url, storage)
    if storage is None or storage.startswith(("sqlite", "journal:")):
        study_dir.mkdir(parents=True, exist_ok=True)  # SQLite and the journal create their file, not the folder
    try:
        study = _open_study(url, conf["study_name"], directions(task, objs))
    except BaseException:
        _remove_if_empty(study_dir)
        raise
    root.mkdir(parents=True, exist_ok=True)
    _record(study_dir, conf["study_name"], fingerprint, url, objs, root, base, space)

    say(f"study {conf['study_name']!r} in {_redact(url)}: {len(study.trials)} trials so far")
    for note in conf["notes"]:
        say(note)
    say(("default search space for " + base.model.name if is_default else "search space") + ":\n  "
        + "\n  ".join(describe(space)))
    failed = recover_stale(study)
    if failed:
        say(f"trial(s) {', '.join(map(str, failed))} were left RUNNING by a dead worker: marked FAIL, "
            "their parameters queued again once")
    n_cpu = usable_cpus()
    n_workers = conf["workers"]
    threads = worker_threads(n_cpu, n_workers, plain.train.threads)
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
                claims=str(claims), workers=n_workers,
                # a shared database may see commands start at once: each draws its own sampler stream
                extra={"start": len(study.trials), "salt": 0 if storage is None else os.getpid() + int(started)})
    first = len(study.trials)
    from trainfer.tuning.progress import StudyProgress

    with StudyProgress(study, conf["trials"], first, n_workers, plan.deadline, enabled=not quiet,
                       emit=on_progress) as progress:
        try:
            if n_workers == 1:
                work(plan, 0, on_trial=progress.refresh)
            else:
                _run_workers(plan, n_workers, progress, say)
        finally:
            shutil.rmtree(claims, ignore_errors=True)
            _remove_if_empty(claims.parent)
    wall = time.time() - started
    summary = _finish(study, root, base, space, objs, conf, task, first, wall, n_workers, threads, _redact(url),
                      is_default)
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


def _check_same_storage(study_dir: Path, name: str, url: str, given: str | None) -> None:
    """A study stays in the storage its first command chose. In another one it is a new study whose trials are
    numbered from 0 again: they overwrote the first study's trials/NNNN runs, and summary.json lost its trials."""
    try:
        was = json.loads((study_dir / "tune.json").read_text())["studies"][name]["storage"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a new study (_check_study_dir has refused a damaged record)
    if was == _redact(url):
        return
    # the default database, recorded where the study dir was before it was moved, renamed or copied
    default = was.startswith("sqlite:///") and was.endswith("/study.db") and (study_dir / "study.db").is_file()
    if default and (given is None or url == storage_url(study_dir, None)):
        return
    if default:
        raise ConfigError(f"the study {name!r} in {study_dir} lives in its own {study_dir / 'study.db'}, not in "
                          f"{_redact(url)}", hint="leave out --storage, or use another --study-name or --out")
    raise ConfigError(f"the study {name!r} in {study_dir} lives in {was}, not in {_redact(url)}",
                      hint=f"pass --storage {was}{' (with its password)' if ':***@' in was else ''}, or use another "
                           "--study-name or --out")


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


def _run_workers(plan: Plan, n: int, progress: Any, say: Any = None) -> None:
    """W processes on the study; each gets its share of the CPUs for torch, OpenMP and BLAS.

    A worker that dies (killed, crashed) does not stop the others: its running trial is failed at once and its
    parameters queued again (a surviving worker runs them), a slot it claimed and never started goes back to
    the pool, and the others run the rest of the budget. No replacement is started: what killed one worker (the
    out-of-memory killer, an operator) would likely kill the next. Only when every worker failed is it an error.
    """
    say = say or (lambda _msg: None)
    folder = Path(plan.claims)
    path = folder / "plan.json"
    write_text(path, plan.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads), "MKL_NUM_THREADS": str(plan.threads)}
    # Each worker's stderr goes to a file: a pipe nobody reads until the end fills up and blocks the worker.
    # Their own process group: a Ctrl-C at the terminal reaches the command only, which passes it on once (two
    # SIGINTs could stop a worker while it records its trial as FAIL), and so does `kill -INT` of the command.
    logs = [folder / f"worker-{i}.log" for i in range(n)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as err:
            procs.append(subprocess.Popen([sys.executable, "-m", "trainfer.tuning.worker", str(path), str(i)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=err,
                                          process_group=0))
    progress.workers = procs
    seen: set[int] = set()
    try:
        while True:
            running = [p for p in procs if p.poll() is None]
            for i, p in enumerate(procs):
                if p.returncode not in (None, 0) and i not in seen:
                    seen.add(i)
                    say(_worker_died(progress.study, p, logs[i], folder, int(plan.extra.get("start", 0))))
            progress.refresh()
            if not running:
                break
            time.sleep(1.0)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.time() + 30  # time for their trials to be recorded as FAIL, then kill
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with contextlib.suppress(Exception):  # the killed workers' trials: FAIL now, not RUNNING until a rerun
            recover_stale(progress.study)
        raise
    if len(seen) == n:
        raise RunError(f"every tuning worker stopped with an error: {_last_line(procs[0], logs[0])}",
                       hint="the finished trials are in the study; running the command again continues it")
    left = sum(1 for k in range(plan.budget) if not (folder / f"{k:06d}").exists())
    if seen and left:
        say(f"warning: {left} of this command's {plan.budget} trials did not run: their workers stopped")


def _worker_died(study: Any, proc: subprocess.Popen, log: Path, claims: Path, first: int) -> str:
    """What the command does when one worker dies: fail its trial, queue it again, free its unused claims."""
    failed = recover_stale(study)
    started = sum(1 for t in study.get_trials(deepcopy=False) if t.number >= first and
                  t.user_attrs.get("pid") == proc.pid and t.user_attrs.get("host") == socket.gethostname())
    mine = sorted(f for f in claims.glob("[0-9]" * 6) if f.read_text() == str(proc.pid))
    for f in mine[started:]:  # claimed, but it died before the trial began: another worker takes the slot
        with contextlib.suppress(OSError):
            f.unlink()
    msg = f"warning: a tuning worker stopped ({_last_line(proc, log)})"
    if failed:
        msg += f"; trial(s) {', '.join(map(str, failed))} marked FAIL and queued again once"
    return msg + "; the other workers go on"


def _last_line(proc: subprocess.Popen, log: Path) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].removeprefix("error: ")
    return f"exit code {code}"


def _finish(study: Any, root: Path, base: Recipe, space: dict[str, Any], objectives: list[str],
            conf: dict[str, Any], task: str, first: int, wall: float, n_workers: int, threads: int, url: str,
            is_default: bool) -> dict[str, Any]:
    """summary.json, best.yaml and best/ from the study as it stands (every command's trials)."""
    import optuna

    from trainfer.tuning.cost import measure_runs, reference_records

    records = [trial_record(t, space) for t in study.get_trials(deepcopy=False)]
    counts = {s.name: sum(r["state"] == s.name for r in records) for s in optuna.trial.TrialState}
    counts["total"] = len(records)
    done = [r for r in records if r["state"] == "COMPLETE"]
    if not done:
        reasons = list(dict.fromkeys(r["fail_reason"] for r in records if r["fail_reason"]))  # in trial order
        raise RunError(f"no trial of the study completed ({counts['FAIL']} failed, {counts['PRUNED']} pruned)"
                       + (f"; first failure: {reasons[0]}" if reasons else ""),
                       hint="check the failures in the study, widen or move the search space, or run more trials")
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    front_numbers = {t.number for t in study.best_trials} if len(objectives) > 1 else set()
    front = sorted((r for r in done if r["number"] in front_numbers), key=lambda r: r["values"][0], reverse=maximize)
    metric = "accuracy" if task == "classification" else "rmse"
    if front:  # each point's latency too (an accuracy,flops study has none yet), on the study's scale
        describe_front(front, metric, lambda runs: measure_runs([root / r for r in runs], root, threads, strict=False))
    best = pick_best(done, front, objectives, maximize, task, parse_pick(conf["pick"]))
    best["test"] = write_best(root, base.without_tune(), best, {k: v for k, v in space.items()})
    imp, method = importances(study)
    mine = [r for r in records if r["number"] >= first and r["duration_s"] is not None]
    trial_s = sum(r["duration_s"] for r in mine)
    summary = {
        "study": conf["study_name"], "storage": url, "objectives": objectives,
        "directions": [d.name.lower() for d in study.directions],
        "metric": metric, "task": task,
        "space": {k: d.to_plain() for k, d in space.items()}, "default_space": is_default,
        "sampler": conf["sampler"], "pruner": conf["pruner"], "pick": conf["pick"],
        "counts": counts, "best": best, "pareto": front, "importances": imp, "importance_method": method,
        "latency_reference": reference_records(root) if front else {},
        "best_recipe": "best.yaml", "best_run": "best",
        "command": {"trials": len(mine), "workers": n_workers, "threads_per_worker": threads, "wall_s": wall,
                    "trial_s": trial_s,
                    "outside_trials_share": max(0.0, 1 - trial_s / (n_workers * wall)) if wall > 0 else 0.0},
        "trials": records,
    }
    write_json(root / "summary.json", summary)
    return summary


__all__ = ["Study", "apply", "tune"]
