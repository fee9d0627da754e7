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


Row = tuple[str, list[Part], list[Part]]


def _bytes_mb(v: Any) -> str:
    return "—" if v is None else f"{v / 1e6:.2f} MB"


def _inference_time(v: str) -> list[Part]:
    return ["p50 ", (f"{v}.latency_ms_p50", duration_ms), ", p90 ", (f"{v}.latency_ms_p90", duration_ms),
            " per prediction; ", (f"{v}.throughput_per_s", _per_s), " predictions offline; cold start ",
            ("inference.cold_start.bundle.time_to_first_prediction_s", seconds)]


def _inference_energy(bench: dict[str, Any]) -> list[Part]:
    method = get(bench, "energy.inference_j_per_prediction.method") or "unknown"
    return [("energy.inference_j_per_prediction.value", _j), " per prediction (", method, "); break-even after ",
            ("energy.break_even_predictions.value", _n), " predictions"]


def _inference_memory() -> list[Part]:
    return [("inference.cold_start.bundle.peak_rss_mb", _mb), " peak RSS to load and predict (torch: ",
            ("inference.cold_start.torch.peak_rss_mb", _mb), ")"]


def _world(bench: dict[str, Any]) -> int:
    return int(get(bench, "training.processes.world_size") or 1)


def rows(bench: dict[str, Any], bundle_key: str) -> list[Row]:
    """(row label, training cell, inference cell). ``bundle_key`` names the bundle's variant entry. A federated
    run gets its own training cells (no one training machine); the inference cells are the same for every run."""
    if get(bench, "training.kind") == "federated":
        return _federated_rows(bench, bundle_key)
    v = f"inference.variants.{bundle_key}"
    many = _world(bench) > 1  # torchrun: throughput is all processes', memory and energy rank 0's alone
    hardware: list[Part] = [("training.device", str), ", ", ("training.threads", _threads), " (torch)"]
    if many:
        hardware = [("training.device", str), ", ", ("training.processes.world_size", _n), " processes x ",
                    ("training.processes.threads_per_process", _threads), " (torch.distributed on ",
                    ("training.processes.backend", str), ", started by torchrun)"]
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
          " samples" + (" (all processes together)" if many else "") + ", step ", ("training.step_ms", duration_ms)],
         _inference_time(v)),
        ("Hardware used", hardware,
         [("env.cpu_model", str), ", ", ("inference.threads", _threads), " (onnxruntime, no torch)"]),
        ("Data requirement",
         [("training.labelled_samples", _n), " labelled samples (train + validation), seen ",
          ("training.samples_seen", _n), " times in all"]
         + ([", streamed from disk in record batches (never all in memory)"] if get(bench, "training.streamed")
            else []),
         ["one unlabelled input per prediction"]),
        ("Output",
         [("training.params", _n), " trained parameters"],
         ["a prediction with class probabilities; bundle variant ", ("inference.variant", str)]),
        ("Energy",
         [("energy.training_j.value", _j), " in total, ", ("energy.training_j_per_sample.value", _j),
          " per sample (", ("energy.training_j.method", str), ")"] if not many else
         [("energy.training_j.value", _j), " in rank 0's process alone (one of ", ("training.processes.world_size",
                                                                                  _n), " processes), ",
          ("energy.training_j_per_sample.value", _j), " per sample it trained (", ("energy.training_j.method", str),
          ")"],
         _inference_energy(bench)),
        ("Memory",
         [("training.peak_rss_mb", _mb), " peak RSS of the training process"] if not many else
         [("training.peak_rss_mb", _mb), " peak RSS of rank 0's training process (one of ",
          ("training.processes.world_size", _n), " processes)"],
         _inference_memory()),
        _privacy_row() if get(bench, "training.privacy") else
        ("Privacy budget", ["not trained with DP: no differential-privacy guarantee"],
         ["none: the bundle's weights may reveal rows of the training data"]),
    ]


