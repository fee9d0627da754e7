"""Ctrl-C and SIGTERM kept out of database code: held there, and acted on where stopping leaves nothing half-done.

Python raises KeyboardInterrupt at whatever bytecode runs when the signal comes. Landing inside SQLAlchemy's
SQLite code, it left a cursor open in the traceback's frames, so the process kept a shared lock on the study
database while its own clean-up tried to record the trial as FAIL: the write waited for the lock its own
process held, for the whole 60 s busy timeout (3 of 30 interrupted `trainfer run`s hung 31 s; the command then
killed the worker). Inside ``Held``, a signal is only recorded, except in ``acting()`` regions (training,
sleeping), where it acts at once; one recorded elsewhere acts at the next ``check()`` or ``acting()``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Held:
    """``with Held() as held:`` holds SIGINT and SIGTERM until ``held.check()``, or acts at once in ``acting()``.

    Acting on a signal is what the handler in place before did: Python's own SIGINT handler raises
    KeyboardInterrupt, the CLI's SIGTERM handler raises its interrupt, SIG_DFL ends the process. Outside the
    main thread (where Python runs no signal handlers) it does nothing.
    """

    def __init__(self, signums: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signums = signums
        self._previous: dict[int, Any] = {}
        self._pending: list[int] = []
        self._acting = False

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def __enter__(self) -> Held:
        if threading.current_thread() is threading.main_thread():
            for s in self.signums:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            # The previous handler may have replaced ours while acting (the CLI's SIGTERM handler restores
            # SIG_DFL so that a second SIGTERM ends the command at once): that choice stands.
            if signal.getsignal(s) == self._handler:
                signal.signal(s, previous)
        self._previous.clear()
        if exc[0] is None:
            self.check()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._acting:
            self._act(signum, frame)
        else:
            self._pending.append(signum)

    def _act(self, signum: int, frame: FrameType | None) -> None:
        self._pending.clear()  # one stop: a second Ctrl-C while held is the same request
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # SIG_DFL: the process ends, as it would have without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def check(self) -> None:
        """Act on a signal that came while held."""
        if self._pending:
            self._act(self._pending[0], None)

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """A region a signal may stop at once: no database call in it, except under ``holding()``."""
        self.check()
        self._acting = True
        try:
            yield
        finally:
            self._acting = False

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Database calls inside ``acting()``: held while they run, acted on right after."""
        was, self._acting = self._acting, False
        try:
            yield
        finally:
            self._acting = was
        if was:
            self.check()
