"""Training on several processes (torch.distributed, started by torchrun): what the loop needs from it.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``session()`` sees them and starts a process group
(gloo for CPU tensors; where there is a GPU also nccl for CUDA tensors, on device ``cuda:LOCAL_RANK``). The
loop then wraps its model in DistributedDataParallel, takes its rank's rows of every global batch
(training/batches.py), and all-reduces its epoch figures so that metrics are global.
Rank 0 alone writes the run directory.

Ranks other than 0 never read or write the run directory (on several machines each has its own disk): rank 0
resolves the recipe (on ``--resume``, the one recorded in the run), reads the recorded split and the checkpoint, and
sends them to the others in tensor broadcasts: JSON text as uint8 tensors and tensors as their raw bytes, in a
fixed order (no pickle, unlike ``broadcast_object_list``).

Every collective has a timeout (``train.dist_timeout_s``, default 300 s): a rank that stops answering
fails the others after that long. A rank that dies fails them at once (its sockets close). The
shutdown order matters: without dropping the DDP module and collecting before the process group is
destroyed, a quarter to a half of 2-process gloo runs aborted at exit (SIGABRT) after training finished.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import sys
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
    recipe: Recipe | None = None  # rank 0's recipe: the same on every rank


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
        if stray := [k for k in ("RANK", "LOCAL_RANK") if k in os.environ]:
            # half a launcher's environment: running alone would write a run that was meant to be shared
            raise ConfigError(f"{'/'.join(stray)} is set but WORLD_SIZE is not: this process cannot tell how many "
                              "ranks the run has", hint="start ranks with torchrun (it sets RANK, WORLD_SIZE and "
                              f"LOCAL_RANK), or unset {' and '.join(stray)} to train in one process")
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


def several_machines() -> bool:
    """True when torchrun started ranks on more than one machine (LOCAL_WORLD_SIZE < WORLD_SIZE)."""
    found = env_rank()
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    except ValueError:
        return False
    return found is not None and 0 < local < found[1]


def is_writer() -> bool:
    """True unless this process is a rank other than 0 of a multi-process run (checked from the environment,
    so it holds before the process group exists)."""
    found = env_rank()
    return found is None or found[0] == 0


@contextlib.contextmanager
def session(recipe: Recipe | None) -> Iterator[Dist | None]:
    """Start the process group when torchrun started several ranks (yields None otherwise), and shut it down
    cleanly on success and on error. Collective failures (a peer died) become one RunError naming this rank.

    ``recipe`` is this rank's own; rank 0's is sent to every rank (``Dist.recipe``). A rank other than 0 passes
    None when it has none (``--resume``: the recipe is recorded in rank 0's run directory); one that passes its
    own must have rank 0's. Entered again inside a session, it yields that session."""
    global _current
    if _current is not None:
        yield _current
        return
    found = env_rank()
    if found is None or found[1] == 1:
        yield None
        return
    rank, world, local = found
    if rank == 0 and recipe is None:
        raise ValueError("rank 0 needs its recipe")
    if missing := [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]:
        raise ConfigError(f"WORLD_SIZE={world} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                          "not set: the ranks cannot find each other",
                          hint="start ranks with torchrun (it sets MASTER_ADDR and MASTER_PORT)")
    _pdeathsig()
    # The backend cannot wait for the recipe (a resumed rank other than 0 learns it from rank 0): gloo for CPU
    # tensors always (the recipe and checkpoint travel there), nccl for CUDA tensors where there is a GPU.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    timeout_s = recipe.train.dist_timeout_s if recipe is not None else _default_timeout()
    import torch.distributed as dist

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        agreed = _agree(recipe, rank)
        cfg = agreed.train
        if agreed.privacy is not None:
            raise ConfigError("DP-SGD (privacy:) does not run on several processes yet (Opacus's DPDDP is not "
                              "wired in)", hint="train a private model with one process (drop --nproc / torchrun)")
        use_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
        if cfg.device == "cuda" and not use_cuda:
            raise RunError("train.device=cuda but no CUDA device is available", hint="use train.device=auto")
        if cfg.sync_bn and not use_cuda:
            raise ConfigError("train.sync_bn needs CUDA: torch's SyncBatchNorm runs on GPUs only",
                              hint="on CPU, drop train.sync_bn (each rank normalizes its own rows) or set "
                                   "model.batchnorm=false")
        if use_cuda:
            if local >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA "
                                  "device(s): one process per GPU", hint="start at most one rank per GPU on each "
                                  "machine (--nproc-per-node), or set CUDA_VISIBLE_DEVICES")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        _current = Dist(rank, world, local, "nccl" if use_cuda else "gloo", device, timeout_s, agreed)
        # Every rank has checked its part before any rank writes (rank 0 creates the run directory once the loop
        # starts).
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


