"""The whole pipeline in one ONNX graph (issue 14): raw columns or uint8 images in, probabilities and labels out.

Parity with the numpy preprocessing + model-only graph the bundle shipped before (missing values, unseen and unicode
categories, images of other sizes), a plain onnxruntime with trainfer unimportable, quantized variants keeping the
preprocessing in float, inf, and bundles exported before this change.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from _inference_fixtures import REPO, SRC, get_bundle, get_run

import trainfer
from trainfer.errors import InputError
from trainfer.exporting import compose_whole, export_model, graph_inputs, onnx_outputs, whole_outputs
from trainfer.exporting.graph import MODEL_PREFIX
from trainfer.exporting.quantize import quantize_dynamic_int8, quantize_static_int8
from trainfer.features.image import _resize

PARITY = 1e-5
UNICODE = ["ñandú", "红色", "🐦 bird", "Ωmega"]


@pytest.fixture(scope="module", params=["digits", "breast_cancer", "csv", "cnn"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    return name, get_run(tmp_path_factory, name), get_bundle(tmp_path_factory, name)


def _model_only(run) -> bytes:
    """The model-only graph as export wrote it before issue 14 (input: preprocessed rows)."""
    X_raw = run.load_split("test")[0]
    X_std, X_graph = graph_inputs(run.features, X_raw)
    buf = io.BytesIO()
    export_model(run.model, run.features, X_std, X_graph, buf)
    return buf.getvalue()


def _messy(name: str, run):
    """The test split plus rows with what numpy preprocessing handles specially."""
    X = run.load_split("test")[0]
    if name == "cnn":
        return run.features.inputs.to_uint8(X)
    X = X.reset_index(drop=True).copy()
    if name == "csv":
        extra = pd.DataFrame({"x1": [np.nan, 0.3, -1.0, 2.0, None, 0.1, 0.5, -0.2],
                              "colour": [None, "", "NA", "purple", *UNICODE],
                              "x2": [0.5, np.nan, 1.0, -1.0, 0.0, np.nan, 2.0, 1.5]})
        return pd.concat([X[["x1", "colour", "x2"]], extra], ignore_index=True)
    X.iloc[0, 0] = np.nan  # missing numbers: imputed with the training median in the graph
    X.iloc[1, 3] = np.nan
    X.iloc[2, :] = np.nan
    return X


def _session(bundle: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])


# ---- acceptance 1: the whole graph equals numpy preprocessing + the model -------------------------

def test_whole_graph_matches_numpy_preprocessing_and_model(case) -> None:
    name, run, bundle = case
    X = _messy(name, run)
    _, X_graph = graph_inputs(run.features, X)  # trainfer's numpy preprocessing, as bundles used it
    want = onnx_outputs(_model_only(run), X_graph)
    feed = trainfer.load(bundle).feed(X)
    proba, label = _session(bundle).run(["probabilities", "label"], feed)
    assert proba.shape == want.shape and len(X) >= 20
    assert float(np.abs(proba - want).max()) <= PARITY
    labels = run.features.target.labels
    assert [str(v) for v in label] == [str(labels[i]) for i in want.argmax(axis=1)]
    if name == "csv":  # the unicode and unseen categories went to the unknown slot, missing ones to the fill
        assert list(label[-8:]) == list(trainfer.load(bundle).predict(X.iloc[-8:]))


def test_images_of_another_size_are_resized_in_the_graph_as_pillow_does(tmp_path_factory) -> None:
    run = get_run(tmp_path_factory, "cnn")
    bundle = get_bundle(tmp_path_factory, "cnn")
    size = run.features.inputs.size
    base = run.features.inputs.to_uint8(run.load_split("test")[0])[:6]
    rng = np.random.default_rng(0)
    sess = _session(bundle)
    model_only = _model_only(run)
    worst = 0.0
    # down- and upscaled, square and not, smooth and noise; Pillow picks the pass order by the shape
    for h, w in [(size * 2, size * 3), (size // 2 + 1, size), (31, 8), (8, 31), (40, 37), (size + 1, size - 3)]:
        imgs = np.concatenate([_resize_each(base, h, w), rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)])
        want = onnx_outputs(model_only, run.features.transform(imgs))  # Pillow BILINEAR in numpy's path
        proba, label = sess.run(["probabilities", "label"], {"image": imgs})
        worst = max(worst, float(np.abs(proba - want).max()))
        np.testing.assert_array_equal(label, np.asarray(run.features.target.labels)[want.argmax(axis=1)])
        # the resized pixels themselves: the graph's input to the model equals Pillow's, pixel for pixel
        np.testing.assert_array_equal(_graph_pixels(bundle, imgs, run.features.inputs),
                                      _resize(imgs, size).astype(np.float32))
    assert worst <= PARITY, f"max probability difference {worst:.2e} on resized images"


def _resize_each(imgs: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR)) for a in imgs])


def _graph_pixels(bundle: Path, imgs: np.ndarray, img_features) -> np.ndarray:
    """The whole graph's normalized model input, mapped back to 0..255 pixels (NHWC)."""
    model = onnx.load(str(bundle / "model.onnx"))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(MODEL_PREFIX + "input", onnx.TensorProto.FLOAT,
                                                                 None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = sess.run(None, {"image": imgs})[0]
    scale, shift = img_features._scale.reshape(1, 3, 1, 1), img_features._shift.reshape(1, 3, 1, 1)
    return np.rint((x - shift) / scale).transpose(0, 2, 3, 1).astype(np.float32)


def test_bundle_records_the_whole_graph(case) -> None:
    name, run, bundle = case
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["input"]["pipeline"] == "in_graph"
    assert m["onnx"]["opset"] == 18
    assert m["onnx"]["opset_ml"] == (3 if name == "csv" else None)  # LabelEncoder only where there are strings
    sess = _session(bundle)
    raw = m["input"]["raw_inputs"]
    assert [i.name for i in sess.get_inputs()] == [r["name"] for r in raw]
    assert [o.name for o in sess.get_outputs()] == m["outputs"] == ["probabilities", "label"]
    types = {"float32": "tensor(float)", "float64": "tensor(double)", "string": "tensor(string)",
             "uint8": "tensor(uint8)"}
    assert [i.type for i in sess.get_inputs()] == [types[r["dtype"]] for r in raw]
    if name == "cnn":
        assert raw == [{"name": "image", "column": "image", "dtype": "uint8", "shape": ["batch", "height", "width", 3]}]
    else:
        assert [r["column"] for r in raw] == run.features.inputs.column_names
    label_type = sess.get_outputs()[1].type
    assert label_type == ("tensor(string)" if name == "csv" else "tensor(int64)")


# ---- acceptance 2: a plain onnxruntime, trainfer not importable, gives `trainfer predict`'s labels ----

_PLAIN = textwrap.dedent("""
    import csv, json, sys

    class _Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "trainfer" or name.startswith("trainfer."):
                raise ImportError("trainfer is not importable here")

    sys.meta_path.insert(0, _Refuse())
    try:
        import trainfer  # noqa: F401
    except ImportError:
        print("TRAINFER-NOT-IMPORTABLE")
    else:
        raise SystemExit("trainfer was importable")

    import numpy as np
    import onnxruntime as ort

    def number(cell):  # a date (float64 input) is seconds since 1970 UTC, as the contract says
        if cell == "":
            return np.nan
        try:
            return float(cell)
        except ValueError:
            return float(np.datetime64(cell, "D").astype("datetime64[s]").astype(np.int64))

    sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    # which column each input is: the graph says it (a column named like an output is fed as input:<column>)
    columns = {i["name"]: i["column"] for i in
               json.loads(sess.get_modelmeta().custom_metadata_map["trainfer.raw_inputs"])}
    with open(sys.argv[2], newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    feed = {}
    for i in sess.get_inputs():
        cells = [r[columns[i.name]] for r in table]
        if i.type == "tensor(string)":
            feed[i.name] = np.array(cells, dtype=object).reshape(-1, 1)
        else:
            dtype = np.float64 if i.type == "tensor(double)" else np.float32
            feed[i.name] = np.array([number(c) for c in cells], dtype=dtype).reshape(-1, 1)
    print(json.dumps([str(v) for v in sess.run(["label"], feed)[0].tolist()]))
""")


def predict_both_ways(bundle: Path, rows: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    """(labels `trainfer predict` writes for the CSV ``rows``, labels a plain onnxruntime process computes from
    model.onnx alone with trainfer unimportable: it asserts that the import fails)."""
    out = tmp_path / "predictions.csv"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cli = subprocess.run([sys.executable, "-m", "trainfer.cli", "predict", str(bundle), str(rows), "--out", str(out)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    with open(out, newline="", encoding="utf-8") as fh:
        want = [r["prediction"] for r in csv.DictReader(fh)]
    plain = subprocess.run([sys.executable, "-I", "-c", _PLAIN, str(bundle / "model.onnx"), str(rows)],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0] == "TRAINFER-NOT-IMPORTABLE"
    return want, json.loads(lines[-1])


@pytest.mark.parametrize("name", ["csv", "digits"])
def test_plain_onnxruntime_without_trainfer_gives_predict_labels(name: str, tmp_path_factory,
                                                                tmp_path: Path) -> None:
    run = get_run(tmp_path_factory, name)
    bundle = get_bundle(tmp_path_factory, name)
    rows = tmp_path / "rows.csv"
    _messy(name, run).to_csv(rows, index=False, encoding="utf-8")
    want, got = predict_both_ways(bundle, rows, tmp_path)
    assert got == want and len(got) == len(_messy(name, run))
    assert len(set(got)) > 1, "rows with different predictions"


# ---- quantized variants keep the preprocessing in float --------------------------------------------

_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
              "QLinearMatMul", "QLinearConv", "QGemm", "DynamicQuantizeMatMul"}


def _quant_variant(run, tmp: Path, kind: str) -> bytes:
    """A quantized model part as optimize builds it (from the unfolded graph), composed into the whole graph."""
    X_raw = run.load_split("test")[0]
    X_std, X_graph = graph_inputs(run.features, X_raw)
    src, dst = tmp / f"{kind}-src.onnx", tmp / f"{kind}.onnx"
    export_model(run.model, run.features, X_std, X_graph, src, fold_standardization=False)
    if kind == "dynamic":
        quantize_dynamic_int8(src, dst, tmp)
    else:
        quantize_static_int8(src, dst, tmp, X_graph[:64], "minmax")
    return compose_whole(dst, run.features)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_quantized_variant_keeps_preprocessing_in_float(kind: str, tmp_path_factory, tmp_path: Path) -> None:
    run = get_run(tmp_path_factory, "csv")
    whole = onnx.load_from_string(_quant_variant(run, tmp_path, kind))
    ops = [n.op_type for n in whole.graph.node]
    assert set(ops) & _QUANT_OPS, "the model part is quantized"
    # the opsets the contract names, not the dozen domains onnxruntime's quantization pre-processing declares
    assert {o.domain: o.version for o in whole.opset_import} == {"": 18, "ai.onnx.ml": 3}
    pre = [n for n in whole.graph.node if not n.name.startswith((MODEL_PREFIX, "trainfer/post/"))]
    assert pre and not {n.op_type for n in pre} & _QUANT_OPS
    assert {"IsNaN", "Where", "LabelEncoder", "Equal"} <= {n.op_type for n in pre}
    made_by_pre = {o for n in pre for o in n.output}
    for n in whole.graph.node:
        if n.op_type in _QUANT_OPS:
            assert not set(n.input) & made_by_pre, f"{n.op_type} {n.name} reads the preprocessing's output"
    # it still runs on raw rows with missing values and unknown categories
    X = _messy("csv", run)
    sess = ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"])
    proba = whole_outputs(sess, run.features, X)
    assert np.isfinite(proba).all() and proba.shape == (len(X), 3)


def test_optimize_measures_the_whole_graph_on_raw_rows(tmp_path_factory, tmp_path: Path) -> None:
    from trainfer.exporting.optimize import optimize

    run = get_run(tmp_path_factory, "csv")
    record = optimize(run, tmp_path / "opt", variants=["onnx-fp32", "int8-dynamic"], quick=True)
    row = next(r for r in record["variants"] if r["name"] == "int8-dynamic")
    assert row["status"] in ("kept", "over_budget")
    # the accuracy optimize recorded is the composed int8 graph's, on the raw test rows
    X, y = run.load_split("test")
    whole = _quant_variant(run, tmp_path, "dynamic")
    proba = whole_outputs(ort.InferenceSession(whole, providers=["CPUExecutionProvider"]), run.features, X)
    assert row["test_accuracy"] == pytest.approx(float(np.mean(proba.argmax(1) == run.features.target.encode(y))))
    m = json.loads((tmp_path / "opt" / "manifest.json").read_text())
    assert m["input"]["pipeline"] == "in_graph" and m["variant"] == record["chosen"]
    assert list(trainfer.load(tmp_path / "opt").predict(X)) == list(trainfer.load(tmp_path / "opt").predict(X))


# ---- inf: refused by trainfer; what a raw runtime does with it ---------------------------------------

def test_inf_is_refused_naming_row_and_column(digits_bundle: Path, csv_bundle: Path, tmp_path_factory) -> None:
    digits = trainfer.load(digits_bundle)
    X = get_run(tmp_path_factory, "digits").load_split("test")[0].to_numpy(dtype=np.float64)[:3].copy()
    X[1, 10] = np.inf
    for fn in (digits.predict, digits.predict_proba, digits.prepare):
        with pytest.raises(InputError) as info:
            fn(X)
        assert info.value.row == 1 and info.value.column == digits.features.inputs.column_names[10]
        assert "infinite" in info.value.message
    X[1, 10] = 1e39  # beyond float32: the graph would see inf
    with pytest.raises(InputError, match="float32") as info:
        digits.predict(X)
    assert info.value.row == 1
    animals = trainfer.load(csv_bundle)
    frame = pd.DataFrame({"x1": [0.1, -np.inf], "colour": ["red", "blue"], "x2": [0.0, 1.0]})
    with pytest.raises(InputError) as info:
        animals.predict(frame)
    assert (info.value.row, info.value.column) == (1, "x1")


def test_a_raw_runtime_given_inf_returns_nan_probabilities_and_the_first_label(digits_bundle: Path) -> None:
    """What the README says: the graph does not refuse inf; its probabilities are NaN and ArgMax over NaN picks
    class 0, so the label is the first label. Only trainfer's checks refuse it."""
    sess = _session(digits_bundle)
    feed = {i.name: np.full((2, 1), 3.0, np.float32) for i in sess.get_inputs()}
    first = sess.get_inputs()[20].name
    feed[first][0, 0] = np.inf
    proba, label = sess.run(["probabilities", "label"], feed)
    assert np.isnan(proba[0]).all() and np.isfinite(proba[1]).all()
    assert label[0] == trainfer.load(digits_bundle).labels[0]


# ---- the Predictor's feed: fresh arrays from prepare, a reused buffer only inside predict ------------

def test_prepare_returns_arrays_that_later_calls_do_not_change(digits_bundle: Path, tmp_path_factory) -> None:
    digits = trainfer.load(digits_bundle)
    X = get_run(tmp_path_factory, "digits").load_split("test")[0].to_numpy(dtype=np.float64)
    a = digits.prepare(X[:1])  # all-number table: one (1, 64) float32 matrix that run() binds
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (1, 64)
    kept = a.copy()
    digits.predict(X[1:2])
    digits.prepare(X[2:3])
    digits.run(digits.prepare(X[3:4]))
    assert np.array_equal(a, kept, equal_nan=True)
    f = digits.feed(X[:1])  # the feed dict any runtime takes
    assert all(v.dtype == np.float32 and v.shape == (1, 1) and v.flags.c_contiguous for v in f.values())
    # the per-thread buffer predict reuses does not leak one batch into the next
    assert list(digits.predict(X[:5])) == [digits.predict(X[i:i + 1])[0] for i in range(5)]
    np.testing.assert_allclose(digits.run(a), digits.predict_proba(X[:1]))
    np.testing.assert_allclose(digits.run(np.concatenate([digits.prepare(X[i:i + 1]) for i in range(5)])),
                               digits.predict_proba(X[:5]))  # batched as the server batches: rows joined
    np.testing.assert_allclose(digits.run(f), digits.predict_proba(X[:1]))


def test_missing_column_is_named(csv_bundle: Path) -> None:
    animals = trainfer.load(csv_bundle)
    with pytest.raises(InputError, match="colour"):
        animals.prepare(pd.DataFrame({"x1": [0.1], "x2": [0.2]}))


# ---- a bundle exported before issue 14 still loads --------------------------------------------------

def test_bundle_exported_before_the_whole_graph_still_loads(tmp_path_factory, tmp_path: Path) -> None:
    from trainfer.exporting.writer import write_bundle
    from trainfer.runtime.bundle import MODEL

    run = get_run(tmp_path_factory, "csv")
    new = json.loads((get_bundle(tmp_path_factory, "csv") / "manifest.json").read_text())
    model_only = _model_only(run)

    def fill(tmp: Path) -> dict:
        (tmp / MODEL).write_bytes(model_only)
        fields = {k: v for k, v in new.items() if k not in ("format", "format_version", "created", "files",
                                                             "manifest_sha256")}
        old_input = {k: v for k, v in fields["input"].items() if k not in ("pipeline", "raw_inputs")}
        old_input.update(tensor_name="input", tensor_shape=["batch", *run.features.input_shape])
        return {**fields, "input": old_input, "outputs": ["probabilities"]}

    old = write_bundle(tmp_path / "old", fill)
    X = _messy("csv", run)
    before, now = trainfer.load(old), trainfer.load(get_bundle(tmp_path_factory, "csv"))
    assert not before.whole_graph and now.whole_graph
    np.testing.assert_allclose(before.predict_proba(X), now.predict_proba(X), atol=PARITY)
    assert list(before.predict(X)) == list(now.predict(X))
