"""trainfer: from training to fast inference, with both phases measured.

Public API (the same verbs as the CLI)::

    import trainfer
    run = trainfer.train(data="digits", model="mlp", epochs=30, out="runs/digits")
    trainfer.evaluate(run)
    trainfer.export(run, "bundles/digits")
    predictor = trainfer.load("bundles/digits")   # numpy + onnxruntime only: no torch
    predictor.predict(rows)

Heavy dependencies (torch) load on first use, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainfer.errors import TrainferError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from trainfer.config import Recipe
    from trainfer.exporting import export
    from trainfer.exporting.optimize import optimize
    from trainfer.runtime import Predictor, load
    from trainfer.training import Run, evaluate, train

# public name -> module that defines it; imported lazily so `import trainfer` stays light
_LAZY = {
    "train": "trainfer.training",
    "evaluate": "trainfer.training",
    "Run": "trainfer.training",
    "Recipe": "trainfer.config",
    "export": "trainfer.exporting",
    "optimize": "trainfer.exporting.optimize",
    "load": "trainfer.runtime",
    "Predictor": "trainfer.runtime",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainfer' has no attribute {name!r}")


__all__ = ["Predictor", "Recipe", "Run", "TrainferError", "__version__", "evaluate", "export", "load", "optimize",
           "train"]
