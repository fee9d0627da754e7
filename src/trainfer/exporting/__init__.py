"""Export a run to an inference bundle: fold BatchNorm, export ONNX, check parity, write the manifest."""

from __future__ import annotations

import io
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainfer._atomic import os_error_in
from trainfer._env import git_revision
from trainfer.errors import ExportError
from trainfer.exporting.fold import InferenceHead, InputAffine, fold_batchnorm, fold_input_affine
from trainfer.exporting.onnx_export import INPUT_NAME, export_onnx
from trainfer.exporting.writer import check_bundle_out, write_bundle
from trainfer.features import Features, Target
from trainfer.features.raw import RawFeeder, raw_inputs
from trainfer.runtime import default_threads, inference_session
from trainfer.runtime.bundle import MODEL
from trainfer.runtime.keys import symmetric_key
from trainfer.training import Run

PARITY_ATOL = 1e-4  # max |p_onnx - p_torch| on probabilities (relative, for regression outputs)


def graph_standardizes(features: Features) -> bool:
    """Tables whose scaling is safe in float32 get it inside the graph (folded into the first layer):
    the bundle's numpy work at batch 1 is then one cast and one check, not a float64 round trip."""
    return features.kind == "tabular" and features.inputs.affine_in_float32_is_exact_enough


def graph_inputs(features: Features, X_raw: Any) -> tuple[np.ndarray, np.ndarray]:
    """(input of the torch model, input of the ONNX graph) for the same raw rows."""
    X_std = features.transform(X_raw)
    return X_std, (features.inputs.encode(X_raw) if graph_standardizes(features) else X_std)


