"""The recipe: one typed, validated description of a training job.

A recipe is YAML; CLI flags and ``--set a.b=c`` overrides change leaf values. Validation
collects every problem and raises once, each line saying what to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    streaming: bool | Literal["auto"] = Field(
        "auto", description="read the data in batches from disk instead of into memory: true, false, or auto "
                            "(above streaming_threshold_mb)")
    streaming_threshold_mb: float = Field(1024.0, gt=0, description="auto streams a file (or image folder) larger "
                                                                     "than this many MiB on disk")

    @field_validator("streaming", mode="before")
    @classmethod
    def _streaming_choice(cls, value: Any) -> Any:
        # pydantic reads 1, "on" or "yes" as true: say what the three values are instead
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"must be true, false or auto, not {value!r}")


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
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes that decode streamed images; "
                                                      "0 decodes in the training process")

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_int(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"must be a whole number of worker processes (0 or more), not {value!r}")
        return value

    # Distributed runs (torchrun / trainfer train --nproc); ignored by a single process.
    sync_bn: bool = Field(False, description="SyncBatchNorm across ranks (CUDA only)")
    dist_timeout_s: float = Field(300.0, gt=0.0, le=86400.0,
                                  description="timeout of every collective: a rank that stops answering "
                                              "fails the others after this long")


class PrivacyConfig(_Strict):
    """The `privacy:` section: train with DP-SGD (Opacus) to a target (ε, δ), or with a given noise multiplier.

    ``privacy: {epsilon: 3.0, delta: auto, max_grad_norm: 1.0, accountant: prv}``. Exactly one of
    ``epsilon`` (the noise is searched to spend at most that over train.epochs) and ``noise_multiplier``.
    Per-example clipping at max_grad_norm replaces train.grad_clip, which is then not used.
    """

    epsilon: float | None = Field(None, description="target ε over train.epochs; smaller is more private")
    noise_multiplier: float | None = Field(None, description="noise std / clipping norm, instead of epsilon")
    delta: float | Literal["auto"] = Field("auto", description="δ; auto = 1/(10·train rows)")
    max_grad_norm: float = Field(1.0, gt=0.0, description="each example's gradient is clipped to this L2 norm")
    accountant: Literal["prv", "rdp"] = Field("prv", description="Opacus accountant that adds up ε")
    # Default None: each run draws a secret seed for its noise and batches, kept only in its checkpoint. The
    # recipe (and its seed) is copied into recipe.yaml and the bundle manifest, so noise seeded from it could be
    # regenerated by anyone holding the bundle, and the (ε, δ) guarantee assumes they cannot.
    noise_seed: int | None = Field(
        None, ge=0, lt=2**64,
        description="seed of the DP noise and Poisson batches; for experiments only: whoever knows it can "
                    "reproduce the noise (default: a secret seed drawn per run, kept only in its checkpoint)")

    @field_validator("epsilon", "noise_multiplier")
    @classmethod
    def _positive(cls, value: float | None, info: Any) -> float | None:
        # --dp-epsilon 0 would ask for infinite noise: say what a usable value looks like
        if value is not None and not value > 0:
            example = "e.g. 3 (stronger privacy) or 8" if info.field_name == "epsilon" else "e.g. 1.0"
            raise ValueError(f"must be above 0, not {value:g} ({example})")
        return value

    @field_validator("delta")
    @classmethod
    def _delta_in_range(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 < value < 1:
            raise ValueError(f"must be between 0 and 1 (exclusive), not {value:g}; or auto for 1/(10·train rows)")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> PrivacyConfig:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            given = "both" if self.epsilon is not None else "neither"
            raise ValueError(f"give exactly one of epsilon (a target ε) and noise_multiplier (got {given})")
        return self


class Distribution(_Strict):
    """One search-space entry: exactly one of the four kinds, e.g. ``{log_uniform: [1e-4, 3e-2]}``."""

    log_uniform: tuple[float, float] | None = Field(None, description="floats, sampled evenly in log scale")
    uniform: tuple[float, float] | None = Field(None, description="floats, sampled evenly")
    int_uniform: tuple[int, int] | None = Field(None, description="integers low..high, both included")
    choice: list[Any] | None = Field(None, description="one of these values (any YAML value, e.g. [256, 128])")

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, raw: Any) -> Any:
        # pydantic would say "a valid dictionary or instance of Distribution": show the syntax instead
        if not isinstance(raw, dict | Distribution):
            raise ValueError(f"{raw!r} is not a distribution; write one of {{log_uniform: [low, high]}}, "
                             "{uniform: [low, high]}, {int_uniform: [low, high]} or {choice: [values]}")
        return raw

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in ("log_uniform", "uniform", "int_uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of log_uniform: [low, high], uniform: [low, high], "
                             f"int_uniform: [low, high] or choice: [values] (got {', '.join(given) or 'none'})")
        if self.choice is not None and not self.choice:
            raise ValueError("choice: [] is empty; list at least one value")
        for kind in ("log_uniform", "uniform", "int_uniform"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind}: [{bounds[0]}, {bounds[1]}] is empty or inverted; low must be below high")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError(f"log_uniform needs a low above 0 (got {self.log_uniform[0]}); use uniform for 0")
        return self

    @property
    def values(self) -> list[Any]:
        """Values that stand for the whole range when checking it against the recipe: ends, or every choice."""
        if self.choice is not None:
            return list(self.choice)
        return list(self.log_uniform or self.uniform or self.int_uniform or ())

    def to_plain(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# Settings of a study that may sit beside the search space in `tune:` (CLI flags override them).
TUNE_SETTINGS = ("trials", "timeout", "workers", "sampler", "pruner", "objectives", "pick", "study_name")


class TuneConfig(_Strict):
    """The `tune:` section: dotted recipe keys with a distribution each, and optional study settings.

    ``tune: {train.lr: {log_uniform: [1e-4, 3e-2]}, model.hidden: {choice: [[128], [256, 128]]}, trials: 30}``
    """

    space: dict[str, Distribution] = Field(default_factory=dict, description="search space: recipe key -> range")
    trials: int | None = Field(None, ge=1, description="trials this command runs (they add to the study's)")
    timeout: float | None = Field(None, gt=0, description="stop starting trials after this many seconds")
    workers: int | None = Field(None, ge=1, le=256, description="worker processes on the same study")
    sampler: Literal["tpe", "random", "nsga2"] | None = None
    pruner: Literal["median", "hyperband", "none"] | None = None
    objectives: Literal["accuracy", "accuracy,flops", "accuracy,latency"] | None = None
    pick: str | None = Field(None, description="'most-accurate' or 'fastest-within=POINTS'")
    study_name: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("trials", "workers", "timeout", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # pydantic reads `trials: true` as 1 and `timeout: yes` as 1.0: a slip of the YAML, not a number
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return value

    @model_validator(mode="before")
    @classmethod
    def _flat_space(cls, raw: Any) -> Any:
        # The YAML is flat (`train.lr: {...}` beside `trials: 30`): dotted keys are the search space.
        if not isinstance(raw, dict | TuneConfig):
            raise ValueError(f"{raw!r} is not a search space; tune: maps dotted recipe keys to distributions, "
                             "e.g. tune: {train.lr: {log_uniform: [1e-4, 3e-2]}}")
        if not isinstance(raw, dict) or "space" in raw:
            return raw
        space = {k: v for k, v in raw.items() if "." in str(k)}
        return {**{k: v for k, v in raw.items() if "." not in str(k)}, "space": space}

    def flat(self) -> dict[str, Any]:
        settings = {k: getattr(self, k) for k in TUNE_SETTINGS if getattr(self, k) is not None}
        return {**{k: d.to_plain() for k, d in self.space.items()}, **settings}


class Recipe(_Strict):
    seed: int = Field(0, ge=0, le=2**32 - 1)  # torch, numpy and the batch order all take it
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig | None = Field(None, description="search space for `trainfer tune`; ignored by train")
    privacy: PrivacyConfig | None = Field(None, description="differentially private training (DP-SGD)")

    @model_validator(mode="after")
    def _space_fits_recipe(self) -> Recipe:
        if self.tune is not None:
            check_space(self, self.tune.space)
        return self

    def to_yaml(self) -> str:
        raw = self.model_dump(mode="json", exclude={"tune"} | ({"privacy"} if self.privacy is None else set()))
        if self.tune is not None:
            raw["tune"] = self.tune.flat()
        return yaml.safe_dump(raw, sort_keys=False)

    def without_tune(self) -> Recipe:
        return self.model_copy(update={"tune": None})


# Keys that choose the data and its split: a study judges every trial on the same validation rows and never
# shows one the test rows, so these stay fixed (data.image_size, a preprocessing choice, may be tuned).
FIXED_IN_A_STUDY = ("data.source", "data.target", "data.task", "data.val_fraction", "data.test_fraction",
                    "data.id_column", "data.drop", "data.options")


def check_space(recipe: Recipe, space: dict[str, Distribution]) -> None:
    """Every key names a recipe value, and every end of its range (every choice) is valid there.

    Raises ValueError with one line per problem, naming the key (pydantic adds the `tune` location).
    """
    base = recipe.model_dump(mode="json", exclude={"tune"})
    problems = []
    for key, dist in space.items():
        if key in FIXED_IN_A_STUDY or key.startswith("data.options."):
            problems.append(f"tune.{key}: the data and its split stay fixed in a study (every trial is judged on "
                            "the same validation rows, and none sees the test rows); remove it from tune:")
            continue
        parts = key.split(".")
        node: Any = base
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            problems.append(f"tune.{key}: not a recipe value; use a dotted key such as train.lr or model.hidden")
            continue
        for value in dist.values:
            try:
                Recipe.model_validate(apply_overrides(base, [f"{key}={_dump_scalar(value)}"]))
            except (ValidationError, ConfigError) as exc:
                why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                problems.append(f"tune.{key}: {value!r} is not a valid value there ({why})")
                break
    if problems:
        raise ValueError("; ".join(problems))


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
        if parts[0] == "tune" and len(parts) > 2:  # tune: is flat, its keys dotted: --set tune.train.lr={uniform: ..}
            nested = isinstance(out.get("tune"), dict) and "space" in out["tune"]  # a Recipe object's dump
            parts = ["tune", *(["space"] if nested else []), ".".join(parts[1:])]
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
            where = ".".join(str(p) for p in err["loc"]).replace("tune.space.", "tune.") or "(top level)"
            if err["type"] == "extra_forbidden":
                lines.append(f"{where}: unknown key; remove it or check its spelling")
            elif err["type"] == "value_error":  # our own validators: the message names the key already
                msg = err["msg"].removeprefix("Value error, ")
                lines.append(msg if where == "(top level)" else f"{where}: {msg}")
            else:
                got = err.get("input")
                shown = "" if isinstance(got, dict) else f" (got {got!r})"
                lines.append(f"{where}: {err['msg']}{shown}")
        about_tune = all(line.startswith("tune") for line in lines)
        raise ConfigError(
            f"{origin} is invalid ({len(lines)} problem{'s' if len(lines) > 1 else ''}): "
            + "; ".join(lines),
            hint="see `trainfer tune --help` for the search-space syntax, and examples/digits-tuned.yaml"
            if about_tune else "see `trainfer train --help` and examples/ for valid keys",
        ) from None


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict (not yet validated)."""
    path = Path(path)
    if path.is_dir() and (path / "best.yaml").is_file():  # a study dir, not data
        raise ConfigError(f"{path} is a tuning study; the first argument is a YAML recipe",
                          hint=f"its best trial's recipe is {path / 'best.yaml'}")
    if path.suffix.lower() in (".csv", ".parquet", ".npz", ".tsv") or path.is_dir():
        # `trainfer train data.csv`: the first argument is the recipe; data goes to --data
        raise ConfigError(f"{path} looks like data, and the first argument is a YAML recipe",
                          hint=f"pass it as --data {path} (with --target COLUMN for a table); `trainfer run` takes "
                               f"only a recipe: set data.source: {path} in it, or add --set data.source={path}")
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}", hint="pass a path to a .yaml recipe")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, train), not {type(raw).__name__}")
    if "tune" in raw and raw["tune"] is None:  # `tune:` with every line commented out: tuned, default space
        raw["tune"] = {}  # (it was no section at all, and `trainfer run` trained instead of tuning)
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
