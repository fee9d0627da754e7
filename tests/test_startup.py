"""Fixed costs of every command (issue 10.33): no torch._dynamo, no scikit-learn import, a fast exporter for
built-in models; each shortcut is checked against what it replaces."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import _env
from torch import nn

from trainfer.data.dataset import Dataset


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer"])
def test_shipped_tables_are_exactly_sklearns(name: str) -> None:
    import pandas as pd
    from sklearn import datasets

    from trainfer.data._shipped import load_shipped

    X, y = load_shipped(name)
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.data
    frame.columns = [str(c) for c in frame.columns]
    pd.testing.assert_frame_equal(X, frame, check_exact=True)
    want = bunch.target.to_numpy()
    assert y.dtype == want.dtype and np.array_equal(y, want)
    # Runs trained before record this fingerprint; it must not change.
    ours, theirs = Dataset(name, "tabular", X, y, "target"), Dataset(name, "tabular", frame, want, "target")
    assert ours.fingerprint() == theirs.fingerprint()


def test_train_and_export_import_neither_dynamo_nor_sklearn(tmp_path) -> None:
    code = (
        "import sys, trainfer\n"
        f"run = trainfer.train(data='iris', epochs=2, out={str(tmp_path / 'run')!r}, overrides=['model.hidden=[8]'])\n"
        f"trainfer.export(run, {str(tmp_path / 'bundle')!r})\n"
        "print(sorted(m for m in ('torch._dynamo', 'torch._inductor', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    import json

    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["onnx"]["exporter"] == "torchscript" and manifest["onnx"]["fallback_reason"] is None
    assert manifest["parity"]["ok"]


def _train(opt_cls: type, **kw: object) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = opt_cls([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=0.01, **kw)
    gen = torch.Generator().manual_seed(1)
    for i in range(30):
        x, y = torch.randn(8, 12, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = 0.01 * (1 - i / 30)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.state_dict(), opt.state_dict()


@pytest.mark.parametrize(("ours", "theirs", "kw"), [
    ("AdamW", torch.optim.AdamW, {}), ("SGD", torch.optim.SGD, {"momentum": 0.9, "nesterov": True})])
def test_optimizers_update_bitwise_like_torchs(ours: str, theirs: type, kw: dict) -> None:
    from trainfer.training import optim

    (w_a, s_a), (w_b, s_b) = _train(getattr(optim, ours), **kw), _train(theirs, **kw)
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_b)
    assert s_a["param_groups"] == s_b["param_groups"]
    assert s_a["state"].keys() == s_b["state"].keys()
    for i, st in s_b["state"].items():
        for k, v in st.items():
            assert torch.equal(s_a["state"][i][k], v) if isinstance(v, torch.Tensor) else s_a["state"][i][k] == v
    # state_dict is torch's own format, so checkpoints are unchanged (tests/test_resume.py resumes bitwise).


class _UserModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)  # data-dependent: tracing would bake in one branch


def test_only_builtin_and_fx_models_take_the_tracer() -> None:
    from trainfer.exporting.fold import InferenceHead, fold_batchnorm
    from trainfer.exporting.onnx_export import is_plain
    from trainfer.models.cnn import SmallResNet
    from trainfer.models.mlp import build_mlp

    mlp = build_mlp((12,), 3, [16], 0.1, True)
    assert is_plain(mlp) and is_plain(SmallResNet(3, 2, [4, 8], 0.0))
    assert is_plain(InferenceHead(fold_batchnorm(mlp)[0], "classification"))
    assert not is_plain(_UserModel()) and not is_plain(InferenceHead(_UserModel(), "classification"))
