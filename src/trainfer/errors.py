"""One root error for everything a user can cause.

Every message says what to change. The CLI prints ``error: <message>`` (and ``hint: <hint>``)
on stderr and exits with code 2; the server maps the same errors to 4xx JSON answers.
"""

from __future__ import annotations


class TrainferError(Exception):
    """Root of all trainfer errors a user can cause or fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(TrainferError):
    """A recipe or an override is wrong: unknown key, wrong type, bad value."""


class DataError(TrainferError):
    """The data cannot be used: missing file or column, corrupt image, a single class..."""


class ModelError(TrainferError):
    """The model cannot be built: unknown name, a custom builder that fails."""


class RunError(TrainferError):
    """A run directory is missing, incomplete, or cannot be resumed."""


class BundleError(TrainferError):
    """A bundle is missing, incomplete, or does not match its manifest."""


class ExportError(TrainferError):
    """Export to ONNX failed, or the exported model disagrees with the torch model."""


class InputError(TrainferError):
    """Inference input does not match the bundle's input schema; names the row and column when known."""

    def __init__(self, message: str, hint: str | None = None, *, row: int | None = None,
                 column: str | None = None) -> None:
        where = ", ".join(x for x in (f"row {row}" if row is not None else "",
                                      f"column {column!r}" if column is not None else "") if x)
        super().__init__(f"{where}: {message}" if where else message, hint)
        self.problem, self.row, self.column = message, row, column

    def shifted(self, offset: int) -> InputError:
        """The same error with the row counted from ``offset`` (for inputs processed in chunks)."""
        row = None if self.row is None else self.row + offset
        return InputError(self.problem, self.hint, row=row, column=self.column)


class OutputError(TrainferError):
    """An output cannot be written where asked: the path is a file (or a directory), the disk is full or
    read-only, or permission is missing. Names the path."""


class MissingDependencyError(TrainferError):
    """An optional dependency is not installed."""
