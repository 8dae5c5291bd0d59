"""The local notification inbox's endpoints answer like the servers they stand for, and only record.

Slack (https://api.slack.com/methods/chat.postMessage: errors are HTTP 200 with ``ok: false``;
incoming webhooks answer ``ok`` as text, https://api.slack.com/messaging/webhooks#handling_errors),
PagerDuty Events v2 (202 with the dedup key, 400 for an invalid event,
https://developer.pagerduty.com/docs/events-api-v2-overview#response-codes--retry-logic) and SMTP.
The senders here are plain HTTP and SMTP clients shaped like Alertmanager's (its ``slack.go``,
``pagerduty.go``); the pipeline's own provider hooks are in ``tests/web/test_notifications.py``.
"""

from __future__ import annotations

import smtplib
import socket
import stat
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests

from delivery.devenv.inbox_server import InboxServer, ensure_certificate
from delivery.notification_inbox import InboxStore, Source
from tests.devenv.inbox_support import ALERTMANAGER_SENDER, LocalInbox, running_inbox
from tests.helpers import free_port

ROUTING_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[LocalInbox]:
    with running_inbox(tmp_path) as running:
        yield running


def _post(inbox: LocalInbox, path: str, body: Any, **headers: str) -> requests.Response:
    return requests.post(f"{inbox.server.http_url}{path}", json=body, headers=headers, timeout=10)


def _alert_slack_body(title: str) -> dict[str, Any]:
    """An Alertmanager ``slack_configs`` post (notify/slack/slack.go: one attachment)."""
    return {
        "channel": "#critical-alerts",
        "username": "",
        "attachments": [
            {
                "title": title,
                "title_link": "https://runbooks.visiobook.example/service-down",
                "text": "visiobook-api is down: no scrape for 1m\n",
                "fallback": "",
                "callback_id": "",
                "footer": "",
                "color": "danger",
                "mrkdwn_in": ["fallback", "pretext", "text"],
            }
        ],
    }


def test_the_slack_web_api_answers_like_slack_and_records_what_it_posts(inbox: LocalInbox) -> None:
    message = {"channel": "#deployments", "text": ":white_check_mark: *[P3] api: deployed to staging*"}
    refusals = [
        (message, {}, "not_authed"),
        ({"text": "no channel"}, {"Authorization": "Bearer xoxb-1"}, "channel_not_found"),
        ({"channel": "#deployments"}, {"Authorization": "Bearer xoxb-1"}, "no_text"),
    ]
    for body, headers, error in refusals:
        answer = _post(inbox, "/slack/api/chat.postMessage", body, **headers)
        assert (answer.status_code, answer.json()) == (200, {"ok": False, "error": error})
    assert inbox.entries() == []

    answer = _post(inbox, "/slack/api/chat.postMessage", message, Authorization="Bearer xoxb-1")
    assert answer.status_code == 200
    assert answer.json()["ok"] is True and answer.json()["channel"] == "#deployments"
    [entry] = inbox.entries()
    assert (entry.source, entry.kind, entry.destination, entry.severity) == (
        Source.PIPELINE,
        "slack",
        "#deployments",
        "P3",
    )
    assert entry.title == "[P3] api: deployed to staging"
    assert "xoxb-1" not in repr(entry)


def test_alertmanager_slack_posts_are_answered_ok_and_link_the_receivers_alerts(inbox: LocalInbox) -> None:
    path = "/alertmanager/slack?receiver=slack-critical-alerts"
    answer = _post(inbox, path, _alert_slack_body("[FIRING] P1 ServiceDown - api (production)"))
    assert (answer.status_code, answer.text, answer.headers["Content-Type"]) == (200, "ok", "text/plain")
    bad = requests.post(f"{inbox.server.http_url}{path}", data=b"{not json", timeout=10)
    assert (bad.status_code, bad.text) == (400, "invalid_payload")
    [entry] = inbox.entries()
    assert (entry.source, entry.kind, entry.destination, entry.severity) == (
        Source.ALERTMANAGER,
        "slack",
        "#critical-alerts",
        "P1",
    )
    assert entry.title == "[FIRING] P1 ServiceDown - api (production)"
    assert "no scrape for 1m" in entry.text
    assert entry.link == "http://127.0.0.1:9093/#/alerts?receiver=slack-critical-alerts"
    assert entry.detail["title_link"] == "https://runbooks.visiobook.example/service-down"


def test_pagerduty_events_are_validated_like_pagerduty(inbox: LocalInbox) -> None:
    payload = {
        "summary": "[P1] ServiceDown on api (production)",
        "source": "alertmanager",
        "severity": "critical",
    }
    invalid = [
        {"routing_key": "local", "event_action": "trigger", "payload": payload},
        {"routing_key": ROUTING_KEY, "event_action": "resolve", "payload": payload},
        {"routing_key": ROUTING_KEY, "event_action": "trigger", "payload": {**payload, "severity": "P1"}},
    ]
    for event in invalid:
        answer = _post(inbox, "/alertmanager/pagerduty", event)
        assert answer.status_code == 400, event
        assert answer.json()["status"] == "invalid event" and answer.json()["errors"]
    assert inbox.entries() == []

    event = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "f" * 64,
        "client": "Alertmanager",
        "client_url": "http://127.0.0.1:9093/#/alerts?receiver=pagerduty-critical",
        "payload": {**payload, "custom_details": {"firing": "1", "runbook_url": ""}},
    }
    answer = _post(inbox, "/alertmanager/pagerduty", event)
    assert answer.status_code == 202
    assert answer.json() == {"status": "success", "message": "Event processed", "dedup_key": "f" * 64}
    resolved = _post(inbox, "/alertmanager/pagerduty", {**event, "event_action": "resolve"})
    assert resolved.status_code == 202
    entries = inbox.entries()
    assert [(e.destination, e.detail["dedup_key"], e.severity) for e in entries] == [
        ("resolve", "f" * 64, "P1"),
        ("trigger", "f" * 64, "P1"),
    ]
    assert entries[1].link == event["client_url"]
    assert "firing: 1" in entries[1].text and "runbook_url" not in entries[1].text
    assert ROUTING_KEY not in repr(entries)


