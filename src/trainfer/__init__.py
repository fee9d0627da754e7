"""trainfer: from training to fast inference, with both phases measured.

Public API (the same verbs as the CLI)::

    import trainfer
    run = trainfer.train(data="digits", model="mlp", epochs=30, out="runs/digits")
    trainfer.evaluate(run)
    trainfer.audit(run)                           # membership-inference attack: what the model leaks
    trainfer.export(run, "bundles/digits")
    predictor = trainfer.load("bundles/digits")   # numpy + onnxruntime only: no torch
    trainfer.load("bundles/digits", trust="keys/trainfer.pub", key="keys/bundle.key")  # signed / encrypted
    predictor.predict(rows)
    trainfer.predict("bundles/digits", "rows.csv", "preds.csv")
    trainfer.bench(run, quick=True); trainfer.report(run)
    study = trainfer.tune("examples/digits.yaml", out="studies/digits", trials=30, workers=2)
    fed = trainfer.federate("examples/digits.yaml", out="runs/fed", clients=5, rounds=10, partition="dirichlet:0.5")

Heavy dependencies (torch) load on first use, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainfer.errors import TrainferError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from trainfer.auditing import audit
    from trainfer.benching import bench
    from trainfer.config import Recipe
    from trainfer.exporting import export
    from trainfer.exporting.optimize import optimize
    from trainfer.federating import federate
    from trainfer.pipeline import run
    from trainfer.reporting import report
    from trainfer.runtime import Predictor, load
    from trainfer.runtime.files import predict
    from trainfer.serving import serve
    from trainfer.training import Run, evaluate, train
    from trainfer.tuning import Study, tune

# public name -> module that defines it; imported lazily so `import trainfer` stays light. Every CLI verb
# has a function of the same name here; the subpackages are named for the phase (benching, reporting,
# serving) so that `trainfer.bench` is the function, not a module that shadows it.
_LAZY = {
    "train": "trainfer.training",
    "evaluate": "trainfer.training",
    "Run": "trainfer.training",
    "audit": "trainfer.auditing",
    "Recipe": "trainfer.config",
    "export": "trainfer.exporting",
    "optimize": "trainfer.exporting.optimize",
    "load": "trainfer.runtime",
    "Predictor": "trainfer.runtime",
    "predict": "trainfer.runtime.files",
    "serve": "trainfer.serving",
    "bench": "trainfer.benching",
    "report": "trainfer.reporting",
    "run": "trainfer.pipeline",
    "tune": "trainfer.tuning",
    "federate": "trainfer.federating",
    "Study": "trainfer.tuning",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainfer' has no attribute {name!r}")


__all__ = ["Predictor", "Recipe", "Run", "Study", "TrainferError", "__version__", "audit", "bench", "evaluate",
           "export", "federate", "load", "optimize", "predict", "report", "run", "serve", "train", "tune"]
