"""The training loop, written out top to bottom: setup, data, model, optimizer, loop, finish.

Adapters that come later (tuning, privacy, distributed, federated) wrap these pieces; they do not
subclass a trainer.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from trainfer._atomic import write_json, write_pieces, write_text
from trainfer._energy import EnergyMeter
from trainfer._imports import require_extras
from trainfer.config import Recipe
from trainfer.data import Prepared, Split, prepare
from trainfer.data.split import split_json
from trainfer.errors import RunError
from trainfer.models import build_model, count_parameters
from trainfer.training import distributed
from trainfer.training.batches import batches_for
from trainfer.training.checkpoint import (
    CheckpointWriter,
    best_weights,
    load_checkpoint,
    restore,
    save_tensors,
    snapshot,
)
from trainfer.training.metrics import compute_metrics, monitor
from trainfer.training.optim import SGD, AdamW, set_deterministic
from trainfer.training.progress import Progress
from trainfer.training.schedule import lr_at

if TYPE_CHECKING:
    from trainfer.training.privacy import PrivateTraining


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RunError("train.device=cuda but no CUDA device is available", hint="use train.device=auto")
    return torch.device("cuda" if choice in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def predict_outputs(model: nn.Module, X: np.ndarray, device: torch.device, batch_size: int = 1024,
                    precision: str = "fp32") -> np.ndarray:
    """Raw model outputs (logits or standardized values) for a preprocessed array, in eval mode."""
    was_training = model.training
    model.eval()
    # One output array filled in place: a list of per-batch outputs left them scattered between freed batches,
    # which glibc kept resident (+250 MiB over a streamed split of a million rows, in eval batches of 8192)
    outs: np.ndarray | None = None
    for i in range(0, len(X), batch_size):
        xb = torch.from_numpy(X[i:i + batch_size]).to(device)
        with _autocast(device, precision):
            ob = model(xb).float().cpu().numpy()
        if outs is None:
            outs = np.empty((len(X), *ob.shape[1:]), dtype=np.float32)
        outs[i:i + len(ob)] = ob
    model.train(was_training)
    return outs if outs is not None else np.zeros((0, 1), dtype=np.float32)


def _autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def train_run(recipe: Recipe, out: Path, resume: bool = False, quiet: bool = True) -> Path:
    """Train ``recipe`` into the run directory ``out``; returns ``out``. See trainfer.training."""
    t_start = time.perf_counter()
    out = Path(out)
    if recipe.privacy is not None:
        require_extras("privacy")  # before any work: the data is not even read without Opacus
    # Under torchrun with several ranks: a process group for the whole run (training/distributed.py)
    with distributed.session(recipe) as dctx:
        # -- data: load, split, fit preprocessing on train only. Errors here leave no run dir behind.
        # Only rank 0 reads the run directory; the recorded split reaches the other ranks from it.
        recorded = _recorded_split(out) if resume and (dctx is None or dctx.writer) else None
        if dctx is not None and resume:
            arrays = distributed.share_arrays(vars(recorded) if recorded is not None else None)
            recorded = Split(**arrays) if arrays is not None else None
        data: Prepared = prepare(recipe.data, recipe.seed, recorded)
        try:
            # -- model: seeded, so the same seed builds the same initial weights
            torch.manual_seed(recipe.seed)
            model = build_model(recipe.model, data.features.input_shape, data.features.n_outputs)
            fit(model, data, recipe, out, resume=resume, quiet=quiet, t_start=t_start)
        finally:
            data.close()  # a streamed run's row caches (data/streaming.py)
    return out


EpochHook = Callable[[dict[str, Any]], "str | None"]


def fit(model: nn.Module, data: Prepared, recipe: Recipe, out: Path, *, resume: bool = False, quiet: bool = True,
        t_start: float | None = None, on_epoch: EpochHook | None = None,
        splits: Sequence[str] = ("train", "val", "test")) -> dict[str, Any]:
    """The loop itself, on a built model and prepared data; writes the run dir and returns the summary.

    Used by train_run, and by anything that needs to train an existing model (e.g. fine-tuning a
    pruned network) with the same loop, checkpoints and metrics.

    Adapters hook in without subclassing: ``on_epoch(record)`` sees each epoch's metrics once its
    checkpoint is queued; returning a reason (e.g. "pruned by the tuner") stops training there as early
    stopping does, and summary.json records it as ``stopped_by``. ``splits`` are the splits scored in
    summary.json: a tuner leaves out "test", which is then never read.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    cfg = recipe.train
    features = data.features
    task = features.task
    t_data = time.perf_counter() - t_start
    dctx = distributed.current()  # None: one process; else this rank's place (rank 0 alone writes)
    writes = dctx is None or dctx.writer
    device = dctx.device if dctx is not None else pick_device(cfg.device)
    privacy = recipe.privacy
    changes: list[str] = []
    if privacy is not None:  # before the optimizer sees the parameters: BatchNorm becomes GroupNorm
        require_extras("privacy")
        from trainfer.training.privacy import conversion_line, prepare_model

        model, changes = prepare_model(model)
        if not quiet and (line := conversion_line(changes)):
            print(line, file=sys.stderr, flush=True)
    model = model.to(device)
    n_params = count_parameters(model)

    # -- optimizer. Weight decay only on weights that multiply inputs, not on biases or BN (nanoGPT).
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = AdamW(groups, lr=cfg.lr)
    else:
        opt = SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if task == "classification":
        loss_fn: nn.Module = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    else:
        loss_fn = nn.MSELoss()

    # -- the train split as batches (training/batches.py): in memory, tensors on the device once and index slices
    # per step; streamed, windows read from the row cache on disk in the same order. With several ranks: this
    # rank's rows of each global batch of cfg.batch_size.
    if privacy is not None and data.streamed:
        raise RunError("differentially private training (privacy:) needs the data in memory: its Poisson batches "
                       "draw rows at random", hint="set data.streaming=false (or remove privacy:)")
    if cfg.workers and not hasattr(data.X["train"], "decode"):  # only streamed image folders decode in workers
        print(f"warning: train.workers={cfg.workers} is not used: worker processes decode streamed image folders, "
              f"and this run's rows are {'a streamed table' if data.streamed else 'in memory'}",
              file=sys.stderr, flush=True)
    train = batches_for(data.X["train"], data.y["train"], cfg.batch_size, recipe.seed, device,
                        regression=task == "regression", workers=cfg.workers,
                        **({"rank": dctx.rank, "world": dctx.world} if dctx is not None else {}))
    n_train, bs, steps_per_epoch = train.n_rows, train.batch_size, train.steps_per_epoch
    total_steps = steps_per_epoch * cfg.epochs
    metric_name, mode = monitor(task)

    # -- state: fresh, or the last complete checkpoint
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "history": [],
                             "elapsed_s": 0.0, "cpu_s": 0.0, "energy_j": 0.0, "energy_method": None}
    ckpt = load_checkpoint(ckpt_dir) if resume and writes else None
    if resume and dctx is not None:  # rank 0's checkpoint: the other ranks may not share its disk
        ckpt = distributed.share_checkpoint(ckpt)
    # -- DP-SGD: Poisson batches, per-example clipping and noise, an accountant (training/privacy.py). Set up
    # before the run dir is written: a target ε that cannot be met is refused with nothing on disk.
    dp: PrivateTraining | None = None
    step_opt = opt  # what the loop steps; `opt` stays the plain optimizer that checkpoints save
    if privacy is not None:
        from trainfer.training.privacy import PrivateTraining

        dp = PrivateTraining(privacy, model, opt, n_train, bs, cfg.epochs, device, changes,
                             *((ckpt[0].get("privacy"), ckpt[1]) if ckpt is not None else ()))
        step_opt, loss_fn, steps_per_epoch = dp.optimizer, dp.loss(loss_fn), dp.steps_per_epoch
        total_steps = steps_per_epoch * cfg.epochs
    # Held nothing before this call: removed again if the run diverges before its first checkpoint.
    fresh_dir = writes and ckpt is None and (not out.exists() or not any(out.iterdir()))
    existed = writes and out.exists()  # an empty folder the user made stays (emptied), as the disk-error clean-up does
    if ckpt is not None:
        state, tensors = ckpt
        restore(model, opt, state, tensors)
    elif writes:
        _start_run_dir(out, recipe, data, resume)
    # what the steps run: the model itself, or its DDP wrapper (gradients averaged over ranks in backward)
    net = distributed.wrap(model, dctx, cfg.sync_bn) if dctx is not None else model

    prev_det, prev_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    set_deterministic(True)
    # Deterministic kernels, but no NaN-filling of every new tensor (its default): that cost ~2% per step
    # and only guards reads of uninitialized memory, which the loop never does.
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    progress = Progress(cfg.epochs, steps_per_epoch, enabled=not quiet)
    writer = CheckpointWriter(ckpt_dir)
    best_model: dict[str, torch.Tensor] | None = None  # the best epoch's weights this call, as checkpointed
    t_loop = time.perf_counter()
    try:
        with progress, dp if dp is not None else nullcontext():
            progress.advance_to(state["epoch"])
            for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
                if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                    break
                t0 = time.perf_counter()
                meter = EnergyMeter(device.type).start()
                if dctx is not None:
                    distributed.seed_epoch(recipe.seed, epoch, dctx)
                model.train()
                # The order of an epoch depends only on (seed, epoch): resuming needs no sampler state. Under DP
                # the batches are Poisson samples, their generator's state in the checkpoint.
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = \
                    train.epoch(epoch) if dp is None else (train.rows(idx) for idx in dp.batches(device))
                # Per-step results stay on the device and are read once an epoch: no host sync per step.
                step_losses: list[torch.Tensor] = []
                # Per step a count of hits and a batch length, not the batch's labels and predictions: a streamed
                # epoch of millions of rows kept ~100 MB of them to the end of the epoch.
                step_hits: list[torch.Tensor] = []
                step_lens: list[int] = []
                for i, (xb, yb) in enumerate(batches):
                    step = (epoch - 1) * steps_per_epoch + i
                    lr = lr_at(step, total_steps, cfg.lr, cfg.schedule, cfg.warmup_fraction)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    with _autocast(device, cfg.precision):
                        out_b = net(xb)
                        loss = loss_fn(out_b.float(), yb)
                    if dctx is not None:  # DDP averages over ranks: scaled so the average is the global batch's mean
                        g_rows = distributed.global_rows(i, bs, n_train)
                        loss = loss * distributed.batch_scale(len(yb), g_rows, dctx) if len(yb) else out_b.sum() * 0.0
                    step_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None and dp is None:  # DP clips each example's gradient instead
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    try:
                        step_opt.step()
                    except RuntimeError as exc:  # lr / bias correction beyond float32: torch refuses the step
                        if "overflow" not in str(exc):
                            raise
                        raise _diverged(cfg, epoch, i, steps_per_epoch, "the optimizer's update overflowed float32") \
                            from None
                    step_losses.append(loss.detach())
                    step_lens.append(len(yb))
                    if task == "classification":
                        step_hits.append((out_b.argmax(1) == yb).sum())  # integer output: no autograd
                    progress.step()
                # Each step's loss is its batch's mean: weighted by batch size, the epoch's mean per sample.
                # With several ranks, summed over them in one all-reduce: the metrics are the global ones.
                hits = torch.stack(step_hits).sum() if task == "classification" else None
                sizes = torch.tensor(step_lens, dtype=torch.float64, device=device)
                losses, sizes, hits = distributed.reduce_epoch(torch.stack(step_losses), sizes, hits, dctx)
                bad = _first_non_finite(losses)
                if bad is not None:
                    raise _diverged(cfg, epoch, bad, steps_per_epoch, f"the loss became {float(losses[bad])}")
                train_s = time.perf_counter() - t0

                with np.errstate(invalid="ignore", over="ignore"):  # NaN outputs: checked just below
                    val = compute_metrics(predict_outputs(model, data.X["val"], device, cfg.eval_batch_size,
                                                          cfg.precision), data.y["val"], features.target)
                # every rank scores the whole val split; rank 0's figures decide (early stopping) everywhere
                if dctx is not None:
                    val = dict(zip(val, distributed.broadcast_floats([float(v) for v in val.values()], dctx),
                                   strict=True))
                if not np.isfinite(val["loss"]):
                    # Every step's loss was finite, so the last step's update broke the weights.
                    raise _diverged(cfg, epoch, steps_per_epoch - 1, steps_per_epoch,
                                    f"the validation loss became {val['loss']} after the update")
                seen = max(int(sizes.sum()), 1)
                record = {"epoch": epoch, "train_loss": float(losses @ sizes) / seen,
                          "train_loss_steps": _loss_curve(losses, sizes)}
                if hits is not None:
                    record["train_accuracy"] = int(hits) / seen
                record.update({f"val_{k}": v for k, v in val.items()})
                if dp is not None:  # ε spent so far; summary.json has the final (ε, δ) and how it was reached
                    record["epsilon"] = dp.epsilon()
                    state["privacy"] = dp.checkpoint_state()
                record.update(lr=lr, samples_per_s=seen / train_s, train_s=train_s,
                              epoch_s=time.perf_counter() - t0)

                score = val[metric_name]
                improved = _improved(score, val["loss"], state, mode, cfg.min_delta)
                if improved:
                    state.update(best=score, best_loss=val["loss"], best_epoch=epoch, bad_epochs=0)
                else:
                    state["bad_epochs"] += 1
                state["history"].append(record)
                state["elapsed_s"] += time.perf_counter() - t0
                meter.stop()
                state["cpu_s"] += meter.cpu_s
                state["energy_j"] += meter.joules
                state["energy_method"] = meter.method
                # Rewritten whole from the checkpointed history (after state.json), so it never holds an
                # epoch twice; written while the next epoch trains.
                if writes:
                    metrics = "".join(json.dumps(r) + "\n" for r in state["history"])
                    snap = snapshot(epoch, model, opt, state, improved, {str(out / "metrics.jsonl"): metrics},
                                    dp.checkpoint_tensors() if dp is not None else None)
                    if improved:
                        best_model = {k[len("model."):]: v for k, v in snap["tensors"].items()
                                      if k.startswith("model.")}
                    writer.save(snap)
                progress.epoch_done(epoch, f"val {metric_name} {score:.4f}")
                if on_epoch is not None and (reason := on_epoch(record)):
                    state["stopped_by"] = reason
                    break
    except BaseException as exc:
        writer.close()  # the last checkpoint is whole before an error or Ctrl-C goes up
        if writes and isinstance(exc, RunError) and fresh_dir and not (ckpt_dir / "state.json").is_file():
            # diverged before any good epoch: nothing worth keeping
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            for child in (out.iterdir() if existed else ()):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    finally:
        net = model  # the DDP wrapper goes before the process group does (distributed.session)
        set_deterministic(prev_det, warn_only=prev_warn)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
        torch.set_num_threads(prev_threads)  # API callers get their process settings back
        if dp is not None:
            dp.close()
    t_loop = time.perf_counter() - t_loop

    # -- finish: the best epoch's weights become the model; summary.json last marks the run complete.
    # The last checkpoint is still being written meanwhile; the best weights come from memory unless the
    # best epoch was checkpointed before a resume.
    if not writes:  # rank 0 writes the run; the others wait for it (then `train` can load the finished run)
        writer.close()
        distributed.barrier()
        return {}
    try:
        best = best_model if best_model is not None else best_weights(ckpt_dir, state)
        model.load_state_dict(best)
        save_tensors(out / "model.safetensors", best, meta={"format": "trainfer-model", "params": str(n_params)})
        summary = _summary(model, data, device, cfg, state, n_params, threads, splits,
                           {"data_s": t_data, "train_loop_s": t_loop, "train_total_s": state["elapsed_s"],
                            "train_cpu_s": state["cpu_s"],
                            "total_s": time.perf_counter() - t_start})
        if dp is not None:
            summary["privacy"] = dp.summary()
        summary["processes"] = distributed.summary_fields(dctx, threads)
        writer.wait()  # every checkpoint is on disk before the run is marked complete
        write_json(out / "summary.json", summary)
    finally:
        writer.close()
    distributed.barrier()
    return summary


