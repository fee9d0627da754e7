"""Data handling on every path: built-in sources, targets, row numbers, delimiters, dates, 16-bit images,
missing values and unlabeled rows (issue 10, points 6, 9, 10, 12, 13, 14, 15, 16)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import assert_user_error, run_main

import trainfer
from trainfer.config import DataConfig
from trainfer.data import BUILTIN, load_dataset, prepare
from trainfer.data.split import split_indices
from trainfer.errors import DataError
from trainfer.features import TabularFeatures, read_image
from trainfer.features.delimiter import csv_format, sniff_delimiter

SMALL = {"synthetic-classification": {"n_samples": 60}, "synthetic-regression": {"n_samples": 60},
         "synthetic-images": {"n_samples": 12, "size": 8}}


# ---- 6: options that do not apply to a built-in dataset are errors, not no-ops ----------------------------

@pytest.mark.parametrize("name", list(BUILTIN))
def test_a_target_for_a_builtin_dataset_is_an_error(name: str) -> None:
    with pytest.raises(DataError, match=f"'nope'.*built-in dataset '{name}'") as info:
        load_dataset(DataConfig(source=name, target="nope", options=SMALL.get(name, {})))
    assert "remove --target" in info.value.hint
    # its own target name is accepted: a recipe may spell it out
    own = load_dataset(DataConfig(source=name, options=SMALL.get(name, {}))).target
    assert load_dataset(DataConfig(source=name, target=own, options=SMALL.get(name, {}))).target == own


def test_builtin_tables_honour_drop_and_refuse_an_id_column() -> None:
    ds = load_dataset(DataConfig(source="iris", drop=["sepal width (cm)"]))
    assert "sepal width (cm)" not in ds.X.columns and ds.X.shape[1] == 3
    with pytest.raises(DataError, match="not in the built-in dataset 'iris'"):
        load_dataset(DataConfig(source="iris", drop=["nope"]))
    with pytest.raises(DataError, match="id_column 'id' does not apply"):
        load_dataset(DataConfig(source="wine", id_column="id"))


def test_cli_train_with_target_on_a_builtin_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    result = run_main(["train", "--data", "digits", "--target", "nope", "--epochs", "1", "--out", out], capsys)
    assert_user_error(result, out, mentions=["nope", "digits"])


# ---- 9, 10: targets must be labelled and finite; rows are named as in the file ----------------------------

def _table(tmp_path: Path, n: int = 40, name: str = "t.csv", **cells: Any) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "y": rng.normal(size=n) * 10})
    for key, value in cells.items():  # "a3" -> column a, data row 3 (1-based)
        if isinstance(value, str):
            frame[key[0]] = frame[key[0]].astype(object)
        frame.loc[int(key[1:]) - 1, key[0]] = value
    path = tmp_path / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path)
    return path


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_an_infinite_regression_target_is_refused_with_its_row(tmp_path: Path, value: float) -> None:
    path = _table(tmp_path, y7=value, y30=value)
    with pytest.raises(DataError, match=r"finite number: -?inf at t\.csv data row 7 .*and 1 more"):
        prepare(DataConfig(source=str(path), target="y", task="regression"), seed=0)


def test_rows_without_a_label_are_refused_in_training_not_dropped(tmp_path: Path) -> None:
    path = _table(tmp_path, y5=np.nan, y9=np.nan)
    with pytest.raises(DataError, match=r"2 of 40 rows have no value in target 'y'.*data row 5 ") as info:
        prepare(DataConfig(source=str(path), target="y"), seed=0)
    assert "silently" in info.value.hint


def test_other_bad_targets_name_their_row(tmp_path: Path) -> None:
    path = _table(tmp_path, y12="abc")
    with pytest.raises(DataError, match=r"not numeric \('abc' at t\.csv data row 12 "):
        prepare(DataConfig(source=str(path), target="y", task="regression"), seed=0)
    labels = np.asarray([0.0, 1.0] * 20)
    labels[8] = np.inf
    np.savez(tmp_path / "c.npz", X=np.random.default_rng(0).normal(size=(40, 3)), y=labels)
    with pytest.raises(DataError, match=r"infinite value at c\.npz row 9 "):
        prepare(DataConfig(source=str(tmp_path / "c.npz"), task="classification"), seed=0)


@pytest.mark.parametrize("row", [1, 3, 17, 40])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_feature_error_names_the_row_of_the_file_not_of_the_split(tmp_path: Path, row: int, suffix: str) -> None:
    path = _table(tmp_path, name=f"t{suffix}", **{f"b{row}": np.inf})
    where = rf"t{suffix} (data )?row {row} \(counted from 1"
    with pytest.raises(DataError, match=rf"{where}.*column 'b': value is infinite"):
        prepare(DataConfig(source=str(path), target="y"), seed=0)


def test_cli_names_the_file_row_of_an_infinite_feature(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, out = _table(tmp_path, a3=np.inf), tmp_path / "run"
    result = run_main(["train", "--data", path, "--target", "y", "--epochs", "1", "--out", out], capsys)
    assert "data row 3 " in assert_user_error(result, out, mentions=["infinite"])


# ---- 12: messages that say what to change ------------------------------------------------------------------

def test_one_row_per_class_names_the_small_classes_and_the_minimum() -> None:
    with pytest.raises(DataError, match=r"val split is empty: classes 'a' \(1 row\), 'b' \(1 row\).*at least 4 rows"):
        split_indices(np.asarray(["a", "b", "c"], dtype=object), 0.15, 0.15, seed=0, stratify=True)
    with pytest.raises(DataError, match=r"class 'x' \(2 rows\) is too small.*at least 6 rows"):
        split_indices(np.asarray(["x", "x"], dtype=object), 0.1, 0.2, seed=0, stratify=True)
    with pytest.raises(DataError, match=r"test split is empty: 3 rows are too few.*at least 6 rows"):
        split_indices(np.arange(3.0), 0.3, 0.1, seed=0, stratify=False)


@pytest.mark.parametrize(("sep", "header"), [(",", "a,b,y"), (";", "a;b;y"), ("\t", "a\tb\ty"), ("|", "a|b|y"),
                                             (";", '"x,1";b'), (",", "single")])
def test_sniff_delimiter(tmp_path: Path, sep: str, header: str) -> None:
    path = tmp_path / "h.csv"
    path.write_text(f"{header}\n1,5{sep}2{sep}3\n")  # a decimal comma in the data does not mislead it
    assert sniff_delimiter(path) == sep


@pytest.mark.parametrize(("sep", "text"), [
    (";", "id;name;price (EUR, net);label\n1;a;2,5;x\n2;b;3,75;y\n"),       # a comma inside a column name
    ("\t", "weight, kg\tlabel\n1,5\tx\n2,25\ty\n"),                       # the same, with decimal commas
    (",", "name (a;b;c),x\n1,2\n3,4\n"),                                    # a ';' inside a comma file's name
    (",", 'a,b,"c;d;e"\n1,2,"x;y;z"\n'),                                     # quoted ';' in a comma file
    ("|", "a|b|c\n1,5|2|x\n"),
])
def test_sniff_delimiter_is_not_fooled_by_commas_in_names_or_numbers(tmp_path: Path, sep: str, text: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert sniff_delimiter(path) == sep


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_a_csv_with_another_delimiter_trains_like_a_comma_csv(tmp_path: Path, sep: str) -> None:
    comma = _table(tmp_path)
    other = tmp_path / "other.csv"
    pd.read_csv(comma).to_csv(other, sep=sep, index=False)
    a = prepare(DataConfig(source=str(comma), target="y"), seed=0)
    b = prepare(DataConfig(source=str(other), target="y"), seed=0)
    assert a.features.to_dict() == b.features.to_dict()
    np.testing.assert_array_equal(a.X["train"], b.X["train"])


def test_a_semicolon_csv_with_decimal_commas_reads_numbers(tmp_path: Path) -> None:
    comma = _table(tmp_path)
    excel = tmp_path / "excel.csv"
    pd.read_csv(comma).to_csv(excel, sep=";", decimal=",", index=False)  # as Excel writes it in many locales
    assert "," in excel.read_text().splitlines()[1]
    assert csv_format(excel) == (";", ",") and csv_format(comma) == (",", ".")
    a = prepare(DataConfig(source=str(comma), target="y"), seed=0)
    b = prepare(DataConfig(source=str(excel), target="y"), seed=0)
    assert [c["type"] for c in b.features.inputs.columns] == ["numeric", "numeric"]
    np.testing.assert_allclose(b.X["train"], a.X["train"], rtol=0, atol=1e-6)
    points = tmp_path / "points.csv"
    pd.read_csv(comma).to_csv(points, sep=";", index=False)
    assert csv_format(points) == (";", ".")


# ---- 13 and 15 in the features alone: dates are epoch seconds, missing means the same everywhere ---------

def _dates_frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    when = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 400, size=n), unit="D") \
        + pd.to_timedelta(rng.integers(0, 86400, size=n), unit="s")
    frame = pd.DataFrame({"x": rng.normal(size=n), "when": when})
    frame.loc[4, "when"] = pd.NaT
    return frame


def test_a_datetime_column_is_the_same_numeric_feature_from_parquet_and_csv(tmp_path: Path) -> None:
    frame = _dates_frame()
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_csv(tmp_path / "d.csv", index=False)
    from_parquet, from_csv = pd.read_parquet(tmp_path / "d.parquet"), pd.read_csv(tmp_path / "d.csv")
    assert from_parquet["when"].dtype.kind == "M" and from_csv["when"].dtype.kind != "M"  # what each reader gives
    fp, fc = TabularFeatures.fit(from_parquet), TabularFeatures.fit(from_csv)
    assert fp.to_dict() == fc.to_dict()
    assert fp.columns[1]["type"] == "numeric" and fp.columns[1]["datetime"] and fp.width == 2
    expected = fp.transform(from_parquet)
    np.testing.assert_array_equal(fp.transform(from_csv), expected)
    # any other way the same instants arrive: objects, ISO strings with a zone, epoch seconds
    rows = [{"x": x, "when": None if pd.isna(w) else w.to_pydatetime()} for x, w in frame.itertuples(index=False)]
    np.testing.assert_array_equal(fp.transform(rows), expected)
    iso = [{"x": r["x"], "when": "" if r["when"] is None else r["when"].isoformat() + "+00:00"} for r in rows]
    np.testing.assert_allclose(fp.transform(iso), expected, rtol=0, atol=1e-6)
    epoch = [{"x": r["x"], "when": None if r["when"] is None else pd.Timestamp(r["when"]).timestamp()} for r in rows]
    np.testing.assert_allclose(fp.transform(epoch), expected, rtol=0, atol=1e-6)
    assert fp.transform([{"x": 0.0, "when": "2024-03-01T12:00:00+02:00"}])[0, 1] == pytest.approx(
        fp.transform([{"x": 0.0, "when": "2024-03-01 10:00:00"}])[0, 1])
    # a date with a zone and no time is midnight in that zone (fromisoformat read "+02:00" as a time: 02:00 UTC)
    assert fp.transform([{"x": 0.0, "when": "2024-03-01+02:00"}])[0, 1] == pytest.approx(
        fp.transform([{"x": 0.0, "when": "2024-02-29T22:00:00"}])[0, 1])
    with pytest.raises(trainfer.TrainferError, match="column 'when': expected a date/time"):
        fp.transform([{"x": 0.0, "when": "next tuesday"}])


def test_a_column_of_non_dates_stays_categorical() -> None:
    f = TabularFeatures.fit(pd.DataFrame({"c": ["2024-01-01", "soon", None] * 3}))
    assert f.columns[0]["type"] == "categorical"
    # the whole file decides, not the train split alone: one non-date in val or test keeps it categorical
    whole = pd.DataFrame({"c": ["2024-01-01", "2024-02-01"] * 4 + ["unknown"]})
    assert TabularFeatures.fit(whole.iloc[:8], whole).columns[0]["type"] == "categorical"
    assert TabularFeatures.fit(whole.iloc[:8]).columns[0]["datetime"]


MISSING = [None, float("nan"), "", "  ", "NA", "null", "NaN", pd.NA]


def test_every_spelling_of_missing_is_imputed_like_a_csv_empty_cell(tmp_path: Path) -> None:
    train = pd.DataFrame({"n": [1.0, 2.0, 3.0, 10.0], "c": ["red", "red", "blue", "green"]})
    f = TabularFeatures.fit(train)
    path = tmp_path / "row.csv"
    path.write_text("n,c\n,\n")
    expected = f.transform(pd.read_csv(path))  # what training and `predict` make of an empty CSV cell
    assert expected[0, 1 + f.columns[1]["categories"].index("red")] == 1.0  # imputed, not the unknown slot
    for value in MISSING:
        got = f.transform([{"n": value, "c": value}])
        np.testing.assert_array_equal(got, expected, err_msg=repr(value))
        np.testing.assert_array_equal(f.transform(pd.DataFrame({"n": [value], "c": [value]}, dtype=object)), expected)


# ---- 14: 16-bit images keep their contrast ---------------------------------------------------------------

def test_a_16_bit_grayscale_png_is_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    from PIL import Image

    from trainfer.data.files import load_image_folder
    from trainfer.features import ImageFeatures

    gray16 = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(gray16).save(tmp_path / "imgs" / "a" / "g.png")
    assert Image.open(tmp_path / "imgs" / "a" / "g.png").mode.startswith("I;16")
    expected = np.rint(gray16 / 257.0).astype(np.uint8)
    got = read_image(tmp_path / "imgs" / "a" / "g.png", 8)
    assert got.shape == (8, 8, 3) and np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 2], expected)
    np.testing.assert_array_equal(load_image_folder(tmp_path / "imgs", 8).X[0], got)  # training reads the same
    feats = ImageFeatures(8, [0.5] * 3, [0.25] * 3)
    with Image.open(tmp_path / "imgs" / "a" / "g.png") as pil:  # a PIL image handed to the runtime
        np.testing.assert_array_equal(feats.to_uint8([pil])[0], got)
    as_int32 = Image.fromarray(gray16.astype(np.int32))  # mode "I", as older Pillows open 16-bit PNGs
    assert as_int32.mode == "I"
    np.testing.assert_array_equal(feats.to_uint8([as_int32])[0], got)
    # 16-bit values in an array are refused, not clipped to white, in the runtime and in training (npz)
    with pytest.raises(trainfer.TrainferError, match=r"0\.\.255, found 0\.\.65520") as info:
        feats.to_uint8(np.stack([gray16] * 3, axis=-1))
    assert "/ 257" in info.value.hint
    np.savez(tmp_path / "i.npz", X=np.stack([np.stack([gray16] * 3, axis=-1)] * 4), y=np.arange(4))
    with pytest.raises(DataError, match=r"i\.npz: pixel values must lie in 0\.\.255"):
        load_dataset(DataConfig(source=str(tmp_path / "i.npz")))
    eight = np.rint(np.linspace(0, 255, 64)).astype(np.uint8).reshape(8, 8)
    Image.fromarray(eight).save(tmp_path / "g8.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g8.png", 8)[..., 1], eight)  # 8 bit: unchanged


# ---- 13, 15, 16 end to end: one small bundle with a date and a categorical column with gaps ---------------

def _animals(n: int = 160, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=n).astype(object)
    x1 = rng.normal(size=n)
    when = pd.Timestamp("2023-06-01") + pd.to_timedelta(rng.integers(0, 300 * 86400, size=n), unit="s")
    label = np.where(colour == "red", "dog", np.where(colour == "blue", "cat", np.where(x1 > 0, "bird", "cat")))
    frame = pd.DataFrame({"x1": x1, "colour": colour, "when": when, "label": label})
    frame.loc[rng.random(n) < 0.1, "colour"] = np.nan
    return frame


@pytest.fixture(scope="module")
def dated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dated")
    frame = _animals()
    frame.to_csv(root / "animals.csv", index=False)
    run = trainfer.train(data=str(root / "animals.csv"), target="label", model="mlp", epochs=3, seed=0,
                         out=root / "run", overrides=["model.hidden=[16]"])
    bundle = trainfer.export(run, root / "bundle")
    return {"root": root, "frame": frame, "run": run, "bundle": bundle}


def _from_csv(dated: dict[str, Any], rows: pd.DataFrame, name: str, sep: str = ",", decimal: str = ".") -> np.ndarray:
    """Probabilities for ``rows`` through `trainfer predict` on a file (CSV or Parquet)."""
    src, out = dated["root"] / name, dated["root"] / f"{name}.out.csv"
    rows.to_csv(src, index=False, sep=sep, decimal=decimal) if name.endswith(".csv") else rows.to_parquet(src)
    trainfer.predict(dated["bundle"], src, out, threads=1, force=True)  # one output per file name, rewritten
    return pd.read_csv(out).filter(like="prob_").to_numpy()


def test_dates_predict_the_same_from_csv_parquet_dataframe_and_json(dated: dict[str, Any]) -> None:
    rows = dated["frame"].drop(columns=["label"]).iloc[:12].reset_index(drop=True)
    features = trainfer.load(dated["bundle"]).features.inputs
    assert [c.get("datetime", False) for c in features.columns] == [False, False, True]
    expected = _from_csv(dated, rows, "rows.csv")
    np.testing.assert_allclose(_from_csv(dated, rows, "rows.parquet"), expected, atol=1e-6)
    for sep in ";\t|":  # `predict` reads the delimiter from the header as training does
        np.testing.assert_allclose(_from_csv(dated, rows, "rows-sep.csv", sep), expected, atol=1e-6)
    np.testing.assert_allclose(_from_csv(dated, rows, "rows-excel.csv", ";", ","), expected, atol=1e-5)
    pred = trainfer.load(dated["bundle"], threads=1)
    np.testing.assert_allclose(pred.predict_proba(rows), expected, atol=1e-6)  # datetime64 column
    as_json = json.loads(rows.to_json(orient="records", date_format="iso"))  # "2023-06-01T10:00:00.000"
    np.testing.assert_allclose(pred.predict_proba(as_json), expected, atol=1e-6)
    answers = _serve(dated, [{"/predict": {"rows": as_json}}])
    np.testing.assert_allclose(answers[0]["probabilities"], expected, atol=1e-6)


MISSING_JSON = [None, "", " ", "NA"]


def test_a_missing_category_means_the_same_on_every_path(dated: dict[str, Any]) -> None:
    row = dated["frame"].drop(columns=["label"]).iloc[[0]].reset_index(drop=True)
    row["colour"] = np.nan
    expected = _from_csv(dated, row, "gap.csv")  # the empty CSV cell: imputed with the most frequent colour
    np.testing.assert_allclose(_from_csv(dated, row, "gap.parquet"), expected, atol=1e-6)
    pred = trainfer.load(dated["bundle"], threads=1)
    np.testing.assert_allclose(pred.predict_proba(row), expected, atol=1e-6)
    base = json.loads(row.to_json(orient="records", date_format="iso"))[0]
    for value in MISSING_JSON:
        np.testing.assert_allclose(pred.predict_proba([{**base, "colour": value}]), expected, atol=1e-6)
    epoch = pd.Timestamp(row["when"][0]).timestamp()
    v2 = {"inputs": [{"name": "x1", "datatype": "FP64", "shape": [1, 1], "data": [float(row["x1"][0])]},
                     {"name": "colour", "datatype": "BYTES", "shape": [1, 1], "data": [""]},
                     {"name": "when", "datatype": "FP64", "shape": [1, 1], "data": [epoch]}]}
    calls = [{"/predict": {"rows": [{**base, "colour": v}]}} for v in MISSING_JSON] + [{"v2": v2}]
    answers = _serve(dated, calls)
    for value, answer in zip(MISSING_JSON, answers, strict=False):
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6, err_msg=repr(value))
    probs = next(o for o in answers[-1]["outputs"] if o["name"] == "probabilities")["data"]
    np.testing.assert_allclose(np.reshape(probs, (1, -1)), expected, atol=1e-6)


def _serve(dated: dict[str, Any], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The served app in process: each call's JSON answer (asserting 200)."""
    import httpx

    from trainfer.serving import ServeConfig, create_app

    app = create_app(trainfer.load(dated["bundle"], threads=1), ServeConfig(name="animals", access_log=False))

    async def main() -> list[dict[str, Any]]:
        inbox: asyncio.Queue = asyncio.Queue()
        outbox: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get,
                                       outbox.put))
        await inbox.put({"type": "lifespan.startup"})
        await outbox.get()
        answers = []
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                for call in calls:
                    path = "/predict" if "/predict" in call else "/v2/models/animals/infer"
                    r = await client.post(path, json=next(iter(call.values())))
                    assert r.status_code == 200, r.text
                    answers.append(r.json())
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await outbox.get()
            await task
        return answers

    return asyncio.run(main())


