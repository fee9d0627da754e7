"""The torch-free runtime: bundle verification, loading without torch, and bad input (issue 3, parts 2, 3, 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _inference_fixtures import (
    CSV_LABELS,
    assert_ran_without_torch,
    copy_bundle,
    flip_byte,
    get_run,
    make_animals,
    run_without_torch,
)

import trainfer
from trainfer.errors import BundleError, InputError


@pytest.fixture(scope="module")
def digits(digits_bundle: Path):
    return trainfer.load(digits_bundle)


@pytest.fixture(scope="module")
def animals(csv_bundle: Path):
    return trainfer.load(csv_bundle)


@pytest.fixture(scope="module")
def images(cnn_bundle: Path):
    return trainfer.load(cnn_bundle)


@pytest.fixture(scope="module")
def digits_X(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    X, _ = get_run(tmp_path_factory, "digits").load_split("test")
    return X.to_numpy(dtype=np.float64)[:10]


@pytest.fixture(scope="module")
def rows():
    """Raw animal rows without missing values (a DataFrame of the feature columns)."""
    frame = make_animals(40, seed=5).dropna().reset_index(drop=True)
    return frame[["x1", "colour", "x2"]].iloc[:8].reset_index(drop=True)


def _records(frame) -> list[dict]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame.to_dict("records")]


# ---- verification: any changed byte is refused, naming the file --------------------------------

def _load_error(bundle: Path) -> str:
    with pytest.raises(trainfer.TrainferError) as info:
        trainfer.load(bundle)
    assert isinstance(info.value, BundleError)
    return str(info.value)


def test_untouched_copy_loads(digits_bundle: Path, tmp_path: Path, digits_X: np.ndarray) -> None:
    copy = copy_bundle(digits_bundle, tmp_path / "b")
    np.testing.assert_array_equal(trainfer.load(copy).predict(digits_X), trainfer.load(digits_bundle).predict(digits_X))


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_one_changed_byte_in_model_is_refused(digits_bundle: Path, tmp_path: Path, where: float) -> None:
    b = copy_bundle(digits_bundle, tmp_path / "b")
    size = (b / "model.onnx").stat().st_size
    flip_byte(b / "model.onnx", min(int(size * where), size - 1))
    msg = _load_error(b)
    assert "model.onnx" in msg and "sha256" in msg


def _manifest_offset(raw: bytes, needle: bytes, shift: int = 0) -> int:
    i = raw.find(needle)
    assert i >= 0, needle
    return i + shift


@pytest.mark.parametrize("change", ["string-value", "whitespace", "number", "self-hash", "self-hash-non-hex",
                                    "file-hash"])
def test_one_changed_byte_in_manifest_is_refused(digits_bundle: Path, tmp_path: Path, change: str) -> None:
    b = copy_bundle(digits_bundle, tmp_path / "b")
    path = b / "manifest.json"
    raw = path.read_bytes()
    if change == "string-value":  # "onnx-fp32" -> "onnx-fp33": still valid JSON
        flip_byte(path, _manifest_offset(raw, b'"onnx-fp32"', len('"onnx-fp3')), ord("3"))
    elif change == "whitespace":  # one indentation space becomes a tab: still valid JSON, same content
        offset = _manifest_offset(raw, b'\n  "task"', 1)
        flip_byte(path, offset, ord("\t"))
        assert json.loads(path.read_bytes()) == json.loads(raw)
    elif change == "number":
        flip_byte(path, _manifest_offset(raw, b'"format_version": 1', len('"format_version": ')), ord("0"))
    elif change == "self-hash":
        start = _manifest_offset(raw, b'"manifest_sha256": "', len('"manifest_sha256": "'))
        flip_byte(path, start, ord("0") if raw[start:start + 1] != b"0" else ord("1"))
    elif change == "self-hash-non-hex":
        flip_byte(path, _manifest_offset(raw, b'"manifest_sha256": "', len('"manifest_sha256": "')), ord("x"))
    else:  # the listed hash of model.onnx
        digest = json.loads(raw)["files"]["model.onnx"].encode()
        i = _manifest_offset(raw, digest)
        flip_byte(path, i, ord("0") if raw[i:i + 1] != b"0" else ord("1"))
    msg = _load_error(b)
    assert "manifest.json" in msg


def test_missing_model_is_refused(digits_bundle: Path, tmp_path: Path) -> None:
    b = copy_bundle(digits_bundle, tmp_path / "b")
    (b / "model.onnx").unlink()
    msg = _load_error(b)
    assert "model.onnx" in msg and "missing" in msg


def test_missing_manifest_and_missing_bundle_are_refused(digits_bundle: Path, tmp_path: Path) -> None:
    b = copy_bundle(digits_bundle, tmp_path / "b")
    (b / "manifest.json").unlink()
    assert "manifest.json" in _load_error(b)
    assert "not found" in _load_error(tmp_path / "nowhere")


def test_model_replaced_by_another_bundles_model_is_refused(digits_bundle: Path, csv_bundle: Path,
                                                            tmp_path: Path) -> None:
    b = copy_bundle(digits_bundle, tmp_path / "b")
    (b / "model.onnx").write_bytes((csv_bundle / "model.onnx").read_bytes())
    assert "model.onnx" in _load_error(b)


# ---- no torch at inference ----------------------------------------------------------------------

def test_runtime_loads_and_predicts_with_torch_unimportable(digits_bundle: Path, csv_bundle: Path,
                                                            cnn_bundle: Path, tmp_path: Path,
                                                            digits_X: np.ndarray, rows) -> None:
    from PIL import Image

    np.save(tmp_path / "digits.npy", digits_X)
    img = tmp_path / "img.png"
    Image.fromarray(np.full((20, 20, 3), 120, dtype=np.uint8)).save(img)
    expected = {
        "digits": trainfer.load(digits_bundle).predict(digits_X).tolist(),
        "csv": trainfer.load(csv_bundle).predict(rows).tolist(),
        "cnn": trainfer.load(cnn_bundle).predict([img]).tolist(),
    }
    (tmp_path / "rows.json").write_text(json.dumps(_records(rows)))
    proc = run_without_torch(f"""
        import json
        import numpy as np
        import trainfer
        got = {{}}
        got["digits"] = trainfer.load({str(digits_bundle)!r}).predict(np.load({str(tmp_path / "digits.npy")!r}))
        records = json.load(open({str(tmp_path / "rows.json")!r}))
        animals = trainfer.load({str(csv_bundle)!r})
        got["csv"] = animals.predict(records)
        assert animals.predict_proba(records).shape == (len(records), 3)
        got["cnn"] = trainfer.load({str(cnn_bundle)!r}).predict([{str(img)!r}])
        print("PREDICTIONS", json.dumps({{k: v.tolist() for k, v in got.items()}}))
    """)
    out = assert_ran_without_torch(proc)
    line = next(x for x in out.splitlines() if x.startswith("PREDICTIONS "))
    assert json.loads(line[len("PREDICTIONS "):]) == expected


def test_runtime_package_imports_no_training_code() -> None:
    """The layer rule behind the torch-free runtime: runtime/ and features/ never import train/ or export/."""
    import ast

    src = Path(trainfer.__file__).parent
    offenders = []
    for pkg in ("runtime", "features"):
        for f in sorted((src / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for n in names:
                    if n.split(".")[0] == "torch" or n.startswith(("trainfer.training", "trainfer.exporting",
                                                                     "trainfer.models", "trainfer.data")):
                        offenders.append(f"{f.relative_to(src)}: {n}")
    assert not offenders, offenders


# ---- predict / predict_proba: the input forms ---------------------------------------------------

def test_dataframe_records_dict_and_array_agree(animals, rows) -> None:
    want = animals.predict_proba(rows)
    assert want.shape == (len(rows), 3) and np.isfinite(want).all()
    np.testing.assert_allclose(want.sum(axis=1), 1.0, atol=1e-5)
    recs = _records(rows)
    np.testing.assert_array_equal(animals.predict_proba(recs), want)
    np.testing.assert_array_equal(animals.predict_proba(rows.to_numpy(dtype=object)), want)
    np.testing.assert_array_equal(animals.predict_proba(recs[3])[0], want[3])
    labels = animals.predict(rows)
    assert animals.labels == CSV_LABELS
    assert labels.tolist() == [CSV_LABELS[i] for i in want.argmax(axis=1)]


def test_digits_array_forms_agree(digits, digits_X: np.ndarray) -> None:
    want = digits.predict_proba(digits_X)
    np.testing.assert_allclose(digits.predict_proba(digits_X.astype(np.float32)), want, atol=1e-6)
    np.testing.assert_allclose(digits.predict_proba(digits_X.tolist()), want, atol=1e-6)
    np.testing.assert_allclose(digits.predict_proba(digits_X[0])[0], want[0], atol=1e-6)  # one row, 1-D
    original = digits_X.copy()
    digits.predict(digits_X)
    np.testing.assert_array_equal(digits_X, original)  # the caller's array is not modified


def test_predict_proba_is_deterministic_and_batch_independent(digits, digits_X: np.ndarray) -> None:
    whole = digits.predict_proba(digits_X)
    one_by_one = np.concatenate([digits.predict_proba(digits_X[i:i + 1]) for i in range(len(digits_X))])
    np.testing.assert_allclose(one_by_one, whole, atol=1e-6)
    np.testing.assert_array_equal(digits.predict_proba(digits_X), whole)


# ---- bad input: a defined prediction or an InputError naming row and column ---------------------

def _input_error(fn, *args) -> InputError:
    with pytest.raises(InputError) as info:
        fn(*args)
    assert isinstance(info.value, trainfer.TrainferError)
    return info.value


def _defined(proba: np.ndarray, n: int, k: int = 3) -> None:
    assert proba.shape == (n, k)
    assert np.isfinite(proba).all(), proba
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_missing_column_in_dataframe(animals, rows) -> None:
    err = _input_error(animals.predict, rows.drop(columns=["x2"]))
    assert "x2" in str(err) and "missing" in str(err)


def test_missing_column_in_records_names_row_and_column(animals, rows) -> None:
    recs = _records(rows)
    del recs[2]["colour"]
    err = _input_error(animals.predict, recs)
    assert err.row == 2
    assert "row 2" in str(err) and "colour" in str(err)


def test_extra_columns_are_ignored(animals, rows) -> None:
    wider = rows.assign(extra=np.arange(len(rows)), note="hello", id=range(len(rows)))
    wider = wider[["note", "x2", "extra", "colour", "id", "x1"]]  # other order, extra columns
    np.testing.assert_array_equal(animals.predict_proba(wider), animals.predict_proba(rows))
    recs = [{**r, "extra": 1.5, "label": "dog"} for r in _records(rows)]
    assert animals.predict(recs).tolist() == animals.predict(rows).tolist()


@pytest.mark.parametrize("form", ["dataframe", "records"])
def test_non_number_in_numeric_column_names_row_and_column(animals, rows, form: str) -> None:
    bad = rows.astype({"x1": object})
    bad.loc[5, "x1"] = "abc"
    err = _input_error(animals.predict, bad if form == "dataframe" else _records(bad))
    assert (err.row, err.column) == (5, "x1")
    assert "row 5" in str(err) and "'x1'" in str(err) and "abc" in str(err)


def test_non_number_in_digits_array_names_row_and_column(digits, digits_X: np.ndarray) -> None:
    bad = digits_X.astype(object)
    bad[3, 10] = "seven"
    err = _input_error(digits.predict, bad)
    assert (err.row, err.column) == (3, digits.features.inputs.column_names[10])
    assert "row 3" in str(err) and "seven" in str(err)


@pytest.mark.parametrize("missing", [np.nan, None, ""])
def test_missing_numeric_value_is_imputed(animals, rows, missing) -> None:
    recs = _records(rows)
    recs[1]["x2"] = missing
    proba = animals.predict_proba(recs)
    _defined(proba, len(recs))
    # imputation uses the training median: the same as sending that median
    fill = next(c["fill"] for c in animals.features.inputs.columns if c["name"] == "x2")
    recs[1]["x2"] = fill
    np.testing.assert_allclose(proba, animals.predict_proba(recs), atol=1e-6)
    assert all(isinstance(v, str) for v in animals.predict([{**recs[1], "x2": missing}]))


def test_nan_in_numeric_array_is_imputed(digits, digits_X: np.ndarray) -> None:
    X = digits_X.copy()
    X[2, 20] = np.nan
    proba = digits.predict_proba(X)
    _defined(proba, len(X), 10)
    X[2, 20] = digits.features.inputs.columns[20]["fill"]
    np.testing.assert_allclose(proba, digits.predict_proba(X), atol=1e-6)


def test_nan_in_dataframe_is_imputed(animals, rows) -> None:
    holes = rows.copy()
    holes.loc[0, "x1"] = np.nan
    holes.loc[4, "colour"] = np.nan
    _defined(animals.predict_proba(holes), len(holes))


@pytest.mark.parametrize("value", [np.inf, -np.inf, "inf"])
def test_infinity_names_row_and_column(animals, rows, value) -> None:
    bad = rows.astype({"x2": object})
    bad.loc[6, "x2"] = value
    err = _input_error(animals.predict, bad)
    assert (err.row, err.column) == (6, "x2")
    assert "row 6" in str(err) and "'x2'" in str(err)


def test_infinity_in_numeric_array_names_row_and_column(digits, digits_X: np.ndarray) -> None:
    X = digits_X.copy()
    X[4, 9] = -np.inf
    err = _input_error(digits.predict, X)
    assert (err.row, err.column) == (4, digits.features.inputs.column_names[9])
    assert "row 4" in str(err)


@pytest.mark.parametrize("value", [1e300, -1e300, 1e39])
def test_huge_finite_value_gives_prediction_or_input_error(digits, animals, digits_X: np.ndarray, rows,
                                                           value: float) -> None:
    """A finite value too large for float32 must not turn into inf inside the model (NaN probabilities,
    and a silently wrong argmax): either it is rejected naming row and column, or the prediction is defined."""
    X = digits_X.copy()
    X[1, 30] = value
    recs = _records(rows)
    recs[2]["x1"] = value
    for pred, data, row, col, k in ((digits, X, 1, digits.features.inputs.column_names[30], 10),
                                    (animals, recs, 2, "x1", 3)):
        try:
            proba = pred.predict_proba(data)
        except InputError as err:
            assert (err.row, err.column) == (row, col)
        else:
            _defined(proba, len(data), k)


def test_unseen_category_goes_to_the_unknown_bucket(animals, rows) -> None:
    a, b = rows.copy(), rows.copy()
    a.loc[3, "colour"] = "purple"
    b.loc[3, "colour"] = "never-seen-either"
    pa = animals.predict_proba(a)
    _defined(pa, len(a))
    np.testing.assert_array_equal(pa, animals.predict_proba(b))  # one bucket for every unseen value
    np.testing.assert_array_equal(pa[[0, 1, 2, 4]], animals.predict_proba(rows)[[0, 1, 2, 4]])
    assert animals.predict(a)[3] in CSV_LABELS


def test_numeric_looking_category_is_a_category(animals, rows) -> None:
    recs = _records(rows)
    recs[0]["colour"] = 3
    _defined(animals.predict_proba(recs), len(recs))


@pytest.mark.parametrize("width", [63, 65, 1])
def test_wrong_array_width_is_an_input_error(digits, width: int) -> None:
    err = _input_error(digits.predict, np.zeros((3, width)))
    assert "64" in str(err) and f"(3, {width})" in str(err)


def test_wrong_width_for_mixed_table_is_an_input_error(animals) -> None:
    err = _input_error(animals.predict, np.array([[1.0, "red"]], dtype=object))
    assert "3" in str(err) and "x1" in str(err)


def test_images_of_another_size_are_resized(images, tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, size=(2, 40, 28, 3), dtype=np.uint8)
    proba = images.predict_proba(big)
    _defined(proba, 2, len(images.labels))
    # the same as resizing first with Pillow (what the runtime does)
    resized = np.stack([np.asarray(Image.fromarray(a).resize((16, 16), Image.BILINEAR)) for a in big])
    np.testing.assert_allclose(proba, images.predict_proba(resized), atol=1e-6)
    # files: another size, grayscale, RGBA, JPEG
    paths = []
    for i, (mode, size, ext) in enumerate([("RGB", (50, 30), "png"), ("L", (16, 16), "png"),
                                           ("RGBA", (8, 8), "png"), ("RGB", (33, 33), "jpg")]):
        p = tmp_path / f"{i}.{ext}"
        Image.new(mode, size, color=120 if mode == "L" else (200, 30, 30, 255)[: len(mode)]).save(p)
        paths.append(p)
    labels = images.predict(paths)
    assert len(labels) == 4 and set(labels.tolist()) <= set(images.labels)
    _defined(images.predict_proba([str(p) for p in paths]), 4, len(images.labels))


def test_corrupt_image_file_names_the_file(images, tmp_path: Path) -> None:
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (10, 20, 30)).save(good)
    bad = tmp_path / "broken-cat.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    err = _input_error(images.predict, [good, bad])
    assert "broken-cat.png" in str(err)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    assert "truncated.png" in str(_input_error(images.predict, [truncated]))


def test_wrong_image_arrays_are_input_errors(images) -> None:
    assert "shape" in str(_input_error(images.predict, np.zeros((2, 16, 16, 4), dtype=np.uint8)))
    assert "NaN" in str(_input_error(images.predict, np.full((1, 16, 16, 3), np.nan)))


def test_predictor_threads_and_repr(digits_bundle: Path, digits_X: np.ndarray) -> None:
    one = trainfer.load(digits_bundle, threads=1)
    assert one.threads == 1 and "threads=1" in repr(one)
    np.testing.assert_allclose(one.predict_proba(digits_X), trainfer.load(digits_bundle).predict_proba(digits_X),
                               atol=1e-6)
    assert os.fspath(one.path) == os.fspath(digits_bundle)
