"""Where a study lives, and what happens when its workers die: a real PostgreSQL server shared by two commands,
two SQLite workers without "database is locked", a worker killed with SIGKILL mid-trial (its trial FAIL and
retried once, the study going on), heartbeats from another machine, the journal file, and bad storage URLs.

Tiny on purpose: iris, a 16-unit MLP, a two-key space, a few trials.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import assert_user_error, finish_cli, run_cli, run_main, start_cli

SPACE = {"train.lr": {"log_uniform": [1e-3, 3e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}}


def write_recipe(folder: Path, epochs: int = 4) -> Path:
    recipe = {"seed": 0, "data": {"source": "iris"}, "model": {"name": "mlp", "hidden": [16]},
              "train": {"epochs": epochs, "batch_size": 32, "patience": None}, "tune": SPACE}
    path = folder / f"iris-{epochs}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def load(url: str) -> Any:
    """The study as Optuna itself reads it (the test's own connection, not trainfer's storage code)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        storage: Any = optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    else:
        storage = url.replace("postgresql://", "postgresql+psycopg2://")
    return optuna.load_study(study_name="default", storage=storage)


def states(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def dead_process() -> Any:
    """A process of this machine that has died (killed by SIGKILL, reaped): what a killed worker leaves."""
    import subprocess

    dead = subprocess.Popen(["sleep", "60"])
    dead.kill()
    dead.wait()
    return dead


def running_trial_of(study: Any, attrs: dict[str, Any]) -> Any:
    """A RUNNING trial of ``study`` whose worker wrote ``attrs`` (host, pid, command) and then stopped."""
    import optuna

    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for k, v in attrs.items():
        study._storage.set_trial_user_attr(trial._trial_id, k, v)
    return trial


def running_trial(url: str, ready: Path, pids: Any, proc: Any, timeout_s: float = 120) -> Any:
    """Wait for a trial RUNNING with its parameters drawn, in one of the processes ``pids()``; returns it."""
    deadline = time.time() + timeout_s
    study = None
    while time.time() < deadline:
        assert proc.poll() is None, f"the command ended before a trial ran: {proc.communicate()}"
        if study is None and ready.exists():
            study = load(url)
        if study is not None:
            owners = set(pids())
            for t in study.get_trials(deepcopy=False):
                if t.state.name == "RUNNING" and t.params and t.user_attrs.get("pid") in owners:
                    return t
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no trial was RUNNING within {timeout_s} s")


# ---- PostgreSQL: a real server, two commands at once on one study ------------------------------------------

def test_two_commands_at_once_share_one_postgresql_study(postgres: Any, tmp_path: Path) -> None:
    url = postgres.create_database()  # new and empty: both commands race to create Optuna's tables
    recipe = write_recipe(tmp_path)
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    args = [["tune", str(recipe), "--out", str(out), "--storage", url, "--trials", "4", "--quiet"] for out in outs]
    procs = [start_cli(a) for a in args]
    for proc, a in zip(procs, args, strict=True):
        finish_cli(proc, a).check()

    study = load(url)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(8)), [t.number for t in trials]
    assert set(states(study)) <= {"COMPLETE", "PRUNED"}, states(study)  # none failed, none left running
    out_of = {p.pid: out for p, out in zip(procs, outs, strict=True)}
    by_command = {out: set() for out in outs}
    for t in trials:  # each trial ran in one of the two commands, into its own run dir there
        out = out_of[t.user_attrs["pid"]]
        run = out / t.user_attrs["run"]
        assert run == out / "trials" / f"{t.number:04d}" and (run / "metrics.jsonl").is_file(), run
        by_command[out].add(t.number)
    assert [len(v) for v in by_command.values()] == [4, 4], by_command
    for out in outs:  # and no command made a run dir for a trial of the other
        assert {int(p.name) for p in (out / "trials").iterdir()} == by_command[out]
    # Both commands started with the same seed at the same moment: still, each drew its own values.
    drawn = {tuple(sorted(t.params.items())) for t in trials}
    assert len(drawn) == 8, drawn
    best = study.best_trial.number
    for out in outs:  # best/ is the best trial each command saw, wherever it ran (trained here if elsewhere)
        summary = json.loads((out / "summary.json").read_text())
        assert json.loads((out / "best" / "trial.json").read_text())["number"] == summary["best"]["number"]
        assert (out / "best.yaml").is_file() and summary["best"]["test"]["accuracy"] > 0

    # A third machine joins when no trial is left to run: it still gets the study's best, trained here.
    third = tmp_path / "machine-c"
    run_cli("tune", recipe, "--out", third, "--storage", url, "--timeout", 0.001, "--quiet").check()
    assert not (third / "trials").exists()
    assert json.loads((third / "best" / "trial.json").read_text())["number"] == best
    assert json.loads((third / "summary.json").read_text())["best"]["test"]["accuracy"] > 0


