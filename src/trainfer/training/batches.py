"""The train split as batches: the one seam between where rows live and the training loop.

The loop asks for ``epoch(e)`` and gets ``(x, y)`` tensors on the device; where they come from (one
in-memory tensor, a streaming reader of a row cache on disk, or one rank's shard of a distributed run)
is decided here. An epoch's order is a function of (seed, epoch) alone, so a resumed run needs no
sampler state, and the in-memory and streaming paths use the same order (the same metrics on the same data).

The order. Up to ``CHUNK * WINDOW`` rows (65,536) it is one ``randperm`` of the rows, as it always was.
Above that it is a windowed chunk shuffle, which a reader with bounded memory can serve: the rows are cut
into chunks of ``CHUNK`` consecutive rows, the chunks are permuted, and the rows of each window of
``WINDOW`` consecutive chunks (in that permuted order) are permuted among themselves. A reader then holds
one window (WINDOW * CHUNK rows) at a time and reads it as WINDOW contiguous runs of the cache file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

CHUNK = 1024  # rows read in one contiguous run
WINDOW = 64  # chunks shuffled together: 65,536 rows in memory at a time (16 MiB at 64 float32 features)


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100003 + epoch)


def epoch_windows(n_rows: int, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The epoch's order as windows: (chunk ids, permutation of the window's rows) each, in order.

    The window's rows are the chunks' rows concatenated in the given chunk order; the permutation indexes them.
    ``epoch_order`` is these windows flattened to row numbers. Only for n_rows > CHUNK * WINDOW.
    """
    g = _generator(seed, epoch)
    n_chunks = -(-n_rows // CHUNK)
    chunks = torch.randperm(n_chunks, generator=g).numpy()
    for w in range(0, n_chunks, WINDOW):
        ids = chunks[w:w + WINDOW]
        n_win = int(sum(min(CHUNK, n_rows - c * CHUNK) for c in ids))
        yield ids, torch.randperm(n_win, generator=g).numpy()


def _window_rows(ids: np.ndarray, n_rows: int) -> np.ndarray:
    return np.concatenate([np.arange(c * CHUNK, min((c + 1) * CHUNK, n_rows)) for c in ids])


def epoch_order(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the train rows used in ``epoch`` (the same on every rank, on resume, and whether the
    rows are in memory or streamed)."""
    if n_rows <= CHUNK * WINDOW:
        return torch.randperm(n_rows, generator=_generator(seed, epoch))
    parts = [_window_rows(ids, n_rows)[perm] for ids, perm in epoch_windows(n_rows, seed, epoch)]
    return torch.from_numpy(np.concatenate(parts))


def steps_in_epoch(n_rows: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of one row is dropped (it breaks BatchNorm's batch statistics)."""
    steps = -(-n_rows // batch_size)
    if n_rows % batch_size == 1 and steps > 1:
        steps -= 1
    return steps


class _Batches:
    """What every batches class sets up alike: the labels as a tensor, the (global) batch size, the steps of an
    epoch, and this rank's place among ``world`` ranks."""

    def __init__(self, n_rows: int, y: torch.Tensor, batch_size: int, seed: int, device: torch.device,
                 regression: bool, rank: int, world: int) -> None:
        self.y = y.view(-1, 1) if regression else y
        self.n_rows = n_rows
        self.batch_size = min(batch_size, n_rows)
        self.steps_per_epoch = steps_in_epoch(n_rows, self.batch_size)
        self.seed, self.device, self.rank, self.world = seed, device, rank, world


class InMemoryBatches(_Batches):
    """The whole train split as two tensors on the device; batches are index slices (no DataLoader cost).

    ``batch_size`` is the global batch: with ``world`` ranks, rank ``r`` takes the rows at positions
    r, r + world, ... of each global batch, so the ranks' batches together are exactly the batch a single
    process would take and a recipe means the same at any world size.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, seed: int, device: torch.device,
                 regression: bool, rank: int = 0, world: int = 1) -> None:
        self.X = torch.from_numpy(X).to(device)
        super().__init__(len(self.X), torch.from_numpy(y).to(device), batch_size, seed, device, regression, rank,
                         world)

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


class RowSource(Protocol):
    """Rows on disk (data/streaming.py's RowCache): ``len``, and ``read(start, stop)`` -> float32 array copy."""

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...


class StreamingBatches(_Batches):
    """The train split read from a row source one window at a time, in the same order as InMemoryBatches.

    Memory: one window of rows (CHUNK * WINDOW) plus the labels and the epoch's order (8 bytes a row). Each
    window is read as WINDOW contiguous runs of CHUNK rows. With ``world`` ranks each rank reads the whole
    window and keeps its positions r::world of each global batch: every rank reads every train row once an
    epoch (contiguous reads beat a seek per row), and holds only one window.
    """

    def __init__(self, X: RowSource, y: np.ndarray, batch_size: int, seed: int, device: torch.device,
                 regression: bool, rank: int = 0, world: int = 1) -> None:
        self.X = X
        super().__init__(len(X), torch.from_numpy(y), batch_size, seed, device, regression, rank, world)

    def _windows(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, their row numbers) per window, in the epoch's order."""
        n = self.n_rows
        if n <= CHUNK * WINDOW:  # one randperm: the whole split is one window
            order = epoch_order(n, self.seed, epoch).numpy()
            yield self.X.read(0, n)[order], order
            return
        for ids, perm in epoch_windows(n, self.seed, epoch):
            block = np.concatenate([self.X.read(c * CHUNK, min((c + 1) * CHUNK, n)) for c in ids])
            yield block[perm], _window_rows(ids, n)[perm]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs, left = self.batch_size, self.steps_per_epoch
        pend_x: list[np.ndarray] = []
        pend_i: list[np.ndarray] = []
        have = 0
        for x, idx in self._windows(epoch):
            pend_x.append(x)
            pend_i.append(idx)
            have += len(idx)
            while have >= bs and left > 0:
                xb, ib = _take(pend_x, pend_i, bs)
                have -= bs
                left -= 1
                yield self._batch(xb, ib)
        if left > 0 and have:  # the last, shorter batch
            xb, ib = _take(pend_x, pend_i, have)
            yield self._batch(xb, ib)

    def _batch(self, xb: np.ndarray, ib: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world > 1:
            xb, ib = xb[self.rank::self.world], ib[self.rank::self.world]
        x = torch.from_numpy(np.ascontiguousarray(xb))
        return x.to(self.device), self.y[torch.from_numpy(ib)].to(self.device)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("streaming batches do not serve DP-SGD's Poisson samples")


def _take(xs: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` pending rows (across window boundaries), removed from the pending lists."""
    out_x, out_i, need = [], [], k
    while need:
        x, i = xs[0], ids[0]
        if len(i) <= need:
            out_x.append(x)
            out_i.append(i)
            need -= len(i)
            xs.pop(0)
            ids.pop(0)
        else:
            out_x.append(x[:need])
            out_i.append(i[:need])
            xs[0], ids[0] = x[need:], i[need:]
            need = 0
    if len(out_x) == 1:
        return out_x[0], out_i[0]
    return np.concatenate(out_x), np.concatenate(out_i)


def batches_for(X: Any, y: np.ndarray, batch_size: int, seed: int, device: torch.device, regression: bool,
                rank: int = 0, world: int = 1, workers: int = 0) -> Any:
    """InMemoryBatches for an array, StreamingBatches for a row source on disk, ImageBatches for image files
    decoded on the fly by ``workers`` DataLoader processes."""
    if isinstance(X, np.ndarray):
        return InMemoryBatches(X, y, batch_size, seed, device, regression, rank=rank, world=world)
    if hasattr(X, "decode"):
        from trainfer.training.image_batches import ImageBatches

        return ImageBatches(X, y, batch_size, seed, device, regression, rank=rank, world=world, workers=workers)
    return StreamingBatches(X, y, batch_size, seed, device, regression, rank=rank, world=world)
