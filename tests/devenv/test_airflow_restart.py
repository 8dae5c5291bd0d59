"""A crash and a restart keep the same metadata database, and an interrupted run resumes.

A real ``airflow standalone`` on PostgreSQL; the crash is ``kill -9`` of its whole process
group (PostgreSQL keeps running), or a machine crash (PostgreSQL's pid file left behind,
its pid now another process). The two crashes happen to one Airflow home, one after the other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery.devenv import processes
from delivery.devenv.airflow_server import AirflowError, AirflowServer
from tests.helpers import REPARSE_INTERVAL, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.duration(330)]

DAGS = Path(__file__).parent / "dags"
DAG = "devenv_probe"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "airflow"
    try:
        yield path
    finally:
        AirflowServer(home=path).destroy()


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """The home and port of the Airflow that the crash tests crash and start again, in order."""
    path = tmp_path_factory.mktemp("crashes") / "airflow"
    try:
        yield path, free_port()
    finally:
        AirflowServer(home=path).destroy()


def _started(home: Path, port: int) -> AirflowServer:
    server = AirflowServer(home=home, port=port, dags_folder=DAGS, reparse_interval=REPARSE_INTERVAL)
    server.start()
    server.wait_dag(DAG)
    return server


def test_kill_9_of_airflow_then_start_keeps_history_and_resumes_the_run(crashed: tuple[Path, int]) -> None:
    home, port = crashed
    server = _started(home, port)
    server.unpause(DAG)
    server.api(
        "POST",
        "/connections",
        json={
            "connection_id": "probe_http",
            "conn_type": "http",
            "host": "probe.invalid",
            "password": "s3cret",
        },
        expect=(201,),
    )
    done = server.trigger(DAG, conf={"sleep": 0})
    assert server.wait_run(DAG, done, timeout=180) == "success"
    database, postgres = server.database_url(), server.components()["postgres"]
    interrupted = server.trigger(DAG, conf={"sleep": 45})
    server.wait_task(DAG, interrupted, "work", states=("running",), timeout=120)

    leader = server.components()["airflow-standalone"]
    _kill_9([leader], group=True)
    left = processes.leftovers(server.pid_file)
    assert left, "the running task lives in a process group of its own and survives the kill"

    restarted = _started(home, port)

    assert not any(processes.alive(pid) for pid in left)
    assert restarted.database_url() == database
    assert restarted.components()["postgres"] == postgres
    assert not (home / "airflow.db").exists()
    assert restarted.api("GET", "/connections/probe_http")["host"] == "probe.invalid"
    runs = {r["dag_run_id"]: r["state"] for r in restarted.api("GET", f"/dags/{DAG}/dagRuns")["dag_runs"]}
    assert runs[done] == "success"
    assert restarted.wait_run(DAG, interrupted, timeout=300) == "success"
    work = restarted.api("GET", f"/dags/{DAG}/dagRuns/{interrupted}/taskInstances/work")
    assert work["try_number"] >= 2


def _kill_9(pids: list[int], *, group: bool = False) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a postgres child may exit with its parent
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(processes.alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _kill_postgres(pid: int) -> None:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    _kill_9([pid, *map(int, children.stdout.split())])


def test_a_machine_crash_with_a_stale_postgres_pid_file_restarts_cleanly(crashed: tuple[Path, int]) -> None:
    home, port = crashed
    server = _started(home, port)  # the one the test above restarted (or a new one, run alone)
    server.unpause(DAG)
    done = server.trigger(DAG, conf={"sleep": 0})
    assert server.wait_run(DAG, done, timeout=180) == "success"
    history = {r["dag_run_id"]: r["state"] for r in server.api("GET", f"/dags/{DAG}/dagRuns")["dag_runs"]}
    database, pids = server.database_url(), server.components()
    pid_file = server._cluster().data / "postmaster.pid"

    _kill_9([pids["airflow-standalone"]], group=True)
    _kill_postgres(pids["postgres"])
    assert pid_file.exists()
    other = subprocess.Popen(["sleep", "300"])  # after the reboot, the pid is another program's
    try:
        _, rest = pid_file.read_text().split("\n", 1)
        pid_file.write_text(f"{other.pid}\n{rest}")

        restarted = _started(home, port)

        assert restarted.database_url() == database
        assert restarted.components()["postgres"] not in (pids["postgres"], other.pid)
        runs = {r["dag_run_id"]: r["state"] for r in restarted.api("GET", f"/dags/{DAG}/dagRuns")["dag_runs"]}
        assert runs == history and runs[done] == "success"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_no_silent_switch_to_sqlite(home: Path) -> None:
    server = AirflowServer(home=home, port=free_port(), dags_folder=DAGS)
    data = server._cluster().data
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")  # a broken cluster: PostgreSQL cannot start on it

    with pytest.raises(AirflowError, match=r"(?s)PostgreSQL.* cannot start.*see .*log.*--database sqlite"):
        server.start()

    assert not (home / "airflow.db").exists()
    assert not server.components()
    explicit = AirflowServer(home=home, port=server.port, dags_folder=DAGS, database="sqlite")
    explicit.start()
    try:
        assert explicit.database_url() == f"sqlite:///{home.resolve()}/airflow.db"
        assert explicit.api("GET", "/monitor/health")["metadatabase"]["status"] == "healthy"
    finally:
        explicit.stop()
