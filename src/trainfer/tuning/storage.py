"""Where a study lives: SQLite in the study dir by default, any Optuna RDB URL, or a journal file.

A worker killed mid-trial leaves its trial RUNNING. Two ways mark it FAIL, and either queues its parameters
again once (a retry is not retried: its parameters may be what kills the worker):
- heartbeats (every RDB storage, SQLite included): the trial's worker writes one every HEARTBEAT_S; any process
  on any machine fails a trial whose heartbeat is older than GRACE_S, when it starts a trial or a command;
- its process is gone: a trial records the host, pid, boot and pid namespace of its worker, so a command on the
  same machine fails it at once. This is the only way for a journal file, which has no heartbeat: a journal
  trial whose worker died on another machine stays RUNNING (use an RDB storage across machines).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

from trainfer.errors import ConfigError

HEARTBEAT_S = 5  # a running trial's heartbeat, written by a thread of its worker
GRACE_S = 20  # a trial whose heartbeat is older than this belongs to a dead worker
SQLITE_TIMEOUT_S = 60  # two workers writing at once wait for each other instead of "database is locked"
CONNECT_TIMEOUT_S = 10  # a database server that does not answer is an error in seconds, not minutes
JOURNAL = "journal:"
DIED = "its worker process died (killed or crashed)"
STALE = "no heartbeat for {grace} s: its worker died or lost the database"
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the first installed driver of each list is used.
_DRIVERS = {"postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
            "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql"))}
_INSTALL = {"postgresql": "psycopg2-binary", "mysql": "pymysql"}


def storage_url(study_dir: Path, url: str | None) -> str:
    """The storage URL to record and hand to workers: file paths made absolute, so a command from another folder
    (or a worker) opens the same study."""
    if not url:
        return f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if url.startswith(JOURNAL):
        path = url[len(JOURNAL):]
        if not path.strip():
            raise ConfigError(f"--storage {url} names no journal file", hint="e.g. --storage journal:study.log")
        return JOURNAL + str(Path(path).expanduser().absolute())
    if url.startswith("sqlite"):
        head, sep, rest = url.partition(":///")
        path, q, query = rest.partition("?")
        if not sep or path in ("", ":memory:") or "mode=memory" in query:
            raise ConfigError(f"--storage {url} is an in-memory database: it ends with the command, and worker "
                              "processes and later commands cannot share it",
                              hint="leave out --storage (STUDY_DIR/study.db), or name a file: sqlite:///study.db")
        return f"{head}:///{Path(path).expanduser().absolute()}{q}{query}"
    return url


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url``; a database that cannot be reached is an error saying which and why."""
    if url.startswith(JOURNAL):
        return _journal(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme or not scheme.replace("+", "").replace("_", "").isalnum():
        raise ConfigError(f"--storage {_redact(url)!r} is not a storage URL",
                          hint="use sqlite:///path.db, postgresql://user@host/db, mysql://... or journal:FILE")
    for attempt in range(4):
        try:
            return _rdb(url)
        except ConfigError:
            raise
        except ImportError as exc:
            kind = scheme.split("+")[0]
            missing = getattr(exc.__cause__, "name", None) or exc.name or exc
            raise ConfigError(f"--storage {_redact(url)}: the database driver is not installed ({missing})",
                              hint=f"pip install {_INSTALL[kind]}" if kind in _INSTALL else None) from None
        except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError...: unreachable or malformed
            # Commands that start at once on a new database all create Optuna's tables; all but one lose that
            # race ("already exists", optuna#1092): the tables are there a moment later.
            if attempt < 3 and ("already exists" in str(exc) or type(exc).__name__ == "IntegrityError"):
                time.sleep(0.2 + random.random())
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot open the study storage {_redact(url)}: {first}",
                              hint="check the URL, that the server runs and accepts this user, and that the "
                                   "database exists") from None
    raise AssertionError("unreachable")