def _default_timeout() -> float:
    from trainfer.config import TrainConfig

    return float(TrainConfig.model_fields["dist_timeout_s"].default)


def _agree(recipe: Recipe | None, rank: int) -> Recipe:
    """Rank 0's recipe on every rank; a rank whose own recipe differs is refused (its command line differs)."""
    from trainfer.config import build_recipe

    mine = recipe.model_dump(mode="json") if recipe is not None else None
    theirs = share_json(mine if rank == 0 else None)
    if rank != 0 and mine is not None and mine != theirs:
        both = [sec for sec, v in theirs.items() if isinstance(v, dict) and isinstance(mine.get(sec), dict)]
        diff = [f"{sec}.{k}" for sec in both for k in theirs[sec] if mine[sec].get(k) != theirs[sec][k]]
        diff += [sec for sec in theirs if sec not in both and mine.get(sec) != theirs[sec]]
        raise ConfigError(f"rank {rank} was given another recipe than rank 0 (differs in: {', '.join(diff)})",
                          hint="give every node the same recipe and options")
    return recipe if rank == 0 and recipe is not None else build_recipe(theirs)


def _pdeathsig() -> None:
    """On Linux under torchrun, this rank gets SIGTERM if its parent (torchrun's agent) dies: killed with SIGKILL,
    the agent cannot stop its ranks, which would train on as orphans. SIGTERM ends a rank as Ctrl-C does."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return  # only under torchrun: a rank started by a script that exits must not die with the script
    import ctypes
    import signal

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def share_json(value: Any) -> Any:
    """Rank 0's JSON value on every rank, as UTF-8 bytes in a uint8 tensor (its length first)."""
    import torch.distributed as dist

    data = json.dumps(value).encode() if dist.get_rank() == 0 else b""
    n = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(n, src=0)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(int(n), dtype=torch.uint8)
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.numpy()).decode())


def share_tensors(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rank 0's named tensors on every rank (CPU): names, dtypes and shapes as JSON, then every tensor's bytes
    in one uint8 broadcast, in name order."""
    import torch.distributed as dist

    sender = dist.get_rank() == 0
    items = sorted((tensors or {}).items()) if sender else []
    manifest = share_json([[k, str(t.dtype).removeprefix("torch."), list(t.shape)] for k, t in items]
                          if sender else None)
    dtypes = [getattr(torch, d) for _, d, _ in manifest]
    sizes = [int(torch.Size(shape).numel()) * dt.itemsize for (_, _, shape), dt in zip(manifest, dtypes, strict=True)]
    if sender:
        flat = torch.cat([t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for _, t in items]) \
            if items else torch.empty(0, dtype=torch.uint8)
    else:
        flat = torch.empty(sum(sizes), dtype=torch.uint8)
    if len(flat):
        dist.broadcast(flat, src=0)
    if sender:
        return dict(items)
    out, at = {}, 0
    for (name, _, shape), dt, size in zip(manifest, dtypes, sizes, strict=True):
        out[name] = flat[at:at + size].clone().view(dt).reshape(shape)
        at += size
    return out


def share_checkpoint(ckpt: tuple[dict[str, Any], dict[str, torch.Tensor]] | None
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Rank 0's last checkpoint (state, tensors), or its None, on every rank: only rank 0 reads the run."""
    state = share_json(ckpt[0] if ckpt is not None else None)
    if state is None:
        return None
    return state, share_tensors(ckpt[1] if ckpt is not None else None)


def share_arrays(arrays: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rank 0's dict of numpy arrays (a recorded split), or its None, on every rank."""
    if not share_json(arrays is not None):
        return None
    got = share_tensors({k: torch.from_numpy(v) for k, v in arrays.items()} if arrays is not None else None)
    return {k: v.numpy() for k, v in got.items()}


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
