"""Federated vs centralized accuracy on digits: FedAvg on Flower's simulation engine, iid and Dirichlet(0.5).

Acceptance 4 of issue 13: 5 clients, 10 rounds; the non-iid federation (Dirichlet α=0.5 over labels) should
reach >= 95% of the centralized test accuracy, the iid one >= 98%. The centralized baseline is `trainfer.train`
with the same recipe and the same total epochs (rounds × local epochs). Prints the validation accuracy of the
global model after every round (the server scores it each round), the final test accuracy, the bytes sent
and received, and the ratios. Local training runs at a constant learning rate (federating/client.py).
Each side is trained with --seeds seeds (split, initial weights, batches, partition); the goal is on the
ratio of the mean test accuracies: with 269 test rows one seed's ratio moves by ~0.4% per row.

    .venv/bin/python benchmarks/federated.py           # ~4-6 min on 2 cores (3 seeds)
    .venv/bin/python benchmarks/federated.py --quick   # smoke run (3 rounds)

The last line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import environment

# The recipe both sides train. No BatchNorm: averaging batch statistics across clients whose label mixes differ
# (non-iid) is a known failure of FedAvg; the MLP without it trains as well centrally on digits.
RECIPE: dict[str, Any] = {"seed": 0, "data": {"source": "digits"},
                          "model": {"name": "mlp", "hidden": [256, 128], "dropout": 0.1, "batchnorm": False},
                          "train": {"batch_size": 32, "optimizer": "adamw", "lr": 2e-3, "device": "cpu"}}


def federated(partition: str, clients: int, rounds: int, local_epochs: int, work: Path,
              seed: int) -> dict[str, Any]:
    from trainfer.federating import federate

    t0 = time.perf_counter()
    run = federate({**RECIPE, "seed": seed}, out=work / f"{partition.replace(':', '-')}-{seed}", clients=clients,
                   rounds=rounds, partition=partition, local_epochs=local_epochs)
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    fed = run.summary["federated"]
    return {"partition": partition, "seed": seed, "test_accuracy": run.summary["test"]["accuracy"],
            "val_accuracy_per_round": [r["val_accuracy"] for r in rows],
            "bytes_sent": fed["bytes_sent"], "bytes_received": fed["bytes_received"],
            "bytes_per_round": [r["bytes_sent"] + r["bytes_received"] for r in rows],
            "client_rows": fed["client_rows"], "label_histograms": fed["label_histograms"],
            "wall_s": time.perf_counter() - t0, "first_round_s": rows[0]["round_s"]}


def centralized(epochs: int, work: Path, seed: int) -> dict[str, Any]:
    from trainfer.training import train

    t0 = time.perf_counter()
    run = train({**RECIPE, "seed": seed, "train": {**RECIPE["train"], "epochs": epochs}},
                out=work / f"central-{seed}", quiet=True)
    return {"seed": seed, "test_accuracy": run.summary["test"]["accuracy"], "epochs": epochs,
            "wall_s": time.perf_counter() - t0}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds, for smoke runs")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for both sides")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    seeds = list(range(1 if args.quick else args.seeds))
    print(f"federated: digits, mlp [256, 128], {args.clients} clients, {rounds} rounds x {args.local_epochs} local "
          f"epochs, FedAvg, simulation engine; centralized: {rounds * args.local_epochs} epochs, same recipe; "
          f"seeds {seeds}")
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        work = Path(tmp)
        central = [centralized(rounds * args.local_epochs, work, seed) for seed in seeds]
        results = [federated(p, args.clients, rounds, args.local_epochs, work, seed)
                   for seed in seeds for p in ("iid", "dirichlet:0.5")]
    goals = {"iid": 0.98, "dirichlet:0.5": 0.95}
    central_acc = {c["seed"]: c["test_accuracy"] for c in central}
    print(f"centralized test accuracy {' '.join(f'{a:.4f}' for a in central_acc.values())} "
          f"(mean {mean(list(central_acc.values())):.4f})")
    for r in results:
        r["ratio_to_centralized"] = r["test_accuracy"] / central_acc[r["seed"]]
        per_round = " ".join(f"{a:.3f}" for a in r["val_accuracy_per_round"])
        print(f"{r['partition']:>14} seed {r['seed']}: val accuracy per round {per_round}")
        print(f"{'':>21}  test accuracy {r['test_accuracy']:.4f} = {r['ratio_to_centralized']:.3f} x centralized; "
              f"bytes sent {r['bytes_sent']:,}, received {r['bytes_received']:,}; {r['wall_s']:.1f} s "
              f"(round 1, with Ray's start: {r['first_round_s']:.1f} s); client rows {r['client_rows']}")
    summary = {}
    for partition, goal in goals.items():
        accs = [r["test_accuracy"] for r in results if r["partition"] == partition]
        ratio = mean(accs) / mean(list(central_acc.values()))
        summary[partition] = {"mean_test_accuracy": mean(accs), "ratio_to_centralized": ratio, "goal_ratio": goal,
                              "meets_goal": ratio >= goal}
        print(f"{partition:>14}: mean test accuracy {mean(accs):.4f} = {ratio:.3f} x centralized over "
              f"{len(seeds)} seed(s) (goal >= {goal}: {'met' if ratio >= goal else 'NOT met'})")
    print(json.dumps({"benchmark": "federated", "recipe": RECIPE, "clients": args.clients, "rounds": rounds,
                      "local_epochs": args.local_epochs, "seeds": seeds, "centralized": central, "federated": results,
                      "summary": summary,
                      "environment": environment(None)}))


if __name__ == "__main__":
    main()
