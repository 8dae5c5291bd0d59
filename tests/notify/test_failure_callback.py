"""Task failure callbacks are events of the one notification path, wherever Airflow runs them.

The first tests run the real ``deliver_visiobook_web`` DAG built from the catalog
with ``dag.test()``: its first task cannot resolve the ref (the repository is not
reachable from here), so the failure callback runs in the task's process. The
others call the callback the way the dag-processor does after a scheduler-decided
failure (killed process, heartbeat timeout, state mismatch): no ``exception``,
``ti.state`` None, and an ``xcom_push`` that would hang.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import sys
import time
from typing import Any

import pytest

from delivery.catalog import Catalog
from delivery.gitevents.poller import build_poller_dag, watched_repos
from delivery.notify import PipelineEvent, TaskFailureNotifier
from delivery.notify.failure import UNKNOWN_ERROR, CallbackBudget
from tests.notify.conftest import (
    SLACK_TOKEN,
    DagProcessorTaskInstance,
    FakeTaskInstance,
    context_of,
    dag_processor_context,
)

# Two of its tests run real DAGs (about 55 s here): started early, not last (tests/conftest.py).
pytestmark = pytest.mark.duration(55)

FOREIGN = "{{ 7 * 7 }} {{ conn.slack_api.password }} {% if true %}rendered{% endif %}"
"""Text a user controls (a ref, a reason, an error): it must arrive exactly as written."""


@pytest.fixture
def dag_test_polls_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dag.test()`` sleeps 1 s in each loop where no task is ready, and a failure reaches the
    end-of-run tasks one layer of the DAG per loop (about 20 s here): that one sleep polls every
    50 ms instead. Every other sleep (our retries and back-offs included) is left as it is."""
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        caller = sys._getframe(1).f_code
        in_dag_test = caller.co_name == "test" and caller.co_filename.endswith("sdk/definitions/dag.py")
        real_sleep(min(seconds, 0.05) if in_dag_test else seconds)

    monkeypatch.setattr(time, "sleep", sleep)


@pytest.fixture
def web_dag(monkeypatch: pytest.MonkeyPatch, dag_test_polls_fast: None):  # type: ignore[no-untyped-def]
    from delivery.catalog import load_catalog
    from delivery.pipeline.factory import DagFactory

    monkeypatch.setenv("DELIVERY_PROFILE", "kubernetes")
    catalog, _ = load_catalog()
    return DagFactory(catalog=catalog).build(catalog.service("visiobook-web"))


def _texts(slack: Any) -> list[str]:
    return [body["text"] for body in slack.delivered()]


def test_a_failed_task_and_the_run_summary_are_posted_once_each(airflow_db, standins, web_dag) -> None:  # type: ignore[no-untyped-def]
    slack, pagerduty, smtp = standins
    ref = f"no-such-branch {FOREIGN}"
    run = web_dag.test(run_conf={"ref": ref})
    assert run.state == "failed"
    # One message for the failed task, one for the run: nothing twice, all through the Web API.
    assert [r.path for r in slack.requests] == ["/api/chat.postMessage"] * 2
    failure, summary = _texts(slack)
    assert failure.startswith(":x: *[P3] visiobook-web: task validate.checkout failed*")
    assert (
        f"DAG `deliver_visiobook_web`, run `{run.run_id}`: task `validate.checkout` failed (try 1)" in failure
    )
    # The error says what went wrong, with the user's ref exactly as typed: never rendered.
    assert f"cannot resolve ref '{ref}'" in failure
    assert SLACK_TOKEN not in failure and "rendered" not in failure.replace(FOREIGN, "")
    log_link = failure.split("<", 1)[1].split("|Task log>", 1)[0]
    assert (
        log_link.startswith("http")
        and "deliver_visiobook_web" in log_link
        and "validate.checkout" in log_link
    )
    # The end-of-run summary says the run failed, and where.
    assert summary.startswith(":x: *[P3] visiobook-web: failed at validate.checkout*")
    assert f"• ref: {ref}" in summary
    summary_result = next(ti for ti in run.get_task_instances() if ti.task_id == "notify.summary")
    assert summary_result.state == "success"
    assert pagerduty.events == [] and smtp.messages == []  # P3: Slack only


def test_a_broken_slack_never_changes_the_result(airflow_db, standins, web_dag) -> None:  # type: ignore[no-untyped-def]
    slack, _pagerduty, _smtp = standins
    slack.fail_next(100, status=500)
    run = web_dag.test(run_conf={"ref": "no-such-branch"})
    ti_states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    # Slack was down: every message was retried and given up; the run fails for its own reason only.
    assert run.state == "failed"
    assert ti_states["validate.checkout"] == "failed"
    assert ti_states["notify.summary"] == "success"
    assert ti_states["rollback.plan"] == "skipped"  # production was never touched
    assert len(slack.requests) == 2 * 3  # two messages, three attempts each
    assert slack.delivered() == []


