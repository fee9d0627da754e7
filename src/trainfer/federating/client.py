"""The client side: one round of local training is one call of trainfer's loop (``fit``) on the client's rows.

The global weights arrive in the message; the client trains them for ``local-epochs`` epochs on its own rows
and replies with its weights, its row count (FedAvg weighs by it) and its local figures. Nothing else leaves
the client. The same handler serves the simulation engine (rows handed over by the federation) and a
SuperNode on the machine that owns the data (rows read from ``--node-config data=PATH``).
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trainfer.config import PrivacyConfig, Recipe, validate
from trainfer.data import Prepared, Split
from trainfer.data.dataset import Dataset
from trainfer.features import Features

# (recipe, features, node_config) -> (dataset, X, y): the client's rows, preprocessed, labels encoded
RowSource = Callable[[Recipe, Features, dict[str, Any]], tuple[Dataset, np.ndarray, np.ndarray]]


def local_recipe(recipe: Recipe, epochs: int, threads: int | None, noise: float | None) -> Recipe:
    """The recipe of one round's local training: ``epochs`` epochs at a constant learning rate, no early stopping.

    A schedule that warms up and decays inside each round would restart every round; FedAvg's analysis assumes
    plain local SGD steps, and early stopping on a client's own rows would stop on noise.
    """
    train = recipe.train.model_copy(update={"epochs": epochs, "patience": None, "schedule": "constant",
                                            "warmup_fraction": 0.0, "threads": threads or recipe.train.threads})
    privacy = None
    if recipe.privacy is not None:  # the noise was fixed for the whole federation (see privacy_noise)
        privacy = PrivacyConfig.model_construct(**{**recipe.privacy.model_dump(), "epsilon": None,
                                                   "noise_multiplier": noise})
    return recipe.model_copy(update={"train": train, "privacy": privacy})


def privacy_noise(privacy: PrivacyConfig, batch_size: int, n_rows: int, local_epochs: int,
                  rounds: int) -> tuple[float, float]:
    """(noise multiplier, δ) with which a client of ``n_rows`` rows spends at most ``privacy.epsilon`` over the
    whole federation: the noise is searched for all ``rounds × local_epochs`` epochs it could train, since a
    client that takes part in every round composes every round's DP-SGD steps on the same rows. A client that
    sits out rounds (``--fraction`` < 1) spends less; the federation adds up what each one actually ran."""
    return _noise(privacy.model_dump_json(), batch_size, n_rows, local_epochs, rounds)


@functools.lru_cache(maxsize=64)
def _noise(privacy_json: str, batch_size: int, n_rows: int, local_epochs: int, rounds: int) -> tuple[float, float]:
    # the same for every round of a client: searched once per process (a simulation's Ray actor keeps it)
    from trainfer.training.privacy import find_noise, resolve_delta

    privacy = PrivacyConfig.model_validate_json(privacy_json)
    bs = min(batch_size, n_rows)
    steps_per_epoch = -(-n_rows // bs)
    q = 1.0 / steps_per_epoch
    delta = resolve_delta(privacy, n_rows)
    if privacy.noise_multiplier is not None:
        return float(privacy.noise_multiplier), delta
    return find_noise(privacy, q, steps_per_epoch * local_epochs * rounds, delta, n_rows * q), delta


def train_round(recipe: Recipe, features: Features, state: dict[str, Any], dataset: Dataset, X: np.ndarray,
                y: np.ndarray, cfg: dict[str, Any], client: int = 0) -> tuple[dict[str, Any], dict[str, float]]:
    """Train the global ``state`` (a torch state dict) on (X, y) for one round; (new state dict, metrics)."""
    import torch

    from trainfer.models import build_model
    from trainfer.training.loop import fit
    from trainfer.training.privacy import replace_batchnorm

    t0 = time.perf_counter()
    noise = delta = None
    if recipe.privacy is not None:
        noise, delta = privacy_noise(recipe.privacy, recipe.train.batch_size, len(y), int(cfg["local-epochs"]),
                                     int(cfg["rounds"]))
    local = local_recipe(recipe, int(cfg["local-epochs"]), cfg.get("threads") or None, noise)
    # A seed of its own per (recipe seed, round, client): batch order and dropout differ from round to round and
    # client to client, yet a federation repeats exactly. Without it every round shuffled alike, and dropout
    # drew from whatever state the worker process (a Ray actor serves several clients) was left in.
    seed = int(np.random.SeedSequence([recipe.seed, int(cfg.get("server-round", 0)), client]).generate_state(1)[0])
    local = local.model_copy(update={"seed": seed})
    torch.manual_seed(seed)
    model = build_model(recipe.model, features.input_shape, features.n_outputs)
    if recipe.privacy is not None:
        model, _ = replace_batchnorm(model)  # the global model's layout (GroupNorm), as Run.load rebuilds it
    model.load_state_dict(state)
    rows = np.arange(len(y))
    # the client's rows are its train and its val split: a client holds no rows of the federation's validation
    # split (the server scores the global model on those); the loop's own val figures are on its training rows
    data = Prepared(dataset, features, Split(rows, rows, rows), {"train": X, "val": X}, {"train": y, "val": y})
    last: dict[str, Any] = {}
    records: list[dict[str, Any]] = []

    def keep_last(record: dict[str, Any]) -> None:
        # FedAvg averages the weights each client ends its local epochs with; the loop itself keeps the
        # epoch that scored best on its val split, so the last epoch's weights are copied here
        records.append(record)
        last.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    hooks = []
    mu = float(cfg.get("proximal-mu", 0.0))
    if mu > 0:  # FedProx: the gradient of (mu/2)·||w - w_global||² added to each parameter's gradient
        for name, p in model.named_parameters():
            anchor = state[name].detach().clone().to(p.dtype)
            hooks.append(p.register_hook(lambda g, p=p, anchor=anchor: g + mu * (p.detach() - anchor.to(p.device))))
    with tempfile.TemporaryDirectory(prefix="trainfer-client-") as work:
        summary = fit(model, data, local, Path(work) / "run", quiet=True, on_epoch=keep_last, splits=("train", "val"))
    for h in hooks:
        h.remove()
    metrics: dict[str, float] = {"num-examples": float(len(y)), "train_loss": float(records[-1]["train_loss"]),
                                 "seconds": time.perf_counter() - t0}
    if "train_accuracy" in records[-1]:
        metrics["train_accuracy"] = float(records[-1]["train_accuracy"])
    if noise is not None:  # what the server needs to add up this client's ε over the rounds it took part in
        p = summary["privacy"]
        metrics.update({"dp-noise": float(p["noise_multiplier"]), "dp-sample-rate": float(p["sample_rate"]),
                        "dp-steps": float(p["steps"]), "dp-delta": float(delta or p["delta"])})
    return {k: v.cpu() for k, v in last.items()}, metrics


def decode_config(cfg: Any) -> tuple[Recipe, Features]:
    """The recipe and fitted features the server sends each round (JSON strings in the ConfigRecord)."""
    recipe = validate(json.loads(str(cfg["recipe"])), "federation recipe")
    return recipe, Features.from_dict(json.loads(str(cfg["features"])))


def rows_from_file(recipe: Recipe, features: Features, node_config: dict[str, Any]) -> tuple[Dataset, np.ndarray,
                                                                                            np.ndarray]:
    """A SuperNode's rows: the file at ``--node-config data=PATH``, with the federation's preprocessing."""
    from trainfer.data import check_targets, in_source, load_dataset
    from trainfer.errors import DataError, InputError

    path = node_config.get("data")
    if not path:
        raise DataError("this SuperNode has no data: start it with --node-config \"data=PATH\" "
                        "(trainfer federate-node --data PATH does)")
    cfg = recipe.data.model_copy(update={"source": str(path), "target": features.target.name, "options": {}})
    ds = load_dataset(cfg)
    ds.y = check_targets(ds, features.task)
    idx = np.arange(len(ds))
    try:
        X = features.transform(ds.rows(idx))
    except InputError as exc:
        raise in_source(exc, ds) from None
    return ds, X, features.target.encode(ds.y, where=lambda i: ds.where(int(i)))
