"""A real PostgreSQL server for the storage tests: Debian's binaries, a temporary data directory, loopback only.

`scripts/ensure-postgresql` (run by `make test`) installs the binaries when they are missing. The server listens
on 127.0.0.1 on a free port and on a unix socket in its own temporary folder, trusts local connections, and is
stopped (immediate mode) and deleted when the tests are done, however they end. PostgreSQL refuses to run as
root, so under root the server runs as the `postgres` system user (Debian's package creates it) or `nobody`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "trainfer"
START_TIMEOUT_S = 60


def server_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres: Debian's newest version, else the one on PATH."""
    lib = os.environ.get("TRAINFER_POSTGRESQL_LIB", "/usr/lib/postgresql")
    names = ("initdb", "pg_ctl", "postgres")
    found = [Path(d) for d in glob.glob(f"{lib}/*/bin") if all(os.access(Path(d) / n, os.X_OK) for n in names)]
    if found:
        return max(found, key=lambda d: [int(x) for x in re.findall(r"\d+", d.parent.name)] or [0])
    on_path = [shutil.which(n) for n in names]
    if all(on_path):
        return Path(on_path[0]).resolve().parent
    raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl, postgres); run scripts/ensure-postgresql "
                       "(make test does) or: sudo apt-get install -y postgresql")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # data/, the socket and the log live here
    port: int = 0
    user: tuple[int, int] | None = None  # (uid, gid) the server runs as, when this process is root
    _dbs: int = field(default=0, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:  # postgres refuses root: drop to the server's user for every server command
            uid, gid = self.user
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def init(self) -> None:
        res = self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                        "--no-sync", "--locale=C")
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{res.stdout}\n{res.stderr}")

    def start(self) -> None:
        for _ in range(3):  # a free port can be taken by someone else before the server binds it
            self.port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
            res = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT_S),
                            "-o", opts, "start", timeout=START_TIMEOUT_S + 10)
            if res.returncode == 0:
                return
        raise RuntimeError(f"the PostgreSQL server did not start:\n{res.stderr}\n{self._log_tail()}")

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        res = self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=40)
        if res.returncode != 0 and (self.data / "postmaster.pid").exists():  # pg_ctl could not: kill the postmaster
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), 9)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-20:])
        except OSError:
            return ""

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg2

        self._dbs += 1
        name = f"study_{self._dbs}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _server_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root, and there is neither a postgres nor a nobody user to run the server as")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throw-away server; stop it and delete its files on the way out, whatever happened."""
    bin_dir = server_binaries()
    user = _server_user()
    # Not under pytest's tmp_path: that is private to root, and the server's user must reach its folder. A short
    # path also keeps the unix socket's path under its 107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="trainfer-pg-"))
    server = PostgresServer(bin_dir, root, user=user)
    try:
        if user is not None:
            os.chown(root, *user)
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
