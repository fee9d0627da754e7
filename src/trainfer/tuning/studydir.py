"""A study dir on disk: which recipe each of its studies tunes (tune.json), and the checks before any trial.

STUDY_DIR/tune.json maps a study name to the fingerprint of its recipe, search space and objectives, and to
its storage, so that another recipe is refused instead of mixing its trials into the study, and another
storage instead of numbering its trials from 0 again over the runs in STUDY_DIR/trials. The study in the
database carries the fingerprint too: commands in other study dirs that share it are held to it as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainfer._atomic import check_output, write_json, write_text
from trainfer.config import Recipe, TuneConfig
from trainfer.errors import ConfigError, OutputError
from trainfer.tuning.storage import _redact, alive, open_storage

FINGERPRINT = "trainfer_fingerprint"  # the study's user attribute


def fingerprint(base: Recipe, space: dict[str, Any], objectives: list[str]) -> str:
    """What makes two commands the same study: the recipe, the space and the objectives (not the budget)."""
    raw = {"recipe": base.without_tune().model_dump(mode="json", exclude={"tune"}),
           "space": {k: d.to_plain() for k, d in space.items()}, "objectives": objectives}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def check_study_dir(study_dir: Path, name: str, fingerprint: str, url: str, default: bool) -> None:
    """A new or empty folder, or a study dir whose study of this name has the same recipe and storage (``url``,
    ``default`` when it is the study dir's own study.db); nothing else."""
    if study_dir.exists() and not study_dir.is_dir():
        raise OutputError(f"--out {study_dir} is a file; a study directory is written there",
                          hint="choose another --out")
    record = study_dir / "tune.json"
    if study_dir.is_dir() and any(study_dir.iterdir()):
        if not record.is_file():
            raise OutputError(f"--out {study_dir} holds other files but no study (no tune.json)",
                              hint="choose a new or empty --out, or the --out of the study to continue")
        try:
            known = json.loads(record.read_text())["studies"]
        except (OSError, ValueError, KeyError, TypeError):
            raise OutputError(f"{record} is damaged; it records which recipe each study tunes",
                              hint="choose another --out") from None
        if name in known and known[name]["fingerprint"] != fingerprint:
            raise ConfigError(f"the study {name!r} in {study_dir} tunes another recipe, search space or objectives",
                              hint="tune into another --out, or start a second study there with "
                                   "--study-name NAME")
        if name in known and not _same_storage(known[name], url, default):
            where = "its study.db" if default else _redact(url)
            raise ConfigError(f"the study {name!r} in {study_dir} lives in {known[name]['storage']}, not in {where}",
                              hint=_storage_hint(known[name]) + ", or start a second study there with "
                                   "--study-name NAME")
    check_output(study_dir, kind="dir", force=True)


def _same_storage(known: dict[str, Any], url: str, default: bool) -> bool:
    # A record without the flag: its study.db is the default one (a study dir may move, so not by its path).
    was_default = known.get("default_storage", str(known.get("storage", "")).endswith("/study.db"))
    if default or was_default:
        return default and was_default
    return known.get("storage") == _redact(url)


def open_study(url: str, name: str, dirs: list[str], fingerprint: str) -> Any:
    """The study (created when new), held to the objectives and the fingerprint it was created with."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url)
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=dirs, load_if_exists=True)
    except Exception as exc:  # a database that accepts the connection and then refuses the tables
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot create the study in {_redact(url)}: {first}") from None
    if [d.name.lower() for d in study.directions] != dirs:
        raise ConfigError(f"the study {name!r} in {_redact(url)} has other objectives "
                          f"({', '.join(d.name.lower() for d in study.directions)})",
                          hint="use the same --objectives, or another --study-name")
    known = study.user_attrs.get(FINGERPRINT)
    if known is None:  # new (or made before the attribute): the first command's recipe is the study's
        study.set_user_attr(FINGERPRINT, fingerprint)
    elif known != fingerprint:
        raise ConfigError(f"the study {name!r} in {_redact(url)} tunes another recipe, search space or objectives",
                          hint="use the recipe it tunes (its recipe.yaml in the study dir), or another --study-name")
    return study


def claims_folder(root: Path, started: float) -> tuple[Path, bool]:
    """This command's folder of claim files (worker.claim), and whether another live command of this machine
    claims trials of the same study dir now. A dead command's folder is removed: its orphaned workers claim
    nothing more (worker.work), and only its leftovers would stay."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    mine = root / ".claims" / f"{host}-{int(started * 1000)}-{os.getpid()}"
    mine.mkdir(parents=True)
    others = False
    for folder in mine.parent.iterdir():
        where, _, pid = folder.name.rpartition("-")
        if folder == mine or where.rpartition("-")[0] != host:  # another machine's: its processes are not seen
            continue
        if pid.isdigit() and alive(int(pid)):
            others = True
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return mine, others


def remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


@contextlib.contextmanager
def locked(study_dir: Path) -> Iterator[None]:
    """Held while a command writes what the commands on one study dir share (tune.json, and each study's
    summary.json, best.yaml and best/): commands finishing at once write one after the other, so those agree."""
    import fcntl

    with open(study_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record(study_dir: Path, name: str, fingerprint: str, url: str, default: bool, objectives: list[str],
           root: Path, base: Recipe, space: dict[str, Any]) -> None:
    """Add the study to tune.json (once), and write its recipe with the space to ROOT/recipe.yaml."""
    path = study_dir / "tune.json"
    with locked(study_dir):  # two commands starting two studies here at once: both are recorded
        known = json.loads(path.read_text())["studies"] if path.is_file() else {}
        if name not in known:
            known[name] = {"fingerprint": fingerprint, "storage": _redact(url), "default_storage": default,
                           "objectives": objectives, "dir": str(root.relative_to(study_dir)) or "."}
            write_json(path, {"format": 1, "studies": known})
    tuned = base.model_copy(update={"tune": TuneConfig(space=space)})
    write_text(root / "recipe.yaml", tuned.to_yaml())


def _storage_hint(entry: dict[str, Any]) -> str:
    """Which --storage to pass: the recorded URL (its password, redacted there, is the user's to add)."""
    if entry.get("default_storage"):
        return "leave out --storage (it uses its own study.db)"
    was = entry["storage"]
    return f"pass --storage {was}" + (" with its password" if ":***@" in was else "")
