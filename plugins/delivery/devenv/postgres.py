"""PostgreSQL clusters from the host's binaries (Debian's ``postgresql`` package).

Used for the test database of integration-test stages (local profile) and for
the metadata database of the local Airflow (SQLite cannot run backfills while
the scheduler writes). As root, the server runs as the ``postgres`` user, since
PostgreSQL refuses to run as root.

Every cluster requires a password (SCRAM-SHA-256) on 127.0.0.1 and on its
socket: no ``trust`` line, so another local user or process cannot connect.
:meth:`PostgresCluster.start` is safe to call again after a crash: it adopts a
server of this data directory that is still running (after checking that it
answers with our password and serves this data directory), and clears a stale
``postmaster.pid`` whose pid is gone or now belongs to another process (a pid
reused after a reboot), which ``pg_ctl start`` would otherwise refuse with
"another server might be running".
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from delivery.devenv.processes import alive, cmdline

HBA_MARKER = "# delivery: password authentication only"
PG_HBA = f"""{HBA_MARKER}
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  scram-sha-256
host    all       all   127.0.0.1/32   scram-sha-256
"""


class PostgresError(RuntimeError):
    pass


def find_bindir() -> Path:
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    candidates = [d / "initdb" for d in bindirs]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve())
    for initdb in candidates:
        if all((initdb.parent / tool).exists() for tool in ("initdb", "pg_ctl", "createdb", "psql")):
            return initdb.parent
    raise PostgresError("PostgreSQL is not installed (Debian: apt-get install postgresql)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def say(message: str) -> None:
    print(f"[postgres] {message}", file=sys.stderr, flush=True)


class PostgresCluster:
    """A cluster in ``folder`` on 127.0.0.1:``port``, superuser ``user`` with ``password`` (generated if None)."""

    def __init__(
        self, *, folder: Path, port: int | None = None, user: str = "delivery", password: str | None = None
    ) -> None:
        self.folder = Path(folder)
        self.data = self.folder / "data"
        self.port = port or free_port()
        self.user = user
        self.password = password or secrets.token_urlsafe(24)
        self.bindir = find_bindir()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"/usr/sbin:/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PGPASSWORD": self.password,  # never on a command line, where `ps` would show it
        }
        proc = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, env=env, check=False, input=stdin
        )
        if check and proc.returncode != 0:
            raise PostgresError(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()[:500]}")
        return proc

    def url(self, database: str, *, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    # -- the postmaster.pid left by a running (or crashed) server ---------------------------

    def _pid_file(self) -> list[str]:
        try:
            return (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def server_pid(self) -> int | None:
        """The pid of the server of this data directory, if one is running (whatever it answers)."""
        lines = self._pid_file()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        argv = cmdline(pid)
        if not alive(pid) or not argv or Path(argv[0]).name not in ("postgres", "postmaster"):
            return None  # gone, a backend's title, or another program that got the pid after a reboot
        try:
            data_dir = Path(argv[argv.index("-D") + 1])
        except (ValueError, IndexError):
            return None
        return pid if data_dir.resolve() == self.data.resolve() else None

    def _query(self, sql: str, *, database: str = "postgres") -> str:
        proc = self._run(
            str(self.bindir / "psql"),
            "-X",
            "-At",
            *self._connect_args(),
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            stdin=sql,
        )
        return proc.stdout.strip()

    def _adopt(self, pid: int) -> None:
        lines = self._pid_file()
        if len(lines) > 3 and lines[3].strip().isdigit():
            self.port = int(lines[3])
        deadline = time.monotonic() + 30
        while True:
            try:
                served = self._query("SHOW data_directory;")
                break
            except PostgresError as exc:
                if time.monotonic() > deadline or not alive(pid):
                    raise PostgresError(
                        f"a PostgreSQL server (pid {pid}) runs on {self.data} but does not answer on "
                        f"127.0.0.1:{self.port} with our password ({exc}); stop it "
                        f"(pg_ctl -D {self.data} stop) and start again"
                    ) from exc
                time.sleep(1)
        if Path(served).resolve() != self.data.resolve():
            raise PostgresError(f"127.0.0.1:{self.port} serves {served}, not our cluster {self.data}")
        say(f"adopted the running server (pid {pid}) on 127.0.0.1:{self.port}")

    def _clear_stale_lock(self) -> None:
        lines = self._pid_file()
        if not lines:
            return
        say(f"removing the stale {self.data / 'postmaster.pid'} (pid {lines[0].strip()} is not our server)")
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        if len(lines) > 3 and lines[3].strip().isdigit():
            for leftover in (f".s.PGSQL.{lines[3].strip()}.lock", f".s.PGSQL.{lines[3].strip()}"):
                (self.folder / leftover).unlink(missing_ok=True)

    # -- lifecycle ----------------------------------------------------------------------------

    def _init(self) -> None:
        pwfile = self.folder / ".initdb-password"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._as_user:
            shutil.chown(pwfile, "postgres")
        try:
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        (self.data / "pg_hba.conf").write_text(PG_HBA)

    def _secure(self) -> None:
        """A cluster made before passwords were required (trust): set the password, then require it."""
        hba = self.data / "pg_hba.conf"
        if HBA_MARKER in hba.read_text():
            return
        escaped = self.password.replace("'", "''")
        self._query(f"ALTER ROLE \"{self.user}\" PASSWORD '{escaped}';")
        hba.write_text(PG_HBA)
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "reload")
        say("now requires a password (pg_hba.conf rewritten)")

    def start(self) -> PostgresCluster:
        """Start the server, or adopt ours if it is running; initialise the cluster the first time."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_user:
            shutil.chown(self.folder, "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._init()
        pid = self.server_pid()
        if pid is not None:
            self._adopt(pid)
            self._secure()
            return self
        self._clear_stale_lock()
        if port_in_use(self.port):
            old, self.port = self.port, free_port()
            say(f"port {old} is taken by another program; using {self.port}")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        try:
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.folder / "log"),
                "-o",
                options,
                "start",
            )
        except PostgresError as exc:
            raise PostgresError(f"{exc} (see {self.folder / 'log'})") from exc
        self._secure()
        return self

    def _connect_args(self) -> tuple[str, ...]:
        """How the client programs reach this cluster (the password comes in their environment)."""
        return ("-h", "127.0.0.1", "-p", str(self.port), "-U", self.user)

    def create_database(self, name: str) -> None:
        proc = self._run(str(self.bindir / "createdb"), *self._connect_args(), name, check=False)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise PostgresError(f"createdb {name} failed: {proc.stderr.strip()[:500]}")

    def stop(self) -> None:
        if self.server_pid() is not None:
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False
            )
