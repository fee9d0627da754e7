"""The train split as batches: the one seam between where rows live and the training loop.

The loop asks for ``epoch(e)`` and gets ``(x, y)`` tensors on the device; where they come from (one
in-memory tensor today; a streaming reader or one rank's shard of a distributed run) is decided here.
An epoch's order is a function of (seed, epoch) alone, so a resumed run needs no sampler state.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def epoch_order(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the train rows used in ``epoch`` (the same on every rank and on resume)."""
    order = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n_rows, generator=order)


def steps_in_epoch(n_rows: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of one row is dropped (it breaks BatchNorm's batch statistics)."""
    steps = -(-n_rows // batch_size)
    if n_rows % batch_size == 1 and steps > 1:
        steps -= 1
    return steps


class InMemoryBatches:
    """The whole train split as two tensors on the device; batches are index slices (no DataLoader cost).

    ``batch_size`` is the global batch: with ``world`` ranks, rank ``r`` takes the rows at positions
    r, r + world, ... of each global batch, so the ranks' batches together are exactly the batch a single
    process would take and a recipe means the same at any world size.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, seed: int, device: torch.device,
                 regression: bool, rank: int = 0, world: int = 1) -> None:
        self.X = torch.from_numpy(X).to(device)
        y_t = torch.from_numpy(y).to(device)
        self.y = y_t.view(-1, 1) if regression else y_t
        self.n_rows = len(self.X)
        self.batch_size = min(batch_size, self.n_rows)
        self.steps_per_epoch = steps_in_epoch(self.n_rows, self.batch_size)
        self.seed, self.device, self.rank, self.world = seed, device, rank, world

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = epoch_order(self.n_rows, self.seed, epoch).to(self.device)
        bs = self.batch_size
        for i in range(self.steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            if self.world > 1:
                idx = idx[self.rank::self.world]
            yield self.X[idx], self.y[idx]

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at ``idx`` (DP-SGD draws its own Poisson batches of indices)."""
        return self.X[idx], self.y[idx]
