"""Where a study lives: SQLite in the study dir by default, any Optuna RDB URL, or a journal file.

Heartbeats (RDB storages) let a surviving worker mark a killed worker's trial FAIL; its parameters are
queued again once. A journal file has no heartbeat, so a trial left RUNNING by a dead process of this
machine is failed and re-queued when the next command starts.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from trainfer.errors import ConfigError

HEARTBEAT_S = 5  # a running trial's heartbeat, written by a thread of its worker
GRACE_S = 20  # a trial whose heartbeat is older than this belongs to a dead worker
SQLITE_TIMEOUT_S = 60  # two workers writing at once wait for each other instead of "database is locked"
RETRIED = "trainfer_retried"  # system attr of a re-queued trial: the number of the trial it repeats
JOURNAL = "journal:"


def storage_url(study_dir: Path, url: str | None) -> str:
    """The storage URL to record and share: the default SQLite file as an absolute path."""
    return url if url else f"sqlite:///{(study_dir / 'study.db').resolve()}"


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url``; a database that cannot be reached is an error saying which and why."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL):]).expanduser()
        if path.is_dir():
            raise ConfigError(f"--storage {url}: {path} is a directory; name a journal file, e.g. journal:study.log")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise ConfigError(f"--storage {url}: cannot open the journal file ({exc.strerror or exc})") from None
    if "://" not in url:
        raise ConfigError(f"--storage {url!r} is not a storage URL",
                          hint="use sqlite:///path.db, postgresql://user@host/db, mysql://... or journal:FILE")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        kwargs = {"pool_pre_ping": True, "connect_args": _connect_timeout(url)}
    try:
        with _quiet_experimental():
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    except ImportError as exc:
        driver = {"postgresql": "psycopg2-binary", "mysql": "pymysql"}.get(url.split(":")[0].split("+")[0])
        raise ConfigError(f"--storage {_redact(url)}: the database driver is not installed ({exc.name or exc})",
                          hint=f"pip install {driver}" if driver else None) from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError...: unreachable or malformed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot open the study storage {_redact(url)}: {first}",
                          hint="check the URL, that the server runs and accepts this user, and the database exists") \
            from None


def _connect_timeout(url: str) -> dict[str, Any]:
    # A server that does not answer fails in seconds, not after the driver's default of minutes.
    return {"connect_timeout": 10} if url.startswith("postgresql") or url.startswith("mysql") else {}


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


def worker_id() -> dict[str, Any]:
    """Who runs a trial: recorded on it, so a later command can tell a dead local worker's trial."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def recover_stale(study: Any) -> list[int]:
    """Fail trials left RUNNING by dead workers and queue their parameters again (once); returns their numbers.

    Heartbeats cover every RDB storage and every machine (after GRACE_S); a dead process of this machine is
    known at once from its pid, which also covers the journal file, which has no heartbeat.
    """
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    with _quiet_experimental():
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        fail_stale_trials(study)  # runs the retry callback itself
    here = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != here or _alive(int(t.user_attrs.get("pid", -1))):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another command got there first
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "its worker process died (killed or crashed)")
        failed.append(t)
        if RETRIED not in t.system_attrs and "failed_trial" not in t.system_attrs:  # retried once at most
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=t.params, distributions=t.distributions,
                system_attrs={RETRIED: t.number}))
    by_heartbeat = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in before]
    for t in by_heartbeat:
        if "fail_reason" not in t.user_attrs:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"no heartbeat for {GRACE_S} s: its "
                                               "worker died or lost the database")
    return sorted({t.number for t in by_heartbeat} | {t.number for t in failed})
