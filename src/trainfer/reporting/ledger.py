"""The Training vs Inference table, as data: each cell is text with measured values that name their
key in bench.json, so the report shows exactly the numbers bench.json holds (a test checks this)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainfer.reporting.fmt import count, duration_ms, get, seconds, si

# A cell part is plain text, or (bench.json key, formatter).
Part = str | tuple[str, Callable[[Any], str]]


def _flops(v: Any) -> str:
    return si(v, "FLOP")


def _j(v: Any) -> str:
    return si(v, "J")


def _n(v: Any) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _threads(v: Any) -> str:
    return count(v, "thread")


def _mb(v: Any) -> str:
    return "—" if v is None else f"{v:.1f} MB"


def _per_s(v: Any) -> str:
    return si(v, "/s")


def _fixed(digits: int) -> Callable[[Any], str]:
    # plain decimals (no exponent), so a reader and the report test read the same number
    return lambda v: "—" if v is None else f"{v:.{digits}f}"


def _privacy_row() -> tuple[str, list[Part], list[Part]]:
    """The DP-SGD guarantee and how it was reached (summary.json's privacy, copied into bench.json)."""
    p = "training.privacy"
    return ("Privacy budget",
            ["(ε ", (f"{p}.epsilon", _fixed(3)), ", δ ", (f"{p}.delta", _fixed(8)), ")-differentially private by "
             "DP-SGD (", (f"{p}.accountant", str), " accountant): noise multiplier ", (f"{p}.noise_multiplier",
                                                                                     _fixed(4)),
             ", per-example clipping norm ", (f"{p}.max_grad_norm", _fixed(3)), ", Poisson sampling rate ",
             (f"{p}.sample_rate", _fixed(4)), ", ", (f"{p}.steps", _n), " steps"],
            ["the same guarantee: predictions are post-processing of the private weights, and cost no further ε"])


def rows(bench: dict[str, Any], bundle_key: str) -> list[tuple[str, list[Part], list[Part]]]:
    """(row label, training cell, inference cell). ``bundle_key`` names the bundle's variant entry."""
    v = f"inference.variants.{bundle_key}"
    method = get(bench, "energy.inference_j_per_prediction.method") or "unknown"
    return [
        ("Definition and purpose",
         ["Fits the weights to labelled data by gradient descent and backpropagation."],
         ["Runs the frozen model forward on new, unlabelled input to predict."]),
        ("Computational load",
         [("training.flops_per_sample", _flops), " per sample (forward + backward), ",
          ("training.total_flops", _flops), " in total; train/inference ratio ",
          ("training.flops_ratio_train_to_inference", lambda x: "—" if x is None else f"{x:.2f}x")],
         [("inference.flops_per_sample", _flops), " per prediction (forward only)"]),
        ("Time required",
         [("training.wall_s", seconds), " wall clock, ", ("training.samples_per_s", _per_s),
          " samples, step ", ("training.step_ms", duration_ms)],
         ["p50 ", (f"{v}.latency_ms_p50", duration_ms), ", p90 ", (f"{v}.latency_ms_p90", duration_ms),
          " per prediction; ", (f"{v}.throughput_per_s", _per_s), " predictions offline; cold start ",
          ("inference.cold_start.bundle.time_to_first_prediction_s", seconds)]),
        ("Hardware used",
         [("training.device", str), ", ", ("training.threads", _threads), " (torch)"],
         [("env.cpu_model", str), ", ", ("inference.threads", _threads), " (onnxruntime, no torch)"]),
        ("Data requirement",
         [("training.labelled_samples", _n), " labelled samples (train + validation), seen ",
          ("training.samples_seen", _n), " times in all"],
         ["one unlabelled input per prediction"]),
        ("Output",
         [("training.params", _n), " trained parameters"],
         ["a prediction with class probabilities; bundle variant ", ("inference.variant", str)]),
        ("Energy",
         [("energy.training_j.value", _j), " in total, ", ("energy.training_j_per_sample.value", _j),
          " per sample (", ("energy.training_j.method", str), ")"],
         [("energy.inference_j_per_prediction.value", _j), " per prediction (", method, "); break-even after ",
          ("energy.break_even_predictions.value", _n), " predictions"]),
        ("Memory",
         [("training.peak_rss_mb", _mb), " peak RSS of the training process"],
         [("inference.cold_start.bundle.peak_rss_mb", _mb), " peak RSS to load and predict (torch: ",
          ("inference.cold_start.torch.peak_rss_mb", _mb), ")"]),
        _privacy_row() if get(bench, "training.privacy") else
        ("Privacy budget", ["not trained with DP: no differential-privacy guarantee"],
         ["none: the bundle's weights may reveal rows of the training data"]),
    ]
