"""The training side: the loop, checkpoints, finished runs and their evaluation (torch lives here)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from trainfer.config import Recipe, build_recipe
from trainfer.training.evaluate import evaluate
from trainfer.training.loop import train_run
from trainfer.training.outputs import check_run_out, replacing
from trainfer.training.run import Run


def train(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    *,
    out: str | Path,
    data: str | None = None,
    target: str | None = None,
    model: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = True,
    overrides: list[str] | None = None,
) -> Run | None:
    """Train a model and return the finished Run (None on the ranks other than 0 of a distributed run).

    Example: ``run = trainfer.train(data="digits", model="mlp", epochs=30, out="runs/digits")``.
    ``recipe`` is a YAML path, a dict or a Recipe; keyword shortcuts and ``overrides``
    (``["train.lr=0.01"]``) change its values. With ``resume=True`` the run continues from its
    last checkpoint, using the recipe recorded in ``out``. With ``force=True`` an existing run at ``out`` is
    replaced once the new one is complete (it is put back if training fails).

    Under torchrun (several ranks) only rank 0 reads or writes ``out``: the other ranks may run on machines
    that do not share its disk, and get the recipe, split and checkpoint from rank 0.
    """
    from trainfer.training.distributed import env_rank

    shortcuts = {"data.source": data, "data.target": target, "model.name": model, "train.epochs": epochs,
                 "seed": seed}
    out = Path(out)
    if (env_rank() or (0, 1))[1] > 1:
        return _train_rank(recipe, out, shortcuts, overrides, resume=resume, force=force, quiet=quiet)
    check_run_out(out, resume=resume, force=force)
    if resume and (out / "recipe.yaml").is_file():
        resolved = _resume_recipe(out, recipe, shortcuts, overrides)
        if (out / "summary.json").is_file():
            return Run.load(out)  # already complete: nothing to do
    else:
        resolved = build_recipe(recipe, overrides, **shortcuts)
    with replacing(out, force and not resume):
        train_run(resolved, out, resume=resume, quiet=quiet)
    return Run.load(out)


def _train_rank(recipe: Any, out: Path, shortcuts: dict[str, Any], overrides: list[str] | None, *, resume: bool,
                force: bool, quiet: bool) -> Run | None:
    """One rank of a distributed run: rank 0 checks, resolves and writes; the others train what it sends."""
    from trainfer.errors import ConfigError, RunError
    from trainfer.training import distributed

    if force:  # each rank would move the old run aside
        raise ConfigError("--force is not available to ranks started by torchrun",
                          hint="use `trainfer train --nproc N --force` (it replaces the run once), or remove the old "
                               "run first")
    writer = distributed.is_writer()
    own: Recipe | None = None
    done = False
    if writer:
        check_run_out(out, resume=resume, force=False)
        if resume and not (out / "recipe.yaml").is_file() and distributed.several_machines():
            # c10d orders the machines by host name, not --node-rank: rank 0 may not be the one with the run, and
            # would otherwise start it again from scratch
            import socket

            raise ConfigError(f"--resume: rank 0 runs on {socket.gethostname()}, which has no run at {out}",
                              hint="without a shared disk, rank 0 must be the machine that holds the run: start "
                                   "torchrun with --node-rank 0 and --master-addr on that machine (static "
                                   "rendezvous), or drop --resume to train from the start")
        if resume and (out / "recipe.yaml").is_file():
            own = _resume_recipe(out, recipe, shortcuts, overrides)
            done = (out / "summary.json").is_file()
        else:
            own = build_recipe(recipe, overrides, **shortcuts)
    elif not resume:  # checked against rank 0's; on --resume the recipe is the one rank 0's run recorded
        own = build_recipe(recipe, overrides, **shortcuts)
    with distributed.session(own) as d:
        if d is None or d.recipe is None:  # _train_rank runs only under torchrun with several ranks
            raise RunError("this process is not one of several torchrun ranks (RANK/WORLD_SIZE)",
                           hint="start it with torchrun, or with `trainfer train --nproc N`")
        if distributed.share_json(done):  # already complete: nothing to do
            return Run.load(out) if writer else None
        with replacing(out, False) if writer else contextlib.nullcontext():
            train_run(d.recipe, out, resume=resume, quiet=quiet)
    return Run.load(out) if writer else None


def _resume_recipe(out: Path, recipe: Any, shortcuts: dict[str, Any], overrides: list[str] | None) -> Recipe:
    from trainfer.errors import ConfigError

    stored = build_recipe(out / "recipe.yaml")
    asked = build_recipe(recipe if recipe is not None else stored, overrides, **shortcuts)
    a, b = stored.model_dump(), asked.model_dump()
    # An optional section (privacy:, tune:) may be a dict on one side and None on the other: compared whole,
    # so that resuming a DP run without its privacy section is refused, not a TypeError.
    both = [sec for sec in a if isinstance(a[sec], dict) and isinstance(b[sec], dict)]
    diff = [f"{sec}.{k}" for sec in both for k in a[sec] if a[sec][k] != b[sec][k]]
    diff += [k for k in a if k not in both and a[k] != b[k]]
    if diff:
        raise ConfigError(f"cannot resume {out} with a different recipe (differs in: {', '.join(diff)})",
                          hint="drop those options to resume as recorded, or train into a new --out")
    return stored


__all__ = ["Run", "evaluate", "train"]
