"""Optional dependencies, imported where they are needed, with an install hint on failure."""

from __future__ import annotations

import importlib
from types import ModuleType

from trainfer.errors import MissingDependencyError

# module name -> the pip extra that brings it
_EXTRAS = {
    "torch": "train",
    "safetensors": "train",
    "sklearn": "train",
    "pyarrow": "train",
    "onnx": "export",
    "onnxscript": "export",
    "torch_pruning": "optimize",
    "mlperf_loadgen": "bench",
    "matplotlib": "bench",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or _EXTRAS.get(module.split(".")[0], "all")
        raise MissingDependencyError(
            f"{module} is needed for this and is not installed",
            hint=f"pip install 'trainfer[{extra}]'",
        ) from exc
