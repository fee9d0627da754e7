"""Outputs: check where they go before the work starts, write them atomically, with the umask's permissions.

A write goes to a temporary name in the same directory, then is renamed: a crash leaves either the old
file or the new one, never half of one. Temporary files are created 0600 by ``tempfile``; they are given
the mode any other program's new file would get (0666 less the umask), so a bundle exported by one user
can be read by a server's account. An OS error while writing (disk full, read-only, no permission)
becomes an :class:`OutputError` naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from trainfer.errors import OutputError, TrainferError

# Errors that mean "this place cannot take the output"; others (e.g. EIO) are reported as they are.
_WHY = {
    errno.ENOSPC: ("no space left on device", "free some space, or choose an --out on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or choose an --out on another disk"),
    errno.EROFS: ("the file system is read-only", "choose an --out on a writable disk"),
    errno.EACCES: ("permission denied", "choose an --out you may write to, or change the directory's permissions"),
    errno.EPERM: ("operation not permitted", "choose an --out you may write to"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "choose another --out"),
    errno.EISDIR: ("it is a directory", "name a file, or choose another --out"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter --out"),
}
# Libraries written in Rust (safetensors) wrap the OS error in their own exception: "... (os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def umask() -> int:
    """The process umask, read without changing it where the OS allows (other threads may be creating files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it and put it back
    os.umask(old)
    return old


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def make_temp_dir(parent: Path, name: str) -> Path:
    """A fresh directory beside ``parent/name`` (hidden, unique), with the mode ``mkdir`` would give it."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    tmp.chmod(dir_mode())
    return tmp


_T = TypeVar("_T")


def write_dir(out: Path, fill: Callable[[Path], _T]) -> _T:
    """Build the directory ``out`` atomically: ``fill(tmp)`` writes it under a temporary name beside ``out`` (the
    rename stays on one file system), which is then renamed into place. An existing ``out`` (the caller checked
    that it may be replaced) is moved aside first, so a crash never leaves neither. On any failure the temporary
    directory is removed and the old ``out`` kept; an OS error (disk full, read-only, no permission), even one
    re-raised as another error, becomes an OutputError naming ``out``. Returns what ``fill`` returned."""
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(out.parent, out.name)
        result = fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        err = output_error(exc, out) if isinstance(exc, Exception) else None
        if err is not None:
            raise err from None
        raise
    return result


def os_error_in(exc: BaseException) -> tuple[int, str, str | None] | None:
    """(errno, strerror, filename) of the OS error behind ``exc`` (itself, a cause or a context), if any.

    Exporters and safetensors re-raise disk errors as their own exception types; a TrainferError is a user
    error already and is left alone.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur.errno, cur.strerror or os.strerror(cur.errno), cur.filename
        if not isinstance(cur, TrainferError):
            m = _RUST_OS_ERROR.search(str(cur))
            if m:
                code = int(m.group(1))
                return code, os.strerror(code), None
        cur = cur.__cause__ or cur.__context__
    return None


def output_error(exc: BaseException, path: str | Path) -> OutputError | None:
    """The OutputError for an OS error met while writing ``path``; None when ``exc`` is not one."""
    if isinstance(exc, TrainferError):
        return None
    found = os_error_in(exc)
    if found is None:
        return None
    code, strerror, filename = found
    why, hint = _WHY.get(code, (strerror.lower(), None))
    where = str(path)
    if filename and not _inside(Path(str(filename)), Path(path)):  # e.g. a library's scratch file in /tmp
        where = f"{filename} (while writing {path})"
    return OutputError(f"cannot write {where}: {why}", hint=hint)


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.absolute(), parent.absolute()
    # the temporary siblings of an output (.NAME.xxxx.tmp) count as the output itself
    return child == parent or parent in child.parents or child.name.startswith(f".{parent.name}.")


def check_output(path: str | Path, *, kind: str, force: bool = False, exists_hint: str | None = None,
                 option: str = "--out") -> Path:
    """Refuse, before any work starts, an output that could not be written: ``path`` is a file where a
    directory is wanted (or the reverse), exists without ``force``, or its directory cannot be created or
    written (a file in the way, read-only file system, no permission, no space left).

    ``kind`` is "file" or "dir". ``exists_hint`` replaces the default hint for an existing output; with
    ``force=True`` an existing output of the right kind is accepted (the writer replaces it).
    """
    path = Path(path)
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    if path.is_dir() and kind == "file":
        raise OutputError(f"{option} {path} is a directory; a file is written there",
                          hint=f"name a file, e.g. {option} {path / 'predictions.csv'}")
    if path.exists() and not path.is_dir() and kind == "dir":
        raise OutputError(f"{option} {path} is a file; a directory is written there", hint=f"choose another {option}")
    if path.exists() and not force:
        raise OutputError(f"{option} {path} already exists",
                          hint=exists_hint or f"choose another {option}, or pass --force to replace it")
    if path.is_dir():  # resumed or replaced in place
        _check_writable(path, path, "")
    # The nearest directory that exists must be writable: the output (or its parents) is created there.
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create {path}: {parent} is a file, not a directory", hint=f"choose another {option}")
    _check_writable(parent, path, f" ({parent})")
    if _no_space(parent):
        why, hint = _WHY[errno.ENOSPC]
        raise OutputError(f"cannot write {path}: {why} ({parent})", hint=hint)
    return path


def _check_writable(directory: Path, path: Path, where: str) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        why, hint = _WHY[errno.EROFS if _read_only(directory) else errno.EACCES]
        raise OutputError(f"cannot write {path}: {why}{where}", hint=hint)


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False


def _no_space(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    # root may use the blocks reserved for it; others only the available ones
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks == 0 and st.f_blocks > 0


def write_with(path: str | Path, writer: Callable[[Path], None], mode: int | None = None) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically, with ``mode`` (default: what any
    program's new file gets; 0o600 for a file that holds a secret).

    An OS error (here, or wrapped by the writer's library) raises OutputError naming ``path``; the
    temporary file is removed whatever happens.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        os.close(fd)
        writer(tmp)
        # After the writer: some libraries (safetensors) replace the file they are given, with their own mode.
        os.chmod(tmp, file_mode() if mode is None else mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        err = output_error(exc, path) if isinstance(exc, Exception) else None
        if err is not None:
            raise err from None
        raise


def write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    write_with(path, lambda tmp: tmp.write_bytes(data), mode)


def write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    write_bytes(path, text.encode("utf-8"), mode)


def write_pieces(path: str | Path, pieces: Iterable[str], mode: int | None = None) -> None:
    """Text written piece by piece (a large file never held whole in memory), atomically as write_with."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for piece in pieces:
                fh.write(piece)

    write_with(path, write, mode)


def write_json(path: str | Path, obj: Any, mode: int | None = None) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n", mode)


def _jsonable(obj: Any) -> Any:
    # numpy scalars and arrays show up in metrics; JSON wants plain Python.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