def _loss_curve(losses: torch.Tensor, sizes: torch.Tensor, points: int = 32) -> list[float]:
    """The epoch's train loss curve: per step, or the row-weighted mean of each of ``points`` runs of
    consecutive steps when there are more steps (metrics.jsonl stays small on large data)."""
    chunks = torch.arange(len(losses), device=losses.device) * min(points, len(losses)) // max(len(losses), 1)
    n = int(chunks[-1]) + 1 if len(losses) else 0
    weighted = torch.zeros(n, dtype=torch.float64, device=losses.device).index_add_(0, chunks, losses * sizes)
    rows = torch.zeros(n, dtype=torch.float64, device=losses.device).index_add_(0, chunks, sizes)
    return [float(v) for v in (weighted / rows.clamp(min=1)).cpu()]


def _first_non_finite(losses: torch.Tensor) -> int | None:
    """Index of the first NaN/inf among an epoch's step losses, or None (the epoch's one host sync)."""
    bad = ~torch.isfinite(losses)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def _diverged(cfg: Any, epoch: int, step: int, steps_per_epoch: int, what: str) -> RunError:
    """The error that stops a diverged run before its epoch is checkpointed (the last good one stays last)."""
    clip = f"lower train.grad_clip (now {cfg.grad_clip:g})" if cfg.grad_clip is not None else \
        "enable clipping with train.grad_clip=1.0"
    kept = f"the checkpoint of epoch {epoch - 1} is kept (--resume continues from it as recorded)" if epoch > 1 \
        else "nothing was kept"
    return RunError(f"training diverged: {what} at epoch {epoch}, step {step + 1} of {steps_per_epoch}",
                    hint=f"lower train.lr (now {cfg.lr:g}) or {clip}, and train again; {kept}")


