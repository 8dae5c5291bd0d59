"""The local PostgreSQL requires a password, adopts its running server, and survives a stale pid file."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from delivery.devenv.postgres import HBA_MARKER, PostgresCluster, find_bindir

pytestmark = pytest.mark.e2e


@pytest.fixture
def folder() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root the server runs as `postgres`, who cannot enter it.
    path = Path(tempfile.mkdtemp(prefix="delivery-pgtest-"))
    try:
        yield path
    finally:
        cluster = PostgresCluster(folder=path, user="airflow")
        cluster.stop()
        shutil.rmtree(path, ignore_errors=True)


def _connect(cluster: PostgresCluster, password: str | None) -> str:
    kwargs = {"host": "127.0.0.1", "port": cluster.port, "user": cluster.user, "dbname": "postgres"}
    if password is not None:
        kwargs["password"] = password
    try:
        psycopg2.connect(connect_timeout=5, **kwargs).close()
    except psycopg2.OperationalError as exc:
        return str(exc)
    return "connected"


def test_a_connection_without_the_password_is_refused(folder: Path) -> None:
    cluster = PostgresCluster(folder=folder, user="airflow").start()

    assert "no password supplied" in _connect(cluster, None)
    assert "password authentication failed" in _connect(cluster, "not-the-password")
    assert _connect(cluster, cluster.password) == "connected"
    hba = (cluster.data / "pg_hba.conf").read_text()
    assert "trust" not in hba.replace(HBA_MARKER, "")
    assert "scram-sha-256" in hba


def test_a_running_server_is_adopted_not_restarted(folder: Path) -> None:
    first = PostgresCluster(folder=folder, user="airflow").start()
    pid = first.server_pid()

    again = PostgresCluster(folder=folder, user="airflow", password=first.password).start()

    assert again.server_pid() == pid
    assert again.port == first.port
    assert _connect(again, first.password) == "connected"


def test_a_stale_pid_file_whose_pid_was_reused_does_not_block_the_start(folder: Path) -> None:
    first = PostgresCluster(folder=folder, user="airflow").start()
    pid_file = first.data / "postmaster.pid"
    saved = pid_file.read_text()
    first.stop()
    # A machine crash leaves the pid file; after the reboot its pid belongs to another process.
    other = subprocess.Popen(["sleep", "120"])
    try:
        pid_file.write_text(saved.replace(saved.split("\n", 1)[0], str(other.pid), 1))

        again = PostgresCluster(folder=folder, user="airflow", password=first.password).start()

        assert again.server_pid() not in (None, other.pid)
        assert _connect(again, first.password) == "connected"
        assert other.poll() is None  # the unrelated process was left alone
    finally:
        other.kill()
        other.wait()


def test_a_cluster_made_with_trust_gets_a_password(folder: Path) -> None:
    bindir = find_bindir()
    legacy = PostgresCluster(folder=folder, user="airflow")
    folder.mkdir(exist_ok=True)
    as_user = ["runuser", "-u", "postgres", "--"] if legacy._as_user else []
    if as_user:
        shutil.chown(folder, "postgres")
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(legacy.data), "-U", "airflow", "--auth=trust"],
        check=True,
        capture_output=True,
    )

    cluster = legacy.start()

    assert HBA_MARKER in (cluster.data / "pg_hba.conf").read_text()
    assert "no password supplied" in _connect(cluster, None)
    assert _connect(cluster, cluster.password) == "connected"
