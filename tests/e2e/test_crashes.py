"""Crashes on the real local stack: Airflow killed mid-stage, a task killed under Airflow, a machine crash.

Real Airflow (api-server, scheduler, dag-processor, triggerer on PostgreSQL), Docker engine,
registry and git, on a stack of their own (its tests kill it, in order). Each test asserts what
a user would see: run states, what production serves, the GitOps history, the notifications,
and that a start after a crash keeps the same metadata database (runs, connections).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml

from delivery.devenv import processes
from tests.e2e.conftest import APPROVAL, LEAN_SKIPS, LocalStack, local_stack
from tests.helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.duration(260)]


@pytest.fixture(scope="module")
def faults(local_platform: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    demo = yaml.safe_load((ROOT / "include/catalog-local/services/visiobook-demo-web.yaml").read_text())
    staging_tests = {**demo["stages"]["staging_tests"], "retries": 0}  # the killed task's failure is final
    with local_stack(
        tmp_path_factory, overrides={"stages": {"staging_tests": staging_tests}}, skips=LEAN_SKIPS
    ) as built:
        yield built


def _kill_9(pids: list[int], *, group: bool = False) -> None:
    """SIGKILL, as a crash does, and wait until nothing of them is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a postgres child may exit with its parent
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        _group_alive(pid) if group else processes.alive(pid) for pid in pids
    ):
        time.sleep(0.1)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _runs(stack: LocalStack) -> dict[str, str]:
    data = stack.airflow.api("GET", f"/dags/{stack.dag_id}/dagRuns", params={"limit": 100})
    return {r["dag_run_id"]: r["state"] for r in data["dag_runs"]}


def test_kill_9_of_the_stack_mid_stage_then_start_completes_the_run_once(faults: LocalStack) -> None:
    airflow = faults.airflow
    airflow.api(
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
    before = faults.gitops_log("production")
    sha = faults.commit("release 4.3.0", {"VERSION": "4.3.0\n"})
    run_id = airflow.trigger(faults.dag_id, conf={"ref": "main", "sha": sha})
    stage = "build_and_test.integration_tests"
    airflow.wait_task(faults.dag_id, run_id, stage, states=("running",), timeout=400)
    database, postgres = airflow.database_url(), airflow.components()["postgres"]

    leader = airflow.components()["airflow-standalone"]
    # The task runners among them live in process groups of their own. (pid, start time): one process.
    crashed = {(p.pid, p.start) for pid in processes.session(leader) if (p := processes.stat(pid))}
    _kill_9([leader], group=True)  # PostgreSQL keeps running

    airflow.start()

    left = [
        pid
        for pid, start in crashed
        if (p := processes.stat(pid)) and p.start == start and processes.alive(pid)
    ]
    assert not left, f"processes of the crashed Airflow still run after the start: {left}"
    assert airflow.database_url() == database
    assert airflow.components()["postgres"] == postgres
    assert not (airflow.home / "airflow.db").exists()
    assert airflow.api("GET", "/connections/probe_http")["host"] == "probe.invalid"
    assert airflow.run_state(faults.dag_id, run_id) in ("running", "queued")
    airflow.wait_task(faults.dag_id, run_id, APPROVAL, states=("awaiting_input",), timeout=600)
    time.sleep(3)
    airflow.respond(faults.dag_id, run_id, APPROVAL, option="Approve", user="alice")
    assert airflow.wait_run(faults.dag_id, run_id, timeout=500) == "success"
    assert faults.serving("production")["commit"] == sha
    new = faults.gitops_log("production")[: len(faults.gitops_log("production")) - len(before)]
    assert len(new) == 1, "deployed exactly once"
    killed = airflow.api("GET", f"/dags/{faults.dag_id}/dagRuns/{run_id}/taskInstances/{stage}")
    assert killed["state"] == "success" and killed["try_number"] >= 2, killed


def _process_tree(root: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(root)], capture_output=True, text=True, check=False).stdout
    return [root, *(pid for child in map(int, children.split()) for pid in _process_tree(child))]


def test_a_task_killed_under_airflow_is_failed_by_the_scheduler_and_notified(faults: LocalStack) -> None:
    sha = faults.commit("release 4.5.0", {"VERSION": "4.5.0\n", "staging-tests.sh": "sleep 120\n"})
    run_id = faults.airflow.trigger(faults.dag_id, conf={"ref": "main", "sha": sha})
    task = "integration.staging_tests"
    faults.airflow.wait_task(faults.dag_id, run_id, task, states=("running",), timeout=600)
    ti = faults.airflow.api("GET", f"/dags/{faults.dag_id}/dagRuns/{run_id}/taskInstances/{task}")
    supervisor = subprocess.run(
        ["pgrep", "-f", f"airflow worker -- {ti['id']}"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert supervisor, "the task's supervisor process was not found"
    for pid in _process_tree(
        int(supervisor[0])
    ):  # the task's whole process tree, as kill -9 of a worker does
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # No process reports the end: the scheduler fails the task when its heartbeat stops.
    assert faults.airflow.wait_run(faults.dag_id, run_id, timeout=600) == "failed"
    assert faults.airflow.task_states(faults.dag_id, run_id)[task] == "failed"
    texts = [t for t in faults.slack_texts() if task in t and run_id in t]
    assert texts, f"no failure notification names {task} of {run_id}: {faults.slack_texts()[-5:]}"
    faults.commit("staging tests back to normal", {"staging-tests.sh": None})


def test_a_machine_crash_with_a_stale_postgres_pid_file_restarts_cleanly(faults: LocalStack) -> None:
    """Airflow and PostgreSQL die at once, and after the reboot PostgreSQL's pid is another program's."""
    airflow = faults.airflow
    history = _runs(faults)  # in this module: the runs of the tests above, a success and a failure
    database, pids = airflow.database_url(), airflow.components()
    pid_file = airflow._cluster().data / "postmaster.pid"

    _kill_9([pids["airflow-standalone"]], group=True)
    _kill_9(_process_tree(pids["postgres"]))
    assert pid_file.exists()
    other = subprocess.Popen(["sleep", "300"])
    try:
        _, rest = pid_file.read_text().split("\n", 1)
        pid_file.write_text(f"{other.pid}\n{rest}")

        airflow.start()

        assert airflow.database_url() == database
        assert airflow.components()["postgres"] not in (pids["postgres"], other.pid)
        assert _runs(faults) == history
        assert other.poll() is None, "the program that got PostgreSQL's old pid is left alone"
    finally:
        other.kill()
        other.wait()
