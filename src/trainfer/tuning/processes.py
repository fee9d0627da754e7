"""`--workers W`: W worker processes on one study, their share of the CPUs, and what happens when one dies."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainfer._atomic import write_text
from trainfer._signals import Held
from trainfer.errors import RunError
from trainfer.tuning.storage import recover_stale, recovered
from trainfer.tuning.trial import Plan


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(n_cpu: int, n_workers: int, asked: int | None) -> int:
    """Torch threads per worker: an equal share of the CPUs, never more than the recipe's train.threads or
    OMP_NUM_THREADS ask for (a busy shared machine is often faster with fewer threads than cores)."""
    share = max(1, n_cpu // n_workers)
    caps = [asked] if asked else []
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        caps.append(int(omp))
    return min([share, *caps])


def run_workers(plan: Plan, n: int, progress: Any, say: Any = None) -> None:
    """W processes on the study; each gets its share of the CPUs for torch, OpenMP and BLAS.

    A worker that dies (killed, crashed) does not stop the others: its running trial is failed at once and its
    parameters queued again (a surviving worker runs them), a slot it claimed and never started goes back to
    the pool, and the others run the rest of the budget. No replacement is started: what killed one worker (the
    out-of-memory killer, an operator) would likely kill the next. Only when every worker failed is it an error.
    """
    say = say or (lambda _msg: None)
    folder = Path(plan.claims)
    path = folder / "plan.json"
    write_text(path, plan.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads), "MKL_NUM_THREADS": str(plan.threads)}
    # Each worker's stderr goes to a file: a pipe nobody reads until the end fills up and blocks the worker.
    # Their own process group: a Ctrl-C at the terminal reaches the command only, which passes it on once (two
    # SIGINTs could stop a worker while it records its trial as FAIL), and so does `kill -INT` of the command.
    logs = [folder / f"worker-{i}.log" for i in range(n)]
    procs: list[subprocess.Popen] = []
    seen: set[int] = set()
    try:
        # Ctrl-C and SIGTERM act only while it sleeps: landing in its read of the database they left this
        # process holding a lock there while its workers waited to record their trials (see trainfer._signals).
        with Held() as held:
            for i, log in enumerate(logs):  # in the try: a worker that cannot start stops those that did
                with open(log, "w") as err:
                    try:
                        procs.append(subprocess.Popen(
                            [sys.executable, "-m", "trainfer.tuning.worker", str(path), str(i)],
                            env=env, stdout=subprocess.DEVNULL, stderr=err, process_group=0))
                    except OSError as exc:  # e.g. EAGAIN: the user's process limit
                        raise RunError(f"cannot start tuning worker {i + 1} of {n}: {exc.strerror or exc}",
                                       hint="use fewer --workers") from None
            while True:
                running = [p for p in procs if p.poll() is None]
                for i, p in enumerate(procs):
                    if p.returncode not in (None, 0) and i not in seen:
                        seen.add(i)
                        say(worker_died(progress.study, p, logs[i], folder, plan.command))
                # This process's read of the database may fail (a lock wait ran out, the network blinked): only the
                # progress misses a beat; the workers have connections of their own.
                with contextlib.suppress(Exception):
                    progress.refresh()
                if not running:
                    break
                with held.acting():
                    time.sleep(1.0)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.time() + 30  # time for their trials to be recorded as FAIL, then kill
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with contextlib.suppress(Exception):  # the killed workers' trials: FAIL now, not RUNNING until a rerun
            recover_stale(progress.study)
        raise
    if len(seen) == n:
        raise RunError(f"every tuning worker stopped with an error: {last_line(procs[0], logs[0])}",
                       hint="the finished trials are in the study; running the command again continues it")
    left = sum(1 for k in range(plan.budget) if not (folder / f"{k:06d}").exists())
    if seen and left:
        say(f"warning: {left} of this command's {plan.budget} trials did not run: their workers stopped")


def worker_died(study: Any, proc: subprocess.Popen, log: Path, claims: Path, command: str) -> str:
    """What the command does when one worker dies: fail its trial, queue it again, free its unused claims."""
    msg = f"warning: a tuning worker stopped ({last_line(proc, log)})"
    try:
        failed = recover_stale(study)
        started = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("command") == command and
                      t.user_attrs.get("pid") == proc.pid and t.user_attrs.get("host") == socket.gethostname())
    except Exception as exc:  # the database is gone too (maybe why the worker stopped): the others will tell
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return msg + f"; the study could not be read ({why}): its trial is failed by a later command"
    mine = sorted(f for f in claims.glob("[0-9]" * 6) if f.read_text() == str(proc.pid))
    for f in mine[started:]:  # claimed, but it died before the trial began: another worker takes the slot
        with contextlib.suppress(OSError):
            f.unlink()
    if failed:
        msg += f"; {recovered(study, failed)}"
    return msg + "; the other workers go on"


def last_line(proc: subprocess.Popen, log: Path) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].removeprefix("error: ")
    return f"exit code {code}"
