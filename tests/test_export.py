"""Export: BatchNorm folding, ONNX parity with torch, and the bundle manifest (issue 3, part 1).

Three tiny runs (digits/mlp, breast_cancer/mlp, synthetic images/cnn) plus a CSV run with string
labels are trained and exported once per session (tests/_inference_fixtures.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _inference_fixtures import CSV_LABELS, get_bundle, get_run
from torch import nn

import trainfer
from trainfer.exporting.fold import fold_batchnorm
from trainfer.models.cnn import SmallResNet
from trainfer.models.mlp import build_mlp

PARITY_RUNS = ["digits", "breast_cancer", "cnn", "csv"]


@pytest.fixture(scope="module", params=PARITY_RUNS)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(name, run, bundle path, raw test rows) for each exported run."""
    name = request.param
    run = get_run(tmp_path_factory, name)
    bundle = get_bundle(tmp_path_factory, name)
    X_test, _ = run.load_split("test")
    return name, run, bundle, X_test


# ---- parity: the bundle computes what the torch model computes ---------------------------------

def test_bundle_probabilities_match_torch_on_test_split(case) -> None:
    name, run, bundle, X_test = case
    assert len(X_test) >= 20, f"{name}: test split too small to mean anything"
    want = run.predict_proba(X_test)  # torch, eval mode, from raw rows
    got = trainfer.load(bundle).predict_proba(X_test)  # onnxruntime + numpy preprocessing, from raw rows
    assert got.shape == want.shape == (len(X_test), len(run.features.target.labels))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert float(np.abs(got.astype(np.float64) - want).max()) <= 1e-4
    agree = got.argmax(axis=1) == want.argmax(axis=1)
    assert agree.all(), f"{name}: argmax disagrees on rows {np.flatnonzero(~agree).tolist()}"


def test_predict_returns_original_labels(case) -> None:
    name, run, bundle, X_test = case
    pred = trainfer.load(bundle)
    labels = pred.predict(X_test)
    proba = pred.predict_proba(X_test)
    assert len(labels) == len(X_test)
    assert list(labels) == [pred.labels[i] for i in proba.argmax(axis=1)]
    assert list(labels) == list(run.predict(X_test))
    if name == "csv":
        assert pred.labels == CSV_LABELS
        assert all(isinstance(v, str) for v in labels) and set(labels) <= set(CSV_LABELS)
    else:
        assert all(isinstance(v, (int, np.integer)) for v in labels)
        assert set(labels.tolist()) <= set(run.features.target.labels)


def test_bundle_predicts_as_well_as_the_run(case) -> None:
    _, run, bundle, X_test = case
    _, y_test = run.load_split("test")
    accuracy = float(np.mean(trainfer.load(bundle).predict(X_test).astype(object) == y_test.astype(object)))
    assert accuracy == pytest.approx(run.summary["test"]["accuracy"], abs=1e-9)


# ---- the manifest ------------------------------------------------------------------------------

def test_manifest_describes_the_bundle(case) -> None:
    name, run, bundle, _ = case
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format"] == "trainfer-bundle" and m["format_version"] == 1
    assert m["task"] == "classification"
    assert m["variant"] == "onnx-fp32"
    assert m["labels"] == run.features.target.labels
    assert m["outputs"] == ["probabilities", "label"]  # the whole graph (issue 14) returns the label too
    assert m["preprocessing"] == json.loads(json.dumps(run.features.to_dict()))

    schema = m["input"]
    if name == "cnn":
        assert schema["kind"] == "image"
        assert schema["height"] == schema["width"] == 16 and schema["channels"] == 3
        assert schema["raw_inputs"] == [{"name": "image", "column": "image", "dtype": "uint8",
                                         "shape": ["batch", "height", "width", 3]}]
    else:
        assert schema["kind"] == "tabular"
        names = [c["name"] for c in schema["columns"]]
        assert names == run.features.inputs.column_names and names
        for col in schema["columns"]:
            assert col["dtype"] in ("float", "string")
    if name == "csv":
        assert names == ["x1", "colour", "x2"]  # the id and label columns are not features
        colour = schema["columns"][1]
        assert colour["dtype"] == "string" and set(colour["categories"]) == {"red", "green", "blue"}
        assert schema["id_column"] == "id"

    assert m["metrics"]["test"] == run.summary["test"]
    assert set(m["metrics"]) >= {"train", "val", "test"}

    prov = m["provenance"]
    assert prov["data"]["fingerprint"] == run.split()["fingerprint"]
    assert len(prov["data"]["fingerprint"]) == 64
    assert prov["recipe"] == run.recipe.model_dump(mode="json")
    assert prov["params"] == run.summary["params"] > 0
    assert {"trainfer", "torch", "onnx", "onnxruntime", "numpy", "python"} <= set(prov["versions"])
    assert prov["versions"]["trainfer"] == trainfer.__version__

    # every file of the bundle (besides the manifest itself) is listed with its sha256
    on_disk = sorted(p.name for p in bundle.iterdir() if p.name != "manifest.json")
    assert sorted(m["files"]) == on_disk and "model.onnx" in on_disk
    for fname, digest in m["files"].items():
        assert digest == hashlib.sha256((bundle / fname).read_bytes()).hexdigest()
    assert len(m["manifest_sha256"]) == 64

    assert m["parity"]["max_abs_diff"] <= m["parity"]["atol"] == 1e-4
    assert m["parity"]["argmax_agreement"] == 1.0


