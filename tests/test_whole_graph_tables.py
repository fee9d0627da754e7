"""Whole-graph bundles on tables as users have them (issue 14 review): dates, booleans, bool labels, columns named
with spaces, unicode, or like the graph's outputs (``label`` beside ``input:label``), a wide float64 column, CSVs in
another column order with extra columns; a regression target with a time-zoned date column. Each checked against
`trainfer predict`, the numpy preprocessing + model-only graph, and a plain onnxruntime with trainfer unimportable.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from _inference_fixtures import REPO, SRC, TINY_MLP
from test_whole_graph import predict_both_ways

import trainfer
from trainfer.exporting import export, export_model, graph_inputs, onnx_outputs
from trainfer.exporting.graph import MODEL_PREFIX, RAW_INPUTS_KEY
from trainfer.training import train

PARITY = 1e-5
CLASHING = ["label", "probabilities", "prediction", "input:label"]


def _messy_table(n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    frame = pd.DataFrame({
        "when": pd.date_range("2020-01-01", periods=n, freq="D").strftime("%Y-%m-%d").astype(object),
        "flag": (rng.random(n) < 0.5).astype(object),
        "größe ✓": x,
        **{c: rng.normal(size=n) for c in CLASHING},
        "wide": 1e6 + rng.normal(size=n),  # |mean|/std ~ 1e6: fed as float64
    })
    frame["target"] = frame["flag"].astype(bool) ^ (x > 0)  # bool labels
    frame.loc[5, "when"] = None
    frame.loc[6, "flag"] = None
    frame.loc[8, "wide"] = np.nan
    return frame


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tables")
    data = root / "messy.csv"
    _messy_table().to_csv(data, index=False, encoding="utf-8")
    run = train(data=str(data), target="target", model="mlp", epochs=4, overrides=TINY_MLP, seed=0, quiet=True,
                out=root / "run")
    return run, export(run, root / "bundle"), data


def _no_identity_left(bundle: Path, tmp: Path) -> None:
    """The model's last node writes the graph's first output, and onnxruntime's optimized graph runs no Identity
    (one before a graph output is never removed by it: ~6% of the digits MLP's batch-1 time)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp / "optimized.onnx"))
    assert "Identity" not in {n.op_type for n in optimized.graph.node}
    first = onnx.load(str(bundle / "model.onnx")).graph.output[0].name
    (producer,) = [n for n in onnx.load(str(bundle / "model.onnx")).graph.node if first in n.output]
    assert producer.name.startswith(MODEL_PREFIX) and producer.op_type in ("Softmax", "Gemm", "Add", "MatMul")


def _model_only_outputs(run, X) -> np.ndarray:
    """What bundles computed before the whole graph: numpy preprocessing, then the model-only graph."""
    X_test = run.load_split("test")[0]
    X_std, X_graph = graph_inputs(run.features, X_test)
    buf = io.BytesIO()
    export_model(run.model, run.features, X_std, X_graph, buf)
    return onnx_outputs(buf.getvalue(), graph_inputs(run.features, X)[1])




def test_columns_named_like_outputs_get_unique_inputs_and_plain_onnxruntime_agrees(messy, tmp_path: Path) -> None:
    run, bundle, data = messy
    m = json.loads((bundle / "manifest.json").read_text())
    raw = m["input"]["raw_inputs"]
    names = [r["name"] for r in raw]
    assert len(set(names)) == len(names) and not set(names) & {"label", "probabilities", "prediction"}
    assert [r["column"] for r in raw] == run.features.inputs.column_names
    by_column = {r["column"]: r for r in raw}
    assert by_column["input:label"]["name"] == "input:label"  # a column keeps its name unless it clashes
    assert by_column["when"]["dtype"] == by_column["wide"]["dtype"] == "float64"
    assert by_column["flag"]["dtype"] == "string"
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(sess.get_modelmeta().custom_metadata_map[RAW_INPUTS_KEY]) == raw
    assert sess.get_outputs()[1].type == "tensor(bool)"
    _no_identity_left(bundle, tmp_path)

    # rows as a user has them: another column order, an extra column
    X = pd.read_csv(data).drop(columns="target")
    X = X[list(reversed(X.columns))].assign(comment="extra")
    rows = tmp_path / "rows.csv"
    X.to_csv(rows, index=False, encoding="utf-8")
    want, got = predict_both_ways(bundle, rows, tmp_path)
    assert got == want and len(set(want)) == 2

    # and both equal numpy preprocessing + the model-only graph
    reference = _model_only_outputs(run, X)
    predictor = trainfer.load(bundle)
    assert float(np.abs(predictor.predict_proba(X) - reference).max()) <= PARITY
    assert [str(v) for v in np.asarray(predictor.labels)[reference.argmax(1)]] == want


def test_regression_with_a_time_zoned_date_column(tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    frame.insert(0, "seen", pd.date_range("2021-03-01", periods=len(frame), freq="7h", tz="Europe/Berlin"))
    data = tmp_path / "diabetes.parquet"
    frame.to_parquet(data)
    run = train(data=str(data), target="target", model="mlp", epochs=3, overrides=TINY_MLP, seed=0, quiet=True,
                out=tmp_path / "run")
    bundle = export(run, tmp_path / "bundle")
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["outputs"] == ["prediction"] and m["input"]["raw_inputs"][0]["dtype"] == "float64"
    _no_identity_left(bundle, tmp_path)
    X = frame.drop(columns="target")
    reference = _model_only_outputs(run, X)[:, 0]
    predictor = trainfer.load(bundle)
    got = predictor.predict(X)
    assert float(np.abs(got - reference).max()) <= PARITY * max(1.0, float(np.abs(reference).max()))
    # the same instants as naive UTC datetimes, as ISO text with an offset, and one missing
    naive = X.assign(seen=X["seen"].dt.tz_convert("UTC").dt.tz_localize(None))
    text = X.assign(seen=X["seen"].astype(str))
    np.testing.assert_array_equal(predictor.predict(naive), got)
    np.testing.assert_array_equal(predictor.predict(text), got)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = predictor.prepare(X.iloc[:3].assign(seen=[pd.NaT, *X["seen"].iloc[1:3]]))
    assert np.isnan(feed["seen"][0, 0]) and feed["seen"].dtype == np.float64
    assert np.isfinite(sess.run(["prediction"], feed)[0]).all()


def test_tuning_times_the_whole_graph_the_bundle_ships(messy, tmp_path: Path) -> None:
    """tune's latency objective: the trial's whole graph (raw inputs, preprocessing, label lookup), fed a raw
    validation row, not the model-only graph."""
    from trainfer.tuning import cost

    run, bundle, _ = messy
    path, feed = cost._export(run.path, tmp_path / "trial.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shipped = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [(i.name, i.type) for i in shipped.get_inputs()]
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "label"]
    assert set(feed) == {i.name for i in sess.get_inputs()} and all(len(v) == 1 for v in feed.values())
    (record,) = cost.measure_runs([run.path], tmp_path, threads=1)
    assert record["latency_ms"] > 0 and record["latency_raw_p50_ms"] > 0


def test_serve_takes_raw_columns_from_a_stock_triton_client_and_kserve_json(messy, tmp_path: Path) -> None:
    """`trainfer serve` on the table: a stock tritonclient.http client sends one tensor per raw column as the v2
    metadata lists them (a missing value in each kind: NaN for FP32/FP64, "" for BYTES), and a KServe JSON v2
    request built only from GET /v2/models/NAME (null for missing) does too; both get `predict`'s labels, typed as
    the graph types them (BOOL here)."""
    import httpx
    import tritonclient.http as triton
    from _serve_fixtures import running_server

    _, bundle, data = messy
    X = pd.read_csv(data).drop(columns="target").iloc[:12]
    X = X.astype(object).where(X.notna(), None)  # one missing marker: None
    for row, column in enumerate(["when", "flag", "größe ✓", "wide", "label", "input:label"]):
        X.loc[row, column] = None
    want = trainfer.load(bundle).predict(X).tolist()
    raw = {r["name"]: r for r in json.loads((bundle / "manifest.json").read_text())["input"]["raw_inputs"]}

    def tensor(name: str, datatype: str) -> np.ndarray:
        values = X[raw[name]["column"]]
        if datatype == "BYTES":
            return np.array(["" if v is None else str(v) for v in values], dtype=object).reshape(-1, 1)
        if raw[name]["column"] == "when":
            days = np.array([v or "NaT" for v in values], dtype="datetime64[D]")
            secs = days.astype("datetime64[s]").astype(np.int64).astype(np.float64)
            return np.where(np.isnat(days), np.nan, secs).reshape(-1, 1)
        return np.array([np.nan if v is None else v for v in values],
                        dtype=np.float64 if datatype == "FP64" else np.float32).reshape(-1, 1)

    with running_server(bundle, ["--name", "messy"], tmp_path / "server") as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        meta = client.get_model_metadata("messy")
        assert [i["name"] for i in meta["inputs"]] == list(raw)
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"probabilities": "FP32", "label": "BOOL"}
        inputs = []
        for i in meta["inputs"]:
            arr = tensor(i["name"], i["datatype"])
            inputs.append(triton.InferInput(i["name"], list(arr.shape), i["datatype"]))
            inputs[-1].set_data_from_numpy(arr)
        result = client.infer("messy", inputs, outputs=[triton.InferRequestedOutput("label")])
        assert result.as_numpy("label").reshape(-1).tolist() == want
        # KServe JSON v2, from the metadata alone
        body = {"inputs": [{"name": i["name"], "datatype": i["datatype"], "shape": [len(X), 1],
                            "data": [None if isinstance(v, float) and np.isnan(v) else v
                                     for v in tensor(i["name"], i["datatype"]).reshape(-1).tolist()]}
                           for i in httpx.get(f"{server.url}/v2/models/messy").json()["inputs"]]}
        reply = httpx.post(f"{server.url}/v2/models/messy/infer", json=body)
        assert reply.status_code == 200, reply.text
        label = next(o for o in reply.json()["outputs"] if o["name"] == "label")
        assert label["datatype"] == "BOOL" and label["data"] == want


def _old_bundle(run, bundle: Path, out: Path) -> Path:
    """``bundle`` as export wrote it before the whole graph: model.onnx takes the preprocessed tensor "input", the
    manifest has no input.pipeline nor raw_inputs."""
    from trainfer.exporting.writer import write_bundle
    from trainfer.runtime.bundle import MODEL

    new = json.loads((bundle / "manifest.json").read_text())
    X_test = run.load_split("test")[0]
    X_std, X_graph = graph_inputs(run.features, X_test)
    buf = io.BytesIO()
    export_model(run.model, run.features, X_std, X_graph, buf)

    def fill(tmp: Path) -> dict:
        (tmp / MODEL).write_bytes(buf.getvalue())
        fields = {k: v for k, v in new.items() if k not in ("format", "format_version", "created", "files",
                                                             "manifest_sha256")}
        old_input = {k: v for k, v in fields["input"].items() if k not in ("pipeline", "raw_inputs")}
        old_input.update(tensor_name="input", tensor_shape=["batch", *run.features.input_shape])
        fields["onnx"] = {k: v for k, v in fields["onnx"].items() if k not in ("opset_ml", "model_opset")}
        return {**fields, "input": old_input, "outputs": ["probabilities"]}

    return write_bundle(out, fill)


def test_a_bundle_from_before_the_whole_graph_predicts_and_serves(messy, tmp_path: Path) -> None:
    import httpx
    from _serve_fixtures import running_server

    run, bundle, data = messy
    old = _old_bundle(run, bundle, tmp_path / "old")
    assert not trainfer.load(old).whole_graph
    X = pd.read_csv(data).drop(columns="target")
    want = [str(v) for v in trainfer.load(bundle).predict(X)]
    rows = tmp_path / "rows.csv"
    X.to_csv(rows, index=False, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = tmp_path / "predictions.csv"
    cli = subprocess.run([sys.executable, "-m", "trainfer.cli", "predict", str(old), str(rows), "--out", str(out)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    with open(out, newline="", encoding="utf-8") as fh:
        assert [r["prediction"] for r in csv.DictReader(fh)] == want
    with running_server(old, ["--name", "old"], tmp_path / "server") as server:
        meta = httpx.get(f"{server.url}/v2/models/old").json()
        assert [i["name"] for i in meta["inputs"]] == run.features.inputs.column_names  # one tensor per column
        first = X.iloc[:5].astype(object).where(X.iloc[:5].notna(), None)
        # the date as its number (seconds since 1970), in float64: the metadata calls it a number
        first["when"] = [(pd.Timestamp(v) - pd.Timestamp(0)).total_seconds() for v in first["when"]]
        body = {"inputs": [{"name": c, "datatype": "FP64" if c == "when" else i["datatype"], "shape": [5, 1],
                            "data": [str(v) if v is not None and i["datatype"] == "BYTES" else v for v in first[c]]}
                           for c, i in zip(first.columns, meta["inputs"], strict=True)]}
        reply = httpx.post(f"{server.url}/v2/models/old/infer", json=body)
        assert reply.status_code == 200, reply.text
        label = next(o for o in reply.json()["outputs"] if o["name"] == "label")
        assert [str(v) for v in label["data"]] == want[:5]


@pytest.mark.filterwarnings("error")
def test_the_float32_range_check_on_rows_of_numbers(tmp_path_factory) -> None:
    """The hot path's one check (sum of squares at small batches): values each within float32 whose squares
    overflow pass, a value beyond float32 or an infinity is refused with its row and column, NaN is missing."""
    from _inference_fixtures import get_bundle

    from trainfer.errors import InputError

    digits = trainfer.load(get_bundle(tmp_path_factory, "digits"))
    names = digits.features.inputs.column_names
    X = np.full((3, len(names)), 1e38)  # each fits float32; the sum of their squares overflows float64's bound
    X[1, 5] = np.nan
    as_dicts = [dict(zip(names, row, strict=True)) for row in X.tolist()]
    np.testing.assert_array_equal(digits.predict_proba(X), digits.predict_proba(as_dicts))
    for bad, what in ((3.5e38, "float32"), (-np.inf, "infinite")):
        for dtype in (np.float64, np.float32):
            Y = np.zeros((2, len(names)), dtype=dtype)
            with np.errstate(over="ignore"):
                Y[1, 7] = bad
            if dtype == np.float32 and what == "float32":
                continue  # a float32 array cannot hold it
            with pytest.raises(InputError, match=what) as info:
                digits.predict(Y)
            assert (info.value.row, info.value.column) == (1, names[7])
