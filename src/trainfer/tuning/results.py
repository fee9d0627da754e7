"""What a study leaves: summary.json (every trial, the Pareto front, importances), best.yaml and best/.

summary.json holds everything the report draws, so `trainfer report STUDY_DIR` needs neither Optuna
nor the database.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from trainfer._atomic import write_json, write_text
from trainfer.config import Distribution, Recipe
from trainfer.errors import ConfigError, RunError
from trainfer.tuning.space import apply, decode


def parse_pick(pick: str | None) -> float | None:
    """``most-accurate`` (None) or ``fastest-within=POINTS`` (the budget in points, as optimize's)."""
    if pick in (None, "", "most-accurate"):
        return None
    head, sep, value = pick.partition("=")
    try:
        budget = float(value)
    except ValueError:
        budget = -1.0
    if head != "fastest-within" or not sep or not 0 <= budget < 100:
        raise ConfigError(f"--pick {pick!r} is not understood",
                          hint="use most-accurate, or fastest-within=POINTS, e.g. fastest-within=0.5")
    return budget


def trial_record(t: Any, space: dict[str, Distribution]) -> dict[str, Any]:
    a = t.user_attrs
    duration = (t.datetime_complete - t.datetime_start).total_seconds() \
        if t.datetime_complete and t.datetime_start else None
    return {"number": t.number, "state": t.state.name, "values": t.values, "params": decode(space, t.params),
            "duration_s": duration, "started": t.datetime_start.isoformat() if t.datetime_start else None,
            "intermediate": {int(k): v for k, v in sorted(t.intermediate_values.items())},
            "run": a.get("run"), "params_count": a.get("params"), "flops": a.get("flops"),
            "latency_ms": a.get("latency_ms"), "latency_raw_p50_ms": a.get("latency_raw_p50_ms"),
            "latency_ratio": a.get("latency_ratio"), "epochs_run": a.get("epochs_run"),
            "stopped_by": a.get("stopped_by"),
            "val": a.get("val"), "fail_reason": a.get("fail_reason"), "host": a.get("host"),
            "command": a.get("command"), "retry_of": t.system_attrs.get("failed_trial")}


def pick_best(done: list[dict[str, Any]], front: list[dict[str, Any]], objectives: list[str], maximize: bool,
              task: str, budget: float | None) -> dict[str, Any]:
    """The most accurate point (of the Pareto front when there are two objectives; ties: the cheaper), or with a
    budget the cheapest point whose validation drop from the most accurate is within it: optimize's rule, in
    its units (points of accuracy, or % of rmse), by exporting.select.quality_drop.

    The cost is the second objective (FLOPs or latency); with one objective, the FLOPs. The cheapest point
    within the budget is always on the front (a point that dominates it is as accurate and as cheap), so
    searching the front loses nothing."""
    from trainfer.exporting.select import quality_drop

    pool = front if len(objectives) > 1 else done

    def cost(r: dict[str, Any]) -> float:
        return float(r["values"][1]) if len(objectives) > 1 else float(r.get("flops") or 0.0)

    sign = -1.0 if maximize else 1.0
    top = min(pool, key=lambda r: (sign * r["values"][0], cost(r), r["number"]))
    if budget is None:
        return top
    ref = top["values"][0]
    within = [r for r in pool if quality_drop(ref, r["values"][0], task) <= budget + 1e-9]
    return min(within, key=lambda r: (cost(r), sign * r["values"][0], r["number"]))


def describe_front(front: list[dict[str, Any]], metric: str, measure: Any) -> None:
    """Give every point of the front its accuracy (the metric, by name), FLOPs, parameters and latency.

    Points without a latency (an accuracy,flops study) are timed now, together in one interleaved window
    with the reference graph (``measure(run_dirs) -> records``: tuning.cost.measure_runs), so that their latencies
    compare as optimize's variants do. A point that cannot be exported keeps latency_ms None and says why."""
    for r in front:
        r[metric] = r["values"][0]
    missing = [r for r in front if r.get("latency_ms") is None]
    if missing:
        for r, rec in zip(missing, measure([r["run"] for r in missing]), strict=True):
            r.update(rec)


def importances(study: Any) -> tuple[dict[str, float], str | None]:
    """Parameter importances by fANOVA (PED-ANOVA when it cannot run); empty before there is enough to judge."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 4:
        return {}, None
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    for name, make in (("fANOVA", lambda: optuna.importance.FanovaImportanceEvaluator(seed=0)),
                       ("PED-ANOVA", optuna.importance.PedAnovaImportanceEvaluator)):
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                values = optuna.importance.get_param_importances(study, evaluator=make(), target=target)
        except (RuntimeError, ValueError, ImportError):
            continue
        if said:  # e.g. PED-ANOVA: "quantiles select the same set of trials" -> equal importances, no news
            name += f" ({str(said[0].message).rstrip('.')})"
        return {k: float(v) for k, v in values.items()}, name
    return {}, None


def write_best(root: Path, base: Recipe, best: dict[str, Any]) -> dict[str, Any]:
    """best/ (a copy of the trial's run, scored on the test split once), then best.yaml (trainable as it is).

    The caller holds the study dir's lock (studydir.locked): two commands finishing at once write one after
    the other. best/ is built aside and renamed into place, so it is whole or absent, never half written.
    """
    recipe = apply(base, best["params"])
    dest = root / "best"
    marker = dest / "trial.json"
    if marker.is_file() and json.loads(marker.read_text()).get("number") == best["number"] \
            and (dest / "summary.json").is_file():
        metrics = json.loads((dest / "summary.json").read_text()).get("test", {})  # already scored
    else:
        metrics = _score_best(root, recipe, best)
    write_text(root / "best.yaml", f"# trial {best['number']} of the study in {root}\n" + recipe.to_yaml())
    return metrics


def _score_best(root: Path, recipe: Recipe, best: dict[str, Any]) -> dict[str, Any]:
    from trainfer.training import Run, evaluate, train

    tmp, old = root / ".best.tmp", root / ".best.old"  # leftovers of a command that died here go first
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    try:
        if (root / best["run"]).is_dir():
            shutil.copytree(root / best["run"], tmp)
        else:  # the trial ran in another command's study dir (another machine on the shared database): train it
            train(recipe, out=tmp, quiet=True)
        result = evaluate(Run.load(tmp))  # the one time the test split is read
        summary = json.loads((tmp / "summary.json").read_text())
        summary["test"] = result["metrics"]
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "trial.json", {"number": best["number"], "run": best["run"], "params": best["params"]})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if (root / "best").exists():
        (root / "best").rename(old)
    tmp.rename(root / "best")
    shutil.rmtree(old, ignore_errors=True)
    return result["metrics"]


PRIVACY_NOTE = ("each trial is (ε, δ)-DP on the training rows, but choosing the best of N trials on the validation "
                "split composes them: the study spends up to N·ε (δ up to N·δ) on the training rows")


def privacy_note(base: Recipe, records: list[dict[str, Any]], root: Path) -> dict[str, Any] | None:
    """summary.json's ``privacy`` for a study of a DP recipe: what each trial spent and what the choice spends.

    Every trial that ran trained on the rows and was seen by the choice (pruned and failed ones too), so N
    counts them all: a bound by basic composition, the loosest but one a reader can check by hand.
    """
    if base.privacy is None:
        return None
    spent = []
    for r in records:
        path = root / str(r.get("run")) / "summary.json"
        if r.get("run") and path.is_file():
            p = json.loads(path.read_text()).get("privacy") or {}
            if "epsilon" in p:
                spent.append((float(p["epsilon"]), float(p["delta"])))
    eps = max((e for e, _ in spent), default=base.privacy.epsilon)
    delta = max((d for _, d in spent), default=None)
    n = len(records)
    return {"trial_epsilon": eps, "trial_delta": delta, "trials": n,
            "study_epsilon_bound": eps * n if eps is not None else None,
            "study_delta_bound": delta * n if delta is not None else None,
            "noise": "independent per trial (each draws a secret noise seed)", "note": PRIVACY_NOTE}


def finish(study: Any, root: Path, base: Recipe, space: dict[str, Distribution], objectives: list[str],
           conf: dict[str, Any], task: str, command: str, wall: float, n_workers: int, threads: int, url: str,
           is_default: bool) -> dict[str, Any]:
    """best/, best.yaml and summary.json (in that order) from the study as it stands (every command's trials);
    ``command`` names this command's trials, for its figures. The caller holds the study dir's lock."""
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
    best["test"] = write_best(root, base.without_tune(), best)
    imp, method = importances(study)
    mine = [r for r in records if r["command"] == command and r["duration_s"] is not None]
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
    if (privacy := privacy_note(base, records, root)) is not None:
        summary["privacy"] = privacy
    write_json(root / "summary.json", summary)
    return summary
