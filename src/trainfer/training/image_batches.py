"""Streamed image batches: files decoded in DataLoader worker processes, in the epoch order of batches.py.

A batch_sampler hands the DataLoader each global batch's row numbers (this rank's positions r::world), so the
batches are exactly the in-memory path's for the same seed; ``train.workers`` processes decode them (0: the
training process itself). Workers are started per epoch and stopped at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainfer.training.batches import _Batches, epoch_order


class _Decoded(Dataset):
    def __init__(self, files: Any) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.files.decode(i))


class ImageBatches(_Batches):
    def __init__(self, X: Any, y: np.ndarray, batch_size: int, seed: int, device: torch.device, regression: bool,
                 rank: int = 0, world: int = 1, workers: int = 0) -> None:
        self.X, self.workers = X, workers
        super().__init__(len(X), torch.from_numpy(y), batch_size, seed, device, regression, rank, world)

    def _sampler(self, epoch: int) -> list[list[int]]:
        perm, bs = epoch_order(self.n_rows, self.seed, epoch), self.batch_size
        return [perm[i * bs:(i + 1) * bs][self.rank::self.world].tolist() for i in range(self.steps_per_epoch)]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = self._sampler(epoch)
        # Its own generator: a DataLoader otherwise draws its workers' seed from the global RNG, which would
        # shift every dropout mask after it (and the weights would differ from the in-memory run's).
        loader = DataLoader(_Decoded(self.X), batch_sampler=sampler, num_workers=self.workers,
                            generator=torch.Generator().manual_seed(self.seed))
        for idx, xb in zip(sampler, loader, strict=True):
            yield xb.to(self.device), self.y[torch.tensor(idx, dtype=torch.long)].to(self.device)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("streamed images do not serve DP-SGD's Poisson samples")
