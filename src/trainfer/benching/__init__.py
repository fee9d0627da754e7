"""`trainfer bench`: both phases measured side by side and written to bench.json (MEASURE.md rules)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainfer._atomic import write_json
from trainfer._env import environment
from trainfer.benching.inference import (
    FULL,
    QUICK,
    cold_starts,
    indexable_raw,
    measure_target,
    sample_for_cold_start,
    synthetic_raw,
)
from trainfer.errors import TrainferError
from trainfer.runtime import MANIFEST, Predictor, load


def bench_path(target: Path) -> Path:
    """Where bench.json goes: into a run directory, or beside a bundle (never inside: bundles are hashed)."""
    return target / "bench.json" if (target / "summary.json").is_file() else target.parent / f"{target.name}.bench.json"


def bench(target: str | Path, *, bundle: str | Path | None = None, quick: bool = False, threads: int | None = None,
          target_accuracy: float | None = None, seeds: int = 1, server_latency_ms: float | None = None,
          log: Any = None) -> dict[str, Any]:
    """Measure a run (training + its bundle + torch eager) or a bundle alone; write and return bench.json.

    Example: ``trainfer.bench("runs/digits", quick=True)["inference"]["variants"]``.
    """
    log = log or (lambda _m: None)
    target = Path(target)
    run = None
    if (target / "summary.json").is_file():
        from trainfer.training import Run

        run = Run.load(target)
        if "federated" in run.summary:  # refused before the minutes of measurement, not after
            from trainfer.benching.federated import check_seeds

            check_seeds(seeds)
    elif not (target / MANIFEST).is_file():
        raise TrainferError(f"{target} is neither a finished run (summary.json) nor a bundle ({MANIFEST})",
                            hint="pass a run directory from `trainfer train` or a bundle from `export`/`optimize`")
    cfg = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="trainfer-bench-") as tmp:
        bundle_path = _bundle_for(target, run, bundle, Path(tmp), log)
        pred = load(bundle_path, threads=threads)
        threads = pred.threads
        raw = indexable_raw(pred.features, run.load_split("test")[0]) if run else synthetic_raw(pred.features)
        temporary = bundle_path.is_relative_to(Path(tmp))
        record: dict[str, Any] = {
            "kind": "run" if run else "bundle", "run": str(run.path) if run else None,
            "bundle": None if temporary else str(bundle_path),
            # the facts a report shows about the measured bundle, kept even when it was a temporary export
            "bundle_manifest": {k: pred.manifest.get(k) for k in ("format_version", "variant", "files",
                                                                   "manifest_sha256")} | {"temporary": temporary},
            "mode": "quick" if quick else "full",
            "inputs": "test split" if run else "synthetic, from the bundle schema",
            "env": environment(threads),
        }
        log("inference: LoadGen scenarios on the bundle")
        variants = {f"bundle:{pred.variant}": measure_target(f"bundle:{pred.variant}", _bundle_fn(pred, raw), len(raw),
                                                             cfg, _seconds(server_latency_ms))}
        if run is not None:
            log("inference: LoadGen scenarios on torch eager")
            variants["torch-eager"] = measure_target("torch-eager", _torch_fn(run, raw, threads), len(raw), cfg,
                                                     _seconds(server_latency_ms))
        log("cold start and memory (fresh processes)")
        record["inference"] = {
            "variants": variants, "threads": threads, "variant": pred.variant, "bundle_key": f"bundle:{pred.variant}",
            "cold_start": cold_starts(bundle_path, run.path if run else None, sample_for_cold_start(pred.features, raw),
                                      cfg["coldstart_repeats"]),
            "optimize": pred.manifest.get("optimization"),
        }
        if run is not None:
            log("training: throughput, FLOPs, time-to-target")
            record["training"] = _training(run, target_accuracy, seeds)
            chosen = _chosen_row(pred.manifest)
            # A pruned bundle computes less than the trained model; int8 ops are not counted (fp32 reference).
            record["inference"]["flops_per_sample"] = (chosen or {}).get("flops") or \
                record["training"]["forward_flops_per_sample"]
            record["inference"]["flops_note"] = (chosen or {}).get("flops_note")
        else:
            record["training"] = None
            record["inference"]["flops_per_sample"] = None
        record["energy"] = _energy(record, run)
    write_json(bench_path(target), record)
    return record


def _chosen_row(manifest: dict[str, Any]) -> dict[str, Any] | None:
    rows = (manifest.get("optimization") or {}).get("variants") or []
    return next((r for r in rows if r.get("chosen")), None)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1e3


def _bundle_for(target: Path, run: Any, bundle: str | Path | None, tmp: Path, log: Any) -> Path:
    if run is None:
        return target
    if bundle is not None:
        return Path(bundle)
    if (target / "bundle" / MANIFEST).is_file():
        return target / "bundle"
    from trainfer.exporting import export

    log("exporting an onnx-fp32 bundle to measure")
    return export(run, tmp / "bundle")


def _bundle_fn(pred: Predictor, raw: np.ndarray) -> Any:
    if pred.task == "classification":
        return lambda idx: pred.predict_proba(raw[idx])
    return lambda idx: pred.predict(raw[idx])


def _torch_fn(run: Any, raw: np.ndarray, threads: int) -> Any:
    """The same job as a torch program would do it: numpy preprocessing, eager forward, softmax."""
    import torch

    torch.set_num_threads(threads)
    model, features = run.model.eval(), run.features

    def predict(idx: np.ndarray) -> Any:
        with torch.inference_mode():
            out = model(torch.from_numpy(features.transform(raw[idx])))
            return torch.softmax(out, dim=1) if run.task == "classification" else out

    return predict


def _training(run: Any, target_accuracy: float | None, seeds: int) -> dict[str, Any]:
    from trainfer.benching.federated import federated_training, is_federated
    from trainfer.benching.training import flops, throughput, time_to_target, time_to_target_seeds

    if is_federated(run):  # per-round lines, no one training machine: its own figures (benching/federated.py)
        return federated_training(run, target_accuracy, seeds)
    s = run.summary
    tp, fl = throughput(run), flops(run)
    seen = s["samples"]["train"] * s["epochs_run"]
    out = {
        "samples_per_s": tp["samples_per_s"], "step_ms": tp["step_ms"], "throughput": tp,
        "flops_per_sample": fl["train_per_sample"], "forward_flops_per_sample": fl["forward_per_sample"],
        "flops_ratio_train_to_inference": fl["train_to_inference_ratio"], "flops_counter": fl["counter"],
        "achieved_flops_per_s": fl["train_per_sample"] * tp["samples_per_s"],
        "total_flops": fl["train_per_sample"] * seen,
        "wall_s": s["timings"]["total_s"], "loop_s": s["timings"]["train_loop_s"],
        "samples_seen": seen, "labelled_samples": s["samples"]["train"] + s["samples"]["val"],
        "epochs_run": s["epochs_run"], "best_epoch": s["best_epoch"], "params": s["params"],
        "device": s.get("device"), "threads": s.get("threads"), "peak_rss_mb": s.get("peak_rss_mb"),
        "test": s.get("test", {}),
        "privacy": s.get("privacy"),  # the DP-SGD guarantee, for the ledger's privacy row (None: not DP)
        # how it was trained, for the ledger: torchrun processes (world size, threads each, backend); streamed data
        "processes": s.get("processes"), "streamed": bool((s.get("data") or {}).get("streamed")),
    }
    if target_accuracy is not None:
        out["time_to_target"] = (time_to_target_seeds(run, target_accuracy, seeds) if seeds > 1
                                 else time_to_target(run, target_accuracy))
    return out


def _energy(record: dict[str, Any], run: Any) -> dict[str, Any]:
    """Every figure carries the method that produced it; estimates say so."""
    bundle_variant = next(iter(record["inference"]["variants"].values()))
    inf = bundle_variant.get("energy") or {}
    per_pred = {"value": inf.get("j_per_prediction"), "unit": "J/prediction", "method": inf.get("method"),
                "assumption": inf.get("assumption"), "measured_on": bundle_variant["name"]}
    out: dict[str, Any] = {"inference_j_per_prediction": per_pred}
    if run is not None:
        e = run.summary.get("energy") or {}
        seen = record["training"]["samples_seen"]
        # a federated run measures no energy (its clients spend it): None, not 0 J
        method = e.get("method") or ("not measured" if "federated" in run.summary else "unknown")
        out["training_j"] = {"value": e.get("joules"), "unit": "J", "method": method, "assumption": e.get("assumption")}
        # torchrun: the meter ran in rank 0's process alone, which trained about 1/world of the samples
        world = int((record["training"].get("processes") or {}).get("world_size") or 1)
        if world > 1:
            out["training_j"]["scope"] = f"rank 0's process alone, one of {world}: the whole run spent more"
        out["training_j_per_sample"] = {"value": e["joules"] / (seen / world) if seen and e.get("joules") is not None
                                        else None,
                                        "unit": "J/sample", "method": method, "assumption": e.get("assumption")}
        both = sorted({method, per_pred["method"] or "unknown"})
        out["break_even_predictions"] = {
            "value": (e.get("joules") / per_pred["value"]) if e.get("joules") and per_pred["value"] else None,
            "unit": "predictions", "method": "+".join(both),
            "meaning": "predictions whose energy equals the whole training run's"}
    return out
