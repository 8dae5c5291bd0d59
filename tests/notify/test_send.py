"""notify_event through the real Slack, PagerDuty and SMTP providers, to stand-ins on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import pytest

from delivery.catalog import Catalog
from delivery.notify import PipelineEvent, PipelineEventNotifier, RetryPolicy, event_dedup_key, notify_event
from delivery.notify.messages import RunInfo
from tests.notify.conftest import FAST, ROUTING_KEY, SLACK_TOKEN, FakeTaskInstance, context_of

SERVICE = "visiobook-api"
RUN_ID = "manual__2025-05-01T10:00:00+00:00"


def _posts(slack: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(r.path, r.body) for r in slack.requests]


def test_p1_pages_and_posts_to_critical_alerts(standins: Any, catalog: Catalog) -> None:
    slack, pagerduty, smtp = standins
    ti = FakeTaskInstance(task_id="deploy_production.health_check")
    report = notify_event(
        PipelineEvent.PRODUCTION_DEPLOY_FAILED,
        service_name=SERVICE,
        context=context_of(ti),
        details={"sha": "a" * 40, "error": "health check timed out after 300s"},
        catalog=catalog,
    )
    assert report.ok and report.severity == "P1"
    expected_key = event_dedup_key(
        PipelineEvent.PRODUCTION_DEPLOY_FAILED,
        service=catalog.service(SERVICE),
        run=RunInfo(dag_id="deliver_visiobook_api", run_id=RUN_ID),
        details={},
    )
    assert report.dedup_key == expected_key

    [event] = pagerduty.accepted()
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == expected_key
    payload = event["payload"]
    assert payload["summary"] == "[P1] visiobook-api: production deploy failed"
    assert payload["severity"] == "critical"
    assert payload["source"] == "deliver_visiobook_api"
    assert payload["component"] == "visiobook-api"
    assert payload["group"] == "production"
    assert payload["class"] == "production_deploy_failed"
    assert payload["custom_details"]["error"] == "health check timed out after 300s"
    assert payload["custom_details"]["run_id"] == RUN_ID
    assert {link["text"] for link in event["links"]} == {"Task log", "Pipeline run"}

    [(path, body)] = _posts(slack)
    assert path == "/api/chat.postMessage"
    assert body["channel"] == "#critical-alerts"
    assert slack.requests[0].headers["Authorization"] == f"Bearer {SLACK_TOKEN}"
    text = body["text"]
    assert text.startswith(":rotating_light: *[P1] visiobook-api: production deploy failed*")
    assert f"run `{RUN_ID}`" in text
    assert "• error: health check timed out after 300s" in text
    assert f"• sha: {'a' * 40}" in text
    assert "|Pipeline run>" in text and "/dags/deliver_visiobook_api/runs/manual__2025-05-01T10%3A00" in text
    assert smtp.messages == []  # P1 sends no e-mail


def test_a_retried_task_sends_the_same_dedup_key_and_pages_once(standins: Any, catalog: Catalog) -> None:
    _slack, pagerduty, _smtp = standins
    for try_number in (1, 2):  # the task failed, was retried, and failed again
        ti = FakeTaskInstance(task_id="verify_production.verify", try_number=try_number)
        notify_event(
            PipelineEvent.PRODUCTION_VERIFICATION_FAILED,
            service_name=SERVICE,
            context=context_of(ti),
            details={"error": "error ratio 7% > 5%"},
            catalog=catalog,
        )
    events = pagerduty.accepted()
    assert len(events) == 2
    assert events[0]["dedup_key"] == events[1]["dedup_key"]
    assert list(pagerduty.incidents.values()) == ["triggered"]  # one incident, not two


def test_rollback_succeeded_resolves_the_production_incident(standins: Any, catalog: Catalog) -> None:
    slack, pagerduty, _smtp = standins
    failed = notify_event(
        PipelineEvent.PRODUCTION_DEPLOY_FAILED,
        service_name=SERVICE,
        context=context_of(FakeTaskInstance(task_id="deploy_production.sync")),
        details={},
        catalog=catalog,
    )
    restored = notify_event(
        PipelineEvent.ROLLBACK_SUCCEEDED,
        service_name=SERVICE,
        context=context_of(FakeTaskInstance(task_id="rollback.health_check")),
        details={"rolled_back_to": "v1.4.2"},
        catalog=catalog,
    )
    assert restored.ok
    trigger, resolve = pagerduty.accepted()
    assert trigger["event_action"] == "trigger"
    assert resolve["event_action"] == "resolve"
    assert resolve["dedup_key"] == trigger["dedup_key"] == failed.dedup_key == restored.dedup_key
    assert pagerduty.incidents == {failed.dedup_key: "resolved"}
    channels = [body["channel"] for _, body in _posts(slack)]
    assert channels == ["#critical-alerts", "#monitoring"]
    assert "rolled back to the previous stable version" in slack.messages()[1]["text"]
    assert "• rolled_back_to: v1.4.2" in slack.messages()[1]["text"]


def test_a_manual_rollback_resolves_the_incident_of_the_run_that_paged(
    standins: Any, catalog: Catalog
) -> None:
    _slack, pagerduty, _smtp = standins
    failed = notify_event(
        PipelineEvent.PRODUCTION_VERIFICATION_FAILED,
        service_name=SERVICE,
        context=context_of(FakeTaskInstance()),
        details={},
        catalog=catalog,
    )
    manual = FakeTaskInstance(dag_id="rollback_visiobook_api", run_id="manual__2025-05-01T11:00:00+00:00")
    notify_event(
        PipelineEvent.ROLLBACK_SUCCEEDED,
        service_name=SERVICE,
        context=context_of(manual),
        details={"incident_dag_id": "deliver_visiobook_api", "incident_run_id": RUN_ID},
        catalog=catalog,
    )
    assert pagerduty.incidents == {failed.dedup_key: "resolved"}


def test_p2_posts_to_alerts_and_emails_oncall(standins: Any, catalog: Catalog) -> None:
    slack, pagerduty, smtp = standins
    report = notify_event(
        PipelineEvent.STAGING_FAILED,
        service_name="visiobook-web",
        context=context_of(
            FakeTaskInstance(dag_id="deliver_visiobook_web", task_id="integration.staging_tests")
        ),
        details={"sha": "b" * 40, "error": "3 of 41 integration tests failed <see log>"},
        catalog=catalog,
    )
    assert report.ok and report.dedup_key is None
    assert pagerduty.events == []
    [(path, body)] = _posts(slack)
    assert path == "/api/chat.postMessage" and body["channel"] == "#alerts"
    assert body["text"].startswith(":warning: *[P2] visiobook-web: staging failed*")
    assert "• environment: staging" in body["text"]
    assert "&lt;see log&gt;" in body["text"]  # Slack control characters are escaped
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["oncall@visiobook.io"]
    assert mail.mail_from == "delivery@visiobook.io"
    assert mail.subject == "[P2] visiobook-web: staging failed"
    content = mail.html()
    assert "<h3>[P2] visiobook-web: staging failed</h3>" in content
    assert "<li><b>error</b>: 3 of 41 integration tests failed &lt;see log&gt;</li>" in content
    assert "<code>deliver_visiobook_web</code>" in content


def test_p3_approval_request_links_the_required_actions_page(standins: Any, catalog: Catalog) -> None:
    slack, pagerduty, smtp = standins
    ti = FakeTaskInstance(task_id="approval.approve_production")
    notify_event(
        PipelineEvent.APPROVAL_REQUESTED,
        service_name=SERVICE,
        context=context_of(ti),
        details={"sha": "c" * 40},
        catalog=catalog,
    )
    [(_, body)] = _posts(slack)
    assert body["channel"] == "#monitoring"
    text = body["text"]
    link = (
        "http://localhost:8080/dags/deliver_visiobook_api/runs/manual__2025-05-01T10%3A00%3A00%2B00%3A00"
        "/tasks/approval.approve_production/required_actions?map_index=-1"
    )
    assert f"<{link}|Approve or reject in Airflow>" in text
    assert "• approvers: carol, dave" in text
    assert "[P3] visiobook-api: waits for a production approval" in text
    assert pagerduty.events == [] and smtp.messages == []


def test_a_broken_slack_leaves_the_other_destinations_delivered(
    standins: Any, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    slack, pagerduty, _smtp = standins
    slack.fail_next(100, status=500)
    ti = FakeTaskInstance()
    with caplog.at_level(logging.DEBUG):
        report = notify_event(
            PipelineEvent.ROLLBACK_FAILED,
            service_name=SERVICE,
            context=context_of(ti),
            details={"error": "no earlier stable release"},
            catalog=catalog,
            policy=FAST,
        )
    assert not report.ok
    delivered = {str(d.destination): d.delivered for d in report.deliveries}
    assert delivered == {"pagerduty:events-v2 (trigger)": True, "slack:#critical-alerts": False}
    assert len(pagerduty.accepted()) == 1
    assert len(slack.requests) == 3  # three attempts, then given up
    [error] = report.errors
    assert (
        error
        == "slack:#critical-alerts: Slack answered 500: Received a response in a non-JSON format: internal_error"
    )
    assert ti.xcoms == {}  # failures are logged and returned, never written to XCom
    assert "Notification to slack:#critical-alerts failed after 3 attempt(s)" in caplog.text
    assert ROUTING_KEY not in caplog.text and SLACK_TOKEN not in caplog.text


def test_everything_down_still_never_raises(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No connections at all and an unknown service: reported, never retried, nothing raises.
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_API", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    ti = FakeTaskInstance()
    with caplog.at_level(logging.WARNING):
        report = notify_event("staging_failed", service_name=SERVICE, context=context_of(ti), catalog=catalog)
    assert not report.ok and report.errors == []
    assert report.not_configured == ["slack:#alerts", "email:oncall@visiobook.io"]
    assert [d.attempts for d in report.deliveries] == [0, 0]
    assert (
        "Notification to slack:#alerts not sent: not configured (connection 'slack_api' is not defined)"
        in (caplog.text)
    )
    assert ti.xcoms == {}
    unknown = notify_event(
        "deploy_succeeded", service_name="no-such", context=context_of(ti), catalog=catalog
    )
    assert not unknown.ok and "no service 'no-such'" in unknown.errors[0]
    bogus = notify_event("not_an_event", service_name=SERVICE, context={}, catalog=catalog)
    assert bogus.deliveries == []


def test_notifier_form_for_hitl(standins: Any) -> None:
    slack, _pagerduty, _smtp = standins
    notifier = PipelineEventNotifier(
        event="deploy_succeeded", service_name=SERVICE, details={"environment": "staging"}
    )
    context = {**context_of(FakeTaskInstance(task_id="deploy_staging.health_check")), "exception": None}
    notifier(context)
    [(_, body)] = _posts(slack)
    assert body["channel"] == "#monitoring"
    assert body["text"].startswith(":white_check_mark: *[P3] visiobook-api: deployed to staging*")


def test_foreign_text_in_details_arrives_verbatim(standins: Any, catalog: Catalog) -> None:
    slack, pagerduty, smtp = standins
    reason = "{{ 7 * 7 }} {% for c in conn %}{{ c }}{% endfor %} {{ var.value.x }}"
    for event in (PipelineEvent.ROLLBACK_FAILED, PipelineEvent.APPROVAL_TIMED_OUT):
        notify_event(
            event,
            service_name=SERVICE,
            context=context_of(FakeTaskInstance()),
            details={"reason": reason, "commit": f"fix: {reason}"},
            catalog=catalog,
        )
    [page] = pagerduty.accepted()
    assert page["payload"]["custom_details"]["reason"] == reason
    assert page["payload"]["custom_details"]["commit"] == f"fix: {reason}"
    texts = [body["text"] for body in slack.delivered()]
    assert len(texts) == 2 and all(
        f"• reason: {reason}" in t and f"• commit: fix: {reason}" in t for t in texts
    )
    [mail] = smtp.messages
    assert f"<li><b>reason</b>: {reason}</li>" in mail.html()


@pytest.mark.parametrize(
    ("status", "attempts"),
    [
        pytest.param(503, 2, id="5xx-retried"),
        pytest.param(429, 2, id="rate-limited-retried"),
    ],
)
def test_a_transient_slack_error_is_retried(
    standins: Any, catalog: Catalog, status: int, attempts: int
) -> None:
    slack, _pagerduty, _smtp = standins
    slack.fail_next(1, status=status)
    report = notify_event(
        "deploy_succeeded",
        service_name=SERVICE,
        context=context_of(FakeTaskInstance()),
        catalog=catalog,
        policy=FAST,
    )
    assert report.ok and [d.attempts for d in report.deliveries] == [attempts]
    assert len(slack.delivered()) == 1


def test_a_refused_slack_message_is_not_retried(standins: Any, catalog: Catalog) -> None:
    slack, _pagerduty, _smtp = standins
    slack.channels = {"#general"}  # the bot was never invited to #monitoring
    report = notify_event(
        "deploy_succeeded",
        service_name=SERVICE,
        context=context_of(FakeTaskInstance()),
        catalog=catalog,
        policy=FAST,
    )
    assert report.errors == ["slack:#monitoring: Slack answered 200: channel_not_found"]
    assert len(slack.requests) == 1


def test_pagerduty_throttling_is_retried_and_a_bad_key_is_not(
    standins: Any, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slack, pagerduty, _smtp = standins
    pagerduty.fail_next(1, status=429)
    report = notify_event(
        "rollback_failed",
        service_name=SERVICE,
        context=context_of(FakeTaskInstance()),
        catalog=catalog,
        policy=FAST,
    )
    # Our policy retried (the client's own unlimited 429 loop is off): two tries, one incident.
    [page] = [d for d in report.deliveries if d.destination.kind.value == "pagerduty"]
    assert report.ok and page.attempts == 2
    assert len(pagerduty.events) == 2 and len(pagerduty.accepted()) == 1
    conn = json.loads(os.environ["AIRFLOW_CONN_PAGERDUTY_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_PAGERDUTY_DEFAULT", json.dumps({**conn, "password": "too-short"}))
    refused = notify_event(
        "rollback_failed",
        service_name=SERVICE,
        context=context_of(FakeTaskInstance()),
        catalog=catalog,
        policy=FAST,
    )
    [error] = refused.errors
    assert error.startswith("pagerduty:events-v2 (trigger): PagerDuty answered 400")
    assert len(pagerduty.events) == 3  # one try: a refused event cannot succeed later


def test_pagerduty_trusts_the_certificate_authority_its_connection_names(
    standins: Any, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """``events_ca_file``: this client alone trusts the stand-in's certificate (no SSL_CERT_FILE)."""
    _slack, pagerduty, _smtp = standins
    monkeypatch.delenv("SSL_CERT_FILE")
    conn = json.loads(os.environ["AIRFLOW_CONN_PAGERDUTY_DEFAULT"])

    def page(extra: dict[str, str]) -> Any:
        monkeypatch.setenv("AIRFLOW_CONN_PAGERDUTY_DEFAULT", json.dumps({**conn, "extra": extra}))
        report = notify_event(
            "rollback_failed",
            service_name=SERVICE,
            context=context_of(FakeTaskInstance()),
            catalog=catalog,
            policy=FAST,
        )
        return next(d for d in report.deliveries if d.destination.kind.value == "pagerduty")

    trusted = page({"events_base_url": pagerduty.url, "events_ca_file": str(pagerduty.ca_file)})
    assert trusted.status.value == "delivered" and len(pagerduty.accepted()) == 1
    unknown = page({"events_base_url": pagerduty.url})  # the system's authorities do not know it
    assert unknown.status.value == "failed" and "PagerDuty unreachable" in str(unknown.error)
    assert len(pagerduty.accepted()) == 1
    missing = page({"events_base_url": pagerduty.url, "events_ca_file": str(tmp_path / "nowhere.pem")})
    assert missing.status.value == "not configured"
    assert "events_ca_file" in str(missing.error) and "cannot be read" in str(missing.error)


