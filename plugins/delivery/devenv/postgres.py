"""Throwaway PostgreSQL clusters from the host's binaries (Debian's ``postgresql`` package).

Used for the test database of integration-test stages (local profile) and for
the metadata database of the local Airflow (SQLite cannot run backfills while
the scheduler writes). As root, the server runs as the ``postgres`` user, since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path


class PostgresError(RuntimeError):
    pass


def find_bindir() -> Path:
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    candidates = [d / "initdb" for d in bindirs]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve())
    for initdb in candidates:
        if all((initdb.parent / tool).exists() for tool in ("initdb", "pg_ctl", "createdb")):
            return initdb.parent
    raise PostgresError("PostgreSQL is not installed (Debian: apt-get install postgresql)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A cluster in ``folder`` on 127.0.0.1:``port``, user ``user`` with trust auth on loopback."""

    def __init__(self, *, folder: Path, port: int | None = None, user: str = "delivery") -> None:
        self.folder = Path(folder)
        self.data = self.folder / "data"
        self.port = port or free_port()
        self.user = user
        self.bindir = find_bindir()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": f"/usr/sbin:/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        proc = subprocess.run([*self._as_user, *args], capture_output=True, text=True, env=env, check=False)
        if check and proc.returncode != 0:
            raise PostgresError(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()[:500]}")
        return proc

    def url(self, database: str, *, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_user:
            shutil.chown(self.folder, "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
            )
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
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
        return self

    def create_database(self, name: str) -> None:
        proc = self._run(
            str(self.bindir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            name,
            check=False,
        )
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise PostgresError(f"createdb {name} failed: {proc.stderr.strip()[:500]}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False
            )
