"""A tuning worker: claims trial slots of this command and runs them on the shared study.

`trainfer tune --workers W` starts W of these as processes (``python -m trainfer.tuning.worker PLAN I``):
threads would share the GIL and torch's thread pool. With one worker it runs in the command's process.
A worker process whose command is gone (killed) finishes its trial and claims no more.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainfer._signals import Held
from trainfer.errors import TrainferError
from trainfer.tuning.trial import INTERRUPTED, Plan, run_trial


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
    # Commands that start at once on a shared database see the same "start"; their salt tells them apart.
    seed = (plan.seed * 1_000_003 + int(plan.extra.get("start", 0)) * 1009 + index
            + int(plan.extra.get("salt", 0)) * 7919) % 2**32
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


def work(plan: Plan, index: int = 0, on_trial: Callable[..., None] | None = None, parent: int | None = None) -> None:
    """Run trials until this command's budget is claimed, its deadline passes, or (with ``parent``) the command's
    process is gone; ``on_trial(study, trial)`` after each.

    Ctrl-C and SIGTERM stop it only while a trial trains (Optuna then records the trial FAIL, as interrupted).
    Landing anywhere else (while Optuna creates a trial, records its result, or reports an epoch) they left the
    trial RUNNING, as if the worker had died, or the database locked by this process: there they wait until
    the database call is done."""
    with Held() as held:
        _work(plan, index, on_trial, parent, held)


def _work(plan: Plan, index: int, on_trial: Callable[..., None] | None, parent: int | None, held: Held) -> None:
    import optuna

    from trainfer.tuning.storage import open_storage, worker_id

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress and failures are reported by the command
    base, dists = plan.base_recipe(), plan.dists()
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.storage),
                              sampler=make_sampler(plan, index), pruner=make_pruner(plan, base.train.epochs))
    me = {**worker_id(), "command": plan.command}

    def objective(trial: Any) -> Any:
        # Who runs the trial, first: if this process dies at any point of it, a command on this machine can tell.
        for k, v in me.items():
            trial.set_user_attr(k, v)
        if held.pending:  # it came while Optuna created the trial
            trial.set_user_attr("fail_reason", INTERRUPTED)
            held.check()
        return run_trial(trial, plan, base, dists, held)

    claims = Path(plan.claims)
    while plan.deadline is None or time.time() < plan.deadline:
        held.check()
        if parent is not None and os.getppid() != parent:
            break  # the command was killed: nobody would write its summary, and a rerun continues the study
        if claim(claims, plan.budget) is None:
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False, show_progress_bar=False,
                       callbacks=[on_trial] if on_trial else None)
    held.check()


def main(argv: list[str]) -> int:
    parent = os.getppid()
    plan = Plan.from_json(Path(argv[1]).read_text())
    try:
        work(plan, int(argv[2]), parent=parent)
    except KeyboardInterrupt:
        return 130  # the command that started this worker reports the interruption
    except TrainferError as exc:  # e.g. the database went away: the command shows this line
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # the traceback stays in the worker's log; the command shows the last line
        traceback.print_exc()
        print(f"error: {reason(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


def reason(exc: BaseException) -> str:
    """Why a worker stopped, in one line: the database's error when there is one in the chain. Optuna 5.0
    hides it when the database goes away as a trial ends: study/_optimize.py's finally reads a variable its
    failed except never set, so the exception that surfaces is an UnboundLocalError."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__module__.startswith("sqlalchemy"):
            text = str(seen).strip()
            return "the study database: " + (text.splitlines()[0] if text else type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
