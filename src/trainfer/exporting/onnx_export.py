"""torch -> ONNX with a dynamic batch axis: the dynamo exporter first, TorchScript as the fallback."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from trainfer.errors import ExportError

INPUT_NAME = "input"


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, output_name: str,
                opset: int = 18) -> dict[str, object]:
    """Write ``model`` to ``path``; returns {"exporter", "opset", "fallback_reason"}."""
    model = model.eval()
    reason = None
    try:
        with _quiet():
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=[output_name],
                dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, optimize=True,
            )
        _check_loadable(path)
        return {"exporter": "dynamo", "opset": opset, "fallback_reason": None}
    except Exception as exc:  # any exporter failure: try the older exporter before giving up
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    try:
        with _quiet():
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME], output_names=[output_name],
                dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}, opset_version=17,
            )
        _check_loadable(path)
        return {"exporter": "torchscript", "opset": 17, "fallback_reason": reason}
    except Exception as exc:
        raise ExportError(f"ONNX export failed with both exporters: dynamo ({reason}); torchscript ({exc})",
                          hint="custom models must be traceable; avoid data-dependent Python control flow") from None


def _check_loadable(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path))


@contextlib.contextmanager
def _quiet():  # the exporters print progress and warnings that mean nothing to a user
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