def test_evaluate_counts_rows_without_a_label(dated: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    frame = dated["frame"].iloc[:30].copy()
    frame.loc[[2, 5, 11], "label"] = np.nan
    path = dated["root"] / "some-unlabeled.csv"
    frame.to_csv(path, index=False)
    result = trainfer.evaluate(dated["run"], str(path))
    assert (result["samples"], result["unlabeled"]) == (27, 3)
    cli = run_main(["evaluate", dated["run"].path, "--data", path], capsys)
    assert cli.returncode == 0 and "27 samples, 3 without a label skipped" in cli.stdout
    # a feature error still names the row in the file, past the skipped rows
    frame.loc[20, "x1"] = np.inf
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"some-unlabeled\.csv data row 21 .*column 'x1'"):
        trainfer.evaluate(dated["run"], str(path))
    frame["label"] = np.nan
    frame.to_csv(path, index=False)
    assert_user_error(run_main(["evaluate", dated["run"].path, "--data", path], capsys),
                      mentions=["none of the 30 rows"])


@pytest.mark.parametrize(("sep", "decimal"), [(",", "."), (";", ",")])
def test_a_blank_cell_keeps_a_numeric_column_numeric_in_training_and_predict(tmp_path: Path, sep: str,
                                                                            decimal: str) -> None:
    # pandas keeps a column as text when one cell is " " (and then "1,71" stays text in a decimal-comma
    # file): training made such a column a category, predict refused its numbers.
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.astype({"malic_acid": object})
    frame.loc[5, "malic_acid"] = " "
    path = tmp_path / "wine.csv"
    frame.to_csv(path, index=False, sep=sep, decimal=decimal)
    run = trainfer.train(data=str(path), target="target", epochs=2, out=tmp_path / "run",
                         overrides=["model.hidden=[16]"])
    kinds = {c["name"]: c["type"] for c in run.features.inputs.columns}
    assert kinds["malic_acid"] == "numeric", kinds
    bundle = trainfer.export(run, tmp_path / "bundle")
    report = trainfer.predict(bundle, path, tmp_path / "p.csv", threads=1)
    assert report["rows"] == len(frame)


