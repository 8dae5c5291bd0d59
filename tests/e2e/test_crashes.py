"""Crashes on the real local stack: the whole stack killed mid-stage, a task killed under Airflow.

Real Airflow (api-server, scheduler, dag-processor, triggerer on PostgreSQL), Docker engine,
registry and git, on a stack of their own (the first test kills it). Each test asserts what a
user would see: run states, what production serves, the GitOps history, the notifications.
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

from tests.e2e.conftest import APPROVAL, LocalStack, local_stack
from tests.helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.duration(300)]


@pytest.fixture(scope="module")
def faults(local_platform: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    demo = yaml.safe_load((ROOT / "include/catalog-local/services/visiobook-demo-web.yaml").read_text())
    staging_tests = {**demo["stages"]["staging_tests"], "retries": 0}  # the killed task's failure is final
    with local_stack(
        tmp_path_factory, overrides={"stages": {"staging_tests": staging_tests}}, lean=True
    ) as built:
        yield built


def test_kill_9_of_the_stack_mid_stage_then_start_completes_the_run_once(faults: LocalStack) -> None:
    before = faults.gitops_log("production")
    sha = faults.commit("release 4.3.0", {"VERSION": "4.3.0\n"})
    run_id = faults.airflow.trigger(faults.dag_id, conf={"ref": "main", "sha": sha})
    faults.airflow.wait_task(
        faults.dag_id, run_id, "build_and_test.integration_tests", states=("running",), timeout=400
    )
    database = faults.airflow.database_url()
    leader = faults.airflow.components()["airflow-standalone"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _group_alive(leader) and time.monotonic() < deadline:  # as a crash leaves it: nothing of the group
        time.sleep(0.1)

    faults.airflow.start()

    assert faults.airflow.database_url() == database
    assert faults.airflow.run_state(faults.dag_id, run_id) in ("running", "queued")
    faults.airflow.wait_task(faults.dag_id, run_id, APPROVAL, states=("awaiting_input",), timeout=600)
    time.sleep(3)
    faults.airflow.respond(faults.dag_id, run_id, APPROVAL, option="Approve", user="alice")
    assert faults.airflow.wait_run(faults.dag_id, run_id, timeout=500) == "success"
    assert faults.serving("production")["commit"] == sha
    new = faults.gitops_log("production")[: len(faults.gitops_log("production")) - len(before)]
    assert len(new) == 1, "deployed exactly once"


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


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
