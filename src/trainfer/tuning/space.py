"""Search spaces: the recipe's `tune:` section (or a default one per model), sampled through Optuna.

A space maps dotted recipe keys (``train.lr``) to a Distribution from config.py; a trial's values are
applied to the recipe as ``--set`` overrides would be, so a trial's recipe is an ordinary recipe.
"""

from __future__ import annotations

import json
from typing import Any

from trainfer.config import Distribution, Recipe, _dump_scalar, apply_overrides, check_space, validate
from trainfer.errors import ConfigError

# The default spaces. A small data set's validation split is a few hundred rows (269 on digits: one row is
# 0.37 points), so the best of 30 trials is picked partly by noise and generalizes only as well as the region
# it comes from: each range should hold only settings that are good on small tables and images, with trials
# of seconds. Measured with benchmarks/tune_digits.py on six development splits of digits (seeds 10-15, not
# the acceptance seeds), 30 trials, best.yaml retrained on the same split: the earlier space (lr 3e-4..3e-2,
# no label smoothing) gave a mean test accuracy of 0.978, no better than the untuned recipe (0.978); with
# label smoothing up to 0.2 and lr 1e-3..1e-2 (AdamW's one-cycle peak: 1e-3, 3e-3 and 1e-2 were within 0.1
# point of each other on digits) it gave 0.985, every chosen trial having smoothing 0.06-0.19.
# SGD's useful rates are about ten times AdamW's (general experience, not measured here). Label smoothing
# exists for classification only.
_LR = {"adamw": Distribution(log_uniform=(1e-3, 1e-2)), "sgd": Distribution(log_uniform=(1e-2, 3e-1))}
_WD = Distribution(log_uniform=(1e-5, 1e-1))
_BATCH = Distribution(choice=[32, 64, 128])
_DROPOUT = Distribution(uniform=(0.0, 0.5))
_SMOOTHING = Distribution(uniform=(0.0, 0.2))

# Hidden sizes. pick_best breaks a tie in the validation metric in favour of the cheaper trial, and on a small
# validation split many trials tie at the top, so the cheapest net of the space is often the one chosen. On
# the six development splits the single 128-unit layer was the weakest family on validation (its completed
# trials 0.980 on average against 0.988-0.991 for the two-layer nets; its best 0.993 against 0.996-1.0), so a
# one-objective study searches two-layer nets; with a cost objective (flops, latency) it stays in, as the
# cheap end of the Pareto front. (Measured test accuracy did not move beyond noise: 0.980 on the development
# splits without it against 0.985 with it, two splits of six 3 test rows apart; on digits' default split one
# 128-unit trial tied the best validation accuracy, 268 of 269 rows, and scored 0.959 on test.)
_HIDDEN = Distribution(choice=[[256, 128], [512, 256], [1024, 512]])
_HIDDEN_WITH_COST = Distribution(choice=[[128], [256, 128], [512, 256], [1024, 512]])

DEFAULT_SPACES: dict[str, dict[str, Distribution]] = {
    "mlp": {"model.hidden": _HIDDEN, "model.dropout": _DROPOUT, "train.batch_size": _BATCH,
            "train.weight_decay": _WD},
    "cnn": {"model.channels": Distribution(choice=[[16, 32], [16, 32, 64], [32, 64, 128]]),
            "model.dropout": _DROPOUT, "train.batch_size": _BATCH, "train.weight_decay": _WD},
}
_CUSTOM = {"train.batch_size": _BATCH, "train.weight_decay": _WD}
CLASSIFICATION_ONLY = {"train.label_smoothing": _SMOOTHING}


def default_space(recipe: Recipe, task: str | None = None, objectives: list[str] | None = None) \
        -> dict[str, Distribution]:
    """The space used when the recipe has no `tune:` entries: per built-in model (else the optimizer's
    settings), the learning rate for the recipe's optimizer, and label smoothing for classification.

    ``task`` is "classification" or "regression"; by default the recipe's, or the one its data implies.
    ``objectives`` (default: accuracy alone) with a cost beside accuracy keeps the smallest MLP in the space.
    """
    space = {"train.lr": _LR[recipe.train.optimizer], **DEFAULT_SPACES.get(recipe.model.name, _CUSTOM)}
    if recipe.model.name == "mlp" and objectives is not None and len(objectives) > 1:
        space["model.hidden"] = _HIDDEN_WITH_COST
    if (task or _task(recipe)) == "classification":
        space.update(CLASSIFICATION_ONLY)
    return space


def _task(recipe: Recipe) -> str:
    if recipe.data.task != "auto":
        return recipe.data.task
    from trainfer.tuning.trial import prepared_data  # cached: tune() prepares the same data next

    return str(prepared_data(recipe.without_tune()).features.task)


def space_of(recipe: Recipe, objectives: list[str] | None = None) -> tuple[dict[str, Distribution], bool]:
    """(the search space, whether it is the default one); the default is checked against the recipe too."""
    if recipe.tune is not None and recipe.tune.space:
        return dict(recipe.tune.space), False
    space = default_space(recipe, objectives=objectives)
    try:
        check_space(recipe, space)
    except ValueError as exc:
        raise ConfigError(f"the default search space does not fit this recipe: {exc}",
                          hint="give the recipe a tune: section, e.g. tune: {train.lr: {log_uniform: [1e-4, 3e-2]}}") \
            from None
    return space, True


def _plain(values: list[Any]) -> bool:
    return all(v is None or isinstance(v, bool | int | float | str) for v in values)


def suggest(trial: Any, space: dict[str, Distribution]) -> dict[str, Any]:
    """One value per key from an Optuna trial (list choices travel as JSON text: Optuna stores scalars only)."""
    params: dict[str, Any] = {}
    for key, d in space.items():
        if d.log_uniform is not None:
            params[key] = trial.suggest_float(key, *d.log_uniform, log=True)
        elif d.uniform is not None:
            params[key] = trial.suggest_float(key, *d.uniform)
        elif d.int_uniform is not None:
            params[key] = trial.suggest_int(key, *d.int_uniform)
        elif _plain(d.choice or []):
            params[key] = trial.suggest_categorical(key, d.choice)
        else:
            params[key] = json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in d.choice or []]))
    return params


def decode(space: dict[str, Distribution], stored: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored params back to recipe values (the JSON text of list choices parsed)."""
    out = {}
    for key, value in stored.items():
        d = space.get(key)
        is_json = d is not None and d.choice is not None and not _plain(d.choice) and isinstance(value, str)
        out[key] = json.loads(value) if is_json else value
    return out


def apply(recipe: Recipe, params: dict[str, Any]) -> Recipe:
    """The recipe with a trial's values set, without its tune section: what `trainfer train` would run."""
    raw = recipe.without_tune().model_dump(mode="json", exclude={"tune"})
    return validate(apply_overrides(raw, [f"{k}={_dump_scalar(v)}" for k, v in params.items()]), "trial recipe")


def describe(space: dict[str, Distribution]) -> list[str]:
    """One line per key, as printed at the start of a study."""
    lines = []
    for key, d in space.items():
        kind, value = next(iter(d.to_plain().items()))
        lines.append(f"{key}: {kind} {json.dumps(value)}")
    return lines
