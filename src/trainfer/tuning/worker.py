"""A tuning worker: claims trial slots of this command and runs them on the shared study.

`trainfer tune --workers W` starts W of these as processes (``python -m trainfer.tuning.worker PLAN``):
threads would share the GIL and torch's thread pool. With one worker it runs in the command's process.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainfer.tuning.trial import Plan, run_trial


def claim(claims: Path, budget: int) -> int | None:
    """Take the next free slot of this command's budget (an exclusively created file), or None when all are taken.

    Creating a file with O_EXCL is atomic on every local file system, so W workers run exactly ``budget``
    trials between them, however long each takes.
    """
    for k in range(budget):
        try:
            fd = os.open(claims / f"{k:06d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return k
    return None


def make_sampler(plan: Plan, index: int) -> Any:
    import optuna

    # Workers, and later commands on the same study, must not propose the same values: each its own stream.
    seed = (plan.seed * 1_000_003 + int(plan.extra.get("start", 0)) * 1009 + index) % 2**32
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if plan.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # TPE (multivariate, Optuna's default for one objective) after 8 random trials, a quarter of the default
    # budget of 30. constant_liar: a running trial counts as a poor result, so parallel workers spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=plan.workers > 1, n_startup_trials=8)


def warmup_epochs(recipe: dict[str, Any], epochs: int) -> int:
    """Epochs before the pruner may judge a trial: half the learning-rate warm-up, and at least 3.

    Early in its warm-up a trial's accuracy says more about its learning rate and steps per epoch than about
    where it ends. Measured on six development splits of digits (30 epochs, one-cycle warm-up to epoch 6,
    benchmarks/tune_digits.py): judging from epoch 3 (half the warm-up) or from epoch 7 (after it), the
    studies' best.yaml scored the same test accuracy (0.985 and 0.984 on average, the same best trial on
    three splits), but from epoch 7 fewer trials were pruned (27-77% against 40-80%) and studies took longer.
    """
    train = recipe.get("train", {})
    if train.get("schedule", "onecycle") == "constant":
        return 3
    return max(3, math.ceil(epochs * float(train.get("warmup_fraction", 0.2)) / 2))


def make_pruner(plan: Plan, epochs: int) -> Any:
    import optuna

    if plan.pruner == "none" or len(plan.objectives) > 1:
        return optuna.pruners.NopPruner()
    warmup = warmup_epochs(plan.recipe, epochs)
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup, max_resource=max(epochs, warmup + 1),
                                              reduction_factor=3)
    # Against the median of 5 completed trials at the same epoch (before that, nothing to compare with).
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)


def work(plan: Plan, index: int = 0, on_trial: Callable[..., None] | None = None) -> None:
    """Run trials until this command's budget is claimed or its deadline passes; ``on_trial(study, trial)``
    after each."""
    import optuna

    from trainfer.tuning.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress and failures are reported by the command
    base, dists = plan.base_recipe(), plan.dists()
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.storage),
                              sampler=make_sampler(plan, index), pruner=make_pruner(plan, base.train.epochs))
    claims = Path(plan.claims)
    while plan.deadline is None or time.time() < plan.deadline:
        if claim(claims, plan.budget) is None:
            break
        study.optimize(lambda t: run_trial(t, plan, base, dists), n_trials=1, catch=(Exception,),
                       gc_after_trial=False, show_progress_bar=False, callbacks=[on_trial] if on_trial else None)


def main(argv: list[str]) -> int:
    plan = Plan.from_json(Path(argv[1]).read_text())
    try:
        work(plan, int(argv[2]))
    except KeyboardInterrupt:
        return 130  # the command that started this worker reports the interruption
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
