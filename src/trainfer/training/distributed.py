"""Training on several processes (torch.distributed, started by torchrun): what the loop needs from it.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``session()`` sees them and starts a process group
(gloo on CPU, nccl on CUDA with device ``cuda:LOCAL_RANK``). The loop then wraps its model in
DistributedDataParallel, takes its rank's rows of every global batch (training/batches.py), and all-reduces
its epoch figures so that metrics are global. Rank 0 alone writes the run directory.

Every collective has a timeout (``train.dist_timeout_s``, default 300 s): a rank that stops answering
fails the others after that long. A rank that dies fails them at once (its sockets close). The
shutdown order matters: without dropping the DDP module and collecting before the process group is
destroyed, a quarter to a half of 2-process gloo runs aborted at exit (SIGABRT) after training finished.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainfer.errors import ConfigError, RunError

if TYPE_CHECKING:
    from trainfer.config import Recipe

REPRODUCIBILITY = ("results are reproducible (bit for bit) for a fixed world size and threads per process; "
                   "another world size or thread count sums gradients in another order and gives other weights")


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run."""

    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device
    timeout_s: float

    @property
    def writer(self) -> bool:
        """Rank 0 writes the run directory; the others only train."""
        return self.rank == 0


_current: Dist | None = None


def current() -> Dist | None:
    """The running session's Dist, or None for a single-process run."""
    return _current


def env_rank() -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from torchrun's environment, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (got RANK={os.environ.get('RANK')!r}, "
                          f"WORLD_SIZE={os.environ['WORLD_SIZE']!r})", hint="start ranks with torchrun") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK={rank} does not fit WORLD_SIZE={world}", hint="start ranks with torchrun")
    return rank, world, local


def is_writer() -> bool:
    """True unless this process is a rank other than 0 of a multi-process run (checked from the environment,
    so it holds before the process group exists)."""
    found = env_rank()
    return found is None or found[0] == 0


@contextlib.contextmanager
def session(recipe: Recipe) -> Iterator[Dist | None]:
    """Start the process group when torchrun started several ranks (yields None otherwise), and shut it down
    cleanly on success and on error. Collective failures (a peer died) become one RunError naming this rank."""
    global _current
    found = env_rank()
    if found is None or found[1] == 1:
        yield None
        return
    rank, world, local = found
    cfg = recipe.train
    if recipe.privacy is not None:
        raise ConfigError("DP-SGD (privacy:) does not run on several processes yet (Opacus's DPDDP is not wired in)",
                          hint="train a private model with one process (drop --nproc / torchrun)")
    use_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if cfg.device == "cuda" and not use_cuda:
        raise RunError("train.device=cuda but no CUDA device is available", hint="use train.device=auto")
    if cfg.sync_bn and not use_cuda:
        raise ConfigError("train.sync_bn needs CUDA: torch's SyncBatchNorm runs on GPUs only",
                          hint="on CPU, drop train.sync_bn (each rank normalizes its own rows) or set "
                               "model.batchnorm=false")
    if use_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    import torch.distributed as dist

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.dist_timeout_s))
    _current = Dist(rank, world, local, backend, device, cfg.dist_timeout_s)
    try:
        # Every rank has checked --out before any rank writes there (rank 0 creates it once the loop starts).
        barrier()
        yield _current
    except RuntimeError as exc:
        if not _is_collective_error(exc):
            raise
        raise RunError(f"rank {rank} lost contact with the other ranks: {_first_line(exc)}",
                       hint="another rank failed or stopped answering (see its error)") from None
    finally:
        _current = None
        gc.collect()  # the loop dropped its DDP module; its reducer must be gone before the group is
        dist.destroy_process_group()


def _is_collective_error(exc: BaseException) -> bool:
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or any(k in text for k in ("gloo", "NCCL", "Connection", "timed out"))


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def wrap(model: nn.Module, d: Dist, sync_bn: bool) -> nn.Module:
    """The model as DDP sees it; the loop keeps the plain module for checkpoints, evaluation and export."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:  # replaces BatchNorm modules in place inside ``model``; state_dict keys stay the same
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [d.device.index] if d.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def seed_epoch(seed: int, epoch: int, d: Dist) -> None:
    """Each rank's random stream (dropout) as a function of (seed, epoch, rank): a resumed rank needs no
    RNG state of its own, and the ranks draw different masks for their different rows."""
    torch.manual_seed((seed * 1_000_003 + epoch) * 1009 + d.rank)


def batch_scale(local_rows: int, global_rows: int, d: Dist) -> float:
    """Factor on a rank's mean loss so that DDP's average over ranks is the global batch's mean (exactly 1.0
    when the ranks' shares are equal; the last batch of an epoch may split unevenly)."""
    return local_rows * d.world / global_rows


def global_rows(step: int, batch_size: int, n_rows: int) -> int:
    """Rows in global batch ``step`` (the batches' own rule: full batches, then the rest)."""
    return min(batch_size, n_rows - step * batch_size)


def reduce_epoch(losses: torch.Tensor, sizes: torch.Tensor, hits: torch.Tensor | None,
                 d: Dist | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """An epoch's per-step losses (each rank's scaled mean), per-step row counts and hit count summed over
    ranks in one all-reduce: the global per-step mean losses, global counts and global hits."""
    if d is None:
        return losses.double(), sizes, hits
    import torch.distributed as dist

    n = len(losses)
    parts = [losses.double(), sizes.double()] + ([hits.double().view(1)] if hits is not None else [])
    flat = torch.cat(parts)
    dist.all_reduce(flat)
    g_hits = flat[2 * n:].sum() if hits is not None else None
    return flat[:n] / d.world, flat[n:2 * n], g_hits


def broadcast_floats(values: list[float], d: Dist | None) -> list[float]:
    """Rank 0's values on every rank (decisions such as early stopping must be the same everywhere)."""
    if d is None:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.broadcast(t, src=0)
    return [float(v) for v in t.cpu()]


def barrier() -> None:
    """Wait for every rank (bounded by the process group's timeout)."""
    d = current()
    if d is None:
        return
    import torch.distributed as dist

    # An all-reduce, not dist.barrier(): on nccl barrier() guesses a device; this uses the rank's own.
    dist.all_reduce(torch.zeros(1, device=d.device))


def summary_fields(d: Dist | None, threads: int) -> dict[str, Any]:
    """What summary.json records about the processes that trained the run."""
    return {"world_size": d.world if d else 1, "threads_per_process": threads,
            "backend": d.backend if d else None, "reproducibility": REPRODUCIBILITY}
