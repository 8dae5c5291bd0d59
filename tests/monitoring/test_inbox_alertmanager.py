"""Alertmanager's real receivers deliver to the local notification inbox: a fired alert and its resolution.

The inbox daemon and Alertmanager are started from the configuration ``monitoring start`` renders
(``MonitoringStack``: the shipped routing tree, its Slack, PagerDuty and e-mail integrations
pointed at the inbox); only the group timings are shortened. A P1 alert pages (PagerDuty
trigger) and posts to #critical-alerts, a P2 alert posts to #alerts and mails the dev team;
once resolved, PagerDuty gets the resolve of the same incident and Slack and e-mail the
``[RESOLVED]`` messages. Alertmanager counts no failed notification: the inbox answered as
Slack, PagerDuty and a mail server do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from delivery.devenv.monitoring import MonitoringStack
from delivery.devenv.monitoring_config import AlertSinks, Ports
from delivery.notification_inbox import EntryStatus, InboxEntry, InboxStore, Source
from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.e2e

SERVICE = "visiobook-demo-web"


def _fast(route: dict[str, Any]) -> None:
    route["group_wait"], route["group_interval"] = "1s", "2s"
    for child in route.get("routes", []):
        _fast(child)


@pytest.fixture
def stack(tmp_path: Path, alertmanager_binary: str, amtool: str, promtool: str) -> Iterator[MonitoringStack]:
    ports = [free_port() for _ in range(6)]
    stack = MonitoringStack(
        state=tmp_path / "state",
        catalog_dir=ROOT / "include" / "catalog-local",
        airflow_url=f"http://127.0.0.1:{free_port()}",
        ports=Ports(
            prometheus=ports[0],
            alertmanager=ports[1],
            pushgateway=ports[2],
            inbox=ports[3],
            inbox_tls=ports[4],
            inbox_smtp=ports[5],
        ),
        sinks=AlertSinks(),
        traffic_rps=0,
    )
    stack.render()
    config = yaml.safe_load(stack.layout.alertmanager_config.read_text())
    _fast(config["route"])
    stack.layout.alertmanager_config.write_text(yaml.safe_dump(config, sort_keys=False))
    daemons = stack.daemons(to_start=True)
    started = []
    try:
        for name in ("inbox", "alertmanager"):
            daemons[name].start(timeout=60)
            started.append(daemons[name])
        yield stack
    finally:
        for daemon in reversed(started):
            daemon.stop()


def _alert(name: str, severity: str, environment: str, *, ends: bool = False) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": {"alertname": name, "severity": severity, "service": SERVICE, "environment": environment},
        "annotations": {
            "summary": f"{name} on {SERVICE}",
            "description": "seen by the test <b>&</b>",
            "runbook_url": "https://runbooks.visiobook.example/" + name,
        },
        "startsAt": datetime.now(UTC).isoformat(),
    }
    if ends:
        alert["endsAt"] = datetime.now(UTC).isoformat()
    return alert


def _post(stack: MonitoringStack, alerts: list[dict[str, Any]]) -> None:
    answer = requests.post(f"{stack.endpoints.alertmanager}/api/v2/alerts", json=alerts, timeout=10)
    assert answer.status_code == 200, answer.text


def _wait(stack: MonitoringStack, what: str, found: Callable[[list[InboxEntry]], bool]) -> list[InboxEntry]:
    store = InboxStore(stack.layout.inbox_store)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entries = store.entries(limit=100)
        if found(entries):
            return entries
        time.sleep(0.5)
    daemons = stack.daemons()
    pytest.fail(
        f"timed out waiting for {what}; inbox: {json.dumps([e.as_dict() for e in store.entries()])[:3000]}\n"
        f"Alertmanager log:\n{daemons['alertmanager'].log_tail(30)}\ninbox log:\n{daemons['inbox'].log_tail(30)}"
    )


def _failed_notifications(stack: MonitoringStack) -> dict[str, float]:
    text = requests.get(f"{stack.endpoints.alertmanager}/metrics", timeout=10).text
    failed: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("alertmanager_notifications_failed_total{"):
            integration = line.split('integration="', 1)[1].split('"', 1)[0]
            failed[integration] = failed.get(integration, 0.0) + float(line.rsplit(" ", 1)[1])
    return failed


def _is(entry: InboxEntry, kind: str, destination: str, title_start: str = "") -> bool:
    return (entry.kind, entry.destination) == (kind, destination) and entry.title.startswith(title_start)


def test_a_fired_alert_and_its_resolution_arrive_through_alertmanagers_receivers(
    stack: MonitoringStack,
) -> None:
    alertmanager = stack.endpoints.alertmanager
    # Another environment for the P2: a P1 inhibits the P2 and P3 alerts of its service and environment.
    _post(stack, [_alert("ServiceDown", "P1", "production"), _alert("DeployFailed", "P2", "staging")])
    fired = _wait(
        stack,
        "the page, both Slack posts and the mail",
        lambda entries: (
            any(_is(e, "pagerduty", "trigger") for e in entries)
            and any(_is(e, "slack", "#critical-alerts", "[FIRING]") for e in entries)
            and any(_is(e, "slack", "#alerts", "[FIRING]") for e in entries)
            and any(_is(e, "email", "dev-team@visiobook.example", "[FIRING]") for e in entries)
        ),
    )
    assert all(e.source is Source.ALERTMANAGER and e.status is EntryStatus.RECEIVED for e in fired)
    [page] = [e for e in fired if _is(e, "pagerduty", "trigger")]
    assert (page.title, page.severity) == (f"[P1] ServiceDown on {SERVICE} (production)", "P1")
    assert page.link == f"{alertmanager}/#/alerts?receiver=pagerduty-critical"
    assert len(page.detail["dedup_key"]) == 64  # the alert group's key: the resolve must carry the same
    [critical] = [e for e in fired if _is(e, "slack", "#critical-alerts")]
    assert critical.title == f"[FIRING] P1 ServiceDown - {SERVICE} (production)"
    assert critical.link == f"{alertmanager}/#/alerts?receiver=slack-critical-alerts"
    assert "seen by the test <b>&</b>" in critical.text  # foreign text, kept as text
    [mail] = [e for e in fired if e.kind == "email"]
    assert (mail.title, mail.severity) == (f"[FIRING] P2 DeployFailed - {SERVICE}", "P2")
    assert mail.link == f"{alertmanager}/#/alerts?receiver=email-dev-team"

    _post(
        stack,
        [
            _alert("ServiceDown", "P1", "production", ends=True),
            _alert("DeployFailed", "P2", "staging", ends=True),
        ],
    )
    resolved = _wait(
        stack,
        "the resolve and the [RESOLVED] messages",
        lambda entries: (
            any(_is(e, "pagerduty", "resolve") for e in entries)
            and any(_is(e, "slack", "#critical-alerts", "[RESOLVED]") for e in entries)
            and any(_is(e, "slack", "#alerts", "[RESOLVED]") for e in entries)
            and any(_is(e, "email", "dev-team@visiobook.example", "[RESOLVED]") for e in entries)
        ),
    )
    [resolve] = [e for e in resolved if _is(e, "pagerduty", "resolve")]
    assert resolve.detail["dedup_key"] == page.detail["dedup_key"] and resolve.severity == "P1"
    assert resolved[0].received_at >= page.received_at  # newest first
    assert not any(_failed_notifications(stack).values()), _failed_notifications(stack)
