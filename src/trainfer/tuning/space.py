"""Search spaces: the recipe's `tune:` section (or a default one per model), sampled through Optuna.

A space maps dotted recipe keys (``train.lr``) to a Distribution from config.py; a trial's values are
applied to the recipe as ``--set`` overrides would be, so a trial's recipe is an ordinary recipe.
"""

from __future__ import annotations

import json
from typing import Any

from trainfer.config import Distribution, Recipe, _dump_scalar, apply_overrides, check_space, validate
from trainfer.errors import ConfigError

_LR = Distribution(log_uniform=(3e-4, 3e-2))
_WD = Distribution(log_uniform=(1e-5, 1e-1))
_BATCH = Distribution(choice=[32, 64, 128])
_DROPOUT = Distribution(uniform=(0.0, 0.5))

# Ranges that hold the good settings for small tables and images and keep a trial to seconds here.
DEFAULT_SPACES: dict[str, dict[str, Distribution]] = {
    "mlp": {"train.lr": _LR, "train.batch_size": _BATCH,
            "model.hidden": Distribution(choice=[[128], [256, 128], [512, 256], [1024, 512]]),
            "model.dropout": _DROPOUT, "train.weight_decay": _WD},
    "cnn": {"train.lr": _LR, "train.batch_size": _BATCH,
            "model.channels": Distribution(choice=[[16, 32], [16, 32, 64], [32, 64, 128]]),
            "model.dropout": _DROPOUT, "train.weight_decay": _WD},
}
_CUSTOM = {"train.lr": _LR, "train.batch_size": _BATCH, "train.weight_decay": _WD}


def default_space(recipe: Recipe) -> dict[str, Distribution]:
    """The space used when the recipe has no `tune:` entries: per built-in model, else the optimizer's."""
    return dict(DEFAULT_SPACES.get(recipe.model.name, _CUSTOM))


def space_of(recipe: Recipe) -> tuple[dict[str, Distribution], bool]:
    """(the search space, whether it is the default one); the default is checked against the recipe too."""
    if recipe.tune is not None and recipe.tune.space:
        return dict(recipe.tune.space), False
    space = default_space(recipe)
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
