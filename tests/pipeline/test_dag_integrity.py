"""DAG integrity: the DAG files import cleanly, every service yields its DAG, and the edges follow the seed."""

from __future__ import annotations

import itertools

import pytest

from delivery.catalog import load_catalog
from delivery.pipeline.plan import build_plan
from tests.helpers import ROOT

SERVICES = ("visiobook-web", "visiobook-api", "visiobook-inference")

# The seed's order, one representative task per stage (flows 1-4, 6).
SEED_ORDER = [
    "validate.checkout",
    "validate.lint",
    "build_and_test.build",
    "build_and_test.unit_tests",
    "build_and_test.integration_tests",
    "build_and_test.coverage",
    "image.build",
    "image.scan",
    "image.push",
    "deploy_staging.gitops_commit",
    "deploy_staging.health_check",
    "integration.staging_tests",
    "approval.approve_production",
    "deploy_production.gitops_commit",
    "deploy_production.health_check",
    "verify_production.verify",
]


@pytest.fixture(scope="module", params=["kubernetes", "local"])
def dagbag(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    mp = pytest.MonkeyPatch()
    mp.setenv("DELIVERY_PROFILE", request.param)
    try:
        bag = DagBag(dag_folder=str(ROOT / "dags"))
    finally:
        mp.undo()
    bag.profile = request.param  # type: ignore[attr-defined]
    return bag


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}


def test_each_service_yields_its_dag_tagged_with_the_profile(dagbag) -> None:  # type: ignore[no-untyped-def]
    for name in SERVICES:
        dag_id = "deliver_" + name.replace("-", "_")
        dag = dagbag.dags[dag_id]
        assert f"profile:{dagbag.profile}" in dag.tags
        assert f"**Profile:** `{dagbag.profile}`" in dag.doc_md
        assert f"service:{name}" in dag.tags


def _reachable(dag, start: str) -> set[str]:  # type: ignore[no-untyped-def]
    seen, todo = set(), [start]
    while todo:
        task = dag.get_task(todo.pop())
        for down in task.downstream_task_ids:
            if down not in seen:
                seen.add(down)
                todo.append(down)
    return seen


@pytest.mark.parametrize("name", SERVICES)
def test_edges_follow_the_seed_order(dagbag, name: str) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["deliver_" + name.replace("-", "_")]
    order = list(SEED_ORDER)
    if name == "visiobook-inference":
        order[order.index("deploy_staging.gitops_commit") : order.index("deploy_staging.gitops_commit")] = [
            "gpu_tests.inference",
            "gpu_tests.benchmark",
            "gpu_tests.budget_gate",
        ]
    else:
        assert not [t for t in dag.task_ids if t.startswith("gpu_tests.")]
    for earlier, later in itertools.pairwise(order):
        assert later in _reachable(dag, earlier), f"{later} must come after {earlier}"
        assert earlier not in _reachable(dag, later), f"{earlier} must not come after {later}"
    # Pull requests stop before the image: the release gate sits between tests and image.
    assert dag.get_task("image.build").upstream_task_ids == {"build_and_test.release_gate"}


@pytest.mark.parametrize("name", SERVICES)
def test_rollback_runs_only_when_production_fails(dagbag, name: str) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["deliver_" + name.replace("-", "_")]
    plan_task = dag.get_task("rollback.plan")
    assert plan_task.trigger_rule == "one_failed"
    production = {t for t in dag.task_ids if t.startswith("deploy_production.")}
    assert production >= {
        "deploy_production.gitops_commit",
        "deploy_production.sync",
        "deploy_production.health_check",
    }
    assert ("deploy_production.gpu_health" in production) == (name == "visiobook-inference")
    assert plan_task.upstream_task_ids == production | {
        "verify_production.verify",
        "verify_production.review",
    }
    assert "rollback.health_check" in _reachable(dag, "rollback.plan")
    assert {"notify.summary", "notify.outcome"} <= _reachable(dag, "rollback.plan")
    assert dag.get_task("notify.outcome").trigger_rule == "all_done"
    # A gate sits before the revert (seed flow 6): it asks a human when a DB migration is undone,
    # and its Abort branches to rollback.aborted, which reverts nothing.
    gate = dag.get_task("rollback.migration_gate")
    assert gate.upstream_task_ids == {"rollback.plan"}
    assert gate.downstream_task_ids == {"rollback.revert", "rollback.aborted"}
    assert gate.options_mapping == {"Continue": "rollback.revert", "Abort": "rollback.aborted"}
    assert gate.defaults == ["Abort"]


