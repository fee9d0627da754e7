"""Optional dependencies, imported where they are needed, with an install hint on failure."""

from __future__ import annotations

import importlib
import importlib.util
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
    "optuna": "tune",
    "opacus": "privacy",
    "cryptography": "secure",
    "model_signing": "secure",
    "mlperf_loadgen": "bench",
    "matplotlib": "report",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "orjson": "serve",
    "flwr": "federated",
    "ray": "federated",
}
# what each extra brings (its own modules and those of the extras it includes), for up-front checks
_INCLUDES = {"export": ("train",), "optimize": ("export",), "bench": ("export", "report"), "tune": ("export",),
             "privacy": ("train",), "federated": ("train",)}


def extra_modules(extra: str) -> list[str]:
    """Top-level modules the pip extra ``extra`` installs, including the extras it builds on."""
    own = [m for m, e in _EXTRAS.items() if e == extra and m != "starlette"]  # starlette comes with fastapi
    return [m for base in _INCLUDES.get(extra, ()) for m in extra_modules(base)] + own


def missing_extra(*extras: str) -> tuple[str, str] | None:
    """(first missing module, its extra) for the extras a command needs, or None when all are importable.

    Checks without importing (find_spec), so a command fails in milliseconds, before any work, rather
    than with a traceback from deep inside once the work has started.
    """
    for extra in extras:
        for module in extra_modules(extra):
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return module, extra
    return None


def require_extras(*extras: str) -> None:
    """Raise MissingDependencyError naming the extras to install when a module of ``extras`` is missing."""
    gaps = [gap for extra in extras if (gap := missing_extra(extra))]
    if gaps:
        names = ",".join(extra for _, extra in gaps)
        raise MissingDependencyError(f"{gaps[0][0]} is needed for this and is not installed",
                                     hint=f"pip install 'trainfer[{names}]'")


def extra_for_missing(exc: ImportError) -> str | None:
    """The extra that provides the module a ModuleNotFoundError is about, when it is one of ours."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    return _EXTRAS.get(name)


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
