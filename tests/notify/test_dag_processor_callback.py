"""A scheduler-decided failure: the callback runs through Airflow's own dag-processor code.

``airflow.dag_processing.processor._execute_task_callbacks`` is what the dag-processor
runs for a ``TaskCallbackRequest``: it re-parses our DAG file (here: a DagBag of
``dags/delivery_pipelines.py``), builds the task's context with
``RuntimeTaskInstance.model_construct(...).get_template_context()`` (no ``exception``,
no state) and calls ``on_failure_callback``. The requests are built like the
scheduler's heartbeat-timeout request (``jobs/scheduler_job_runner.py``, Airflow 3.3.2):
a heartbeat timeout sends two of them for one failure.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DELIVERY_PROFILE", "kubernetes")
        bag = DagBag(dag_folder=str(ROOT / "dags" / "delivery_pipelines.py"))
    assert bag.import_errors == {}
    return bag


def _heartbeat_timeout_request(*, dag_id: str, task_id: str, run_id: str, try_number: int) -> Any:
    from airflow.api_fastapi.execution_api.datamodels.taskinstance import DagRun, TaskInstance, TIRunContext
    from airflow.callbacks.callback_requests import TaskCallbackRequest
    from airflow.utils.state import TaskInstanceState

    now = datetime.now(UTC)
    dag_run = DagRun(
        dag_id=dag_id,
        run_id=run_id,
        logical_date=None,
        data_interval_start=None,
        data_interval_end=None,
        run_after=now,
        start_date=now,
        end_date=None,
        run_type="manual",
        state="running",
        consumed_asset_events=[],
        partition_key=None,
    )
    ti = TaskInstance(
        id=uuid.uuid4(),
        task_id=task_id,
        dag_id=dag_id,
        run_id=run_id,
        try_number=try_number,
        dag_version_id=uuid.uuid4(),
    )
    return TaskCallbackRequest(
        filepath="delivery_pipelines.py",
        bundle_name="dags-folder",
        bundle_version=None,
        ti=ti,
        msg="Task did not emit heartbeat within time limit",
        task_callback_type=TaskInstanceState.FAILED,
        context_from_server=TIRunContext(dag_run=dag_run, max_tries=0),
    )


def test_heartbeat_timeout_is_notified_once_through_the_dag_processor(dagbag, standins) -> None:  # type: ignore[no-untyped-def]
    import structlog
    from airflow.dag_processing.processor import _execute_task_callbacks

    slack, pagerduty, _smtp = standins
    run_id = "manual__2026-05-01T10:00:00+00:00"
    for _ in range(2):  # the purge's request, then the state mismatch's
        request = _heartbeat_timeout_request(
            dag_id="deliver_visiobook_web", task_id="deploy_production.sync", run_id=run_id, try_number=1
        )
        _execute_task_callbacks(dagbag, request, structlog.get_logger())
    [body] = slack.delivered()
    assert body["channel"] == "#critical-alerts"
    text = body["text"]
    assert text.startswith(":rotating_light: *[P1] visiobook-web: production deploy failed*")
    assert f"run `{run_id}`: task `deploy_production.sync` failed (try 1)" in text
    assert "• error: not known here: the scheduler ended this task" in text
    assert "/dags/deliver_visiobook_web/runs/" in text and "|Task log>" in text
    [page] = pagerduty.accepted()
    assert (
        page["event_action"] == "trigger"
        and page["payload"]["custom_details"]["task"] == "deploy_production.sync"
    )