def test_approval_is_a_hitl_operator_with_assigned_approvers_and_reject_default(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.providers.standard.operators.hitl import HITLOperator

    catalog, _ = load_catalog()
    for name in SERVICES:
        task = dagbag.dags["deliver_" + name.replace("-", "_")].get_task("approval.approve_production")
        assert isinstance(task, HITLOperator)
        assert task.options[:2] == ["Approve", "Reject"]
        assert [u["id"] for u in task.assigned_users] == catalog.service(name).approvers
        assert task.defaults == ["Reject"]
        assert task.response_timeout == catalog.service(name).approval_timeout


def test_every_task_notifies_its_failure_once(dagbag) -> None:  # type: ignore[no-untyped-def]
    from delivery.notify import TaskFailureNotifier

    dag = dagbag.dags["deliver_visiobook_web"]
    for task in dag.tasks:
        if task.task_id == "notify.outcome":
            continue  # the summary already told Slack; the outcome only sets the run's state
        callbacks = (
            task.on_failure_callback
            if isinstance(task.on_failure_callback, list)
            else [task.on_failure_callback]
        )
        # One notifier per task: a step with a severity event sends that event instead of task_failed.
        [notifier] = [cb for cb in callbacks if isinstance(cb, TaskFailureNotifier)]
        expected = {
            "deploy_production.sync": "production_deploy_failed",
            "verify_production.verify": "production_verification_failed",
            "integration.staging_tests": "staging_failed",
            "rollback.sync": "rollback_failed",
            "validate.checkout": "task_failed",
        }.get(task.task_id)
        if expected:
            assert notifier.event == expected, task.task_id


def test_trigger_form_params(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["deliver_visiobook_api"]
    params = dag.params
    for key in (
        "ref",
        "sha",
        "pipeline",
        "repository",
        "before",
        "author",
        "pr_number",
        "compare_url",
        "event",
    ):
        assert key in params, key
    assert params["ref"] == "main"
    assert params["pipeline"] == "full"


def test_kubernetes_profile_uses_pod_operators_for_every_stage() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    mp = pytest.MonkeyPatch()
    mp.setenv("DELIVERY_PROFILE", "kubernetes")
    try:
        bag = DagBag(dag_folder=str(ROOT / "dags"))
    finally:
        mp.undo()
    catalog, _ = load_catalog()
    for name in SERVICES:
        dag = bag.dags["deliver_" + name.replace("-", "_")]
        plan = build_plan(catalog.service(name))
        stage_tasks = [s.task_id for s in plan.steps if s.kind.value == "stage"]
        assert stage_tasks
        for task_id in stage_tasks:
            task = dag.get_task(task_id)
            assert isinstance(task, KubernetesPodOperator), task_id
            assert task.deferrable is True


def test_a_worker_parses_only_the_dag_of_its_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's parsing context (set while a worker loads the DAG of the task it runs) builds that DAG
    alone, the same as in a full parse; a DAG of another file gets the full parse."""
    from airflow.dag_processing.dagbag import DagBag

    dag_file = str(ROOT / "dags" / "delivery_pipelines.py")
    full = DagBag(dag_folder=dag_file)
    for dag_id in ("deliver_visiobook_web", "rollback_visiobook_api"):
        monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", dag_id)
        one = DagBag(dag_folder=dag_file)
        assert list(one.dags) == [dag_id]
        dag, expected = one.dags[dag_id], full.dags[dag_id]
        assert set(dag.task_dict) == set(expected.task_dict)
        assert {t: sorted(task.upstream_task_ids) for t, task in dag.task_dict.items()} == {
            t: sorted(task.upstream_task_ids) for t, task in expected.task_dict.items()
        }
        assert dag.params.dump() == expected.params.dump()
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "poll_visiobook_web")
    assert set(DagBag(dag_folder=dag_file).dags) == set(full.dags)


def test_bad_profile_is_an_error_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from delivery.profiles import ProfileError, active_profile

    catalog, _ = load_catalog()
    monkeypatch.setenv("DELIVERY_PROFILE", "cloud")
    with pytest.raises(
        ProfileError, match=r"DELIVERY_PROFILE='cloud' is not a profile; use kubernetes \| local"
    ):
        active_profile(catalog.platform)


def test_gpu_stages_run_on_the_gpu_queue_and_everything_else_on_the_default_one(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["deliver_visiobook_inference"]
    gpu = {t.task_id for t in dag.tasks if t.queue == "gpu"}
    assert gpu == {"gpu_tests.inference", "gpu_tests.benchmark"}
    assert {t.queue for t in dag.tasks if t.task_id not in gpu} == {"default"}


def test_deploy_sections_take_one_slot_pools_and_human_gates_hold_none(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["deliver_visiobook_web"]
    pools = {t.task_id: t.pool for t in dag.tasks}
    for task in ("deploy_staging.gitops_commit", "deploy_staging.sync", "integration.staging_tests"):
        assert pools[task] == "deploy-visiobook-web-staging", task
    for task in ("deploy_production.gitops_commit", "verify_production.verify", "rollback.revert"):
        assert pools[task] == "deploy-visiobook-web-production", task
    for task in (
        "approval.approve_production",
        "rollback.migration_gate",
        "validate.trust",
        "build_and_test.build",
    ):
        assert pools[task] == "default_pool", task
    rollback = dagbag.dags["rollback_visiobook_web"]
    assert {rollback.get_task(t).pool for t in ("revert", "sync")} == {"deploy-visiobook-web-production"}


def test_the_pools_command_lists_every_deploy_pool(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from delivery.cli import main

    assert main(["pools"]) == 0
    pools = json.loads(capsys.readouterr().out)
    assert pools["deploy-visiobook-api-production"] == {
        "slots": 1,
        "description": "one deploy section of visiobook-api in production at a time",
        "include_deferred": True,
    }
    assert len(pools) == 2 * len(SERVICES)
