"""`trainfer federate`: federated learning on Flower, each client's local training an ordinary run of the loop.

Two engines, one pair of apps (apps.py):

- **simulation** (default): Flower's simulation engine (Ray) on this machine, with ``clients`` virtual clients,
  each holding a partition of the train split (partition.py: iid or Dirichlet over labels).
- **deployment** (``superlink="HOST:PORT"``): a SuperLink started by the user runs the ServerApp; SuperNodes on
  the machines that own the data (`trainfer federate-node`) run the ClientApp on their own files (deploy.py).

The server fits the preprocessing once on the train split (a simplification: rundir.PREPROCESSING_NOTE), sends
the global weights each round, evaluates the global model on the validation split after each round, and writes
a run directory (rundir.py) that export, optimize, bench and report take unchanged.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainfer._imports import require_extras
from trainfer.config import Recipe, build_recipe
from trainfer.errors import ConfigError, RunError

STRATEGIES = ("fedavg", "fedprox")


def check_options(*, clients: int, rounds: int, partition: str, local_epochs: int, strategy: str,
                  proximal_mu: float, fraction: float, dp_epsilon: float | None, superlink: str | None,
                  round_timeout: float) -> None:
    """Every option checked before any work; the first problem is a ConfigError saying what to change."""
    from trainfer.federating.partition import parse_partition

    def whole(name: str, value: Any, least: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"--{name} must be a whole number of at least {least}, not {value!r}")

    whole("clients", clients, 1)
    whole("rounds", rounds, 1)
    whole("local-epochs", local_epochs, 1)
    parse_partition(partition)
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    for name, value in (("fraction", fraction), ("proximal-mu", proximal_mu), ("round-timeout", round_timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"--{name} must be a finite number, not {value!r}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"--fraction must be above 0 and at most 1, not {fraction:g}",
                          hint="the share of connected clients that train in each round (1: all of them)")
    if proximal_mu < 0:
        raise ConfigError(f"--proximal-mu must be 0 or more, not {proximal_mu:g}")
    if proximal_mu > 0 and strategy != "fedprox":
        raise ConfigError("--proximal-mu applies to --strategy fedprox only", hint="add --strategy fedprox")
    if round_timeout <= 0:
        raise ConfigError(f"--round-timeout must be above 0 seconds, not {round_timeout:g}")
    if dp_epsilon is not None:
        if isinstance(dp_epsilon, bool) or not isinstance(dp_epsilon, int | float) or not math.isfinite(dp_epsilon) \
                or dp_epsilon <= 0:
            raise ConfigError(f"--dp-epsilon must be a number above 0, not {dp_epsilon!r}")
        if strategy == "fedprox":
            # the proximal term is added to the summed gradient; DP-SGD steps on per-example gradients (Opacus)
            # and would drop it silently
            raise ConfigError("--strategy fedprox cannot be combined with --dp-epsilon",
                              hint="use --strategy fedavg with --dp-epsilon")
    if superlink is not None and not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", superlink):
        raise ConfigError(f"--superlink {superlink!r} is not HOST:PORT", hint="e.g. --superlink 127.0.0.1:8000")


def federate(recipe: str | Path | dict[str, Any] | Recipe | None = None, *, out: str | Path, clients: int,
             rounds: int, partition: str = "iid", local_epochs: int = 1, strategy: str = "fedavg",
             proximal_mu: float = 0.0, fraction: float = 1.0, dp_epsilon: float | None = None,
             superlink: str | None = None, round_timeout: float = 600.0, overrides: list[str] | None = None,
             progress: Callable[[dict[str, Any]], None] | None = None, data: str | None = None,
             target: str | None = None, model: str | None = None, seed: int | None = None) -> Any:
    """Train ``recipe`` federatedly and return the finished ``trainfer.Run``.

    Example: ``trainfer.federate("examples/digits.yaml", out="runs/fed", clients=5, rounds=10,
    partition="dirichlet:0.5")``, or without a recipe ``trainfer.federate(data="iris", model="mlp", ...)``: the
    shortcuts ``data``, ``target``, ``model`` and ``seed`` are those of ``trainfer.train`` (there is no ``epochs``:
    ``local_epochs`` is what each client runs per round). ``progress(row)`` sees each round's metrics line.
    """
    require_extras("federated")
    from trainfer.training import Run
    from trainfer.training.outputs import check_run_out

    check_options(clients=clients, rounds=rounds, partition=partition, local_epochs=local_epochs,
                  strategy=strategy, proximal_mu=proximal_mu, fraction=fraction, dp_epsilon=dp_epsilon,
                  superlink=superlink, round_timeout=round_timeout)
    if dp_epsilon is not None:
        require_extras("privacy")
        # --dp-epsilon is the target of each client's ε over the whole federation; it replaces the recipe's own
        overrides = [*(overrides or []), f"privacy.epsilon={float(dp_epsilon)!r}", "privacy.noise_multiplier=null"]
    resolved = build_recipe(recipe, overrides, **{"data.source": data, "data.target": target, "model.name": model,
                                                  "seed": seed})
    out = Path(out).expanduser().absolute()
    check_run_out(out, resume=False, force=False)
    spec = {"recipe": resolved.model_dump(mode="json"), "out": str(out), "clients": clients, "rounds": rounds,
            "partition": partition if superlink is None else "each SuperNode's own data",
            "local_epochs": local_epochs, "strategy": strategy, "proximal_mu": float(proximal_mu),
            "fraction": float(fraction), "round_timeout": float(round_timeout), "t0": time.time(),
            # how long round 1 waits for every client to connect
            "wait_s": float(round_timeout), "engine": "simulation" if superlink is None else "deployment"}
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    if superlink is None:
        from trainfer.federating.simulation import simulate

        simulate(spec, resolved, progress)
    else:
        from trainfer.federating.deploy import submit

        submit(spec, superlink)
        if not (out / "summary.json").is_file():
            raise RunError(f"the federation finished but wrote no run at {out}",
                           hint="the run directory is written on the SuperLink's machine (Flower 1.42's `flwr "
                                "pull` needs an artifact store the open-source SuperLink lacks): submit from that "
                                "machine, or copy the run directory from it")
    return Run.load(out)


__all__ = ["STRATEGIES", "check_options", "federate"]