def test_a_database_server_that_goes_away_mid_study_is_one_error(tmp_path: Path) -> None:
    # Its workers die of it, and the command, failing their trials, could not read the study either: that was
    # a traceback from SQLAlchemy; it is the error of every worker stopping, with the database's own words
    # (not the UnboundLocalError that Optuna 5.0 raises in their place).
    from _pg_fixtures import running_postgres

    import trainfer
    from trainfer.errors import RunError

    with running_postgres() as server:  # a server of its own: this test stops it
        url = server.create_database()

        def on_progress(_line: str) -> None:
            server.stop()  # once a trial has finished: the others are running

        # Every worker dies of it; or, on a loaded machine, one has finished its share of the trials first and
        # the command then cannot read the study to finish it: either way one error with the database's words.
        with pytest.raises(RunError, match=r"every tuning worker stopped with an error|cannot read the study") \
                as err:
            trainfer.tune(write_recipe(tmp_path, epochs=25), out=tmp_path / "study", storage=url, trials=6,
                          workers=2, pruner="none", on_progress=on_progress)
    assert "the study database: (psycopg2.OperationalError)" in err.value.message, err.value.message
    assert not (tmp_path / "study" / ".claims").exists()


def test_a_database_server_that_goes_away_after_the_last_trial_is_one_error(tmp_path: Path) -> None:
    # The workers are done (none died), then the command cannot read the study to write its summary: that was
    # SQLAlchemy's traceback (StorageInternalError) from finish(); it is one error with the database's words.
    from _pg_fixtures import running_postgres

    import trainfer
    from trainfer.errors import RunError

    with running_postgres() as server:
        url = server.create_database()

        def on_progress(line: str) -> None:
            if line.startswith("trial 2/2"):
                server.stop()  # after the last trial, before the summary

        with pytest.raises(RunError, match="cannot read the study to finish it: the study database: ") as err:
            trainfer.tune(write_recipe(tmp_path, epochs=2), out=tmp_path / "study", storage=url, trials=2,
                          workers=1, pruner="none", on_progress=on_progress)
    assert "OperationalError" in err.value.message, err.value.message


