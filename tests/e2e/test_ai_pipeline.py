"""The AI service's pipeline on the real local stack, end to end on the CPU path (no GPU here).

Real Airflow (api-server, scheduler, dag-processor, triggerer on PostgreSQL), Docker engine,
registry and git: the GPU test stages, the budget gate and the post-deploy GPU health run and
say which device they used.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import APPROVAL, LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.duration(130)]


@pytest.fixture(scope="module")
def ai(shared_stacks: dict[str, LocalStack]) -> LocalStack:
    return shared_stacks["ai"]


def test_the_ai_service_goes_to_production_on_the_cpu_path(ai: LocalStack) -> None:
    sha = ai.commit("model 1.1", {"VERSION": "1.1.0\n"})
    run_id = ai.to_approval(sha)
    states = ai.airflow.task_states(ai.dag_id, run_id)
    for task in (
        "gpu_tests.inference",
        "gpu_tests.benchmark",
        "gpu_tests.budget_gate",
        "deploy_staging.gpu_health",
    ):
        assert states[task] == "success", (task, states)
    gate = ai.airflow.api(
        "GET",
        f"/dags/{ai.dag_id}/dagRuns/{run_id}/taskInstances/gpu_tests.budget_gate/xcomEntries/return_value",
    )["value"]
    assert gate["device"] == "cpu", gate  # visibly the CPU path: no GPU on this machine
    ai.airflow.respond(ai.dag_id, run_id, APPROVAL, option="Approve", user="erin")
    assert ai.airflow.wait_run(ai.dag_id, run_id, timeout=500) == "success", ai.airflow.task_states(
        ai.dag_id, run_id
    )
    assert ai.serving("production")["commit"] == sha