@pytest.mark.parametrize(
    ("reply", "delivered", "tries"),
    [
        pytest.param("451 4.3.0 Try again later", True, 2, id="4xx-retried"),
        pytest.param("550 5.1.1 Mailbox unavailable", False, 1, id="5xx-not-retried"),
    ],
)
def test_smtp_temporary_failures_are_retried_and_refusals_are_not(
    standins: Any, catalog: Catalog, reply: str, delivered: bool, tries: int
) -> None:
    _slack, _pagerduty, smtp = standins
    smtp.fail_next(1, reply=reply)
    report = notify_event(
        "staging_failed",
        service_name="visiobook-web",
        context=context_of(FakeTaskInstance()),
        catalog=catalog,
        policy=FAST,
    )
    [mail] = [d for d in report.deliveries if d.destination.kind.value == "email"]
    assert (mail.delivered, mail.attempts) == (delivered, tries)
    assert len(smtp.messages) == (1 if delivered else 0)


def test_a_hanging_destination_cannot_hold_the_others_or_the_caller(standins: Any, catalog: Catalog) -> None:
    slack, pagerduty, _smtp = standins
    slack.hang_next(100)  # connections accepted, never answered
    policy = RetryPolicy(attempts=3, backoff_s=0.01, request_timeout_s=1.0, deadline_s=2.5)
    started = time.monotonic()
    report = notify_event(
        "production_deploy_failed",
        service_name=SERVICE,
        context=context_of(FakeTaskInstance()),
        catalog=catalog,
        policy=policy,
    )
    elapsed = time.monotonic() - started
    assert elapsed < policy.deadline_s + 1.5, elapsed
    statuses = {str(d.destination): d.status.value for d in report.deliveries}
    assert statuses == {"pagerduty:events-v2 (trigger)": "delivered", "slack:#critical-alerts": "failed"}
    assert len(pagerduty.accepted()) == 1
    assert 2 <= len(slack.requests) <= 3  # each try ended by its timeout, none started past the deadline


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match=r"request_timeout_s and deadline_s > 0, got 1.0, 0, 20.0"):
        RetryPolicy(request_timeout_s=0)
