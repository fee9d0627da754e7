"""One trial: the recipe with the trial's values, trained by the ordinary loop into trials/NNNN.

The loop's epoch hook reports the validation metric to the pruner; only the train and validation
splits are prepared, so the test split is never read while tuning.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainfer._signals import Held
from trainfer.config import Distribution, Recipe, build_recipe
from trainfer.errors import TrainferError
from trainfer.tuning.space import apply, suggest

TUNING_SPLITS = ("train", "val")
INTERRUPTED = "interrupted (Ctrl-C)"


@dataclass
class Plan:
    """Everything a worker process needs, as JSON: it is handed to `python -m trainfer.tuning.worker`."""

    study_dir: str
    storage: str
    study_name: str
    recipe: dict[str, Any]  # the base recipe, without its tune section
    space: dict[str, dict[str, Any]]
    objectives: list[str]
    sampler: str
    pruner: str
    seed: int
    threads: int
    budget: int  # trials this command runs, shared by its workers through claim files
    deadline: float | None  # time.time() after which no trial starts
    claims: str
    workers: int = 1
    # Which command a trial ran for (a user attr of the trial): the numbers do not tell, since a retry queued at
    # the start has a number below the first new one, and other commands on a shared database number on.
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))

    def base_recipe(self) -> Recipe:
        return build_recipe(self.recipe)

    def dists(self) -> dict[str, Distribution]:
        return {k: Distribution.model_validate(v) for k, v in self.space.items()}


_PREPARED: dict[str, Any] = {}  # one worker trains many trials on the same data: prepared once


def prepared_data(recipe: Recipe) -> Any:
    from trainfer.data import prepare

    key = json.dumps([recipe.data.model_dump(mode="json"), recipe.seed], sort_keys=True)
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = prepare(recipe.data, recipe.seed, splits=TUNING_SPLITS)
    return _PREPARED[key]


def run_trial(trial: Any, plan: Plan, base: Recipe, dists: dict[str, Distribution], held: Held | None = None) -> Any:
    """Optuna's objective: train one trial, return its validation metric (and cost, for two objectives).

    Ctrl-C stops it at once while it trains or measures (``held.acting()``), never inside a database call."""
    try:
        return _run_trial(trial, plan, base, dists, held or Held(()))
    except KeyboardInterrupt:  # while training or measuring: Optuna then records the trial FAIL,
        trial.set_user_attr("fail_reason", INTERRUPTED)  # and a finished trial's attributes are read-only
        raise


def _run_trial(trial: Any, plan: Plan, base: Recipe, dists: dict[str, Distribution], held: Held) -> Any:
    import optuna

    params = suggest(trial, dists)
    rel = f"trials/{trial.number:04d}"
    trial.set_user_attr("run", rel)
    out = Path(plan.study_dir) / rel
    try:
        with held.acting():
            summary, flops, metric = _train(trial, plan, base, params, out, held)
    except TrainferError as exc:
        trial.set_user_attr("fail_reason", exc.message)
        raise
    except Exception as exc:
        trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
        raise
    value = summary["val"][metric]
    attrs = {"metric": metric, "val": summary["val"], "train": summary["train"], "params": summary["params"],
             "flops": flops, "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
             "stopped_by": summary["stopped_by"], "train_s": summary["timings"]["total_s"], "threads": plan.threads}
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if summary["stopped_by"] and summary["stopped_by"].startswith("pruned"):
        raise optuna.TrialPruned(f"{summary['stopped_by']} at epoch {summary['epochs_run']}")
    if plan.objectives == ["accuracy"]:
        return value
    if plan.objectives == ["accuracy", "flops"]:
        return value, float(flops)
    from trainfer.tuning.cost import measure

    try:
        with held.acting():
            cost = measure(out, plan)  # latency_ms, and the raw p50 and reference it came from
    except TrainferError as exc:
        trial.set_user_attr("fail_reason", f"latency: {exc.message}")
        raise
    for k, v in cost.items():
        trial.set_user_attr(k, v)
    return value, cost["latency_ms"]


def _train(trial: Any, plan: Plan, base: Recipe, params: dict[str, Any], out: Path,
           held: Held) -> tuple[dict[str, Any], int, str]:
    import torch

    from trainfer.models import build_model
    from trainfer.models.flops import forward_flops
    from trainfer.training.loop import fit
    from trainfer.training.metrics import monitor

    recipe = apply(base, params)
    # The worker's share of the CPUs, whatever the recipe says: W workers x threads never oversubscribe.
    run_recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"threads": plan.threads})})
    data = prepared_data(recipe)
    metric, _ = monitor(data.features.task)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, data.features.input_shape, data.features.n_outputs)
    prune = len(plan.objectives) == 1 and plan.pruner != "none"

    def on_epoch(record: dict[str, Any]) -> str | None:
        if not prune:
            return None
        with held.holding():  # a database call: Ctrl-C waits for it, then stops the epoch loop
            trial.report(record[f"val_{metric}"], record["epoch"])
            pruned = trial.should_prune()
        return f"pruned by the {plan.pruner} pruner" if pruned else None

    if out.exists():  # a number is used once per study: whatever is there is from an older study
        shutil.rmtree(out)
    summary = fit(model, data, run_recipe, out, quiet=True, on_epoch=on_epoch, splits=TUNING_SPLITS)
    flops = forward_flops(model, data.features.input_shape)
    return summary, flops, metric


def directions(task: str, objectives: list[str]) -> list[str]:
    from trainfer.training.metrics import monitor

    _, mode = monitor(task)
    first = "maximize" if mode == "max" else "minimize"
    return [first] + ["minimize"] * (len(objectives) - 1)
