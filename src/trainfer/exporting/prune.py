"""Structured pruning with torch-pruning: whole neurons or channels are removed (the tensors really
shrink), then the network is fine-tuned for a few epochs with the same training loop as `train`."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from trainfer._imports import require
from trainfer.data import prepare
from trainfer.errors import ExportError
from trainfer.training import Run
from trainfer.training.loop import fit


def prune_structured(model: nn.Module, input_shape: tuple[int, ...], ratio: float) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of the neurons/channels of each prunable layer removed.

    The output layer keeps all its units. Importance is the L2 norm of each group's weights.
    """
    tp = require("torch_pruning", extra="optimize")
    model = copy.deepcopy(model).cpu().eval()
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]  # the classifier/regressor head
    example = torch.randn(2, *input_shape)
    try:
        pruner = tp.pruner.BasePruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, ignored_layers=heads,
            round_to=8,  # CPU kernels work in blocks of 8/16 channels: a width off the grid saves nothing
        )
        pruner.step()
    except Exception as exc:  # torch-pruning traces the graph; exotic custom models can defeat it
        raise ExportError(f"structured pruning failed: {type(exc).__name__}: {exc}"[:300]) from None
    return model


def fine_tune(run: Run, model: nn.Module, work: Path, epochs: int = 5) -> nn.Module:
    """Fine-tune a pruned copy of the run's model on the run's own split, with ``train``'s loop."""
    recipe = run.recipe.model_copy(deep=True)
    recipe.train.epochs = min(epochs, recipe.train.epochs)
    recipe.train.lr = recipe.train.lr * 0.3  # the weights are already good: smaller steps
    recipe.train.schedule = "cosine"
    recipe.train.warmup_fraction = 0.1
    recipe.train.patience = None
    data = prepare(recipe.data, recipe.seed, _split(run))
    torch.manual_seed(recipe.seed)
    fit(model, data, recipe, work, quiet=True)
    return model.eval()


def _split(run: Run):
    from trainfer.data import Split

    return Split.from_dict(run.split())
