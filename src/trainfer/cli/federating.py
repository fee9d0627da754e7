"""The federated verbs: `trainfer federate RECIPE --clients K --rounds R` and `trainfer federate-node`."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trainfer.cli._common import (
    DataOption,
    JsonFlag,
    ModelOption,
    QuietFlag,
    SeedOption,
    TargetOption,
    _emit,
    _nothing_at,
    _verb,
    app,
)
from trainfer.federating.deploy import CONNECT_TIMEOUT_S


@app.command()
@_verb("federated", kept=_nothing_at("out", "run"))
def federate(
    recipe: Annotated[Path | None, typer.Argument(help="YAML recipe (optional): data, model, train sections; each "
                                                       "client trains with it.")] = None,
    clients: Annotated[int, typer.Option(help="Clients (simulation: virtual clients; deployment: SuperNodes).")] = ...,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = ...,
    data: DataOption = None,
    target: TargetOption = None,
    model: ModelOption = None,
    seed: SeedOption = None,
    out: Annotated[Path, typer.Option(help="Run directory to write. With --superlink it is written on the "
                                           "SuperLink's machine (Flower 1.42 has no way to send it back): run this "
                                           "command there, or copy the directory over.")] = ...,
    partition: Annotated[str, typer.Option(help="How the train split is dealt to simulated clients: iid or "
                                                "dirichlet:ALPHA (by label; small ALPHA: skewed clients).")] = "iid",
    local_epochs: Annotated[int, typer.Option(help="Epochs of the loop each client runs per round.")] = 1,
    strategy: Annotated[str, typer.Option(help="fedavg or fedprox (Flower's strategies).")] = "fedavg",
    proximal_mu: Annotated[float, typer.Option(help="FedProx's proximal term weight (with --strategy fedprox).")]
    = 0.0,
    fraction: Annotated[float, typer.Option(help="Share of the clients that train in each round, in (0, 1].")]
    = 1.0,
    dp_epsilon: Annotated[float | None, typer.Option(help="DP-SGD on every client: each one's ε over all rounds "
                                                          "stays within this.")] = None,
    superlink: Annotated[str | None, typer.Option(help="HOST:PORT of a running SuperLink (started with "
                                                       "--disable-runtime-dependency-installation); default: "
                                                       "Flower's simulation engine on this machine.")] = None,
    round_timeout: Annotated[float, typer.Option(help="Seconds a round waits for its clients' replies (and round "
                                                      "1 for every client to connect).")] = 600.0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe value: key=value.")] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Train federatedly on Flower: each client trains the global model with trainfer's loop on its own rows.

    Writes an ordinary run directory (per-round metrics with bytes sent and received, per-client label
    histograms in summary.json): `trainfer export RUN` turns it into a bundle.

    Example: trainfer federate examples/digits.yaml --clients 5 --rounds 10 --partition dirichlet:0.5 --out runs/fed
    (or without a recipe: trainfer federate --data data.csv --target label --clients 3 --rounds 5 --out runs/fed)
    """
    from trainfer.federating import federate as federate_fn

    def progress(row: dict[str, Any]) -> None:
        if not quiet:
            acc = f" val accuracy {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
            failed = f" ({row['clients_failed']} failed; {row['client_errors'][0]})" if row.get("client_errors") else ""
            print(f"round {row['round']}/{rounds}: {row['clients_replied']}/{row['clients_sampled']} clients{failed},"
                  f"{acc} val loss {row['val_loss']:.4f}, {row['bytes_sent'] + row['bytes_received']} bytes",
                  file=sys.stderr, flush=True)

    from trainfer.federating.simulation import Terminated

    try:
        run = federate_fn(recipe, out=out, data=data, target=target, model=model, seed=seed, clients=clients,
                          rounds=rounds, partition=partition, local_epochs=local_epochs, strategy=strategy,
                          proximal_mu=proximal_mu, fraction=fraction, dp_epsilon=dp_epsilon, superlink=superlink,
                          round_timeout=round_timeout, overrides=set_, progress=progress)
    except KeyboardInterrupt as exc:
        # SIGTERM is stopped as Ctrl-C stops (Ray shut down; a deployed run stopped on its SuperLink, which the
        # exception's message says), with the exit status of SIGTERM
        said = f"{exc.args[0]}; " if exc.args else ""
        kept = _nothing_at("out", "run")({"out": out})
        how, code = ("terminated", 128 + signal.SIGTERM) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"error: {how}: {said}{kept}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Nothing is left to do (Ray is shut down, nothing was written), and the interpreter's finalization is
        # unsafe after an interrupted simulation: Ray's C++ worker crashed there (SIGSEGV, exit -11 instead of
        # 130) in about 1 of 8 Ctrl-Cs on this machine. Exit without it.
        os._exit(code)
    fed = run.summary["federated"]
    test = run.summary.get("test", {})
    record = {"run": str(run.path), "test": test, "rounds": fed["rounds"], "clients": fed["clients"],
              "bytes_sent": fed["bytes_sent"], "bytes_received": fed["bytes_received"],
              "privacy": run.summary.get("privacy")}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "loss")
    _emit(record, as_json, f"federated run written to {run.path}: test {shown}; "
                           f"{fed['bytes_sent'] + fed['bytes_received']} bytes over {fed['rounds']} rounds")


@app.command("federate-node")
@_verb("federated")
def federate_node(
    superlink: Annotated[str, typer.Option(help="HOST:PORT of the SuperLink.")],
    data: Annotated[Path, typer.Option(help="This node's labelled rows (the same columns as the recipe's data).")],
    port: Annotated[int | None, typer.Option(help="Port of this SuperNode's local runtime API (default 9094; one "
                                                  "per SuperNode on a machine).")] = None,
    connect_timeout: Annotated[float, typer.Option(
        help="Seconds the node keeps trying to reach the SuperLink (when it starts, and again whenever it loses "
             "it) before it exits with an error; nodes may be started before the SuperLink.")] = CONNECT_TIMEOUT_S,
) -> None:
    """Run a Flower SuperNode serving trainfer's ClientApp on the rows at --data (on the machine that owns them).

    Example: trainfer federate-node --superlink 10.0.0.5:8000 --data hospital_a.csv
    """
    from trainfer.federating import check_options
    from trainfer.federating.deploy import node_command

    check_options(clients=1, rounds=1, partition="iid", local_epochs=1, strategy="fedavg", proximal_mu=0.0,
                  fraction=1.0, dp_epsilon=None, superlink=superlink, round_timeout=1.0)
    cmd = node_command(superlink, data, port, connect_timeout)
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    # the SuperNode starts `flower-superexec` by name: found beside this Python even when its venv is not activated
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # the SuperNode replaces this process: signals and exit status are its own