@pytest.mark.parametrize("column", ["target", "bmi"])
def test_finite_values_too_large_to_standardize_are_refused_naming_the_column(
        tmp_path: Path, column: str, capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame[column] = frame[column] * 1e300  # finite, but their squares overflow: rmse nan, exit 0 before
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "run"
    result = run_main(["train", "--data", path, "--target", "target", "--epochs", "2", "--out", out], capsys)
    assert_user_error(result, out=out, mentions=[column, "too large"])


@pytest.mark.parametrize("args", [["--set", "model.hidden=[0]"], ["--set", "model.hidden=[100000000]"],
                                  ["--seed", "-1"], ["--seed", "99999999999999999999999"]])
def test_sizes_and_seeds_out_of_range_are_refused_before_training(
        tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert_user_error(run_main(["train", "--data", "iris", "--epochs", "1", "--out", out, *args], capsys), out=out)


def test_predict_of_an_empty_file_is_one_error_line(digits_bundle: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    out = tmp_path / "p.csv"
    assert_user_error(run_main(["predict", digits_bundle, empty, "--out", out], capsys), mentions=["empty.csv"])
    assert not out.exists()
    line = assert_user_error(run_main(["predict", digits_bundle, empty, "--out", out, "--threads", "100000"], capsys))
    assert "--threads" in line
