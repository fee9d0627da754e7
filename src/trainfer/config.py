"""The recipe: one typed, validated description of a training job.

A recipe is YAML; CLI flags and ``--set a.b=c`` overrides change leaf values. Validation
collects every problem and raises once, each line saying what to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainfer.errors import ConfigError


class _Strict(BaseModel):
    # allow_inf_nan=False: an lr of inf or a clip of nan passes every bound check (nan compares false)
    # and only shows up later as NaN weights; refuse it here, with the key named, for every float field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Strict):
    source: str = Field("digits", description="built-in name or path (csv, parquet, npz, image folder)")
    target: str | None = Field(None, description="target column for csv/parquet")
    task: Literal["auto", "classification", "regression"] = "auto"
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    image_size: int = Field(32, ge=4, le=1024, description="images are resized to this square size")
    id_column: str | None = Field(None, description="kept out of the features, carried into predictions")
    drop: list[str] = Field(default_factory=list, description="columns to ignore")
    options: dict[str, Any] = Field(default_factory=dict, description="generator options, e.g. n_samples")


class ModelConfig(_Strict):
    name: str = Field("mlp", description="mlp, cnn, or package.module:function")
    # 0 or negative widths crashed deep in torch; a million-unit layer tried to allocate tens of GB
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [256, 128],
                                                                description="mlp hidden sizes")
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], description="cnn stage widths")
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    batchnorm: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a custom model")


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm; null disables")
    patience: int | None = Field(10, ge=1, description="early-stopping patience in epochs; null disables")
    min_delta: float = Field(0.0, ge=0.0)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: torch's")
    eval_batch_size: int = Field(1024, ge=1)


class Recipe(_Strict):
    seed: int = Field(0, ge=0, le=2**32 - 1)  # torch, numpy and the batch order all take it
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _parse_scalar(text: str) -> Any:
    # YAML gives `3` -> int, `1e-3` -> float, `null`, `true`, `[64, 32]` -> list; strings stay strings.
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and text.strip()[:1] not in ("'", '"'):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings to a nested dict (a copy), creating dicts as needed."""
    out = _deepcopy(raw)
    errors = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"--set {item!r}: expected key=value, e.g. --set train.lr=0.01")
            continue
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                errors.append(f"--set {item!r}: {part!r} is a value, not a section")
                break
            node = child
        else:
            node[parts[-1]] = _parse_scalar(value)
    if errors:
        raise ConfigError("\n".join(errors))
    return out


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def validate(raw: dict[str, Any], origin: str = "recipe") -> Recipe:
    """Validate a nested dict into a Recipe, reporting every problem at once."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                lines.append(f"{where}: unknown key; remove it or check its spelling")
            else:
                got = err.get("input")
                shown = "" if isinstance(got, dict) else f" (got {got!r})"
                lines.append(f"{where}: {err['msg']}{shown}")
        raise ConfigError(
            f"{origin} is invalid ({len(lines)} problem{'s' if len(lines) > 1 else ''}): "
            + "; ".join(lines),
            hint="see `trainfer train --help` and examples/ for valid keys",
        ) from None


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict (not yet validated)."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".parquet", ".npz", ".tsv") or path.is_dir():
        # `trainfer train data.csv`: the first argument is the recipe; data goes to --data
        raise ConfigError(f"{path} looks like data, and the first argument is a YAML recipe",
                          hint=f"pass it as --data {path} (with --target COLUMN for a table)")
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}", hint="pass a path to a .yaml recipe")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, train), not {type(raw).__name__}")
    return raw


def build_recipe(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    overrides: list[str] | None = None,
    **fields: Any,
) -> Recipe:
    """Merge a recipe (file, dict or Recipe), flat field shortcuts and ``--set`` overrides.

    Shortcuts use dotted names: ``build_recipe(None, **{"data.source": "iris"})``.
    """
    if isinstance(recipe, Recipe):
        raw = recipe.model_dump(mode="json")
        origin = "recipe"
    elif isinstance(recipe, dict):
        raw, origin = recipe, "recipe"
    elif recipe is None:
        raw, origin = {}, "recipe"
    else:
        raw, origin = load_recipe_file(recipe), str(recipe)
    shortcut = [f"{k}={_dump_scalar(v)}" for k, v in fields.items() if v is not None]
    raw = apply_overrides(raw, shortcut + list(overrides or []))
    return validate(raw, origin)


def _dump_scalar(value: Any) -> str:
    # Round-trips through _parse_scalar: strings stay strings even when they look like numbers.
    if isinstance(value, str):
        return yaml.safe_dump(value, default_style='"').strip()
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
