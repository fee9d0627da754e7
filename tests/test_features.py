"""Preprocessing: fit on raw rows, apply with numpy, survive a JSON round trip unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_mixed_frame

from trainfer.errors import DataError, InputError, TrainferError
from trainfer.features import Features, ImageFeatures, TabularFeatures, Target, infer_task


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "age": [20.0, np.nan, 40.0, 30.0, 100.0],
        "city": ["paris", "rome", None, "paris", np.nan],
        "n": [1, 2, 3, 4, 5],
    })


def test_fit_records_numeric_and_categorical_columns(frame: pd.DataFrame) -> None:
    tf = TabularFeatures.fit(frame)
    age, city, n = tf.columns
    assert (age["type"], city["type"], n["type"]) == ("numeric", "categorical", "numeric")
    assert age["fill"] == pytest.approx(35.0)  # median of the values present
    assert city["categories"] == ["paris", "rome"]
    assert city["fill"] == "paris"  # the most frequent value
    assert tf.width == 1 + (2 + 1) + 1  # a one-hot block with an unknown slot
    assert tf.input_shape == (5,)


def test_transform_imputes_and_standardizes(frame: pd.DataFrame) -> None:
    tf = TabularFeatures.fit(frame)
    X = tf.transform(frame)
    assert X.dtype == np.float32 and X.shape == (5, 5)
    assert np.isfinite(X).all()
    age = np.asarray([20.0, 35.0, 40.0, 30.0, 100.0])  # NaN imputed with the median
    np.testing.assert_allclose(X[:, 0], (age - age.mean()) / age.std(), rtol=1e-6)
    np.testing.assert_allclose(X[:, 0].mean(), 0.0, atol=1e-6)
    # city one-hot [paris, rome, unknown]: missing values take the most frequent category
    assert X[:, 1:4].tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]


def test_unknown_category_goes_to_the_unknown_slot(frame: pd.DataFrame) -> None:
    tf = TabularFeatures.fit(frame)
    rows = pd.DataFrame({"age": [25.0], "city": ["tokyo"], "n": [3]})
    X = tf.transform(rows)
    assert X[0, 1:4].tolist() == [0.0, 0.0, 1.0]
    # the same with a list of dicts and with a plain 2-D array in training column order
    assert np.array_equal(tf.transform([{"age": 25.0, "city": "tokyo", "n": 3}]), X)
    assert np.array_equal(tf.transform(np.asarray([[25.0, "tokyo", 3]], dtype=object)), X)


def test_integer_like_categories_match_across_types() -> None:
    tf = TabularFeatures.fit(pd.DataFrame({"code": np.asarray(["3", "4", "3"], dtype=object)}))
    # a CSV may give 3, 3.0 or "3" for the same value
    X = tf.transform([{"code": 3}, {"code": 3.0}, {"code": "3"}, {"code": "5"}])
    assert X.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]]


def test_numeric_array_fast_path_matches_the_general_path() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(50, 4))
    data[3, 1] = np.nan
    df = pd.DataFrame(data, columns=list("abcd"))
    tf = TabularFeatures.fit(df)
    from_frame = tf.transform(df)
    assert np.array_equal(tf.transform(data), from_frame)
    assert np.array_equal(tf.transform(df.to_dict("records")), from_frame)
    assert np.array_equal(tf.transform(data[0]), from_frame[:1])  # one row as a 1-D array


@pytest.mark.parametrize("bad", [
    pd.DataFrame({"age": [1.0], "n": [1]}),  # a column is missing
    [{"age": float("inf"), "city": "rome", "n": 1}],  # infinity
    [{"age": "old", "city": "rome", "n": 1}],  # not a number
    np.zeros((2, 7)),  # wrong width
])
def test_bad_input_raises_input_error(frame: pd.DataFrame, bad: object) -> None:
    tf = TabularFeatures.fit(frame)
    with pytest.raises(InputError):
        tf.transform(bad)


def test_features_json_round_trip_gives_identical_transform(tmp_path: Path) -> None:
    raw = make_mixed_frame(n=120)
    X_raw, y = raw.drop(columns=["label"]), raw["label"].to_numpy()
    features = Features(TabularFeatures.fit(X_raw), Target.fit(y, "classification", "label"))
    again = Features.from_dict(json.loads(json.dumps(features.to_dict())))
    assert again.to_dict() == features.to_dict()
    assert again.kind == "tabular" and again.task == "classification" and again.n_outputs == 3
    unseen = pd.DataFrame({"x1": [0.1, np.nan], "colour": ["purple", None], "x2": [np.nan, -2.0]})
    for X in (X_raw, unseen):
        assert np.array_equal(again.transform(X), features.transform(X))

    path = tmp_path / "features.json"
    features.save(path)
    loaded = Features.load(path)
    assert np.array_equal(loaded.transform(X_raw), features.transform(X_raw))
    assert loaded.target.labels == ["bird", "cat", "dog"]


def test_features_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainferError, match="not found"):
        Features.load(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": 1}')
    with pytest.raises(TrainferError, match="not a valid features file"):
        Features.load(broken)


def test_image_features_round_trip() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 12, 12, 3), dtype=np.uint8)
    f = ImageFeatures.fit(images)
    assert f.input_shape == (3, 12, 12)
    X = f.transform(images)
    assert X.shape == (10, 3, 12, 12) and X.dtype == np.float32
    np.testing.assert_allclose(X.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(X.std(axis=(0, 2, 3)), 1.0, atol=1e-3)
    again = ImageFeatures.from_dict(json.loads(json.dumps(f.to_dict())))
    assert np.array_equal(again.transform(images), X)
    # other sizes are resized; wrong layouts are refused
    assert f.transform(rng.integers(0, 256, size=(2, 20, 20, 3), dtype=np.uint8)).shape == (2, 3, 12, 12)
    with pytest.raises(InputError):
        f.transform(np.zeros((2, 12, 12)))


def test_target_encoding_round_trip() -> None:
    t = Target.fit(np.asarray(["b", "a", "c", "a"], dtype=object), "classification", "y")
    assert t.labels == ["a", "b", "c"]
    assert t.encode(np.asarray(["c", "a"], dtype=object)).tolist() == [2, 0]
    assert t.decode(np.asarray([[0.1, 0.9, 0.0], [2.0, 0.0, 0.0]])).tolist() == ["b", "a"]
    with pytest.raises(DataError, match="not seen in training"):
        t.encode(np.asarray(["z"], dtype=object))
    with pytest.raises(DataError, match="single class"):
        Target.fit(np.asarray(["a", "a"], dtype=object), "classification", "y")
    r = Target.fit(np.asarray([1.0, 3.0]), "regression")
    np.testing.assert_allclose(r.decode(r.encode(np.asarray([1.0, 2.5]))[:, None]), [1.0, 2.5])


@pytest.mark.parametrize(("y", "task"), [
    (np.asarray(["a", "b"], dtype=object), "classification"),
    (np.asarray([0, 1, 2, 1]), "classification"),
    (np.asarray([1.0, 2.0, 1.0]), "classification"),
    (np.asarray([True, False]), "classification"),
    (np.linspace(0, 1, 100), "regression"),
    (np.arange(100), "regression"),
])
def test_infer_task(y: np.ndarray, task: str) -> None:
    assert infer_task(y) == task
