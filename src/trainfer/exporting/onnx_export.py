"""torch -> ONNX with a dynamic batch axis.

Models made only of torch.nn layers and trainfer's own modules (the built-in MLP and CNN, under the
export head) go through the TorchScript tracer: ~0.2 s, where the dynamo exporter takes 5-8 s and
imports torch._dynamo. Their forward has no Python control flow that depends on the data, so tracing
records it faithfully. Custom models go through dynamo first, which understands more Python, with the
tracer as the fallback. Either way the caller checks the graph against torch afterwards (parity).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from trainfer._atomic import os_error_in
from trainfer.errors import ExportError

INPUT_NAME = "input"
# Where the modules that are safe to trace live; anything else (a user's model) is a custom model.
_TRACE_SAFE_PREFIXES = ("torch.nn.modules.", "trainfer.")


def is_plain(model: torch.nn.Module) -> bool:
    """True when every submodule is a torch.nn layer, one of trainfer's own (built-in models, export head), or
    straight-line code written by torch.fx (BatchNorm folding returns one; fx cannot trace data-dependent
    control flow, so its code has none)."""
    from torch.fx import GraphModule

    return all(isinstance(m, GraphModule) or type(m).__module__.startswith(_TRACE_SAFE_PREFIXES)
               for m in model.modules())


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path | io.BytesIO, output_name: str,
                opset: int = 18) -> dict[str, object]:
    """Write ``model`` to ``path``; returns {"exporter", "opset", "fallback_reason"}.

    ``path`` may be an in-memory buffer: an encrypted bundle's graph is never written in plaintext."""
    model = model.eval()
    check_finite(model)
    order: list[tuple[str, Callable[..., int]]] = [("torchscript", _torchscript), ("dynamo", _dynamo)]
    if not is_plain(model):
        order.reverse()
    reasons = []
    for name, exporter in order:
        try:
            if isinstance(path, io.BytesIO):  # a failed first exporter may have written part of a graph
                path.seek(0)
                path.truncate()
            with _quiet():
                used_opset = exporter(model, example, path, output_name, opset)
            _check_loadable(path)
            return {"exporter": name, "opset": used_opset, "fallback_reason": "; ".join(reasons) or None}
        except Exception as exc:  # any exporter failure: try the other one before giving up
            if os_error_in(exc) is not None:
                raise  # disk full, read-only, no permission: not the exporter's fault; the writer names the path
            text = str(exc).splitlines()[0] if str(exc) else ""
            reasons.append(f"{name}: {type(exc).__name__}: {text}"[:300])
    raise ExportError(f"ONNX export failed with both exporters: {'; '.join(reasons)}",
                      hint="custom models must be traceable; avoid data-dependent Python control flow")


def check_finite(model: torch.nn.Module) -> None:
    """Refuse weights holding NaN or inf (a diverged run): no exporter can help, and parity would blame ops."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ExportError(f"the model's weights are not finite (NaN or inf in {shown}): its training diverged",
                          hint="train it again with a lower train.lr or with train.grad_clip set")


def _torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path | io.BytesIO, output_name: str,
                 opset: int) -> int:
    torch.onnx.export(
        model, (example,), path if isinstance(path, io.BytesIO) else str(path), dynamo=False,
        input_names=[INPUT_NAME], output_names=[output_name],
        dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}, opset_version=opset,
        do_constant_folding=True,
    )
    return opset


def _dynamo(model: torch.nn.Module, example: torch.Tensor, path: Path | io.BytesIO, output_name: str,
            opset: int) -> int:
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model, (example,), None if isinstance(path, io.BytesIO) else str(path), dynamo=True,
        input_names=[INPUT_NAME], output_names=[output_name],
        dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, optimize=True,
    )
    if isinstance(path, io.BytesIO):  # in memory: the program's graph, as save() would write it without external data
        path.write(program.model_proto.SerializeToString())
    return opset


def _check_loadable(path: Path | io.BytesIO) -> None:
    import onnx

    onnx.checker.check_model(path.getvalue() if isinstance(path, io.BytesIO) else str(path))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:  # the exporters print progress and warnings that mean nothing to a user
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
