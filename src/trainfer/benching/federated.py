"""The training half of bench.json for a federated run (`trainfer federate`): rounds, clients, wall time and bytes
per round, read from the run's own metrics.jsonl (one line per round) and summary.json's ``federated`` section.

A federation has no single training machine: clients train in parallel, each on its own rows (its own machine
when deployed), and the server waits for the slowest. So the figures of a one-machine run that would be false
here are left out, each with the reason why, instead of being computed from the wrong lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainfer.benching.training import flops, history
from trainfer.errors import ConfigError
from trainfer.training import Run

OMITTED = {
    "samples_per_s": "not measured for a federated run: each client trains its own rows in parallel (its own machine "
                     "when deployed) and the server waits for the slowest, so no one machine's samples/s describes "
                     "it; see federated.round_s_median for the wall time per round",
    "step_ms": "not measured for a federated run: steps run on the clients, which report no step times",
    "achieved_flops_per_s": "not given for a federated run: it needs one machine's samples/s",
    "peak_rss_mb": "not measured for a federated run: each client's memory is spent in its own process",
    "energy": "not measured for a federated run: the clients' CPU time is spent in their own processes",
}


def is_federated(run: Run) -> bool:
    return "federated" in run.summary


def rows_per_round(fed: dict[str, Any], line: dict[str, Any]) -> int | None:
    """Training rows one round visited (each replying client's rows x local epochs), when the run says enough.

    The server records the replying clients' rows per round; for a run without that record, the rows follow
    when every client replied, or when all clients hold the same number of rows; otherwise None (not guessed)."""
    if "rows_replied" in line:  # recorded per round by the server
        return int(line["rows_replied"]) * int(fed["local_epochs"])
    rows = fed["client_rows"]
    sizes = list(rows.values()) if isinstance(rows, dict) else list(rows)
    replied = int(line.get("clients_replied", 0))
    if replied == len(sizes) and replied == fed["clients"]:
        return int(sum(sizes)) * int(fed["local_epochs"])
    if sizes and len(set(sizes)) == 1:
        return replied * sizes[0] * int(fed["local_epochs"])
    return None


def check_seeds(seeds: int) -> None:
    """--seeds retrains with `trainfer train`: on one machine, not the federation this run measured."""
    if seeds > 1:
        raise ConfigError(f"--seeds {seeds} retrains the recipe on one machine with `trainfer train`: that is not "
                          "the federated training this run measured",
                          hint="drop --seeds (time-to-target is read from this run's rounds), or rerun "
                               "`trainfer federate` with other --seed values and bench each run")


def federated_training(run: Run, target_accuracy: float | None, seeds: int) -> dict[str, Any]:
    """bench.json's ``training`` for a federated run (the same keys as a one-machine run where they hold)."""
    check_seeds(seeds)
    s, fed = run.summary, run.summary["federated"]
    hist = history(run)
    fl = flops(run)
    per_round = [{"round": h["round"], "clients_sampled": h.get("clients_sampled"),
                  "clients_replied": h.get("clients_replied"), "clients_failed": h.get("clients_failed"),
                  "round_s": h["round_s"], "bytes_sent": h["bytes_sent"], "bytes_received": h["bytes_received"],
                  "rows_trained": rows_per_round(fed, h)} for h in hist]
    trained = [r["rows_trained"] for r in per_round]
    seen = int(sum(trained)) if trained and None not in trained else None
    times = [r["round_s"] for r in per_round]
    # the first round also starts the clients (the simulation engine's workers, the ClientApp's imports)
    steady = times[1:] or times
    sent, received = int(fed["bytes_sent"]), int(fed["bytes_received"])
    out: dict[str, Any] = {
        "kind": "federated",
        "samples_per_s": None, "step_ms": None, "throughput": None, "achieved_flops_per_s": None,
        "flops_per_sample": fl["train_per_sample"], "forward_flops_per_sample": fl["forward_per_sample"],
        "flops_ratio_train_to_inference": fl["train_to_inference_ratio"], "flops_counter": fl["counter"],
        "total_flops": fl["train_per_sample"] * seen if seen is not None else None,
        "wall_s": s["timings"]["total_s"], "loop_s": s["timings"]["rounds_s"],
        "samples_seen": seen, "labelled_samples": s["samples"]["train"] + s["samples"]["val"],
        "epochs_run": s["epochs_run"], "best_epoch": s["best_epoch"], "params": s["params"],
        "device": s.get("device"), "threads": s.get("threads"), "peak_rss_mb": None,
        "test": s.get("test", {}),
        "privacy": s.get("privacy"),  # per-client DP-SGD (ε per client in privacy.per_client), or None
        "processes": None, "streamed": False,
        "omitted": dict(OMITTED),
        "federated": {
            "strategy": fed["strategy"], "engine": fed["engine"], "partition": fed.get("partition"),
            "clients": fed["clients"], "rounds": len(hist), "rounds_planned": fed["rounds"],
            "local_epochs": fed["local_epochs"], "fraction": fed["fraction"], "client_rows": fed["client_rows"],
            "per_round": per_round,
            "round_s_median": float(np.median(steady)) if steady else None,
            "round_s_first": times[0] if times else None,
            "round_s_note": "wall clock per round at the server (send, the slowest client's local training, "
                            "receive, aggregate, evaluate); the median leaves out round 1, which also starts "
                            "the clients",
            "bytes_sent": sent, "bytes_received": received, "bytes_total": sent + received,
            "bytes_per_round_median": float(np.median([r["bytes_sent"] + r["bytes_received"] for r in per_round]))
            if per_round else None,
            "bytes_note": fed.get("bytes_note"),
            "rows_trained": seen,
            "rows_note": "client rows x local epochs, summed over the clients that replied in each round"
                         if seen is not None else "not derivable: some rounds had replies from a subset of clients "
                                                  "holding different numbers of rows, and the run does not say whose",
        },
    }
    if target_accuracy is not None:
        out["time_to_target"] = rounds_to_target(run, target_accuracy)
    return out


def rounds_to_target(run: Run, target: float) -> dict[str, Any]:
    """Wall clock of the rounds up to the first whose global model reaches ``target`` on the validation split
    (the server's evaluation each round), read from this run's metrics: rounds, not epochs."""
    metric = "val_accuracy" if run.task == "classification" else "val_rmse"
    reached = (lambda v: v >= target) if run.task == "classification" else (lambda v: v <= target)
    elapsed = 0.0
    for h in history(run):
        elapsed += h["round_s"]
        if reached(h[metric]):
            return {"target": target, "metric": metric, "round": h["round"], "epoch": None, "seconds": elapsed,
                    "reached": True, "measured": "sum of round_s up to that round (start-up before round 1 not "
                                                 "included)"}
    return {"target": target, "metric": metric, "round": None, "epoch": None, "seconds": None, "reached": False,
            "measured": "sum of round_s"}