def _mail(sender: str, subject: str, html: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, "dev-team@visiobook.example", subject
    mail.set_content("see the HTML part")
    mail.add_alternative(html, subtype="html")
    return mail


def test_mails_are_recorded_with_their_sender_telling_alertmanager_from_the_pipeline(
    inbox: LocalInbox,
) -> None:
    alert_html = (
        "<html><head><style>body{color:red}</style></head><body>"
        "<a href='http://127.0.0.1:9093/#/alerts?receiver=email-dev-team'>View in Alertmanager</a>"
        "<p>[2] Firing</p><p>DeployFailed &amp; friends</p>"
        "<a href='http://127.0.0.1:9090/graph?g0.expr=up'>Source</a></body></html>"
    )
    pipeline_html = (
        "<h3>[P2] api: staging failed</h3><ul><li><b>error</b>: tests &lt;failed&gt;</li></ul>"
        "<p><a href='http://127.0.0.1:8080/dags/d/runs/r/tasks/t'>Task log</a></p>"
        "<p><a href='http://127.0.0.1:8080/dags/d/runs/r'>Pipeline run</a></p>"
    )
    with smtplib.SMTP("127.0.0.1", inbox.smtp_port, timeout=10) as client:
        client.send_message(_mail(ALERTMANAGER_SENDER, "[FIRING] P2 DeployFailed - web", alert_html))
        client.send_message(_mail("delivery@visiobook.io", "[P2] api: staging failed", pipeline_html))
    pipeline, alert = inbox.entries()
    assert (alert.source, alert.kind, alert.destination, alert.severity) == (
        Source.ALERTMANAGER,
        "email",
        "dev-team@visiobook.example",
        "P2",
    )
    assert alert.link == "http://127.0.0.1:9093/#/alerts?receiver=email-dev-team"
    assert "DeployFailed & friends" in alert.text and "color:red" not in alert.text
    assert (pipeline.source, pipeline.title) == (Source.PIPELINE, "[P2] api: staging failed")
    assert pipeline.link == "http://127.0.0.1:8080/dags/d/runs/r"
    assert "error: tests <failed>" in pipeline.text


def test_the_tls_endpoint_is_trusted_through_its_certificate_only(inbox: LocalInbox) -> None:
    event = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "payload": {"summary": "[P1] api: production deploy failed", "source": "d", "severity": "critical"},
    }
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(f"{inbox.server.tls_url}/v2/enqueue", json=event, timeout=10)
    certificate = inbox.endpoints["inbox_certificate"]
    answer = requests.post(f"{inbox.server.tls_url}/v2/enqueue", json=event, timeout=10, verify=certificate)
    assert answer.status_code == 202 and len(answer.json()["dedup_key"]) == 32
    [entry] = inbox.entries()
    assert (entry.source, entry.destination, entry.detail["dedup_key"]) == (
        Source.PIPELINE,
        "trigger",
        answer.json()["dedup_key"],
    )


def test_unknown_paths_and_oversized_bodies_are_refused(inbox: LocalInbox) -> None:
    assert _post(inbox, "/api/chat.postMessage", {"channel": "#x", "text": "y"}).status_code == 404
    big = requests.post(
        f"{inbox.server.http_url}/alertmanager/slack", data=b"x" * (1024 * 1024 + 1), timeout=30
    )
    assert big.status_code == 413
    assert requests.get(f"{inbox.server.http_url}/-/ready", timeout=10).text == "ok"
    assert inbox.entries() == []


def test_a_message_that_cannot_be_recorded_is_refused_so_the_sender_knows(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    smtp_port = free_port()
    server = InboxServer(
        store=InboxStore(blocker / "inbox.sqlite3"), http_port=0, smtp_port=smtp_port
    ).start()
    try:
        answer = requests.post(
            f"{server.http_url}/slack/api/chat.postMessage",
            json={"channel": "#alerts", "text": "[P2] x"},
            headers={"Authorization": "Bearer xoxb-1"},
            timeout=10,
        )
        assert answer.status_code == 503 and answer.json()["ok"] is False
        with (
            smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client,
            pytest.raises(smtplib.SMTPDataError) as refused,
        ):
            client.send_message(_mail("delivery@visiobook.io", "[P2] x", "<p>x</p>"))
        assert refused.value.smtp_code == 451
    finally:
        server.stop()


def test_the_certificate_is_made_once_and_its_key_is_private(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.pem", tmp_path / "secrets" / "tls.key"
    assert ensure_certificate(cert, key) is True
    first = cert.read_bytes()
    assert ensure_certificate(cert, key) is False
    assert cert.read_bytes() == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert.write_text("not a certificate")
    assert ensure_certificate(cert, key) is True


def test_a_busy_port_fails_the_start_and_nothing_is_left_listening(tmp_path: Path) -> None:
    from delivery.devenv.daemons import port_open

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        http_port = free_port()
        server = InboxServer(
            store=InboxStore(tmp_path / "inbox.sqlite3"), http_port=http_port, smtp_port=busy.getsockname()[1]
        )
        with pytest.raises(OSError, match="in use"):
            server.start()
    assert not port_open(http_port)  # the ready URL never answered
