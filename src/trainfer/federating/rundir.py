"""The federation's result as an ordinary run directory, so that export, optimize, bench and report take it.

The same files `trainfer train` writes: recipe.yaml, features.json, split.json, model.safetensors (the final
global model), metrics.jsonl (one line per round) and summary.json (split metrics as `train` writes them, plus
a ``federated`` section). Written into a temporary sibling and renamed into place: never half a run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainfer._atomic import make_temp_dir, write_json, write_text
from trainfer.config import Recipe, validate

PREPROCESSING_NOTE = ("preprocessing (standardization, category lists) was fitted once on the whole train split "
                      "and shared with every client: a simplification; in a real federation each owner's "
                      "statistics would be aggregated (e.g. sums and counts per client) instead")


def prepare_federation(spec: dict[str, Any]) -> tuple[Recipe, Any]:
    """The recipe and the prepared splits (preprocessing fitted once on the train split, as `prepare` does)."""
    from trainfer.data import prepare

    recipe = validate(spec["recipe"], "federation recipe")
    return recipe, prepare(recipe.data, recipe.seed)


def client_epsilons(recipe: Recipe, clients: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Per-client (ε, δ): each client's accountant over every DP-SGD step it ran, in every round it took part in."""
    if recipe.privacy is None:
        return None
    from trainfer.training.privacy import epsilon_of

    per = {k: {"epsilon": epsilon_of(recipe.privacy.accountant, c["dp_history"], c["dp_delta"]),
               "delta": c["dp_delta"], "steps": int(sum(h[2] for h in c["dp_history"])),
               "noise_multiplier": c["dp_history"][0][0] if c["dp_history"] else None,
               "sample_rate": c["dp_history"][0][1] if c["dp_history"] else None, "rounds": c["rounds"]}
           for k, c in sorted(clients.items(), key=lambda kv: int(kv[0]))}
    worst = max(per.values(), key=lambda p: p["epsilon"])
    return {
        # the guarantee a training row gets is its own client's; the run's headline figure is the weakest of them
        "epsilon": worst["epsilon"], "delta": max(p["delta"] for p in per.values()),
        "target_epsilon": recipe.privacy.epsilon, "accountant": recipe.privacy.accountant,
        "max_grad_norm": recipe.privacy.max_grad_norm, "per_client": per,
        "mechanism": "DP-SGD on each client (Poisson sampling, per-example clipping, Gaussian noise); the noise is "
                     "chosen so that all rounds × local epochs together spend at most the target ε",
        "scope": "per training row, against anyone who sees the client's updates or the global model",
        "secure_rng": False,
    }


def write_run(spec: dict[str, Any], recipe: Recipe, prepared: Any, outcome: dict[str, Any],
              parts: list[np.ndarray] | None, histograms: list[dict[str, int]] | None = None) -> Path:
    """Write the run directory at spec["out"] (replacing nothing: the caller checked it is new or empty)."""
    import torch

    from trainfer.models import build_model, count_parameters
    from trainfer.training.checkpoint import save_tensors
    from trainfer.training.loop import predict_outputs
    from trainfer.training.metrics import compute_metrics, monitor

    out = Path(spec["out"])
    features = prepared.features
    model = build_model(recipe.model, features.input_shape, features.n_outputs)
    if recipe.privacy is not None:
        from trainfer.training.privacy import replace_batchnorm

        model, _ = replace_batchnorm(model)
    state = {k: torch.as_tensor(v) for k, v in outcome["state"].items()}
    # FedAvg averages integer buffers (BatchNorm's batch counter) as floats: cast back to the model's dtypes
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype).contiguous() for k, v in state.items()}
    model.load_state_dict(state)
    model.eval()
    device = torch.device("cpu")
    target = features.target
    splits = {s: compute_metrics(predict_outputs(model, prepared.X[s], device, recipe.train.eval_batch_size),
                                 prepared.y[s], target) for s in ("train", "val", "test")}
    metric_name, _ = monitor(target.task)
    rounds = outcome["rounds"]
    n_params = count_parameters(model)
    fed = {
        "strategy": spec["strategy"], "proximal_mu": spec["proximal_mu"] if spec["strategy"] == "fedprox" else None,
        "rounds": spec["rounds"], "clients": spec["clients"], "fraction": spec["fraction"],
        "local_epochs": spec["local_epochs"], "partition": spec.get("partition"), "engine": spec["engine"],
        "client_rows": [len(p) for p in parts] if parts is not None else
        {k: c["rows"] for k, c in outcome["clients"].items()},
        "label_histograms": histograms,
        "rounds_taken_part": {k: c["rounds"] for k, c in outcome["clients"].items()},
        "bytes_sent": int(sum(r["bytes_sent"] for r in rounds)),
        "bytes_received": int(sum(r["bytes_received"] for r in rounds)),
        "bytes_note": "payload bytes: serialized weight arrays and config values of every message, each way",
        "model": "the global model after the last round",
        "preprocessing": PREPROCESSING_NOTE,
    }
    summary: dict[str, Any] = {
        "task": target.task, **splits, "monitor": f"val_{metric_name}", "best_epoch": len(rounds),
        "epochs_run": len(rounds), "epochs_max": spec["rounds"], "stopped_early": False, "stopped_by": None,
        "overfitting": {"train_minus_val": splits["train"][metric_name] - splits["val"][metric_name]},
        "params": n_params, "samples": {k: len(v) for k, v in prepared.y.items()},
        "timings": {"rounds_s": float(sum(r["round_s"] for r in rounds)), "total_s": time.time() - spec["t0"]},
        "device": "cpu", "threads": torch.get_num_threads(),
        "data": {"source": prepared.dataset.name, "fingerprint": prepared.dataset.fingerprint()},
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "flwr": _flwr_version()},
        "federated": fed,
    }
    privacy = client_epsilons(recipe, outcome["clients"])
    if privacy is not None:
        summary["privacy"] = privacy
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, out.name)
    try:
        write_text(tmp / "recipe.yaml", recipe.to_yaml())
        features.save(tmp / "features.json")
        write_json(tmp / "split.json", {"seed": recipe.seed, "fingerprint": prepared.dataset.fingerprint(),
                                        **prepared.split.to_dict()})
        save_tensors(tmp / "model.safetensors", model.state_dict(),
                     meta={"format": "trainfer-model", "params": str(n_params)})
        write_text(tmp / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rounds))
        write_json(tmp / "summary.json", summary)
        if out.is_dir():  # the empty folder the caller allowed
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")