def test_callback_in_the_dag_processor_reaches_slack_without_touching_xcom(
    standins: Any, caplog: pytest.LogCaptureFixture
) -> None:
    slack, _pagerduty, _smtp = standins
    ti = DagProcessorTaskInstance(
        dag_id="deliver_visiobook_web", task_id="build_and_test.unit_tests", try_number=2
    )
    context = dag_processor_context(ti)
    assert "exception" not in context and ti.state is None
    notifier = TaskFailureNotifier(service_name="visiobook-web")
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        notifier(context)  # BaseNotifier.__call__, as processor._execute_task_callbacks calls it
    assert time.monotonic() - started < 5
    assert ti.push_attempts == []  # nothing written back: SetXCom would hang the dag-processor
    [body] = slack.delivered()
    assert body["channel"] == "#monitoring"
    text = body["text"]
    assert text.startswith(":x: *[P3] visiobook-web: task build_and_test.unit_tests failed*")
    assert f"run `{ti.run_id}`: task `build_and_test.unit_tests` failed (try 2)" in text
    assert f"• error: {UNKNOWN_ERROR}" in text
    assert f"<{ti.log_url}|Task log>" in text


def test_a_failure_reported_twice_by_the_scheduler_is_posted_once(standins: Any) -> None:
    slack, _pagerduty, _smtp = standins
    notifier = TaskFailureNotifier(service_name="visiobook-web")
    ti = DagProcessorTaskInstance(dag_id="deliver_visiobook_web", task_id="image.scan")
    # Heartbeat timeout: one callback from the purge, one from the state mismatch that follows.
    first, second = notifier.send(dag_processor_context(ti)), notifier.send(dag_processor_context(ti))
    assert first is not None and second is not None
    assert [d.status.value for d in first.deliveries] == ["delivered"]
    assert [d.status.value for d in second.deliveries] == ["already sent"] and second.ok
    assert len(slack.requests) == 1
    # The next try of the same task is a new failure: posted again.
    notifier.send(dag_processor_context(DagProcessorTaskInstance(**{**vars(ti), "try_number": 2})))
    assert len(slack.delivered()) == 2


def test_a_destination_that_failed_is_tried_again_by_the_second_callback(
    standins: Any, catalog: Catalog
) -> None:
    slack, _pagerduty, smtp = standins
    notifier = TaskFailureNotifier(service_name="visiobook-web", event=PipelineEvent.STAGING_FAILED)
    ti = DagProcessorTaskInstance(dag_id="deliver_visiobook_web", task_id="deploy_staging.health_check")
    slack.channels = set()  # the bot is in no channel yet: channel_not_found, not retried
    notifier.send(dag_processor_context(ti))
    slack.channels = None
    second = notifier.send(dag_processor_context(ti))
    assert second is not None
    assert {str(d.destination): d.status.value for d in second.deliveries} == {
        "slack:#alerts": "delivered",
        "email:oncall@visiobook.io": "already sent",
    }
    assert len(smtp.messages) == 1 and len(slack.delivered()) == 1


def test_a_production_task_failure_pages_once_and_posts_no_second_message(standins: Any) -> None:
    slack, pagerduty, _smtp = standins
    notifier = TaskFailureNotifier(service_name="visiobook-api", event=PipelineEvent.PRODUCTION_DEPLOY_FAILED)
    ti = FakeTaskInstance(task_id="deploy_production.sync")
    notifier({**context_of(ti), "exception": RuntimeError("Argo CD sync failed: ImagePullBackOff")})
    [event] = pagerduty.accepted()
    assert event["event_action"] == "trigger" and event["payload"]["severity"] == "critical"
    assert event["payload"]["custom_details"]["task"] == "deploy_production.sync"
    assert event["payload"]["custom_details"]["error"] == "Argo CD sync failed: ImagePullBackOff"
    [body] = slack.delivered()
    assert body["channel"] == "#critical-alerts"
    assert "task `deploy_production.sync` failed (try 1)" in body["text"]


