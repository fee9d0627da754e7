"""Where a run is written: checked before training starts, replaced only on request, cleaned up on a disk error."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from trainfer._atomic import check_output, output_error
from trainfer.errors import ConfigError, OutputError, RunError, TrainferError

_RUN_MARKERS = ("recipe.yaml", "summary.json", "checkpoints")


def check_run_out(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse a run directory that training could not write, before the data is even loaded."""
    if resume and force:
        raise ConfigError("--resume and --force contradict each other (continue the run, or replace it?)",
                          hint="pass --resume to continue the run at --out, or --force to train it again from scratch")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; a run directory is written there", hint="choose another --out")
    if resume and out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in _RUN_MARKERS):
        # --resume continues a run; a folder of other files is not one (and must never be cleaned up as one)
        raise OutputError(f"--resume continues a run, and {out} holds other files but no run",
                          hint="choose an empty or new --out, or the --out of the run to continue")
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not force:
            raise RunError(f"run directory {out} already exists and is not empty",
                           hint="pass --resume to continue it, --force to replace it, or choose another --out")
        if not any((out / m).exists() for m in _RUN_MARKERS):
            raise OutputError(f"--force replaces a run directory only, and {out} holds other files",
                              hint="choose another --out")
    check_output(out, kind="dir", force=True)


@contextlib.contextmanager
def replacing(out: Path, force: bool) -> Iterator[None]:
    """Train into ``out``; with ``force`` an existing run is moved aside and deleted only after success.

    On a disk error (full, read-only, permission) nothing half-written stays: a fresh run directory is
    removed unless it holds a checkpoint that ``--resume`` can continue from; a replaced run is put back.
    """
    created = not out.exists()
    before = set() if created else {p.name for p in out.iterdir()}  # never removed: not this run's writing
    old: Path | None = None
    if force and out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        created = True
    try:
        yield
    except BaseException as exc:
        err = exc if isinstance(exc, OutputError) else output_error(exc, out) if isinstance(exc, Exception) else None
        if old is not None:  # whatever went wrong, the user gets the previous run back
            shutil.rmtree(out, ignore_errors=True)
            old.rename(out)
            if isinstance(exc, TrainferError) and not isinstance(exc, OutputError):
                # the error's own advice (e.g. "--resume continues from epoch N") was about the new run,
                # which is gone: say what is at --out now
                raise type(exc)(exc.message, hint=f"the new run was discarded and the previous run at {out} put "
                                f"back; {_advice(exc.hint)}") from None
        elif err is not None:
            epoch = _checkpoint_epoch(out)
            if epoch is None:
                _remove_written(out, created, before)
            else:
                err = OutputError(err.message, hint=f"{err.hint + '; then ' if err.hint else ''}"
                                  f"`trainfer train --out {out} --resume` continues after epoch {epoch}")
        if err is not None:
            raise err from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _checkpoint_epoch(out: Path) -> int | None:
    try:
        return int(json.loads((out / "checkpoints" / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_written(out: Path, created: bool, before: set[str]) -> None:
    if created:
        shutil.rmtree(out, ignore_errors=True)
    elif out.is_dir():  # only what this run wrote: whatever was there before stays
        for child in out.iterdir():
            if child.name in before:
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _advice(hint: str | None) -> str:
    """A diverged run's hint without its --resume advice (that run no longer exists)."""
    parts = [p for p in (hint or "").split("; ") if not any(w in p for w in ("--resume", "checkpoint", "was kept"))]
    return "; ".join(parts) or "fix the cause and train again with --force"