def test_a_database_that_does_not_exist_on_the_server_is_a_user_error(postgres: Any, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    res = run_main(["tune", write_recipe(tmp_path), "--out", out, "--storage", postgres.url("no_such_db"),
                    "--trials", 1], capsys)
    line = assert_user_error(res, out, mentions=["storage"])
    assert "no_such_db" in line and "does not exist" in line, line


# ---- SQLite: two workers, no "database is locked" ------------------------------------------------------------

def test_two_sqlite_workers_run_every_trial_without_database_is_locked(tmp_path: Path) -> None:
    out = tmp_path / "study"
    res = run_cli("tune", write_recipe(tmp_path), "--out", out, "--trials", 10, "--workers", 2).check()
    assert "database is locked" not in res.stderr.lower(), res.stderr
    study = load(f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 10 and states(study).get("FAIL", 0) == 0, states(study)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers ran trials
    reasons = [str(t.user_attrs.get("fail_reason", "")) for t in trials]
    assert not any("locked" in r for r in reasons), reasons
    assert sorted(int(p.name) for p in (out / "trials").iterdir()) == list(range(10))


# ---- a worker killed with SIGKILL mid-trial (acceptance 3) ---------------------------------------------------

def test_a_worker_killed_mid_trial_fails_its_trial_which_is_retried_once(tmp_path: Path) -> None:
    out = tmp_path / "study"
    url = f"sqlite:///{out / 'study.db'}"
    # Trials of 25 epochs (no early stop, no pruning): seconds long, so the kill lands inside one.
    base = ["tune", str(write_recipe(tmp_path, epochs=25)), "--out", str(out), "--workers", "2", "--pruner", "none"]
    args = [*base, "--trials", "3"]
    proc = start_cli(args)
    victim = running_trial(url, out / "tune.json", lambda: children(proc.pid), proc)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    first = finish_cli(proc, args).check()  # the other worker goes on, and the command ends normally
    assert "killed by SIGKILL" in first.stderr and f"trial(s) {victim.number} marked FAIL" in first.stderr, \
        first.stderr

    study = load(url)
    killed = study.get_trials(deepcopy=False)[victim.number]
    assert killed.state.name == "FAIL", killed.state  # at once, not RUNNING until heartbeats or a rerun
    assert "died" in killed.user_attrs["fail_reason"], killed.user_attrs

    again = run_cli(*base, "--trials", "2").check()  # the rerun
    study = load(url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 + 2 and states(study) == {"COMPLETE": 4, "FAIL": 1}, states(study)
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, [(t.number, t.system_attrs) for t in trials]  # retried once, not more
    assert retries[0].state.name == "COMPLETE" and retries[0].params == victim.params
    assert (out / "best.yaml").is_file() and (out / "best" / "summary.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["total"] == 5 and summary["counts"]["FAIL"] == 1, summary["counts"]
    assert "Traceback" not in first.stderr + again.stderr


def test_a_killed_journal_command_is_recovered_by_the_rerun(tmp_path: Path) -> None:
    # A journal file has no heartbeat: the rerun tells the dead process of this machine from its pid.
    out, journal = tmp_path / "study", tmp_path / "study.journal"
    url = f"journal:{journal}"
    base = ["tune", str(write_recipe(tmp_path, epochs=25)), "--out", str(out), "--storage", url, "--pruner", "none"]
    proc = start_cli([*base, "--trials", "3"])  # one worker: the command's own process runs the trials
    victim = running_trial(url, out / "tune.json", lambda: [proc.pid], proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert load(url).get_trials(deepcopy=False)[victim.number].state.name == "RUNNING"  # nobody marked it

    before = len(load(url).get_trials(deepcopy=False))
    again = run_cli(*base, "--trials", "2").check()
    assert f"left RUNNING: trial(s) {victim.number} marked FAIL and queued again once" in again.stderr, again.stderr
    study = load(url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == before + 2 and states(study).get("RUNNING", 0) == 0, states(study)
    assert trials[victim.number].state.name == "FAIL" and "died" in trials[victim.number].user_attrs["fail_reason"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == victim.params
    assert (out / "best.yaml").is_file()


# ---- heartbeats: a trial of another machine whose worker went silent -----------------------------------------

@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test plays a worker with ask(), not optimize()
def test_a_stale_heartbeat_of_another_host_fails_the_trial_after_the_grace_period(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    import trainfer
    from trainfer.tuning import storage

    monkeypatch.setattr(storage, "HEARTBEAT_S", 1)
    monkeypatch.setattr(storage, "GRACE_S", 2)
    recipe, out = write_recipe(tmp_path), tmp_path / "study"
    trainfer.tune(recipe, out=out, trials=1, pruner="none")
    url = storage.storage_url(out, None)
    study = optuna.load_study(study_name="default", storage=storage.open_storage(url))
    # A worker on another machine starts a trial, beats once, and goes silent (its machine died).
    trial = study.ask(fixed_distributions=study.trials[0].distributions)
    for k, v in {"host": "another-machine", "pid": os.getpid(), "proc": None}.items():
        study._storage.set_trial_user_attr(trial._trial_id, k, v)
    study._storage.record_heartbeat(trial._trial_id)
    assert storage.recover_stale(study) == []  # not a process of this machine, and its heartbeat is fresh
    time.sleep(storage.GRACE_S + 2)  # the database's clock counts whole seconds

    study_again = trainfer.tune(recipe, out=out, trials=1, pruner="none")
    trials = load(url).get_trials(deepcopy=False)
    stale = trials[trial.number]
    assert stale.state.name == "FAIL" and stale.user_attrs["fail_reason"].startswith("no heartbeat for 2 s")
    retry = trials[-1]
    assert retry.system_attrs.get("failed_trial") == trial.number and retry.state.name == "COMPLETE"
    assert retry.params == stale.params and retry.user_attrs["host"] == socket.gethostname()
    counts = study_again.summary["counts"]
    assert (counts["total"], counts["COMPLETE"], counts["FAIL"]) == (3, 2, 1), counts


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_of_a_live_process_on_this_machine_is_left_running(tmp_path: Path) -> None:
    import optuna

    from trainfer.tuning import storage

    study = optuna.create_study(storage=storage.open_storage(storage.storage_url(tmp_path, None)))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for k, v in storage.worker_id().items():  # this very process: alive
        study._storage.set_trial_user_attr(trial._trial_id, k, v)
    assert storage.recover_stale(study) == []
    assert study.trials[0].state.name == "RUNNING"
    # The same pid with another start time is another process (the pid was reused): the trial's worker is gone.
    study._storage.set_trial_user_attr(trial._trial_id, "proc", storage.worker_id()["proc"][:-1] + "x")
    assert storage.recover_stale(study) == [0]
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_dead_workers_unstarted_claim_goes_back_to_the_pool(tmp_path: Path) -> None:
    import optuna

    from trainfer.tuning import storage
    from trainfer.tuning.processes import worker_died

    dead = dead_process()
    study = optuna.create_study(storage=storage.open_storage(storage.storage_url(tmp_path, None)))
    running_trial_of(study, {"host": socket.gethostname(), "pid": dead.pid, "command": "c1"})  # the trial it ran
    claims = tmp_path / "claims"
    claims.mkdir()
    for k, pid in ((0, dead.pid), (1, os.getpid()), (2, dead.pid)):  # slot 2: claimed, its trial never began
        (claims / f"{k:06d}").write_text(str(pid))
    msg = worker_died(study, dead, tmp_path / "no-log", claims, "c1")
    assert "killed by SIGKILL" in msg and "trial(s) 0 marked FAIL" in msg, msg
    assert sorted(p.name for p in claims.iterdir()) == ["000000", "000001"]  # slot 2 is free for the others
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert study.trials[1].params == study.trials[0].params


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_dead_retry_is_failed_and_said_not_to_be_queued_again(tmp_path: Path) -> None:
    import optuna

    from trainfer.tuning import storage
    from trainfer.tuning.processes import worker_died

    dead = dead_process()
    study = optuna.create_study(storage=storage.open_storage(storage.storage_url(tmp_path, None)))
    for retry_of in (None, 7):  # a first try, and the retry of an earlier trial 7: both were running in it
        trial = running_trial_of(study, {"host": socket.gethostname(), "pid": dead.pid, "command": "c1"})
        if retry_of is not None:
            study._storage.set_trial_system_attr(trial._trial_id, "failed_trial", retry_of)
    (tmp_path / "claims").mkdir()
    msg = worker_died(study, dead, tmp_path / "no-log", tmp_path / "claims", "c1")
    assert "trial(s) 0 marked FAIL and queued again once" in msg, msg
    assert "trial(s) 1 marked FAIL, not queued again (a retry already)" in msg, msg
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "WAITING"]
    assert study.trials[2].system_attrs["failed_trial"] == 0


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_retry_queued_at_the_start_counts_for_the_command_that_runs_it(tmp_path: Path) -> None:
    # The retry is queued before this command's first new trial, so its number is below it: counting this
    # command's trials by number missed it (the progress said 1/2, summary.json 1 trial).
    import optuna

    import trainfer
    from trainfer.tuning import storage

    recipe, out = write_recipe(tmp_path), tmp_path / "study"
    trainfer.tune(recipe, out=out, trials=1, pruner="none")
    study = optuna.load_study(study_name="default", storage=storage.open_storage(storage.storage_url(out, None)))
    dead = dead_process()
    left = study.ask(fixed_distributions=study.trials[0].distributions)  # a worker of this machine, then gone
    for k, v in {"host": socket.gethostname(), "pid": dead.pid}.items():
        study._storage.set_trial_user_attr(left._trial_id, k, v)

    lines: list[str] = []
    again = trainfer.tune(recipe, out=out, trials=2, pruner="none", on_progress=lines.append)
    assert [t["state"] for t in again.summary["trials"]] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert again.summary["trials"][2]["retry_of"] == 1
    assert again.summary["command"]["trials"] == 2, again.summary["command"]
    assert lines[-1].startswith("trial 2/2: "), lines
    ours = {t["command"] for t in again.summary["trials"][2:]}
    assert len(ours) == 1 and again.summary["trials"][0]["command"] not in ours


def test_a_worker_that_cannot_start_stops_the_started_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # The second fork fails (as at the user's process limit): the first worker must not run on, orphaned.
    import errno
    import subprocess

    real, started = subprocess.Popen, []

    def popen(*args: Any, **kwargs: Any) -> Any:
        if started:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    out = tmp_path / "study"
    res = run_main(["tune", write_recipe(tmp_path, epochs=25), "--out", out, "--workers", 2, "--trials", 4,
                    "--quiet"], capsys)
    monkeypatch.undo()
    assert_user_error(res, mentions=["cannot start tuning worker 2 of 2", "Resource temporarily unavailable"])
    assert len(started) == 1 and started[0].poll() is not None  # stopped, not left running
    assert not (out / ".claims").exists()


def test_the_command_losing_the_database_for_a_moment_does_not_stop_the_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The command reads the study every second for its progress; one failed read stopped every worker.
    import sqlite3
    import threading

    import trainfer
    from trainfer.tuning import storage

    monkeypatch.setattr(storage, "SQLITE_TIMEOUT_S", 1)  # this process's connections; the workers wait 60 s
    out = tmp_path / "study"

    def hold_the_database() -> None:  # longer than this process waits: its next progress read fails
        con = sqlite3.connect(out / "study.db", timeout=60, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        time.sleep(3)
        con.execute("COMMIT")
        con.close()

    lines: list[str] = []
    holder = threading.Thread(target=hold_the_database)

    def on_progress(line: str) -> None:
        lines.append(line)
        if not holder.is_alive() and len(lines) == 1:
            holder.start()

    study = trainfer.tune(write_recipe(tmp_path), out=out, trials=4, workers=2, pruner="none",
                          on_progress=on_progress)
    holder.join()
    assert study.summary["counts"]["COMPLETE"] == 4 and study.summary["command"]["trials"] == 4, study.summary


@pytest.mark.parametrize("when", ["creates", "records"])
def test_ctrl_c_while_optuna_creates_or_records_a_trial_leaves_none_running(
        when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C lands where it lands: while Optuna created a trial or recorded its result, the trial stayed RUNNING
    # (then failed as "died" and queued again by the next command). The Ctrl-C is sent at exactly those points.
    import optuna
    import optuna.study._optimize as optimizing

    import trainfer

    sent: list[str] = []

    def ctrl_c() -> None:
        if not sent:
            sent.append(when)
            os.kill(os.getpid(), signal.SIGINT)

    if when == "creates":
        real_ask = optuna.study.Study.ask

        def ask(self: Any, *args: Any, **kwargs: Any) -> Any:
            trial = real_ask(self, *args, **kwargs)  # the trial is RUNNING in the database now
            ctrl_c()
            return trial

        monkeypatch.setattr(optuna.study.Study, "ask", ask)
    else:
        real_tell = optimizing._tell_with_warning

        def tell(*args: Any, **kwargs: Any) -> Any:
            ctrl_c()
            return real_tell(*args, **kwargs)

        monkeypatch.setattr(optimizing, "_tell_with_warning", tell)
    out = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        trainfer.tune(write_recipe(tmp_path), out=out, trials=3, pruner="none")
    assert sent == [when] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    trials = load(f"sqlite:///{out / 'study.db'}").get_trials(deepcopy=False)
    if when == "creates":  # failed as interrupted, not as a dead worker's, and not queued again
        assert [(t.state.name, t.user_attrs.get("fail_reason")) for t in trials] == [("FAIL", "interrupted (Ctrl-C)")]
    else:  # its result recorded first, then the command stops
        assert [t.state.name for t in trials] == ["COMPLETE"]


def _interrupt_inside(owner: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch owner.name so that its first call gets a Ctrl-C while it runs; what the list says is where the
    KeyboardInterrupt came out: "inside" the call, or nowhere (the call finished, the interrupt held)."""
    real = getattr(owner, name)
    seen: list[str] = []

    def patched(*args: Any, **kwargs: Any) -> Any:
        if not seen:
            seen.append("sent")
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.3)  # the handler runs here, in the middle of the call
            except KeyboardInterrupt:
                seen.append("inside")
                raise
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)
    return seen


def test_ctrl_c_inside_a_database_call_of_a_trial_waits_for_it_then_fails_the_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A KeyboardInterrupt raised inside SQLAlchemy left a cursor open in its traceback: the worker then held a
    # lock on study.db while it recorded the trial as FAIL, and waited for itself for the 60 s busy timeout
    # (3 of 30 interrupted `trainfer run`s took 31 s). The Ctrl-C lands in the report of epoch 1.
    from optuna.storages import RDBStorage

    import trainfer

    seen = _interrupt_inside(RDBStorage, "set_trial_intermediate_value", monkeypatch)
    out = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        trainfer.tune(write_recipe(tmp_path), out=out, trials=2, pruner="median")
    assert seen == ["sent"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    [trial] = load(f"sqlite:///{out / 'study.db'}").get_trials(deepcopy=False)
    assert (trial.state.name, trial.user_attrs["fail_reason"]) == ("FAIL", "interrupted (Ctrl-C)")
    assert len(trial.intermediate_values) == 1  # the report went through; no epoch trained after it


def test_ctrl_c_inside_the_commands_read_of_the_study_stops_its_workers_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same in the command of W workers: a Ctrl-C or SIGTERM inside its progress read of the database kept
    # a lock there while its workers recorded their trials, so they hung until killed after 30 s.
    import trainfer
    from trainfer.tuning.progress import StudyProgress

    seen = _interrupt_inside(StudyProgress, "refresh", monkeypatch)
    out = tmp_path / "study"
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        trainfer.tune(write_recipe(tmp_path, epochs=30), out=out, trials=8, workers=2, pruner="none")
    assert seen == ["sent"]
    assert time.monotonic() - started < 25  # not a speed goal: the 30 s grace before workers are killed
    assert "RUNNING" not in states(load(f"sqlite:///{out / 'study.db'}"))


# ---- a study is held to its storage and its recipe ------------------------------------------------------------

def test_a_study_dir_is_refused_with_another_storage_and_found_where_it_moved(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Another storage would be another study whose trials number from 0 again, over the runs in trials/.
    recipe, out = write_recipe(tmp_path), tmp_path / "study"
    run_main(["tune", recipe, "--out", out, "--trials", 1, "--pruner", "none"], capsys).check()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    journal = tmp_path / "other.journal"
    res = run_main(["tune", recipe, "--out", out, "--storage", f"journal:{journal}", "--trials", 1], capsys)
    line = assert_user_error(res, mentions=["lives in sqlite:///", "study.db", str(journal)])
    assert not journal.exists() and {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # The study dir's own database, named or not, and wherever the study dir has moved, is the same study.
    run_main(["tune", recipe, "--out", out, "--storage", f"sqlite:///{out / 'study.db'}", "--trials", 1,
              "--pruner", "none"], capsys).check()
    out.rename(tmp_path / "moved")
    res = run_main(["tune", recipe, "--out", tmp_path / "moved", "--trials", 1, "--pruner", "none", "--json"], capsys)
    assert res.check().json()["counts"]["total"] == 3, line


def test_a_shared_study_refuses_another_recipe_from_another_study_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"journal:{tmp_path / 'shared.journal'}"
    run_main(["tune", write_recipe(tmp_path, epochs=4), "--out", tmp_path / "a", "--storage", url, "--trials", 1,
              "--pruner", "none"], capsys).check()
    res = run_main(["tune", write_recipe(tmp_path, epochs=5), "--out", tmp_path / "b", "--storage", url,
                    "--trials", 1], capsys)
    assert_user_error(res, tmp_path / "b", mentions=["'default'", "tunes another recipe"])
    assert len(load(url).get_trials(deepcopy=False)) == 1  # nothing ran on it


# ---- bad storage input: one error line, exit 2, nothing written ----------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.parametrize("storage, mentions", [
    (None, ["cannot open the study storage", "127.0.0.1"]),  # an unreachable server: the closed port
    ("postgresql//user@127.0.0.1/db", ["not a storage URL"]),
    ("nosuchdatabase://user@127.0.0.1/db", ["cannot open the study storage"]),
    ("postgresql://user@127.0.0.1:notaport/db", ["cannot open the study storage"]),
    ("sqlite://", ["in-memory"]),
    ("sqlite:///:memory:", ["in-memory"]),
    ("journal:", ["names no journal file"]),
])
def test_a_bad_storage_is_one_error_line_and_nothing_written(storage: str | None, mentions: list[str],
                                                             tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    storage = storage or f"postgresql://trainfer:secret@127.0.0.1:{_closed_port()}/study"
    out = tmp_path / "study"
    started = time.perf_counter()
    res = run_main(["tune", write_recipe(tmp_path), "--out", out, "--storage", storage, "--trials", 1], capsys)
    assert time.perf_counter() - started < 10
    line = assert_user_error(res, out, mentions=mentions)
    assert "secret" not in res.stderr, line


def test_a_journal_path_that_is_a_folder_or_another_file_is_refused(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    recipe, out = write_recipe(tmp_path), tmp_path / "study"
    res = run_main(["tune", recipe, "--out", out, "--storage", f"journal:{tmp_path}", "--trials", 1], capsys)
    assert_user_error(res, out, mentions=["is a directory"])
    res = run_main(["tune", recipe, "--out", out, "--storage", f"journal:{recipe}", "--trials", 1], capsys)
    assert_user_error(res, out, mentions=["not an Optuna journal file"])
    assert yaml.safe_load(recipe.read_text())["tune"] == SPACE  # the file named is left as it was
    res = run_main(["tune", recipe, "--out", out, "--storage", f"journal:{tmp_path}/no/such/folder/j.log",
                    "--trials", 1], capsys)
    assert_user_error(res, out, mentions=["cannot open the journal file"])