def test_batchnorm_folded_out_of_the_graph(case) -> None:
    import onnx

    _, run, bundle, _ = case
    m = json.loads((bundle / "manifest.json").read_text())
    n_bn = sum(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in run.model.modules())
    assert n_bn > 0
    assert m["onnx"]["bn_folded"] == n_bn > 0
    assert m["onnx"]["bn_fold_note"] is None
    graph = onnx.load(str(bundle / "model.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    for fn in graph.functions:
        ops |= {node.op_type for node in fn.node}
    assert "BatchNormalization" not in ops, sorted(ops)


def test_export_refuses_to_overwrite_a_bundle(tmp_path_factory: pytest.TempPathFactory) -> None:
    from trainfer.exporting import export

    bundle = get_bundle(tmp_path_factory, "digits")
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(trainfer.TrainferError, match="already exists"):
        export(get_run(tmp_path_factory, "digits"), bundle)
    assert (bundle / "manifest.json").read_bytes() == before


# ---- fold_batchnorm on models directly -------------------------------------------------------

def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                if mod.running_mean is not None:
                    mod.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                    mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if mod.affine:
                    mod.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1.0)
                    mod.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fold_batchnorm_keeps_outputs_and_removes_every_batchnorm(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "mlp":
        model = build_mlp((20,), 4, hidden=[16, 8], dropout=0.3, batchnorm=True)
        x = torch.randn(32, 20)
        expected_bn = 2
    else:
        model = SmallResNet(3, 5, channels=[4, 8], dropout=0.2)
        x = torch.randn(6, 3, 12, 12)
        expected_bn = 6  # stem 1 + block 1 (2, identity shortcut) + block 2 (2 + 1 projection)
    model = _randomize_batchnorm(model).train()  # a model straight out of training, in train mode
    assert _bn_count(model) == expected_bn
    folded, count, note = fold_batchnorm(model)

    assert (count, note) == (expected_bn, None)
    assert _bn_count(folded) == 0
    assert not folded.training
    # the original model is untouched: same modules, same mode
    assert _bn_count(model) == expected_bn and model.training
    with torch.no_grad():
        want = model.eval()(x)
        got = folded(x)
    assert want.abs().max() > 0.1  # non-trivial outputs
    assert _max_diff(got, want) <= 1e-5


class _DataDependent(nn.Module):
    """Not traceable by torch.fx: Python control flow on a tensor value."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.fc(x))
        return y if float(x.sum()) > -1e9 else -y


class _SharedLinear(nn.Module):
    """The Linear's output feeds the BatchNorm and a skip connection: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.bn(h) + h


class _BatchStatsNorm(nn.Module):
    """A BatchNorm without running statistics normalizes with batch statistics: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


@pytest.mark.parametrize("cls", [_DataDependent, _SharedLinear, _BatchStatsNorm])
def test_fold_batchnorm_leaves_unfoldable_models_correct(cls: type[nn.Module]) -> None:
    torch.manual_seed(1)
    model = _randomize_batchnorm(cls()).eval()
    x = torch.randn(8, 6)
    folded, count, note = fold_batchnorm(model)
    assert count == 0
    if cls is _DataDependent:
        assert note and "trace" in note
    with torch.no_grad():
        assert _max_diff(folded(x), model(x)) <= 1e-6


def test_fold_batchnorm_on_trained_run_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = get_run(tmp_path_factory, "cnn")
    folded, count, _ = fold_batchnorm(run.model)
    assert count == _bn_count(run.model) > 0 and _bn_count(folded) == 0
    X = torch.from_numpy(run.features.transform(run.load_split("test")[0][:16]))
    with torch.no_grad():
        assert _max_diff(folded(X), run.model.eval()(X)) <= 1e-5


def test_bundle_is_self_contained(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A bundle moved elsewhere (the run directory out of reach) still loads and predicts the same."""
    import shutil

    run = get_run(tmp_path_factory, "csv")
    bundle = get_bundle(tmp_path_factory, "csv")
    moved = Path(shutil.copytree(bundle, tmp_path / "elsewhere" / "b"))
    X_test, _ = run.load_split("test")
    np.testing.assert_array_equal(trainfer.load(moved).predict_proba(X_test),
                                  trainfer.load(bundle).predict_proba(X_test))