def _federated_rows(bench: dict[str, Any], bundle_key: str) -> list[Row]:
    """The training cells of a federated run: clients x rounds, wall time and bytes per round. Per-sample
    throughput, step time, training energy and memory are not measured for it (bench.json's training.omitted
    says why), and the cells say so instead of showing a one-machine figure."""
    f = "training.federated"
    v = f"inference.variants.{bundle_key}"
    privacy = _federated_privacy_row() if get(bench, "training.privacy") else (
        "Privacy budget", ["not trained with DP: the rows stayed with their clients, but the weight updates they "
                           "sent and the global model carry no differential-privacy guarantee"],
        ["none: the bundle's weights may reveal rows of the clients' training data"])
    return [
        ("Definition and purpose",
         ["Federated: ", (f"{f}.clients", _n), " clients each fit the global weights to their own labelled rows "
          "(", (f"{f}.local_epochs", lambda x: count(x, "local epoch")), " of trainfer's loop per round); the "
          "server combines them by ", (f"{f}.strategy", str), " over ", (f"{f}.rounds", _n), " rounds."],
         ["Runs the frozen global model forward on new, unlabelled input to predict."]),
        ("Computational load",
         [("training.flops_per_sample", _flops), " per sample (forward + backward) on the clients, ",
          ("training.total_flops", _flops), " in total over all clients and rounds; train/inference ratio ",
          ("training.flops_ratio_train_to_inference", lambda x: "—" if x is None else f"{x:.2f}x")],
         [("inference.flops_per_sample", _flops), " per prediction (forward only)"]),
        ("Time required",
         ["Training: federated, ", (f"{f}.clients", _n), " clients x ", (f"{f}.rounds", _n), " rounds, ",
          ("training.wall_s", seconds), " wall clock; ", (f"{f}.round_s_median", seconds), " per round (median; "
          "round 1 with client start-up: ", (f"{f}.round_s_first", seconds), "). No samples/s: the clients train in "
          "parallel and the server waits for the slowest, so no one machine's rate describes it"],
         _inference_time(v)),
        ("Communication",
         [(f"{f}.bytes_total", _bytes_mb), " exchanged (", (f"{f}.bytes_sent", _bytes_mb), " sent to clients, ",
          (f"{f}.bytes_received", _bytes_mb), " received), ", (f"{f}.bytes_per_round_median", _bytes_mb),
          " per round (median): weights each way, every round"],
         ["none: the bundle predicts where it runs"]),
        ("Hardware used",
         [(f"{f}.clients", _n), " clients (", (f"{f}.engine", str), " engine), the server on ",
          ("training.device", str), ", ", ("training.threads", _threads), " (torch)"],
         [("env.cpu_model", str), ", ", ("inference.threads", _threads), " (onnxruntime, no torch)"]),
        ("Data requirement",
         [("training.labelled_samples", _n), " labelled samples (train + validation), the train rows dealt to the "
          "clients (partition ", (f"{f}.partition", str), "); ", ("training.samples_seen", _n),
          " row visits in all (each replying client's rows x local epochs, every round)"],
         ["one unlabelled input per prediction"]),
        ("Output",
         [("training.params", _n), " parameters of the global model after the last round"],
         ["a prediction with class probabilities; bundle variant ", ("inference.variant", str)]),
        ("Energy",
         ["not measured for a federated run: the clients spend it in their own processes"],
         _inference_energy(bench)),
        ("Memory",
         ["not measured for a federated run: each client's memory is its own process's"],
         _inference_memory()),
        privacy,
    ]


def _federated_privacy_row() -> Row:
    """Client-side DP-SGD: each client has its own (ε, δ); the headline is the weakest client's."""
    p = "training.privacy"
    return ("Privacy budget",
            ["(ε ", (f"{p}.epsilon", _fixed(3)), ", δ ", (f"{p}.delta", _fixed(8)), ")-differentially private per "
             "client by DP-SGD on each client (", (f"{p}.accountant", str), " accountant; ε of the weakest client, "
             "each client's own in privacy.per_client), per-example clipping norm ", (f"{p}.max_grad_norm",
                                                                                      _fixed(3))],
            ["the same guarantee: predictions are post-processing of the private weights, and cost no further ε"])
