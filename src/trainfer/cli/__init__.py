"""The `trainfer` command line: one verb per phase, the same names as the Python API.

User mistakes print ``error: ...`` (and ``hint: ...``) on stderr and exit with code 2, without a
traceback. Heavy libraries are imported inside the commands so ``--help`` stays instant. The verbs
live in training.py, inference.py and measuring.py; what they share in _common.py.
"""

from __future__ import annotations

import atexit
import gc
import sys
from typing import Any

import typer

from trainfer._imports import extra_for_missing
from trainfer.cli import auditing, federating, inference, measuring, security, training, tuning, web
from trainfer.cli._common import THREADS_DEFAULT, Interrupted, app
from trainfer.errors import TrainferError

# --help lists the verbs in the order of the path, whichever module defines them
# ("keys" is a command group: typer lists groups after the commands)
ORDER = ("train", "evaluate", "audit", "tune", "federate", "federate-node", "export", "optimize", "keys", "sign",
         "verify", "predict", "bench", "report", "run", "serve", "web")
app.registered_commands.sort(key=lambda c: ORDER.index(c.name or c.callback.__name__))
__all__ = ["THREADS_DEFAULT", "app", "auditing", "federating", "inference", "main", "measuring", "security", "training",
           "tuning", "web"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script. Every way a command can fail because of its input or its
    environment ends in one ``error:`` line (and a ``hint:``) on stderr: exit 2, or 130 for Ctrl-C."""
    # At exit, the interpreter's last garbage collections walk every object torch created (~0.25 s per
    # command); frozen objects are skipped. atexit handlers still run, files are still flushed and closed.
    atexit.register(gc.freeze)
    ce = _click_exceptions()
    try:
        code = app(args=argv, standalone_mode=False)
    except ce.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(2)
    except ce.UsageError as exc:
        # click's own boxed panel would be a second error format; one line, and where to read more
        where = exc.ctx.command_path if exc.ctx else "trainfer"
        _fail(exc.format_message(), f"see `{where} --help`")
    except ce.ClickException as exc:
        _fail(exc.format_message(), None)
    except typer.Abort:
        _fail("interrupted", None, code=130)
    except Interrupted as exc:
        _fail(exc.message, exc.hint, code=130)
    except TrainferError as exc:
        _fail(exc.message, exc.hint)
    except ModuleNotFoundError as exc:
        extra = extra_for_missing(exc)
        if extra is None:
            raise  # not an optional dependency of ours: a bug, keep the traceback
        _fail(f"{exc.name} is needed for this and is not installed", f"pip install 'trainfer[{extra}]'")
    except OSError as exc:
        # Writers turn their OS errors into OutputError; one that slips through still names its file.
        if exc.filename is None:
            raise
        _fail(f"{exc.filename}: {exc.strerror or exc}", None)
    except KeyboardInterrupt:
        _fail("interrupted", None, code=130)
    if isinstance(code, int) and code:
        sys.exit(code)


def _click_exceptions() -> Any:
    # typer >= 0.22 carries its own copy of click, whose exceptions are not click's; older typer uses click
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(message: str, hint: str | None, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(code)
