"""The distributed deployment runs for real: two schedulers, Celery workers per queue, a run completes.

Starts the native topology of docker-compose.yaml (``AirflowServer(topology="distributed")``,
what ``scripts/run-local.sh start --distributed`` runs) on PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery.devenv.airflow_server import AirflowServer
from delivery.devenv.processes import alive
from delivery.devenv.settings import COMPONENTS
from tests.helpers import REPARSE_INTERVAL, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.duration(155)]

DAGS = Path(__file__).parent / "dags"
DAG = "devenv_probe"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    """One stack for the module: the second test kills a worker of the stack the first one checked."""
    airflow = AirflowServer(
        home=tmp_path_factory.mktemp("distributed") / "airflow",
        port=free_port(),
        dags_folder=DAGS,
        topology="distributed",
        reparse_interval=REPARSE_INTERVAL,
    )
    try:
        airflow.start(timeout=300)
        yield airflow
    finally:
        airflow.destroy()


def _xcom(server: AirflowServer, run_id: str, task_id: str) -> str:
    path = f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    return str(server.api("GET", path, params={"deserialize": True})["value"]).strip("'\"")


def test_distributed_stack_runs_a_dag_on_celery_workers(server: AirflowServer) -> None:
    pids = server.components()
    assert set(pids) == {c.name for c in COMPONENTS} | {"redis", "postgres"}
    assert len(set(pids.values())) == len(pids)
    assert server.health() == {
        c.name: "healthy" for c in COMPONENTS if c.kind in ("scheduler", "celery-worker")
    }
    jobs = server.api("GET", "/jobs", params={"job_type": "SchedulerJob", "is_alive": True, "limit": 100})
    assert len(jobs["jobs"]) == 2

    server.wait_dag(DAG)
    server.unpause(DAG)
    run_id = server.trigger(DAG, conf={"sleep": 0})
    assert server.wait_run(DAG, run_id, timeout=240) == "success"

    assert _xcom(server, run_id, "work") in ("airflow-worker-1", "airflow-worker-2")
    assert _xcom(server, run_id, "gpu_work") == "airflow-worker-gpu"
    gpu = server.api("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/gpu_work")
    assert gpu["queue"] == "gpu"


def test_a_killed_worker_is_restarted_and_the_rest_adopted(server: AirflowServer) -> None:
    before = server.components()
    os.killpg(before["airflow-worker-2"], signal.SIGKILL)
    # The worker has died (not merely been sent the signal) when someone runs start again.
    deadline = time.monotonic() + 30
    while alive(before["airflow-worker-2"]) and time.monotonic() < deadline:
        time.sleep(0.1)

    server.start(timeout=300)

    after = server.components()
    assert not alive(before["airflow-worker-2"])
    assert after["airflow-worker-2"] != before["airflow-worker-2"]
    assert {k: v for k, v in after.items() if k != "airflow-worker-2"} == {
        k: v for k, v in before.items() if k != "airflow-worker-2"
    }
    assert server.health()["airflow-worker-2"] == "healthy"
