"""`trainfer train --nproc N`: start N training ranks on this machine with torchrun, and report them as one run.

torchrun (``python -m torch.distributed.run --standalone``, from the same environment) starts the ranks and
ends them all when one fails (``--max-restarts 0``). Rank 0's stdout is the command's stdout (its progress bar
and result); every rank's stderr goes to a log file, so that a failure ends in ONE ``error:`` line here,
naming the rank that failed first, not one traceback per rank plus torchrun's report. Threads per process:
``train.threads`` when the recipe sets it, else this machine's cores divided by N (at least 1); more threads in
all than cores is warned about. ``--nproc 1`` trains in the launching process (cli/training.py).

If this launcher dies, even by SIGKILL, torchrun gets SIGTERM from the kernel (PR_SET_PDEATHSIG, Linux) and
stops its ranks; the ranks ask the same of torchrun (training/distributed.py).

Plain ``torchrun ... -m trainfer train`` (several machines) bypasses this file: each rank prints its own
``error:`` line and torchrun prints its failure report.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from trainfer.errors import ConfigError, RunError, TrainferError

# After Ctrl-C/SIGTERM is forwarded, torchrun and its ranks get this long to stop before they are killed.
STOP_GRACE_S = 60.0


class Interrupted(TrainferError):
    """The launch was interrupted (Ctrl-C or SIGTERM); exit 130."""


@dataclass
class RankFailure:
    rank: int
    exitcode: int | None
    pid: int | None


def check_nproc(nproc: int) -> int:
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1 process, not {nproc}",
                          hint="e.g. --nproc 2 (one process per core or GPU)")
    if nproc > 1024:
        raise ConfigError(f"--nproc {nproc} is more processes than trainfer starts on one machine (at most 1024)",
                          hint="for several machines, run torchrun on each (see the README)")
    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc starts torchrun, and this process is already a rank of one",
                          hint="drop --nproc when running under torchrun")
    return nproc


def threads_per_process(nproc: int, recipe_threads: int | None) -> int:
    if recipe_threads:
        return recipe_threads
    return max(1, _cores() // nproc)


def oversubscribed(nproc: int, threads: int) -> str | None:
    """A warning when the ranks' threads outnumber the cores: OpenMP threads that share a core spin-wait, and
    a step can take several times longer (measured here: 6-18x on a busy 2-core machine)."""
    cores = _cores()
    if nproc * threads <= cores:
        return None
    return (f"{nproc} processes x {threads} threads = {nproc * threads} threads on {cores} cores: oversubscribed, "
            "training will be slow" + (" (set train.threads=1)" if threads > 1 else " (use fewer processes)"))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _die_with_parent(parent: int) -> None:
    """In the torchrun child, before exec (Linux): SIGTERM when this launcher dies, even by SIGKILL, so that
    torchrun stops its ranks (each rank also asks for SIGTERM when torchrun dies: training/distributed.py)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the launcher died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def launch(train_args: list[str], nproc: int, threads: int, out: Path) -> None:
    """Run ``trainfer train TRAIN_ARGS`` as ``nproc`` ranks; returns on success, raises one TrainferError else."""
    logdir = Path(tempfile.mkdtemp(prefix="trainfer-torchrun-"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--max-restarts", "0", "--redirects", "2", "--log-dir", str(logdir / "ranks"),
           "-m", "trainfer", "train", *train_args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    stopped: list[int] = []
    try:
        with open(logdir / "torchrun.log", "wb") as log:
            # Its own session: a terminal's Ctrl-C reaches this process alone, which forwards ONE signal to
            # torchrun, which forwards one to each rank (two SIGINTs could cut a rank's checkpoint clean-up short).
            me = os.getpid()
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                    preexec_fn=(lambda: _die_with_parent(me)) if sys.platform.startswith("linux")
                                    else None)

            def forward(signum: int, _frame: object) -> None:
                if not stopped:
                    stopped.append(signum)
                    proc.send_signal(signum)

            previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                rc = _wait(proc, stopped)
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        if rc == 0 and not stopped:
            _replay(_rank_log(logdir, 0))  # rank 0's warnings, if any: its stderr is the command's
            return
        raise _failure(logdir, rc, stopped, out, nproc)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def _wait(proc: subprocess.Popen[bytes], stopped: list[int]) -> int:
    deadline: float | None = None
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if stopped and deadline is None:
            deadline = time.monotonic() + STOP_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            _kill_tree(proc.pid)
            return proc.wait()


def _kill_tree(pid: int) -> None:
    """torchrun and its ranks (each rank runs in a session of its own: killed by pid, children first)."""
    for child in _children(pid):
        _kill_tree(child)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _rank_log(logdir: Path, rank: int) -> str:
    found = sorted((logdir / "ranks").glob(f"*/attempt_*/{rank}/stderr.log"))
    return found[-1].read_text(errors="replace") if found else ""


def _replay(text: str) -> None:
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()


_ERROR = re.compile(r"^error: (.*)$", re.MULTILINE)
_HINT = re.compile(r"^hint: (.*)$", re.MULTILINE)
_ROOT = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)", re.DOTALL)
_PEER = "lost contact with the other ranks"


def _failure(logdir: Path, rc: int, stopped: list[int], out: Path, nproc: int) -> TrainferError:
    resume = f"`trainfer train --out {out} --resume --nproc {nproc}` continues"
    kept = _kept(out, resume)
    if stopped:
        return Interrupted(f"interrupted: {kept}")
    errors: dict[int, tuple[str, str | None]] = {}
    for rank in range(nproc):
        text = _rank_log(logdir, rank)
        if (msgs := _ERROR.findall(text)):
            hints = _HINT.findall(text)
            errors[rank] = (msgs[-1], hints[-1] if hints else None)
    # a rank stopped by torchrun (SIGTERM once another failed) says "terminated": not a cause of its own
    own = {r: e for r, e in errors.items()
           if _PEER not in e[0] and not e[0].startswith(("interrupted", "terminated"))}
    if own:  # a rank's own error (a user mistake: usually the same on every rank)
        rank = min(own)
        message, hint = own[rank]
        if len({m for m, _ in own.values()}) > 1 or len(own) < nproc:
            message = f"rank {rank}: {message}"
        return RunError(message, hint=hint)
    root = _root_cause(logdir)
    if root is None:
        tail = (logdir / "torchrun.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return RunError(f"torchrun failed (exit code {rc}) before any rank reported: {tail[0][:300]}",
                        hint=f"check that torch is installed in {sys.executable}'s environment; {kept}")
    return RunError(f"rank {root.rank} (pid {root.pid}) {_how(root.exitcode)}; the other ranks were stopped",
                    hint=_last_line(_rank_log(logdir, root.rank)) + kept)


def _root_cause(logdir: Path) -> RankFailure | None:
    text = (logdir / "torchrun.log").read_text(errors="replace")
    m = _ROOT.search(text)
    return RankFailure(int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _last_line(text: str) -> str:
    lines = [ln.removeprefix(ln.split("]:", 1)[0] + "]:").strip() if ln.startswith("[rank") else ln.strip()
             for ln in text.splitlines() if ln.strip()]
    return f"its last words: {lines[-1][:300]}; " if lines else ""


def _kept(out: Path, resume: str) -> str:
    import json

    try:
        epoch = json.loads((out / "checkpoints" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return f"no checkpoint yet in {out}; {resume} from the start"
    return f"last checkpoint epoch {epoch} in {out}; {resume}"
