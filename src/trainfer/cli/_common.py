"""What every verb shares: the typer app, common options, progress displays and the `_verb` wrapper
(its pip extras checked before any work, Ctrl-C turned into one line saying what was kept)."""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from trainfer._imports import require_extras
from trainfer.errors import TrainferError

app = typer.Typer(
    name="trainfer",
    help="Train a model, hand it off to a fast torch-free inference bundle, and measure both phases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
# One rule for every verb: progress can be silenced with -q, an existing output is replaced only with --force,
# and --threads means the same thing with the same default everywhere.
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display (results are still printed).")]
# The recipe shortcuts `train` and `federate` share: a YAML recipe is optional when these say what it would.
DataOption = Annotated[str | None, typer.Option(
    help="Built-in dataset (digits, iris, wine, breast_cancer, synthetic-classification, "
         "synthetic-regression, synthetic-images) or a path: .csv, .parquet, .npz, or an image folder "
         "root/<class>/*.png.")]
TargetOption = Annotated[str | None, typer.Option(help="Column to predict (CSV/Parquet).")]
ModelOption = Annotated[str | None, typer.Option(help="mlp, cnn, or a custom builder package.module:function.")]
SeedOption = Annotated[int | None, typer.Option(help="Seed for the split, initial weights and batch order.")]
THREADS_DEFAULT = "default: the bundle's recommended threads when it records them, else every CPU this process may use"


def _force(what: str) -> Any:
    return typer.Option("--force", help=f"Replace an existing {what} at --out (without it, an existing one is "
                                        "refused before any work starts).")


def _threads(what: str) -> Any:
    # metavar: typer's "<int range>" widened the metavar column and cut long option names at 80 columns
    # Checked in a callback, not with min/max: typer's range column cut long option names at 80 columns.
    return typer.Option(help=f"{what} ({THREADS_DEFAULT}; 1 to 256).", callback=_check_threads)


def _check_threads(value: int | None) -> int | None:
    # at most 256: --threads 100000 made onnxruntime start 100,000 threads (16 GB) on a 2-core machine
    if value is not None and not 1 <= value <= 256:
        raise typer.BadParameter(f"must be 1 to 256 threads, not {value}")
    return value


def _spinner(message: str, show: bool) -> Any:
    """A spinner on stderr while a verb works, when a person watches (stderr is a terminal)."""
    if not show or not sys.stderr.isatty():
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True, highlight=False).status(message, spinner="dots")


def _console() -> Any:
    """stdout console; wide when not a terminal, so tables in logs are not squeezed to 80 columns."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


class Interrupted(TrainferError):
    """Ctrl-C during a command; the message says what was kept."""


def _verb(*extras: str, kept: Callable[[dict[str, Any]], str] | None = None) -> Callable[[Any], Any]:
    """Wrap a command: check its pip extras before any work (an `error:` naming the extra, not a traceback
    from deep inside), and turn Ctrl-C into one line saying what was kept (``kept(arguments)``)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            require_extras(*extras)
            try:
                _preload(("torch", "pandas") if set(extras) - {"serve", "report"} else ())
                return fn(**kwargs)
            except KeyboardInterrupt:
                raise Interrupted("interrupted: " + (kept(kwargs) if kept else "nothing was written")) from None
        return command
    return wrap


def _preload(modules: tuple[str, ...]) -> None:
    """Import a verb's heavy libraries with the cyclic garbage collector paused: collections triggered by
    the hundreds of thousands of objects torch creates while importing found nothing to free and cost
    0.2-0.35 s of every command here (python -c "import torch, pandas": 1.45-1.66 s, paused 1.25-1.30 s)."""
    if not modules or all(m in sys.modules for m in modules):
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        if was_enabled:
            gc.enable()


def _train_kept(args: dict[str, Any]) -> str:
    out = Path(args["out"])
    if (out / "summary.json").is_file():  # --force put the old run back, or the new one had just finished
        return f"the run at {out} is a finished one (its summary.json is there); `trainfer evaluate {out}` shows which"
    try:
        epoch = json.loads((out / "checkpoints" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        if (out / "recipe.yaml").is_file():
            return f"no checkpoint yet in {out}; `trainfer train --out {out} --resume` starts it again"
        return "nothing was kept; run the same command again"
    return f"last checkpoint epoch {epoch} in {out}; `trainfer train --out {out} --resume` continues"


def _nothing_at(option: str, what: str) -> Callable[[dict[str, Any]], str]:
    def kept(args: dict[str, Any]) -> str:
        out = Path(args[option])
        if out.exists():  # the interrupt came after the rename (or the old output is still in place)
            return f"{out} is whole: writes are atomic, so it holds a complete output, never half of one"
        return f"no {what} written at {out} (writes are atomic)"
    return kept


def _emit(record: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(record, default=str))
    else:
        _console().print(human)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, `timeout`, a batch scheduler, `docker stop`): stop as Ctrl-C stops, workers included."""


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    # Without this, SIGTERM ended the command at once: its trials stayed RUNNING and its worker processes (their
    # own process group) trained on, orphaned. Raised as an interrupt, it takes Ctrl-C's path: the workers get
    # SIGINT, the trials are marked FAIL. A second SIGTERM during that clean-up ends the command at once.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