def _journal(url: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(url[len(JOURNAL):]).expanduser()
    if path.is_dir():
        raise ConfigError(f"--storage {url}: {path} is a directory; name a journal file, e.g. journal:study.log")
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise ConfigError(f"--storage {url}: cannot open the journal file ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError) as exc:  # the file is something else, replayed as a journal
        raise ConfigError(f"--storage {url}: {path} is not an Optuna journal file ({type(exc).__name__}: {exc})",
                          hint="name a new file or the journal of a study") from None


def _rdb(url: str) -> Any:
    kind = url.split("://", 1)[0]
    kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    if kind in _DRIVERS:
        url = f"{kind}+{_driver(kind)}://{url.split('://', 1)[1]}"
    if not kind.startswith("sqlite"):
        timeout = {"connect_timeout": CONNECT_TIMEOUT_S} if kind.startswith(("postgresql", "mysql")) else {}
        kwargs = {"pool_pre_ping": True, "connect_args": timeout}
    with _quiet_experimental():
        return _storage_class()(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                heartbeat_stale_trial_callback=retry_once)


def _driver(kind: str) -> str:
    from importlib.util import find_spec

    for module, name in _DRIVERS[kind]:
        if find_spec(module) is not None:
            return name
    return _DRIVERS[kind][-1][1]  # none installed: the import error names the one to install


@functools.cache
def _storage_class() -> type:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import RDBStorage

    class Storage(RDBStorage):
        """Optuna's RDB storage, which also says why a stale trial failed: the reason must be written while the
        trial still runs (a finished trial cannot be changed), so it is written as the trial is found stale."""

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            stale = super()._get_stale_trial_ids(study_id)
            for trial_id in stale:
                with contextlib.suppress(UpdateFinishedTrialError, KeyError):  # another process got there first
                    self.set_trial_user_attr(trial_id, "fail_reason", STALE.format(grace=self.grace_period))
            return stale

    return Storage


def retry_once(study: Any, trial: Any) -> None:
    """Queue a dead worker's trial again with the same parameters, unless it is itself a retry.

    The attributes are Optuna's (``RetryHeartbeatStaleTrialCallback.retried_trial_number`` reads them); the dead
    worker's own attributes (host, pid, run dir) are not copied.
    """
    import optuna

    if trial.system_attrs.get("failed_trial") is not None:
        return
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": trial.number, "retry_history": [trial.number]}))


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("://")
    if not sep or "@" not in tail:
        return url
    cred, _, rest = tail.rpartition("@")
    user = cred.split(":")[0]
    return f"{head}://{user}:***@{rest}" if ":" in cred else url


class _quiet_experimental:
    """heartbeat_interval is "experimental" in Optuna 5 and warns on every worker start; the feature is used on
    purpose here, so that warning is noise."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message=".*experimental.*")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _proc_id(pid: int) -> str | None:
    """This kernel boot, the pid namespace and the process's start time: with the pid, names one process of one
    machine (a pid is reused, and containers with the same host name see other pids)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.readlink(f"/proc/{os.getpid()}/ns/pid")
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # not Linux, or no such process
        return None
    if fields[0] == "Z":  # a killed child not yet reaped is dead for our purpose
        return None
    return f"{boot}/{ns}/{fields[19]}"


def worker_id() -> dict[str, Any]:
    """Who runs a trial: recorded on it, so a later command can tell a dead local worker's trial."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc": _proc_id(os.getpid())}


def died_here(attrs: dict[str, Any]) -> bool:
    """Whether the worker recorded in a trial's ``attrs`` was a process of this machine that is gone."""
    if attrs.get("host") != socket.gethostname() or not isinstance(attrs.get("pid"), int):
        return False
    recorded, pid = attrs.get("proc"), attrs["pid"]
    mine = _proc_id(os.getpid())
    if recorded and mine and recorded.rsplit("/", 1)[0] != mine.rsplit("/", 1)[0]:
        return False  # another boot or another container: only its heartbeat can tell
    now = _proc_id(pid)
    if recorded and mine:
        return now != recorded
    return not alive(pid)


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def recovered(study: Any, failed: list[int]) -> str:
    """What became of the trials ``recover_stale`` failed, for a message: queued again, or not (a retry already)."""
    queued = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False)}
    again, retries = [n for n in failed if n in queued], [n for n in failed if n not in queued]
    parts = [f"trial(s) {', '.join(map(str, again))} marked FAIL and queued again once"] if again else []
    if retries:
        parts.append(f"trial(s) {', '.join(map(str, retries))} marked FAIL, not queued again (a retry already)")
    return "; ".join(parts)


def recover_stale(study: Any) -> list[int]:
    """Fail trials left RUNNING by dead workers and queue their parameters again (once); returns their numbers."""
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    storage = study._storage
    with _quiet_experimental():
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        fail_stale_trials(study)  # stale heartbeats: the storage writes the reason, retry_once re-queues
    failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in before]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not died_here(t.user_attrs):
            continue
        try:  # the reason first: a finished trial cannot be changed
            storage.set_trial_user_attr(t._trial_id, "fail_reason", DIED)
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another command got there first, and queued the retry
        failed.append(t.number)
        retry_once(study, storage.get_trial(t._trial_id))
    return sorted(failed)
