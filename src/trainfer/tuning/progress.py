"""What a person watching a study sees: trials done, pruned and failed, the best so far, and the time left."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


class StudyProgress:
    """A progress bar on stderr (a terminal), else one line per finished trial; nothing when disabled."""

    def __init__(self, study: Any, budget: int, command: str, deadline: float | None,
                 enabled: bool = True, emit: Callable[[str], None] | None = None) -> None:
        self.study, self.budget, self.deadline = study, budget, deadline
        self.command = command  # this command's trials carry it (trial.Plan.command)
        self.enabled = enabled or emit is not None
        self.emit = emit  # instead of the bar or the printed line: `trainfer run` shows it as its tune stage
        self.started = time.time()
        self._bar: Any = None
        self._task: Any = None
        self._last = -1

    def __enter__(self) -> StudyProgress:
        if self.enabled and self.emit is None and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("tuning"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.budget)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def refresh(self, *_: Any) -> None:
        if not self.enabled:
            return
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("command") == self.command]
        finished = [t for t in trials if t.state.is_finished()]
        if len(finished) == self._last or not finished:
            return
        self._last = len(finished)
        line = self.line(finished)
        if self.emit is not None:
            self.emit(f"trial {len(finished)}/{self.budget}: {line}")
        elif self._bar is not None:
            self._bar.update(self._task, completed=len(finished), description=line)
        else:
            print(f"tuning {len(finished)}/{self.budget}: {line}", file=sys.stderr, flush=True)

    def line(self, finished: list[Any]) -> str:
        states = [t.state.name for t in finished]
        done = [t for t in finished if t.state.name == "COMPLETE"]
        parts = [f"{states.count('COMPLETE')} complete", f"{states.count('PRUNED')} pruned",
                 f"{states.count('FAIL')} failed"]
        if done:
            maximize = self.study.directions[0].name == "MAXIMIZE"
            best = (max if maximize else min)(done, key=lambda t: t.values[0])
            parts.append(f"best {best.values[0]:.4f} (trial {best.number})")
        elapsed = time.time() - self.started
        left = []
        if finished and len(finished) < self.budget:
            left.append(elapsed / len(finished) * (self.budget - len(finished)))
        if self.deadline is not None:
            left.append(max(0.0, self.deadline - time.time()))
        if left:
            parts.append(f"~{min(left):.0f} s left")
        return ", ".join(parts)
