"""One rule for every verb (issue 10, points 17, 27, 30): -q where there is progress, --force to replace an
output, one --threads default; and what `predict` writes, documented and tested."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from _inference_fixtures import CSV_LABELS, copy_bundle, get_run, make_animals
from conftest import assert_user_error, read_summary, run_main

from trainfer.cli import THREADS_DEFAULT, app

TINY = ["--set", "model.hidden=[8]"]
PROGRESS_VERBS = ["train", "export", "optimize", "predict", "bench", "run"]
WRITING_VERBS = ["train", "export", "optimize", "predict"]


def _command(verb: str):
    return typer.main.get_command(app).commands[verb]  # type: ignore[attr-defined]


def _opts(verb: str) -> set[str]:
    return {o for p in _command(verb).params for o in (*p.opts, *p.secondary_opts)}


def _help(verb: str, capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(run_main([verb, "--help"], capsys).check().stdout.split())


@pytest.mark.parametrize("verb", PROGRESS_VERBS)
def test_every_verb_with_progress_takes_quiet(verb: str) -> None:
    assert {"--quiet", "-q"} <= _opts(verb)


@pytest.mark.parametrize("verb", WRITING_VERBS)
def test_every_verb_that_writes_refuses_to_replace_without_force(verb: str, tmp_path: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory,
                                                                 csv_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert "--force" in _opts(verb)
    run = get_run(tmp_path_factory, "csv").path
    rows = tmp_path / "rows.csv"
    make_animals(10).to_csv(rows, index=False)
    out = tmp_path / ("p.csv" if verb == "predict" else "existing")
    if verb == "predict":
        out.write_text("old\n")
    else:
        out.mkdir()
        (out / ("recipe.yaml" if verb == "train" else "manifest.json")).write_text("old\n")
    args = {"train": ["train", "--data", "iris", "--model", "mlp", "--epochs", "1", *TINY],
            "export": ["export", run], "optimize": ["optimize", run], "predict": ["predict", csv_bundle, rows]}[verb]
    result = run_main([*args, "--out", out], capsys)
    assert_user_error(result, mentions=[str(out)])
    assert "--force" in result.stderr

    class Started(Exception):
        pass

    def started(*_a: object, **_k: object) -> None:
        raise Started

    # with --force the same command gets past the check and starts the work
    monkeypatch.setattr("trainfer.training.train_run", started)
    monkeypatch.setattr("trainfer.exporting.Run.load", started)
    monkeypatch.setattr("trainfer.runtime.predictor.load", started)
    with pytest.raises(Started):
        run_main([*args, "--out", out, "--force"], capsys)


def test_train_force_replaces_a_run_and_puts_it_back_when_training_fails(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    base = ["train", "--data", "iris", "--model", "mlp", *TINY, "--out", run, "--seed", "0"]
    run_main([*base, "--epochs", "1"], capsys).check()
    assert read_summary(run)["epochs_run"] == 1
    run_main([*base, "--epochs", "2", "--force"], capsys).check()
    assert read_summary(run)["epochs_run"] == 2
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    # a failure after the old run was moved aside: the old run comes back untouched
    failed = run_main([*base, "--epochs", "2", "--force", "--set", "data.source=missing.csv"], capsys)
    assert_user_error(failed)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_train_force_never_deletes_a_directory_that_is_not_a_run(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("years of work\n")
    line = assert_user_error(run_main(["train", "--data", "iris", "--model", "mlp", "--epochs", "1", *TINY,
                                       "--out", tmp_path / "docs", "--force"], capsys))
    assert "run directory only" in line
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "years of work\n"


def test_threads_default_is_one_rule_stated_the_same_everywhere(csv_bundle: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from trainfer.runtime import default_threads, load, manifest_bytes

    verbs = [v for v in typer.main.get_command(app).commands if "--threads" in _opts(v)]
    assert {"predict", "serve", "optimize", "bench"} <= set(verbs)
    for verb in verbs:
        (threads,) = [p for p in _command(verb).params if "--threads" in p.opts]
        assert THREADS_DEFAULT in " ".join(threads.help.split()), f"{verb} --help states the default differently"
    assert "--threads" in _help("serve", capsys)
    # the rule itself: the bundle's recommended threads when it has them, else the runtime's default
    assert load(csv_bundle).threads == default_threads()
    tuned = copy_bundle(csv_bundle, tmp_path / "tuned")
    manifest = json.loads((tuned / "manifest.json").read_text())
    manifest["runtime"] = {"threads": default_threads() + 2}
    (tuned / "manifest.json").write_bytes(manifest_bytes(manifest))
    assert load(tuned).threads == default_threads() + 2
    assert load(tuned, threads=1).threads == 1


# ---- what predict writes (points 17 and 30) ----------------------------------------------------------------

def test_predict_help_says_what_it_writes_and_how_it_treats_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    assert "prob_" in _help("predict", capsys)
    text = " ".join(_command("predict").help.split()).lower()  # the text --help shows, without its frame
    for phrase in ("id column", "prediction", "prob_<label>", "extra columns are ignored", "missing values",
                   "imputed", "never seen in training", "unknown", "--force"):
        assert phrase in text, f"predict --help does not say {phrase!r}"


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_writes_ids_prediction_probabilities_and_no_extra_column(csv_bundle: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    frame = make_animals(20, seed=5)  # id, x1, colour, x2, label
    plain = tmp_path / "plain.csv"
    frame.drop(columns=["label"]).to_csv(plain, index=False)
    # the id in another case, the target and an unrelated column besides, columns in another order
    other = frame.rename(columns={"id": "ID"}).assign(note="call back")[["note", "x2", "ID", "label", "colour", "x1"]]
    extra = tmp_path / "extra.csv"
    other.to_csv(extra, index=False)
    run_main(["predict", csv_bundle, plain, "--out", tmp_path / "a.csv"], capsys).check()
    run_main(["predict", csv_bundle, extra, "--out", tmp_path / "b.csv"], capsys).check()
    run_main(["predict", csv_bundle, extra, "--out", tmp_path / "b.json"], capsys).check()
    a, b = _read(tmp_path / "a.csv"), _read(tmp_path / "b.csv")
    probs = [f"prob_{label}" for label in CSV_LABELS]
    assert list(a[0]) == ["id", "prediction", *probs]
    assert list(b[0]) == ["ID", "prediction", *probs], "the id is carried whatever its case; nothing else is copied"
    assert [r["ID"] for r in b] == [str(i) for i in frame["id"]]
    assert [r["prediction"] for r in b] == [r["prediction"] for r in a], "extra columns change nothing"
    records = json.loads((tmp_path / "b.json").read_text())
    assert list(records[0]) == ["ID", "prediction", *probs]


def test_an_id_column_in_training_is_kept_out_of_the_features_and_carried_into_predictions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = make_animals(90, seed=1).rename(columns={"id": "ID"})
    frame["ID"] = [f"P{i:05d}" for i in range(len(frame))]
    data = tmp_path / "train.csv"
    frame.to_csv(data, index=False)
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    run_main(["train", "--data", data, "--target", "label", "--model", "mlp", "--epochs", "1", *TINY,
              "--out", run], capsys).check()
    run_main(["export", run, "--out", bundle], capsys).check()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["id_column"] == "ID"
    assert "ID" not in [c["name"] for c in manifest["input"]["columns"]], "an id is not a feature"
    rows = tmp_path / "new.csv"
    frame.drop(columns=["label"]).head(7).to_csv(rows, index=False)
    run_main(["predict", bundle, rows, "--out", tmp_path / "p.csv"], capsys).check()
    out = _read(tmp_path / "p.csv")
    assert [r["ID"] for r in out] == [f"P{i:05d}" for i in range(7)]


def test_an_id_kept_as_the_index_of_a_pandas_parquet_file_is_carried(csv_bundle: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    frame = make_animals(12, seed=9).drop(columns=["label"])
    rows = tmp_path / "rows.parquet"
    frame.set_index("id").to_parquet(rows)  # pandas stores the index as a column plus metadata
    run_main(["predict", csv_bundle, rows, "--out", tmp_path / "p.csv", "--chunk-size", "5"], capsys).check()
    out = _read(tmp_path / "p.csv")
    assert [r["id"] for r in out] == [str(i) for i in frame["id"]]


def test_id_column_option_carries_another_column_and_refuses_a_missing_one(csv_bundle: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    frame = make_animals(8, seed=2).drop(columns=["label"]).rename(columns={"id": "customer_id"})
    rows = tmp_path / "rows.csv"
    frame.to_csv(rows, index=False)
    run_main(["predict", csv_bundle, rows, "--out", tmp_path / "p.csv", "--id-column", "customer_id"], capsys).check()
    out = _read(tmp_path / "p.csv")
    assert list(out[0])[:2] == ["customer_id", "prediction"]
    assert [r["customer_id"] for r in out] == [str(i) for i in frame["customer_id"]]
    line = assert_user_error(run_main(["predict", csv_bundle, rows, "--out", tmp_path / "q.csv",
                                       "--id-column", "nope"], capsys))
    assert "'nope'" in line and "rows.csv" in line
    assert not (tmp_path / "q.csv").exists()


@pytest.mark.parametrize("verb", ["export", "optimize"])
def test_force_replaces_a_bundle_never_a_run(verb: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = get_run(tmp_path_factory, "csv").path
    precious = tmp_path / "run-copy"
    precious.mkdir()
    (precious / "summary.json").write_text("{}\n")
    line = assert_user_error(run_main([verb, run, "--out", precious, "--force"], capsys))
    assert "not a bundle" in line and str(precious) in line
    assert sorted(p.name for p in precious.iterdir()) == ["summary.json"]


def test_run_passes_force_to_its_training_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[bool] = []

    class Stop(Exception):
        pass

    def train(*_a: object, force: bool = False, **_k: object) -> None:
        seen.append(force)
        raise Stop

    monkeypatch.setattr("trainfer.training.train", train)
    recipe = Path(__file__).resolve().parents[1] / "examples" / "digits.yaml"
    for extra in ([], ["--force"]):
        with pytest.raises(Stop):
            run_main(["run", recipe, "--out", tmp_path / "out", "-q", *extra], capsys)
    assert seen == [False, True]