def test_foreign_text_in_an_error_arrives_verbatim_at_every_destination(
    standins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    slack, pagerduty, smtp = standins
    monkeypatch.setenv("AIRFLOW_CONN_X", json.dumps({"conn_type": "http", "password": "hunter2-not-leaked"}))
    error = RuntimeError("{{ 7 * 7 }} {{ conn.x.password }}")
    for event, task in (
        (PipelineEvent.PRODUCTION_VERIFICATION_FAILED, "verify_production.verify"),  # PagerDuty + Slack
        (PipelineEvent.STAGING_FAILED, "integration.staging_tests"),  # Slack + e-mail
    ):
        notifier = TaskFailureNotifier(service_name="visiobook-api", event=event)
        notifier({**context_of(FakeTaskInstance(task_id=task)), "exception": error})
    expected = "{{ 7 * 7 }} {{ conn.x.password }}"
    [page] = pagerduty.accepted()
    assert page["payload"]["custom_details"]["error"] == expected
    assert [f"• error: {expected}" in body["text"] for body in slack.delivered()] == [True, True]
    [mail] = smtp.messages
    assert f"<li><b>error</b>: {expected}</li>" in mail.html()
    everything = json.dumps(pagerduty.events) + json.dumps(slack.messages()) + mail.html()
    assert "hunter2-not-leaked" not in everything


def test_credentials_in_an_error_are_masked(standins: Any) -> None:
    slack, _pagerduty, _smtp = standins
    error = RuntimeError("git clone https://deploy:s3cr3t-token@git.example.com/visiobook/web.git failed")
    TaskFailureNotifier(service_name="visiobook-web")({**context_of(FakeTaskInstance()), "exception": error})
    [body] = slack.delivered()
    assert "s3cr3t-token" not in body["text"]
    assert "https://[redacted]@git.example.com/visiobook/web.git" in body["text"]


def test_a_broken_poller_is_reported_once_per_quiet_period(standins: Any, catalog: Catalog) -> None:
    slack, _pagerduty, _smtp = standins
    repo = watched_repos(catalog)[0]
    dag = build_poller_dag(repo)
    [callback] = dag.get_task("watch").on_failure_callback
    for minute in range(3):  # the poller runs every minute and keeps failing
        ti = FakeTaskInstance(
            dag_id=dag.dag_id, task_id="watch", run_id=f"scheduled__2026-05-01T10:0{minute}:00"
        )
        callback({**context_of(ti), "exception": RuntimeError("git ls-remote failed: connection refused")})
    [body] = slack.delivered()
    assert body["channel"] == "#monitoring"  # the platform's route: a poller is not a service
    assert body["text"].startswith(f":x: *[P3] git poller {repo.repository}: task watch failed*")


def test_callbacks_of_one_process_share_a_time_budget(
    standins: Any, caplog: pytest.LogCaptureFixture
) -> None:
    slack, _pagerduty, _smtp = standins
    slack.hang_next(100)  # Slack accepts connections and never answers
    budget = CallbackBudget(total_s=3.0, window_s=50.0)
    notifier = TaskFailureNotifier(service_name="visiobook-web", budget=budget)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        reports = [
            notifier.send(dag_processor_context(DagProcessorTaskInstance(task_id=f"image.t{i}")))
            for i in range(5)
        ]
    elapsed = time.monotonic() - started
    # The first callback used the budget; the others gave up at once instead of adding up to the
    # dag-processor's 50 s limit (which would kill every callback of the batch).
    assert elapsed < 6, elapsed
    assert reports[0] is not None and reports[0].errors
    assert reports[1:] == [None, None, None, None]
    assert "already spent their 3s budget" in caplog.text


def test_a_callback_never_raises_even_without_a_catalog_entry(standins: Any) -> None:
    notifier = TaskFailureNotifier(service_name="no-such-service")
    report = notifier.send(context_of(FakeTaskInstance()))
    assert report is not None and "no service 'no-such-service'" in report.errors[0]
    notifier(context_of(FakeTaskInstance()))  # and through __call__: logged, not raised


def test_tasks_with_their_notifier_can_be_copied_and_pickled(catalog: Catalog) -> None:
    # Airflow deep-copies tasks (DAG.partial_subset when clearing, dag.test) and may pickle callbacks.
    dag = build_poller_dag(watched_repos(catalog)[0])
    subset = dag.partial_subset(task_ids=["watch"])
    [copied] = subset.get_task("watch").on_failure_callback
    assert (
        isinstance(copied, TaskFailureNotifier)
        and copied.subject == f"git poller {watched_repos(catalog)[0].repository}"
    )
    budget = CallbackBudget(total_s=5.0)
    restored = pickle.loads(pickle.dumps(TaskFailureNotifier(service_name="visiobook-web", budget=budget)))
    assert restored.budget is not None and restored.budget.remaining() == 5.0
    assert copy.deepcopy(budget) is budget  # copies in one process share its budget


def test_notifier_rejects_nonsense_settings() -> None:
    with pytest.raises(
        ValueError, match="needs a service_name or, for a DAG that is not a service, a subject"
    ):
        TaskFailureNotifier(service_name=None)
    with pytest.raises(ValueError, match=r"total_s must be in \(0, window_s=50.0\], got 0"):
        CallbackBudget(total_s=0)
