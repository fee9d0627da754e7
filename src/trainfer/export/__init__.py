"""Export a run to an inference bundle: fold BatchNorm, export ONNX, check parity, write the manifest."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainfer.errors import ExportError
from trainfer.export.fold import InferenceHead, fold_batchnorm
from trainfer.export.onnx_export import INPUT_NAME, export_onnx
from trainfer.export.writer import git_revision, write_bundle
from trainfer.runtime.bundle import MODEL
from trainfer.train import Run

PARITY_ATOL = 1e-4  # max |p_onnx - p_torch| on probabilities (or on regression outputs, relative)


def inference_module(run: Run) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The run's model as the bundle computes it: BatchNorm folded, softmax or de-standardization on top."""
    body, folded, why = fold_batchnorm(run.model)
    t = run.features.target
    return InferenceHead(body, t.task, t.mean, t.std).eval(), {"bn_folded": folded, "bn_fold_note": why}


def reference_outputs(run: Run, X: np.ndarray) -> np.ndarray:
    """What the bundle must reproduce: the unfolded torch model in eval mode, on preprocessed input."""
    out = run.outputs_preprocessed(X).astype(np.float64)
    t = run.features.target
    if t.task == "classification":
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return out * t.std + t.mean


def check_parity(run: Run, onnx_path: Path, X: np.ndarray, atol: float = PARITY_ATOL) -> dict[str, Any]:
    """Compare onnxruntime with torch on ``X``; raise ExportError with the figures when they disagree."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {INPUT_NAME: X[i:i + 256]})[0] for i in range(0, len(X), 256)])
    want = reference_outputs(run, X)
    diff = np.abs(got.astype(np.float64) - want)
    scale = 1.0 if run.task == "classification" else max(1.0, float(np.abs(want).max()))
    max_diff = float(diff.max()) / scale if diff.size else 0.0
    report = {"samples": len(X), "max_abs_diff": max_diff, "atol": atol}
    if run.task == "classification":
        agree = got.argmax(1) == want.argmax(1)
        # A disagreement is only excusable on a near-tie, where float rounding may flip the argmax.
        top2 = np.sort(want, axis=1)[:, -2:]
        real = ~agree & ((top2[:, 1] - top2[:, 0]) > 2 * atol)
        report["argmax_agreement"] = float(agree.mean()) if len(agree) else 1.0
        if real.any():
            raise ExportError(f"exported model disagrees with torch on {int(real.sum())} of {len(X)} predictions "
                              f"(max abs diff {max_diff:.2e})")
    if max_diff > atol:
        raise ExportError(f"exported model differs from torch by {max_diff:.2e} (> {atol:.0e}) on {len(X)} samples",
                          hint="a custom model may use an op that ONNX approximates; check it in eval mode")
    return report


def export(run: Run | str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Export ``run`` to a lossless ONNX bundle at ``out``; returns the bundle path.

    Example: ``trainfer.export("runs/digits", "bundles/digits")`` then ``trainfer.load("bundles/digits")``.
    """
    run = run if isinstance(run, Run) else Run.load(run)
    X_test = run.features.transform(run.load_split("test")[0])
    module, fold_info = inference_module(run)

    def fill(tmp: Path) -> dict[str, Any]:
        onnx_info = export_onnx(module, torch.from_numpy(X_test[:2]), tmp / MODEL, output_name(run.task))
        parity = check_parity(run, tmp / MODEL, X_test)
        return manifest_fields(run, "onnx-fp32", {**onnx_info, **fold_info}, parity)

    return write_bundle(Path(out), fill, force=force)


def output_name(task: str) -> str:
    return "probabilities" if task == "classification" else "prediction"


def manifest_fields(run: Run, variant: str, onnx_info: dict[str, Any], parity: dict[str, Any]) -> dict[str, Any]:
    f = run.features
    if f.kind == "tabular":
        schema: dict[str, Any] = {"kind": "tabular", "columns": [
            {"name": c["name"], "dtype": "float" if c["type"] == "numeric" else "string",
             **({"categories": c["categories"]} if c["type"] == "categorical" else {})}
            for c in f.inputs.columns]}
    else:
        schema = {"kind": "image", "height": f.inputs.size, "width": f.inputs.size, "channels": 3,
                  "accepts": "image files, or uint8 arrays (n, height, width, 3); other sizes are resized"}
    schema.update(tensor_name=INPUT_NAME, tensor_shape=["batch", *f.input_shape], id_column=f.id_column)
    import onnx
    import onnxruntime

    return {
        "task": f.task,
        "variant": variant,
        "input": schema,
        "preprocessing": f.to_dict(),
        "labels": f.target.labels,
        "outputs": [output_name(f.task)],
        "onnx": onnx_info,
        "parity": parity,
        "metrics": {k: run.summary.get(k) for k in ("train", "val", "test")},
        "provenance": {
            "run": str(run.path.resolve()),
            "data": run.summary.get("data"),
            "recipe": run.recipe.model_dump(mode="json"),
            "params": run.summary.get("params"),
            "versions": {"trainfer": _version(), "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "git_revision": git_revision(),
        },
    }


def _version() -> str:
    from trainfer import __version__

    return __version__


__all__ = ["check_parity", "export", "inference_module", "manifest_fields", "output_name"]
