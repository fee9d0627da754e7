"""Recipes: `--set` overrides, YAML files, validation that reports every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainfer.config import Recipe, apply_overrides, build_recipe, validate
from trainfer.errors import ConfigError, TrainferError


def test_set_creates_nested_keys_and_parses_scalars() -> None:
    raw = apply_overrides({}, ["a.b=c", "a.n=3", "a.x=0.5", "a.flag=true", "top=hello"])
    assert raw == {"a": {"b": "c", "n": 3, "x": 0.5, "flag": True}, "top": "hello"}


def test_set_parses_lists_and_nulls() -> None:
    raw = apply_overrides({}, ["model.hidden=[64, 32]", "model.channels=[8,16]", "train.patience=null"])
    assert raw == {"model": {"hidden": [64, 32], "channels": [8, 16]}, "train": {"patience": None}}


def test_set_does_not_mutate_its_input() -> None:
    original = {"train": {"lr": 0.1}}
    out = apply_overrides(original, ["train.lr=0.2"])
    assert original == {"train": {"lr": 0.1}} and out == {"train": {"lr": 0.2}}


def test_set_value_may_contain_equals_sign() -> None:
    assert apply_overrides({}, ["data.source=a=b.csv"]) == {"data": {"source": "a=b.csv"}}


def test_set_into_a_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": {"lr": 0.1}}, ["train.lr.x=1"])


@pytest.mark.parametrize("bad", ["train.lr", "=3", " =3"])
def test_set_without_key_or_value_is_an_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, [bad])


def test_build_recipe_applies_overrides_over_defaults() -> None:
    r = build_recipe(None, ["model.hidden=[32]", "train.patience=null", "train.lr=1e-3", "seed=7"])
    assert isinstance(r, Recipe)
    assert r.model.hidden == [32]
    assert r.train.patience is None
    assert r.train.lr == pytest.approx(1e-3)
    assert r.seed == 7
    assert r.model.channels == Recipe().model.channels  # untouched defaults stay


def test_shortcuts_keep_strings_that_look_like_numbers() -> None:
    r = build_recipe(None, **{"data.source": "2024.csv", "data.target": "2024", "train.epochs": 5})
    assert r.data.target == "2024" and isinstance(r.data.target, str)
    assert r.data.source == "2024.csv"
    assert r.train.epochs == 5


def test_overrides_win_over_shortcuts_and_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  source: iris\ntrain:\n  epochs: 4\n  lr: 0.01\n")
    r = build_recipe(path, ["train.lr=0.02"], **{"train.epochs": 6})
    assert (r.data.source, r.train.epochs, r.train.lr) == ("iris", 6, 0.02)


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_recipe(None, ["train.lrr=0.1"])
    assert "train.lrr" in info.value.message and "unknown key" in info.value.message
    assert info.value.hint


def test_all_problems_reported_at_once_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        validate({"train": {"epochs": "many", "colour": "red"}, "model": {"dropout": 2.0}})
    msg = info.value.message
    assert "3 problems" in msg
    assert "train.colour" in msg and "train.epochs" in msg and "model.dropout" in msg
    assert "\n" not in msg


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        build_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_recipe(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(TrainferError, match="not valid YAML"):
        build_recipe(broken)


def test_recipe_yaml_round_trip() -> None:
    r = build_recipe(None, ["model.hidden=[16, 8]", "train.patience=null", "data.options.n_samples=500"])
    import yaml

    again = validate(yaml.safe_load(r.to_yaml()))
    assert again == r


def test_scientific_notation_in_options_is_a_number() -> None:
    # `--set data.options.noise=1e-3` must mean the number 0.001, as `--set train.lr=1e-3` does.
    # (YAML 1.1 reads `1e-3` as a string; a typed field coerces it, a free-form options dict does not.)
    r = build_recipe(None, ["data.source=synthetic-classification", "data.options.noise=1e-3"])
    assert r.data.options["noise"] == pytest.approx(1e-3)
    from trainfer.data import load_dataset

    assert len(load_dataset(r.data)) == 2000


def _float_fields() -> list[str]:
    """Every float hyperparameter of the recipe, as a dotted key (found from the schema, not listed by hand)."""
    import typing

    keys = []
    for section, field in Recipe.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            for name, f in sub.model_fields.items():
                if float in (f.annotation, *typing.get_args(f.annotation)):
                    keys.append(f"{section}.{name}")
    return keys


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", ".nan", "Infinity", "1e999"])
def test_non_finite_hyperparameters_are_refused_with_the_key_named(value: str) -> None:
    keys = _float_fields()
    assert "train.lr" in keys and "train.grad_clip" in keys and "data.val_fraction" in keys
    for key in keys:
        with pytest.raises(ConfigError) as info:
            build_recipe(None, [f"{key}={value}"])
        assert key in info.value.message and "finite" in info.value.message, (key, info.value.message)


def test_non_finite_hyperparameters_in_a_recipe_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: .inf\n  weight_decay: .nan\n")
    with pytest.raises(ConfigError) as info:
        build_recipe(path)
    assert "2 problems" in info.value.message
    assert "train.lr" in info.value.message and "train.weight_decay" in info.value.message


def test_data_given_where_the_recipe_goes_says_to_use_data(tmp_path: Path) -> None:
    from trainfer.config import load_recipe_file
    from trainfer.errors import ConfigError

    table = tmp_path / "wine.csv"
    table.write_text("a,b\n1,2\n")
    for given in (table, tmp_path):
        with pytest.raises(ConfigError, match="looks like data") as info:
            load_recipe_file(given)
        assert info.value.hint and f"--data {given}" in info.value.hint