def _improved(score: float, loss: float, state: dict[str, Any], mode: str, min_delta: float) -> bool:
    """Better on the monitored metric; on a tie (accuracy saturates on small validation sets), lower loss."""
    best = state["best"]
    if best is None:
        return True
    better = score > best + min_delta if mode == "max" else score < best - min_delta
    return better or (score == best and loss < state.get("best_loss", float("inf")))


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (data, model, optimizer, activations)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _start_run_dir(out: Path, recipe: Recipe, data: Prepared, resume: bool) -> None:
    if out.exists() and any(out.iterdir()) and not resume:
        raise RunError(f"run directory {out} already exists and is not empty",
                       hint="pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "recipe.yaml", recipe.to_yaml())
    data.features.save(out / "features.json")
    write_pieces(out / "split.json", split_json(recipe.seed, data.dataset.fingerprint(), data.split))


def _recorded_split(out: Path) -> Split | None:
    path = out / "split.json"
    return Split.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _summary(model: nn.Module, data: Prepared, device: torch.device, cfg: Any, state: dict[str, Any],
             n_params: int, threads: int, names: Sequence[str], timings: dict[str, float]) -> dict[str, Any]:
    target = data.features.target
    splits = {name: compute_metrics(predict_outputs(model, data.X[name], device, cfg.eval_batch_size, cfg.precision),
                                    data.y[name], target) for name in names}
    metric_name, _ = monitor(target.task)
    gap = splits["train"][metric_name] - splits["val"][metric_name]
    if target.task == "regression":
        gap = -gap  # for rmse, validation worse than train means a positive gap
    points = 100 * gap if target.task == "classification" else gap
    unit = "points" if target.task == "classification" else f"{metric_name}"
    history = state["history"]
    epochs_run = history[-1]["epoch"] if history else 0
    return {
        "task": target.task,
        **splits,
        "monitor": f"val_{metric_name}",
        "best_epoch": state["best_epoch"],
        "epochs_run": epochs_run,
        "epochs_max": cfg.epochs,
        "stopped_early": epochs_run < cfg.epochs,
        "stopped_by": state.get("stopped_by") or ("early stopping" if epochs_run < cfg.epochs else None),
        "overfitting": {
            "train_minus_val": gap,
            "line": f"train {metric_name} {splits['train'][metric_name]:.4f} vs val "
                    f"{splits['val'][metric_name]:.4f}: gap {points:+.2f} {unit}"
                    + (" (overfitting)" if (target.task == "classification" and points > 5) else ""),
        },
        "energy": {"joules": state.get("energy_j", 0.0), "method": state.get("energy_method"),
                   "assumption": EnergyMeter().assumption if state.get("energy_method") == "estimated" else None,
                   "scope": "training epochs (train steps, validation, checkpoints)"},
        "peak_rss_mb": _peak_rss_mb(),
        "params": n_params,
        "samples": {k: len(v) for k, v in data.y.items()},
        "samples_per_s": float(np.median([r["samples_per_s"] for r in history])) if history else 0.0,
        "timings": timings,
        "device": device.type,
        "threads": threads,
        "data": {"source": data.dataset.name, "fingerprint": data.dataset.fingerprint(), "streamed": data.streamed},
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }
