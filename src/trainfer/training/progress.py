"""A rich progress bar for training, silent when disabled (not a terminal, or --quiet)."""

from __future__ import annotations

from typing import Any


class Progress:
    def __init__(self, epochs: int, steps_per_epoch: int, enabled: bool) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                transient=False,
            )
            self._bar.__enter__()
            self._epochs = self._bar.add_task("epochs", total=self.epochs, info="")
            self._steps = self._bar.add_task("  steps", total=self.steps_per_epoch, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance_to(self, epoch: int) -> None:
        if self._bar is not None and epoch:
            self._bar.update(self._epochs, completed=epoch, info=f"resumed after epoch {epoch}")

    def step(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._steps)

    def epoch_done(self, epoch: int, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._epochs, completed=epoch, info=info)
            self._bar.reset(self._steps)
