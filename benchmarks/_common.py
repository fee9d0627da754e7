"""Helpers shared by the inference benchmarks: environment record, latency statistics, test models.

Imports neither torch nor onnxruntime at module level, so a benchmark can fix thread counts first.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
P90_MIN_SAMPLES = 64  # MEASURE.md: no p90 from fewer samples
P99_MIN_SAMPLES = 662  # ... and no p99 from fewer

# What each benchmark trains when no run is given. Quality does not matter for latency or footprint.
MODELS: dict[str, dict[str, Any]] = {
    "digits_mlp": {"data": "digits", "model": "mlp", "epochs": 30, "seed": 0},
    "cnn": {"data": "synthetic-images", "model": "cnn", "epochs": 2, "seed": 0,
            "overrides": ["data.options.n_samples=600"]},
    # The width of the reference CNN for serving (~130 MFLOPs at 3x32x32, ~1.5 ms per image here)
    "cnn_wide": {"data": "synthetic-images", "model": "cnn", "epochs": 2, "seed": 0,
                 "overrides": ["data.options.n_samples=600", "model.channels=[36,72,144]"]},
}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)  # reads package metadata: imports nothing
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(threads: int | None) -> dict[str, Any]:
    """CPU, cores, threads, library versions and git revision (MEASURE.md: the environment record)."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration):  # platform.processor() is often just "x86_64"
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "cores_available": affinity, "threads": threads,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("trainfer", "torch", "onnxruntime", "onnx", "numpy")},
        "git_revision": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def summarize_ns(samples_ns: list[int] | np.ndarray) -> dict[str, Any]:
    """p50/p90/p99 (only where enough samples), mean and CV of per-call latencies given in ns."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        return {"n_samples": 0}
    out: dict[str, Any] = {"n_samples": int(ms.size), "latency_ms_p50": float(np.percentile(ms, 50))}
    if ms.size >= P90_MIN_SAMPLES:
        out["latency_ms_p90"] = float(np.percentile(ms, 90))
    if ms.size >= P99_MIN_SAMPLES:
        out["latency_ms_p99"] = float(np.percentile(ms, 99))
    mean = float(ms.mean())
    out.update(latency_ms_mean=mean, latency_ms_min=float(ms.min()), cv=float(ms.std() / mean) if mean else 0.0)
    return out


def train_and_export(name: str, workdir: Path, epochs: int | None = None) -> tuple[Path, Path]:
    """Train ``MODELS[name]`` into ``workdir/name/run`` and export it to ``workdir/name/bundle``."""
    # Import the functions from their modules: once the `trainfer.train` / `trainfer.export`
    # subpackages are imported, the package attributes of those names are the modules, not the functions.
    from trainfer.exporting import export
    from trainfer.training import train

    spec = dict(MODELS[name])
    if epochs is not None:
        spec["epochs"] = epochs
    run = train(out=workdir / name / "run", quiet=True, **spec)
    return run.path, export(run, workdir / name / "bundle")


def ensure_bundle(run: Path, bundle: Path | None, out: Path) -> Path:
    """The given bundle, or a fresh export of ``run`` to ``out``."""
    if bundle is not None:
        return bundle
    from trainfer.exporting import export

    return export(run, out)


def first_raw_row(run: Any) -> np.ndarray:
    """One test-split sample exactly as a user passes it: a (1, n_features) float array, or (1, h, w, 3) uint8."""
    rows = run.load_split("test")[0]
    if hasattr(rows, "to_numpy"):  # a DataFrame of numeric columns
        return np.ascontiguousarray(rows.to_numpy(dtype=np.float64)[:1])
    return np.ascontiguousarray(np.asarray(rows)[:1])


def measure_interleaved(fns: dict[str, Callable[[], Any]], block: int, min_count: int, min_s: float,
                        min_rounds: int = 1, warmup: int = 50) -> tuple[dict[str, list[int]], int, float]:
    """Rounds of ``block`` timed calls per callable (A B C, B C A, ...: who goes first rotates, so drift
    favours none) until each has ``min_count`` samples, the window lasted ``min_s`` and ``min_rounds``
    rounds ran. Returns raw per-call ns, rounds and window seconds. Warm-up: ``warmup`` calls each."""
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[int]] = {k: [] for k in names}
    clock, rounds = time.perf_counter_ns, 0
    gc.collect()
    start = time.perf_counter()
    while True:
        k = rounds % len(names)
        for key in names[k:] + names[:k]:
            fn, out = fns[key], samples[key]
            for _ in range(block):
                t = clock()
                fn()
                out.append(clock() - t)
        rounds += 1
        window = time.perf_counter() - start
        if rounds >= min_rounds and window >= min_s and all(len(s) >= min_count for s in samples.values()):
            return samples, rounds, window
