"""`trainfer predict BUNDLE INPUT --out FILE`: batch inference from files (issue 3, parts 2, 3, 4, 5).

Most commands run in-process through ``trainfer.cli.main`` (fast); the exit-code contract is also
checked once in a real subprocess.
"""

from __future__ import annotations

import csv
import json
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
from conftest import assert_user_error, run_cli

import trainfer
from trainfer.cli import main

PROB_COLUMNS = [f"prob_{label}" for label in CSV_LABELS]


@pytest.fixture(scope="module")
def frame50():
    """50 new rows with shuffled ids, missing values, an unseen category and a label column (ignored)."""
    frame = make_animals(50, seed=7)
    frame.loc[3, "colour"] = "purple"
    return frame


@pytest.fixture(scope="module")
def input_csv(tmp_path_factory: pytest.TempPathFactory, frame50) -> Path:
    path = tmp_path_factory.mktemp("predict-in") / "new.csv"
    frame50.to_csv(path, index=False)
    return path


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: object) -> tuple[int, str, str]:
        """Run ``trainfer ARGS`` in-process; returns (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: object) -> dict:
        code, out, err = self(*args, "--json")
        assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
        return json.loads(out.strip().splitlines()[-1])

    def fails(self, *args: object) -> str:
        code, _, err = self(*args)
        assert code == 2, f"expected exit 2, got {code}\nstderr:\n{err}"
        lines = [x for x in err.splitlines() if x.strip()]
        assert lines and lines[0].startswith("error: ") and "Traceback" not in err, err
        return lines[0]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


# ---- outputs ------------------------------------------------------------------------------------

def test_csv_in_csv_out_keeps_order_ids_and_probabilities(cli: Cli, csv_bundle: Path, input_csv: Path,
                                                          frame50, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    report = cli.ok("predict", csv_bundle, input_csv, "--out", out)
    assert report["rows"] == 50 and report["id_column"] == "id" and Path(report["out"]) == out

    header, body = read_csv(out)
    assert header == ["id", "prediction", *PROB_COLUMNS]
    assert len(body) == 50
    assert [int(r[0]) for r in body] == frame50["id"].tolist()  # input order, ids first

    pred = trainfer.load(csv_bundle)
    features = frame50[["x1", "colour", "x2"]]
    assert [r[1] for r in body] == pred.predict(features).tolist()
    probs = np.array([[float(v) for v in r[2:]] for r in body])
    np.testing.assert_allclose(probs, pred.predict_proba(features), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not list(tmp_path.glob(".*tmp")), "a temporary file was left behind"


def test_json_output_is_an_array_of_records(cli: Cli, csv_bundle: Path, input_csv: Path, frame50,
                                            tmp_path: Path) -> None:
    cli.ok("predict", csv_bundle, input_csv, "--out", tmp_path / "p.csv")
    cli.ok("predict", csv_bundle, input_csv, "--out", tmp_path / "p.json")
    records = json.loads((tmp_path / "p.json").read_text())
    assert isinstance(records, list) and len(records) == 50
    assert all(isinstance(r, dict) and list(r) == ["id", "prediction", *PROB_COLUMNS] for r in records)
    assert [str(r["id"]) for r in records] == [str(i) for i in frame50["id"]]  # a number or its text
    _, body = read_csv(tmp_path / "p.csv")
    assert [r["prediction"] for r in records] == [b[1] for b in body]
    np.testing.assert_allclose([[r[c] for c in PROB_COLUMNS] for r in records],
                               [[float(v) for v in b[2:]] for b in body], atol=1e-7)


def test_chunked_output_equals_one_chunk(cli: Cli, csv_bundle: Path, input_csv: Path, tmp_path: Path) -> None:
    for fmt in ("csv", "json"):
        cli.ok("predict", csv_bundle, input_csv, "--out", tmp_path / f"one.{fmt}")
        cli.ok("predict", csv_bundle, input_csv, "--out", tmp_path / f"seven.{fmt}", "--chunk-size", "7")
    h1, one = read_csv(tmp_path / "one.csv")
    h7, seven = read_csv(tmp_path / "seven.csv")
    assert h1 == h7 and len(one) == len(seven) == 50
    assert [r[:2] for r in one] == [r[:2] for r in seven]
    np.testing.assert_allclose([[float(v) for v in r[2:]] for r in one],
                               [[float(v) for v in r[2:]] for r in seven], atol=1e-6)
    j1 = json.loads((tmp_path / "one.json").read_text())
    j7 = json.loads((tmp_path / "seven.json").read_text())
    assert [(r["id"], r["prediction"]) for r in j1] == [(r["id"], r["prediction"]) for r in j7]


def test_ids_are_copied_verbatim_whatever_the_chunk_size(cli: Cli, csv_bundle: Path, frame50,
                                                        tmp_path: Path) -> None:
    """Ids identify rows: "0007" must come back as "0007", in every chunk. (With per-chunk type
    inference, a chunk holding only digit-like ids turns them into integers and drops the zeros.)"""
    ids = [f"{i:04d}" for i in range(49)] + ["X-49"]
    path = tmp_path / "padded.csv"
    frame50.assign(id=ids).to_csv(path, index=False)
    for chunk in ("4096", "7"):
        out = tmp_path / f"p{chunk}.csv"
        cli.ok("predict", csv_bundle, path, "--out", out, "--chunk-size", chunk)
        _, body = read_csv(out)
        assert [r[0] for r in body] == ids, f"--chunk-size {chunk}: ids changed: {[r[0] for r in body][:8]}"


def test_missing_id_keeps_other_ids_and_json_valid(cli: Cli, csv_bundle: Path, frame50, tmp_path: Path) -> None:
    frame = frame50.astype({"id": object})
    frame.loc[4, "id"] = None
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)
    cli.ok("predict", csv_bundle, path, "--out", tmp_path / "p.csv")
    _, body = read_csv(tmp_path / "p.csv")
    assert [r[0] for r in body][:4] == [str(i) for i in frame50["id"][:4]]  # not "1234.0"
    cli.ok("predict", csv_bundle, path, "--out", tmp_path / "p.json")

    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} is not valid JSON")

    records = json.loads((tmp_path / "p.json").read_text(), parse_constant=reject)
    assert str(records[0]["id"]) == str(frame50["id"][0]) and len(records) == 50


def test_parquet_input_gives_the_same_output_as_csv(cli: Cli, csv_bundle: Path, input_csv: Path, frame50,
                                                    tmp_path: Path) -> None:
    pq = tmp_path / "new.parquet"
    frame50.to_parquet(pq, index=False)
    cli.ok("predict", csv_bundle, input_csv, "--out", tmp_path / "from-csv.csv")
    report = cli.ok("predict", csv_bundle, pq, "--out", tmp_path / "from-pq.csv", "--chunk-size", "16")
    assert report["rows"] == 50
    h1, a = read_csv(tmp_path / "from-csv.csv")
    h2, b = read_csv(tmp_path / "from-pq.csv")
    assert h1 == h2 == ["id", "prediction", *PROB_COLUMNS]
    assert [r[:2] for r in a] == [r[:2] for r in b]
    np.testing.assert_allclose([[float(v) for v in r[2:]] for r in a], [[float(v) for v in r[2:]] for r in b],
                               atol=1e-6)


def test_csv_without_id_column_has_no_id_column(cli: Cli, csv_bundle: Path, frame50, tmp_path: Path) -> None:
    path = tmp_path / "noid.csv"
    frame50.drop(columns=["id", "label"]).to_csv(path, index=False)
    report = cli.ok("predict", csv_bundle, path, "--out", tmp_path / "p.csv")
    header, body = read_csv(tmp_path / "p.csv")
    assert header == ["prediction", *PROB_COLUMNS] and len(body) == 50 and report["id_column"] is None


def test_npz_input(cli: Cli, digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory,
                   tmp_path: Path) -> None:
    X, _ = get_run(tmp_path_factory, "digits").load_split("test")
    X = X.to_numpy(dtype=np.float64)[:50]
    np.savez(tmp_path / "x.npz", X=X)
    report = cli.ok("predict", digits_bundle, tmp_path / "x.npz", "--out", tmp_path / "p.csv", "--chunk-size", "7")
    assert report["rows"] == 50
    header, body = read_csv(tmp_path / "p.csv")
    pred = trainfer.load(digits_bundle)
    assert header == ["prediction", *[f"prob_{label}" for label in pred.labels]]
    assert [int(r[0]) for r in body] == pred.predict(X).tolist()
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in body], pred.predict_proba(X), atol=1e-6)


def test_npz_without_X_is_a_user_error(cli: Cli, digits_bundle: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", features=np.zeros((2, 64)))
    line = cli.fails("predict", digits_bundle, tmp_path / "bad.npz", "--out", tmp_path / "p.csv")
    assert "bad.npz" in line and "'X'" in line
    assert not (tmp_path / "p.csv").exists()


def _write_images(root: Path) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(3)
    rels = ["b.png", "a/one.png", "a/two.jpg", "z/deep/three.png"]
    for i, rel in enumerate(rels):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        size = (16, 16) if i % 2 == 0 else (24, 20)  # some need resizing
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(p)
    (root / "notes.txt").write_text("not an image")
    return rels


def test_image_folder_input_ids_are_relative_paths(cli: Cli, cnn_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    rels = _write_images(root)
    report = cli.ok("predict", cnn_bundle, root, "--out", tmp_path / "p.json", "--chunk-size", "3")
    assert report["rows"] == 4 and report["id_column"] == "path"
    records = json.loads((tmp_path / "p.json").read_text())
    assert sorted(r["path"] for r in records) == sorted(rels)
    pred = trainfer.load(cnn_bundle)
    paths = [root / r["path"] for r in records]
    assert [r["prediction"] for r in records] == pred.predict(paths).tolist()
    probs = np.array([[r[f"prob_{label}"] for label in pred.labels] for r in records])
    np.testing.assert_allclose(probs, pred.predict_proba(paths), atol=1e-6)


def test_single_image_input(cli: Cli, cnn_bundle: Path, tmp_path: Path) -> None:
    rels = _write_images(tmp_path / "imgs")
    cli.ok("predict", cnn_bundle, tmp_path / "imgs" / rels[1], "--out", tmp_path / "p.csv")
    header, body = read_csv(tmp_path / "p.csv")
    assert header[:2] == ["path", "prediction"] and len(body) == 1 and body[0][0] == "one.png"


# ---- user errors: exit 2, `error: ...` naming what is wrong -------------------------------------

def test_bad_value_in_chunked_csv_reports_the_absolute_row(cli: Cli, csv_bundle: Path, frame50,
                                                           tmp_path: Path) -> None:
    bad = frame50.astype({"x1": object})
    bad.loc[12, "x1"] = "twelve"  # data row 13 counted from 1 below the header, as training counts: chunk 3 of 5
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    out = tmp_path / "p.csv"
    line = cli.fails("predict", csv_bundle, path, "--out", out, "--chunk-size", "5")
    assert "bad.csv data row 13 (counted from 1 below the header)" in line and "'x1'" in line and "twelve" in line
    assert not out.exists() and not list(tmp_path.glob(".*tmp")), "a half-written output was left behind"
    # the same row number whatever the chunk size
    assert "data row 13 " in cli.fails("predict", csv_bundle, path, "--out", out, "--chunk-size", "4096")
    assert "data row 13 " in cli.fails("predict", csv_bundle, path, "--out", out, "--chunk-size", "1")


def test_infinity_in_chunked_csv_reports_the_absolute_row(cli: Cli, csv_bundle: Path, frame50,
                                                          tmp_path: Path) -> None:
    bad = frame50.copy()
    bad.loc[33, "x2"] = np.inf
    bad.to_csv(tmp_path / "inf.csv", index=False)
    line = cli.fails("predict", csv_bundle, tmp_path / "inf.csv", "--out", tmp_path / "p.csv", "--chunk-size", "10")
    assert "data row 34 " in line and "'x2'" in line


def test_missing_column_in_csv_is_a_user_error(cli: Cli, csv_bundle: Path, frame50, tmp_path: Path) -> None:
    frame50.drop(columns=["colour"]).to_csv(tmp_path / "nocol.csv", index=False)
    line = cli.fails("predict", csv_bundle, tmp_path / "nocol.csv", "--out", tmp_path / "p.csv")
    assert "colour" in line


def test_corrupt_image_in_folder_names_the_file(cli: Cli, cnn_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _write_images(root)
    (root / "a" / "corrupt.png").write_bytes(b"definitely not a png")
    line = cli.fails("predict", cnn_bundle, root, "--out", tmp_path / "p.csv", "--chunk-size", "2")
    assert "corrupt.png" in line
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("what", ["input", "out-suffix", "input-suffix", "bundle"])
def test_other_user_errors(cli: Cli, csv_bundle: Path, input_csv: Path, tmp_path: Path, what: str) -> None:
    if what == "input":
        line = cli.fails("predict", csv_bundle, tmp_path / "nope.csv", "--out", tmp_path / "p.csv")
        assert "nope.csv" in line
    elif what == "out-suffix":
        line = cli.fails("predict", csv_bundle, input_csv, "--out", tmp_path / "p.xlsx")
        assert "p.xlsx" in line
    elif what == "input-suffix":
        (tmp_path / "x.txt").write_text("1,2,3\n")
        assert "x.txt" in cli.fails("predict", csv_bundle, tmp_path / "x.txt", "--out", tmp_path / "p.csv")
    else:
        assert "not found" in cli.fails("predict", tmp_path / "no-bundle", input_csv, "--out", tmp_path / "p.csv")


@pytest.mark.parametrize("damage", ["model-byte", "manifest-string-byte", "manifest-whitespace-byte",
                                    "model-missing"])
def test_damaged_bundle_is_refused_naming_the_file(cli: Cli, csv_bundle: Path, input_csv: Path, tmp_path: Path,
                                                   damage: str) -> None:
    b = copy_bundle(csv_bundle, tmp_path / "b")
    raw = (b / "manifest.json").read_bytes()
    if damage == "model-byte":
        flip_byte(b / "model.onnx", (b / "model.onnx").stat().st_size // 2)
        name = "model.onnx"
    elif damage == "manifest-string-byte":
        flip_byte(b / "manifest.json", raw.index(b'"classification"') + 1, ord("k"))
        name = "manifest.json"
    elif damage == "manifest-whitespace-byte":
        flip_byte(b / "manifest.json", raw.index(b'\n  "variant"') + 2, ord("\t"))
        name = "manifest.json"
    else:
        (b / "model.onnx").unlink()
        name = "model.onnx"
    out = tmp_path / "p.csv"
    line = cli.fails("predict", b, input_csv, "--out", out)
    assert name in line
    assert not out.exists()


def test_damaged_bundle_exit_code_in_a_real_process(csv_bundle: Path, input_csv: Path, tmp_path: Path) -> None:
    b = copy_bundle(csv_bundle, tmp_path / "b")
    flip_byte(b / "model.onnx", 100)
    out = tmp_path / "p.csv"
    result = run_cli("predict", b, input_csv, "--out", out)
    line = assert_user_error(result, mentions=["model.onnx"])
    assert "sha256" in line
    assert not out.exists()


# ---- no torch on the CLI path either ------------------------------------------------------------

def test_predict_cli_runs_with_torch_unimportable(csv_bundle: Path, input_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    proc = run_without_torch(f"""
        import trainfer.cli
        try:
            trainfer.cli.main(["predict", {str(csv_bundle)!r}, {str(input_csv)!r}, "--out", {str(out)!r},
                               "--chunk-size", "7", "--json"])
        except SystemExit as exc:
            assert exc.code in (0, None), f"exit {{exc.code}}"
    """)
    assert_ran_without_torch(proc)
    header, body = read_csv(out)
    assert header == ["id", "prediction", *PROB_COLUMNS] and len(body) == 50
    import pandas as pd

    assert [r[1] for r in body] == trainfer.load(csv_bundle).predict(pd.read_csv(input_csv)).tolist()
