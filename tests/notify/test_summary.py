"""The end-of-run summary (``notify.summary``) is one event of the notification path, posted once.

The step runs with the context a task gets; the task instance answers
``get_task_states`` and ``xcom_pull`` like the Task SDK does.
"""

from __future__ import annotations

from typing import Any

import pytest

from delivery.steps.outcome import notify_summary
from tests.notify.conftest import FakeTaskInstance, context_of

SHA = "d" * 40
DEPLOYED = {
    "validate.checkout": "success",
    "deploy_production.health_check": "success",
    "verify_production.verify": "success",
    "rollback.plan": "skipped",
}
ROLLED_BACK = {
    "validate.checkout": "success",
    "deploy_production.health_check": "failed",
    "rollback.plan": "success",
    "rollback.health_check": "success",
}


def _context(states: dict[str, str], **pulled: Any) -> dict[str, Any]:
    ti = FakeTaskInstance(task_id="notify.summary", state="running", states=states)
    ti.pulled = {"validate.checkout": {"ref": "main", "sha": SHA}, **pulled}
    return {**context_of(ti), "params": {"ref": "main"}, "dag_run": None}


def test_a_deploy_is_announced_once(standins: Any) -> None:
    slack, pagerduty, smtp = standins
    result = notify_summary(service_name="visiobook-api", **_context(DEPLOYED))
    assert result["outcome"] == "deployed" and result["events"] == ["deploy_succeeded"]
    assert result["notified"] is True and result["errors"] == [] and result["not_configured"] == []
    # One message: no second "summary" post beside the deploy_succeeded event.
    [body] = slack.delivered()
    assert len(slack.requests) == 1
    assert body["channel"] == "#monitoring"
    assert body["text"].startswith(":white_check_mark: *[P3] visiobook-api: deployed to production*")
    assert (
        f"• sha: {SHA}" in body["text"] and "• summary: deployed to production and verified" in body["text"]
    )
    assert pagerduty.events == [] and smtp.messages == []


def test_a_rollback_resolves_the_incident_and_is_announced_once(standins: Any) -> None:
    slack, pagerduty, _smtp = standins
    result = notify_summary(service_name="visiobook-api", **_context(ROLLED_BACK))
    assert result["events"] == ["rollback_succeeded"] and result["notified"] is True
    [resolve] = pagerduty.accepted()
    assert resolve["event_action"] == "resolve"
    [body] = slack.delivered()
    assert body["text"].startswith(":rewind: *[P3] visiobook-api: rolled back to the previous stable version")


def test_a_rollback_superseded_by_a_newer_release_says_nothing_was_reverted(standins: Any) -> None:
    slack, pagerduty, _smtp = standins
    states = {**ROLLED_BACK, "rollback.revert": "skipped", "rollback.health_check": "skipped"}
    result = notify_summary(service_name="visiobook-api", **_context(states))
    assert result["outcome"] == "rollback_superseded" and result["events"] == ["run_finished"]
    assert pagerduty.accepted() == []  # not "rolled back": the incident stays open
    [body] = slack.delivered()
    assert "a newer release replaced this run's before its rollback: nothing was reverted" in body["text"]


def test_a_failed_ci_run_is_summarised_as_run_finished(standins: Any) -> None:
    slack, _pagerduty, _smtp = standins
    states = {"validate.checkout": "success", "build_and_test.unit_tests": "failed"}
    result = notify_summary(service_name="visiobook-web", **_context(states))
    assert result["outcome"] == "failed" and result["events"] == ["run_finished"]
    [body] = slack.delivered()
    assert body["text"].startswith(":x: *[P3] visiobook-web: failed at build_and_test.unit_tests*")
    assert "• summary:" not in body["text"]  # the summary is the headline


def test_a_timed_out_approval_is_the_summary(standins: Any) -> None:
    slack, _pagerduty, smtp = standins
    states = {
        "validate.checkout": "success",
        "approval.approve_production": "success",
        "deploy_production.gitops_commit": "skipped",
    }
    timed_out = {"chosen_options": ["Reject"], "responded_by_user": None}
    result = notify_summary(
        service_name="visiobook-web", **_context(states, **{"approval.approve_production": timed_out})
    )
    assert result["events"] == ["approval_timed_out"]
    assert [b["channel"] for b in slack.delivered()] == ["#alerts"]
    assert len(smtp.messages) == 1


def test_unconfigured_destinations_are_in_the_return_value(
    slack: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("AIRFLOW_CONN_SLACK_API", "AIRFLOW_CONN_PAGERDUTY_DEFAULT", "AIRFLOW_CONN_SMTP_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    result = notify_summary(service_name="visiobook-api", **_context(ROLLED_BACK))
    assert result["outcome"] == "rolled_back"
    assert result["not_configured"] == ["pagerduty:events-v2 (resolve)", "slack:#monitoring"]
    assert result["notified"] is False and result["errors"] == []
    assert slack.requests == []  # nothing tried, nothing retried
    assert "not sent: not configured (connection 'slack_api' is not defined)" in caplog.text


def test_the_summary_step_never_fails_the_run(slack: Any) -> None:
    result = notify_summary(service_name="no-such-service", **_context(DEPLOYED))
    assert result["outcome"] == "unknown" and result["notified"] is False
    assert "no service 'no-such-service'" in result["errors"][0]
    assert slack.requests == []
