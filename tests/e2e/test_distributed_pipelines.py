"""The pipelines on the distributed (Celery) stack survive the loss of a worker and of a scheduler.

The topology of ``docker-compose.yaml`` run natively (``AirflowServer(topology="distributed")``:
PostgreSQL, Redis, api-server, two schedulers, dag-processor, triggerer, Celery workers
``airflow-worker-1`` and ``-2`` on the default queue, ``airflow-worker-gpu`` on the gpu queue),
with three services delivered at once, full pipelines to production: two copies of the demo
web service and the inference service (its GPU stages on the gpu queue, CPU path). While they
run, the worker running a stage of one of them is lost (``kill -9`` of every process of that
node, the stage's command included), then the scheduler that queued that stage. Asserted as a
user sees it: the runs' states, the tries of the killed stage and where each ran (REST), the
GitOps history, what production serves, and that nothing is left queued or running.

One stack for the module, its tests in order: it starts as the compose topology, the
pipelines survive the lost nodes, then ``start`` brings the lost nodes back and adopts the
rest (what ``scripts/run-local.sh start --distributed`` does after a crash).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy

from delivery.devenv.processes import alive
from delivery.devenv.settings import COMPONENTS
from tests.e2e.conftest import APPROVAL, DEMO, LocalStack, local_stack
from tests.e2e.nodes import kill_node, node_processes, stage_process

pytestmark = [pytest.mark.e2e, pytest.mark.duration(280)]

DEFAULT_WORKERS = ("airflow-worker-1", "airflow-worker-2")
SCHEDULERS = ("airflow-scheduler-1", "airflow-scheduler-2")
# Stages of the web service whose command runs several seconds and starts no daemon (the
# integration tests' throwaway PostgreSQL, started by pg_ctl, leaves the worker's process
# tree, so a lost node would not take it along here), in pipeline order: the first one seen
# running its command on a worker is the one killed.
KILLABLE = ("validate.helm_validate", "validate.sast", "build_and_test.unit_tests", "build_and_test.coverage")
APPROVERS = ("alice", "bob", "erin")  # of each service, in the order of the fleet
FINISHED = ("success", "failed", "skipped", "upstream_failed", "removed")
UNFINISHED = (
    "scheduled",
    "queued",
    "running",
    "restarting",
    "up_for_retry",
    "up_for_reschedule",
    "deferred",
    "awaiting_input",
)


@dataclass
class Delivery:
    stack: LocalStack
    approver: str
    sha: str
    staging_before: list[str]
    production_before: list[str]
    run_id: str = ""
    asked_at: float | None = None  # when its approval was first seen waiting
    approved: bool = False


@pytest.fixture(scope="module")
def fleet(local_platform: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalStack]]:
    with local_stack(
        tmp_path_factory,
        topology="distributed",
        also=(DEMO, "visiobook-inference"),
        overrides={"approval_timeout": "30m"},  # the approvers below answer; no timeout on a slow machine
        # Stages none of its checks look at, and that start containers or wait on the network:
        # the validate and build stages it kills are all there.
        skips=("dependency_audit", "integration_tests", "staging_tests"),
    ) as first:
        yield [first, *first.others]


def _release(stack: LocalStack, approver: str, version: str) -> Delivery:
    staging, production = stack.gitops_log("staging"), stack.gitops_log("production")
    sha = stack.commit(f"release {version}", {"VERSION": f"{version}\n"})
    return Delivery(stack, approver, sha, staging, production)


def _task_instances(stack: LocalStack, run_id: str) -> dict[str, dict[str, Any]]:
    path = f"/dags/{stack.dag_id}/dagRuns/{run_id}/taskInstances"
    return {
        ti["task_id"]: ti for ti in stack.airflow.api("GET", path, params={"limit": 200})["task_instances"]
    }


def _catch_a_stage_at_work(delivery: Delivery) -> tuple[str, str]:
    """The first KILLABLE stage seen running its command on a default worker: (task id, worker)."""
    stack = delivery.stack
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        tis = _task_instances(stack, delivery.run_id)
        for task_id in KILLABLE:
            ti = tis.get(task_id) or {}
            if ti.get("state") != "running" or ti.get("hostname") not in DEFAULT_WORKERS:
                continue
            command = stage_process(stack.service, task_id.split(".", 1)[1])
            leader = stack.airflow.components().get(ti["hostname"])
            if command and leader and command in node_processes(leader):
                return task_id, ti["hostname"]
        if all((tis.get(t) or {}).get("state") in FINISHED for t in KILLABLE):
            break
        time.sleep(0.3)
    raise AssertionError(
        f"no stage of {KILLABLE} was seen at work: {stack.airflow.task_states(stack.dag_id, delivery.run_id)}"
    )


def _scheduler_that_queued(stack: LocalStack, run_id: str, task_id: str) -> str:
    """The scheduler (its node's hostname) that queued the task; REST does not show ``queued_by_job_id``."""
    engine = sqlalchemy.create_engine(stack.airflow.database_url())
    try:
        with engine.connect() as conn:
            hostname = conn.execute(
                sqlalchemy.text(
                    "SELECT job.hostname FROM task_instance ti JOIN job ON job.id = ti.queued_by_job_id "
                    "WHERE ti.dag_id = :dag AND ti.run_id = :run AND ti.task_id = :task"
                ),
                {"dag": stack.dag_id, "run": run_id, "task": task_id},
            ).scalar()
    finally:
        engine.dispose()
    assert hostname in SCHEDULERS, f"{task_id} was queued by {hostname!r}, not by one of {SCHEDULERS}"
    return str(hostname)


def _approve_and_finish(deliveries: list[Delivery], *, timeout: float) -> dict[str, str]:
    """Approve each run once its approval waits (a person answers in seconds); the runs' end states."""
    airflow = deliveries[0].stack.airflow
    ended: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(deliveries) and time.monotonic() < deadline:
        for d in deliveries:
            if d.run_id in ended:
                continue
            if (state := airflow.run_state(d.stack.dag_id, d.run_id)) in ("success", "failed"):
                ended[d.run_id] = state
            elif (
                not d.approved
                and airflow.task_states(d.stack.dag_id, d.run_id).get(APPROVAL) == "awaiting_input"
            ):
                d.asked_at = d.asked_at or time.monotonic()
                if time.monotonic() - d.asked_at >= 3:
                    airflow.respond(d.stack.dag_id, d.run_id, APPROVAL, option="Approve", user=d.approver)
                    d.approved = True
        time.sleep(2)
    stuck = {
        d.stack.dag_id: airflow.task_states(d.stack.dag_id, d.run_id)
        for d in deliveries
        if d.run_id not in ended
    }
    assert not stuck, f"runs still unfinished after {timeout:.0f}s: {stuck}"
    return ended


def _new_deploys(stack: LocalStack, environment: str, before: list[str]) -> list[str]:
    log = stack.gitops_log(environment)
    return log[: len(log) - len(before)]


def test_the_stack_is_the_compose_topology(fleet: list[LocalStack]) -> None:
    """Every component of docker-compose.yaml runs as its own process group, healthy; two schedulers."""
    airflow = fleet[0].airflow
    pids = airflow.components()
    assert set(pids) == {c.name for c in COMPONENTS} | {"redis", "postgres"}
    assert len(set(pids.values())) == len(pids)
    assert airflow.health() == {
        c.name: "healthy" for c in COMPONENTS if c.kind in ("scheduler", "celery-worker")
    }
    jobs = airflow.api("GET", "/jobs", params={"job_type": "SchedulerJob", "is_alive": True, "limit": 100})
    assert len(jobs["jobs"]) == 2


@pytest.mark.timeout(2400)
def test_pipelines_complete_once_after_losing_a_worker_and_a_scheduler(fleet: list[LocalStack]) -> None:
    airflow = fleet[0].airflow
    deliveries = [
        _release(stack, approver, f"3.{n}.0")
        for n, (stack, approver) in enumerate(zip(fleet, APPROVERS, strict=True))
    ]
    for d in deliveries:  # all at once
        d.run_id = airflow.trigger(d.stack.dag_id, conf={"ref": "main", "sha": d.sha})
    target = deliveries[0]

    for _ in KILLABLE:  # a stage seen at work may end before its node is frozen: catch the next one
        task_id, worker = _catch_a_stage_at_work(target)

        def still_running(task_id: str = task_id) -> bool:
            return _task_instances(target.stack, target.run_id)[task_id]["state"] == "running"

        if kill_node(airflow.components()[worker], only_if=still_running):
            break
    else:
        raise AssertionError(f"every stage of {KILLABLE} ended before its worker could be frozen")
    scheduler = _scheduler_that_queued(target.stack, target.run_id, task_id)
    kill_node(airflow.components()[scheduler])
    assert not {worker, scheduler} & set(airflow.components())

    ended = _approve_and_finish(deliveries, timeout=1500)

    for d in deliveries:
        assert ended[d.run_id] == "success", (d.stack.service, airflow.task_states(d.stack.dag_id, d.run_id))
    # The killed stage ran again, on the other worker, and only twice.
    ti = _task_instances(target.stack, target.run_id)[task_id]
    assert (ti["try_number"], ti["state"]) == (2, "success")
    path = f"/dags/{target.stack.dag_id}/dagRuns/{target.run_id}/taskInstances/{task_id}/tries"
    tries = sorted(airflow.api("GET", path)["task_instances"], key=lambda t: t["try_number"])
    (survivor,) = set(DEFAULT_WORKERS) - {worker}
    assert [(t["try_number"], t["hostname"]) for t in tries] == [(1, worker), (2, survivor)], tries
    # Each run deployed once to staging and once to production, and production serves its commit.
    for d in deliveries:
        stack = d.stack
        assert len(_new_deploys(stack, "staging", d.staging_before)) == 1, stack.service
        (deploy,) = _new_deploys(stack, "production", d.production_before)
        trailers = stack.gitops_trailers(deploy)
        assert f"Delivery-Run-Id: {d.run_id}" in trailers and f"Delivery-Source-Sha: {d.sha}" in trailers
        assert f"Delivery-Approver: {d.approver}" in trailers
        assert stack.serving("production")["commit"] == d.sha, stack.service
    # The AI service's GPU stages ran on the gpu worker.
    gpu = _task_instances(fleet[2], deliveries[2].run_id)["gpu_tests.benchmark"]
    assert (gpu["queue"], gpu["hostname"], gpu["state"]) == ("gpu", "airflow-worker-gpu", "success")
    # Nothing is left stuck anywhere.
    left = airflow.api(
        "GET", "/dags/~/dagRuns/~/taskInstances", params={"state": list(UNFINISHED), "limit": 100}
    )
    assert left["total_entries"] == 0, [
        (t["dag_id"], t["task_id"], t["state"]) for t in left["task_instances"]
    ]
    runs = airflow.api("GET", "/dags/~/dagRuns", params={"state": ["queued", "running"]})
    assert runs["total_entries"] == 0, runs["dag_runs"]


def test_start_brings_lost_nodes_back_and_adopts_the_rest(fleet: list[LocalStack]) -> None:
    """After the nodes lost above, ``start`` restarts them; then a worker killed alone is the only
    process a second ``start`` replaces."""
    airflow = fleet[0].airflow
    airflow.start(timeout=300)
    before = airflow.components()
    assert set(before) == {c.name for c in COMPONENTS} | {"redis", "postgres"}

    os.killpg(before["airflow-worker-2"], signal.SIGKILL)
    # The worker has died (not merely been sent the signal) when someone runs start again.
    deadline = time.monotonic() + 30
    while alive(before["airflow-worker-2"]) and time.monotonic() < deadline:
        time.sleep(0.1)

    airflow.start(timeout=300)

    after = airflow.components()
    assert not alive(before["airflow-worker-2"])
    assert after["airflow-worker-2"] != before["airflow-worker-2"]
    assert {k: v for k, v in after.items() if k != "airflow-worker-2"} == {
        k: v for k, v in before.items() if k != "airflow-worker-2"
    }
    assert airflow.health() == {
        c.name: "healthy" for c in COMPONENTS if c.kind in ("scheduler", "celery-worker")
    }
