"""Checkpoints: tensors in safetensors, everything else in JSON, each file written atomically.

``state.json`` is written last and names the tensor files it belongs to, so a crash at any point
leaves either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainfer._atomic import write_json, write_text, write_with
from trainfer.errors import RunError


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_with(path, lambda tmp: save_file(cpu, str(tmp), metadata=meta))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise RunError(f"{path} is missing") from None
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise RunError(f"{path} is unreadable ({exc}); the run is damaged") from None


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and plain values (for JSON)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        entry = {}
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                entry[name] = value
        plain["state"][str(idx)] = entry
    return tensors, plain


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def save_checkpoint(ckpt_dir: Path, epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    state: dict[str, Any], improved: bool) -> None:
    """Write epoch ``epoch``'s checkpoint. When it is the new best, its file is also the best weights'
    (kept until a better epoch comes): one write and one fsync per epoch, not two."""
    write_snapshot(ckpt_dir, snapshot(epoch, model, opt, state, improved))


def snapshot(epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
             improved: bool, extra: dict[str, str] | None = None,
             more_tensors: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Everything a checkpoint holds, copied now (training may go on while it is written); updates ``state``
    with the file names. ``extra``: more text files to write after state.json (name -> content);
    ``more_tensors``: an adapter's own state (e.g. DP-SGD's sampler and noise generators), saved beside."""
    opt_tensors, opt_plain = optimizer_to_flat(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors.update(more_tensors or {})
    # Copies: the optimizer and the model update their tensors in place during the next epoch.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    last_file = f"epoch-{epoch:04d}.safetensors"
    if improved:
        state["best_file"] = last_file
    state.update(epoch=epoch, last_file=last_file, optimizer=opt_plain)
    return {"tensors": tensors, "last_file": last_file, "best_file": state.get("best_file"),
            "state": json.loads(json.dumps(state, default=_plain)), "extra": dict(extra or {})}


def write_snapshot(ckpt_dir: Path, snap: dict[str, Any]) -> None:
    """Tensors first, then state.json naming them (a crash in between leaves the previous checkpoint whole),
    then the extra files, then stale files go."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(ckpt_dir / snap["last_file"], snap["tensors"])
    # A DP run's state holds the secret its noise was drawn from: only the owner may read it.
    secret = "noise_seed" in (snap["state"].get("privacy") or {})
    write_json(ckpt_dir / "state.json", snap["state"], mode=0o600 if secret else None)
    for path, text in snap["extra"].items():
        write_text(path, text)
    keep = {snap["last_file"], snap["best_file"], "state.json"}
    for stale in ckpt_dir.iterdir():  # older epochs and abandoned temporaries
        if stale.name not in keep:
            stale.unlink(missing_ok=True)


class CheckpointWriter:
    """Writes each epoch's checkpoint in a background thread while the next epoch trains.

    Writing and fsyncing ~3 files an epoch took ~2% of a small model's loop. At most one write is in
    flight: the next ``save`` (and ``close``) waits for it, so a crash or Ctrl-C still leaves the last
    complete checkpoint, and a failed write raises in the loop one epoch later at the latest.
    """

    def __init__(self, ckpt_dir: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.ckpt_dir = ckpt_dir
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Any = None

    def save(self, snap: dict[str, Any]) -> None:
        self.wait()
        self._pending = self._pool.submit(write_snapshot, self.ckpt_dir, snap)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises the writer's error here

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars in metrics
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def load_checkpoint(ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The last complete checkpoint as (state, tensors), or None when there is none yet."""
    state_path = ckpt_dir / "state.json"
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text())
    except ValueError:
        raise RunError(f"{state_path} is unreadable; the run is damaged") from None
    return state, load_tensors(ckpt_dir / state["last_file"])


def best_weights(ckpt_dir: Path, state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The best epoch's model weights (from its epoch checkpoint, or from a best-*.safetensors file of
    weights alone, as runs written before 0.1 kept them)."""
    tensors = load_tensors(ckpt_dir / state["best_file"])
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return model or tensors


def restore(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
            tensors: dict[str, torch.Tensor]) -> None:
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_from_flat(opt, tensors, state["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