def inference_module(model: torch.nn.Module, features: Features,
                     fold_standardization: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model`` as the bundle computes it: BatchNorm folded, the input standardization (when the graph
    standardizes) folded into the first layer or, with ``fold_standardization=False``, kept as its own float
    Mul/Add in front of it; softmax or de-standardization of the output on top.

    Only graphs that stay float may fold: the folded first layer's weights are W / std, which spans orders of
    magnitude on tables whose columns have very different scales, and int8 would round most of them to zero.
    A graph meant for the quantizer keeps the model's own weights in its first layer.
    """
    body, folded, why = fold_batchnorm(model)
    info: dict[str, Any] = {"bn_folded": folded, "bn_fold_note": why, "standardization": "numpy"}
    if graph_standardizes(features):
        scale, shift = (torch.from_numpy(a).float() for a in features.inputs.affine)
        if fold_standardization:
            body, into_first = fold_input_affine(body, scale, shift)
        else:
            body, into_first = torch.nn.Sequential(InputAffine(scale, shift), body).eval(), False
        info.update(standardization="in_graph", standardization_folded=into_first)
    t = features.target
    return InferenceHead(body, t.task, t.mean, t.std).eval(), info


@torch.inference_mode()
def reference_outputs(model: torch.nn.Module, X: np.ndarray, target: Target) -> np.ndarray:
    """What a bundle must reproduce: the unfolded torch model in eval mode, with the same head."""
    head = InferenceHead(model, target.task, target.mean, target.std).eval()
    device = next(model.parameters()).device
    return np.concatenate([head(torch.from_numpy(X[i:i + 1024]).to(device)).double().cpu().numpy()
                           for i in range(0, len(X), 1024)])


def onnx_outputs(onnx_path: Path | io.BytesIO | bytes, X: np.ndarray) -> np.ndarray:
    """The model graph's outputs on ``X``, from the session a bundle runs it on (same graph optimizations)."""
    sess = inference_session(onnx_path.getvalue() if isinstance(onnx_path, io.BytesIO) else onnx_path,
                             default_threads())
    return np.concatenate([sess.run(None, {INPUT_NAME: X[i:i + 256]})[0] for i in range(0, len(X), 256)])


def whole_outputs(sess: Any, features: Features, X_raw: Any, batch: int = 256) -> np.ndarray:
    """A whole graph's first output (probabilities, or predictions) on raw rows, fed as a bundle feeds them."""
    feeder = RawFeeder(features)
    first = sess.get_outputs()[0].name
    n = len(X_raw)
    return np.concatenate([sess.run([first], feeder.feed(X_raw[i:i + batch]))[0] for i in range(0, max(n, 1), batch)])


def compose_whole(model_onnx: bytes | Path, features: Features) -> bytes:
    """The model-only graph (as export_onnx writes it; quantized or pruned alike) with the float preprocessing and
    the label lookup around it: the bundle's model.onnx (see exporting.graph)."""
    import onnx

    from trainfer.exporting.graph import whole_graph

    model = onnx.load_from_string(model_onnx) if isinstance(model_onnx, bytes) else onnx.load(str(model_onnx))
    return whole_graph(model, features, graph_standardizes(features)).SerializeToString()


def check_whole_parity(model: torch.nn.Module, features: Features, whole: bytes, X_raw: Any, X_std: np.ndarray,
                       atol: float = PARITY_ATOL) -> dict[str, Any]:
    """torch (on the standardized rows) against the whole graph (on the same raw rows); ExportError when they
    disagree."""
    got = whole_outputs(inference_session(whole, default_threads()), features, X_raw)
    report = compare(got, reference_outputs(model, X_std, features.target), features.task, atol)
    report["inputs"] = "raw"
    if not report["ok"]:
        raise ExportError(
            f"the exported whole graph disagrees with torch on raw rows: max abs diff {report['max_abs_diff']:.2e} "
            f"(> {atol:.0e}) on {report['samples']} samples",
            hint="a custom model may use an op that ONNX approximates; check it in eval mode")
    return report


def compare(got: np.ndarray, want: np.ndarray, task: str, atol: float = PARITY_ATOL) -> dict[str, Any]:
    """Figures of agreement between two output arrays; ``ok`` says whether they match within ``atol``.

    A different argmax is excused only on a near-tie, where float rounding may flip it.
    """
    diff = np.abs(got.astype(np.float64) - want)
    scale = 1.0 if task == "classification" else max(1.0, float(np.abs(want).max()))
    max_diff = float(diff.max()) / scale if diff.size else 0.0
    report: dict[str, Any] = {"samples": len(want), "max_abs_diff": max_diff, "atol": atol}
    real_flips = 0
    if task == "classification":
        agree = got.argmax(1) == want.argmax(1)
        top2 = np.sort(want, axis=1)[:, -2:]
        real_flips = int((~agree & ((top2[:, 1] - top2[:, 0]) > 2 * atol)).sum())
        report["argmax_agreement"] = float(agree.mean()) if len(agree) else 1.0
    report["ok"] = max_diff <= atol and real_flips == 0
    return report


def check_parity(model: torch.nn.Module, target: Target, onnx_path: Path | io.BytesIO, X_std: np.ndarray,
                 X_graph: np.ndarray, atol: float = PARITY_ATOL) -> dict[str, Any]:
    """Compare onnxruntime (on the graph's input) with torch (on the standardized input) for the same rows;
    raise ExportError with the figures when they disagree."""
    report = compare(onnx_outputs(onnx_path, X_graph), reference_outputs(model, X_std, target), target.task, atol)
    if not report["ok"]:
        agree = f", argmax agreement {report['argmax_agreement']:.4f}" if "argmax_agreement" in report else ""
        raise ExportError(
            f"exported model disagrees with torch: max abs diff {report['max_abs_diff']:.2e} (> {atol:.0e}){agree} "
            f"on {report['samples']} samples",
            hint="a custom model may use an op that ONNX approximates; check it in eval mode")
    return report


def export_model(model: torch.nn.Module, features: Features, X_std: np.ndarray, X_graph: np.ndarray,
                 onnx_path: Path | io.BytesIO, fold_standardization: bool = True) -> dict[str, Any]:
    """Fold, export and parity-check one torch model; returns the onnx info with the parity figures.
    ``fold_standardization=False`` for a graph that will be quantized (see inference_module). ``onnx_path`` may
    be an in-memory buffer (encrypted bundles)."""
    module, fold_info = inference_module(model, features, fold_standardization)
    # A contiguous example: a strided one makes the exporter trace extra shape ops into the graph.
    example = torch.from_numpy(np.ascontiguousarray(X_graph[:2]))
    try:
        info = export_onnx(module, example, onnx_path, output_name(features.task))
    except ExportError as exc:
        # Both exporters fail alike on a full or read-only disk; that is no tracing problem. The OS error is
        # raised as is, for the bundle writer to report against the path the user chose.
        cause = exc.__cause__ or exc.__context__
        if cause is not None and os_error_in(cause) is not None:
            raise cause from None
        raise
    return {**info, **fold_info, "parity": check_parity(model, features.target, onnx_path, X_std, X_graph)}


def export(run: Run | str | Path, out: str | Path, *, force: bool = False,
           encrypt_key: bytes | str | Path | None = None) -> Path:
    """Export ``run`` to a lossless ONNX bundle at ``out``; returns the bundle path.

    ``encrypt_key`` (a 32-byte bundle key, or its file's path) writes model.onnx.enc instead of model.onnx: the
    graph is exported, checked and encrypted in memory, never written in plaintext.

    Example: ``trainfer.export("runs/digits", "bundles/digits")`` then ``trainfer.load("bundles/digits")``.
    """
    check_bundle_out(out, force)  # before the work, not after
    key = None if encrypt_key is None else symmetric_key(encrypt_key, "--encrypt-key")
    run = run if isinstance(run, Run) else Run.load(run)
    X_raw = run.load_split("test")[0]
    X_std, X_graph = graph_inputs(run.features, X_raw)

    def fill(tmp: Path) -> dict[str, Any]:
        model_only = io.BytesIO()  # the model part, in memory: what is written is the whole graph
        info = export_model(run.model, run.features, X_std, X_graph, model_only)
        info.pop("parity")
        whole = compose_whole(model_only.getvalue(), run.features)
        parity = check_whole_parity(run.model, run.features, whole, X_raw, X_std)
        fields = manifest_fields(run, "onnx-fp32", info, parity, whole)
        if key is not None:
            fields["model_bytes"] = whole
        else:
            (tmp / MODEL).write_bytes(whole)
        return fields

    return write_bundle(Path(out), fill, force=force, key=key)


def output_name(task: str) -> str:
    return "probabilities" if task == "classification" else "prediction"


def manifest_fields(run: Run, variant: str, onnx_info: dict[str, Any], parity: dict[str, Any],
                    whole: bytes) -> dict[str, Any]:
    """The manifest of a whole-graph bundle (``whole``: its model.onnx bytes)."""
    import onnx

    from trainfer.exporting.graph import opsets_of

    f = run.features
    if f.kind == "tabular":
        schema: dict[str, Any] = {"kind": "tabular", "columns": [
            {"name": c["name"], "dtype": "float" if c["type"] == "numeric" else "string",
             **({"categories": c["categories"]} if c["type"] == "categorical" else {})}
            for c in f.inputs.columns]}
    else:
        schema = {"kind": "image", "height": f.inputs.size, "width": f.inputs.size, "channels": 3,
                  "accepts": "image files, or uint8 arrays (n, height, width, 3); other sizes are resized"}
    # "in_graph": raw columns in; imputation, one-hot, scaling, resizing and the label lookup are in the graph.
    schema.update(pipeline="in_graph", raw_inputs=raw_inputs(f), id_column=f.id_column,
                  standardization=onnx_info.get("standardization", "numpy"))
    opset, opset_ml = opsets_of(onnx.load_from_string(whole))
    onnx_info = {**onnx_info, "opset": opset, "opset_ml": opset_ml, "model_opset": onnx_info.get("opset")}
    import onnxruntime

    return {
        "task": f.task,
        "variant": variant,
        "input": schema,
        "preprocessing": f.to_dict(),
        "labels": f.target.labels,
        "outputs": ["probabilities", "label"] if f.task == "classification" else ["prediction"],
        "onnx": onnx_info,
        "parity": parity,
        "metrics": {k: run.summary.get(k) for k in ("train", "val", "test")},
        # the DP-SGD guarantee the weights were trained under (summary.json's privacy), or None
        "privacy": run.summary.get("privacy"),
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


__all__ = ["check_parity", "check_whole_parity", "compare", "compose_whole", "export", "export_model", "graph_inputs",
           "graph_standardizes", "inference_module", "manifest_fields", "onnx_outputs", "output_name",
           "reference_outputs", "whole_outputs"]
