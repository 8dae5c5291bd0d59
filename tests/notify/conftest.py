"""Stand-ins for Slack (Web API), PagerDuty (Events API v2) and SMTP, and the connections to them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from delivery.catalog import Catalog, load_catalog
from tests.standins.pagerduty_server import PagerDutyStandIn
from tests.standins.smtp_server import SmtpStandIn

ROUTING_KEY = "0123456789abcdef0123456789abcdef"
SLACK_TOKEN = "xoxb-0000-1111-secrettoken"


@dataclass
class FakeTaskInstance:
    """What notify_event reads from ``context["ti"]``, and the XComs it pushes."""

    dag_id: str = "deliver_visiobook_api"
    run_id: str = "manual__2025-05-01T10:00:00+00:00"
    task_id: str = "deploy_production.health_check"
    try_number: int = 1
    map_index: int = -1
    xcoms: dict[str, Any] = field(default_factory=dict)

    @property
    def log_url(self) -> str:
        return f"http://localhost:8080/dags/{self.dag_id}/runs/{self.run_id}/tasks/{self.task_id}"

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def context_of(ti: FakeTaskInstance) -> dict[str, Any]:
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id}


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    loaded, _ = load_catalog()
    return loaded


@pytest.fixture
def pagerduty(monkeypatch: pytest.MonkeyPatch) -> Iterator[PagerDutyStandIn]:
    standin = PagerDutyStandIn().start()
    assert standin.ca_file is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(standin.ca_file))
    conn = {
        "conn_type": "pagerduty_events",
        "password": ROUTING_KEY,
        "extra": {"events_base_url": standin.url},
    }
    monkeypatch.setenv("AIRFLOW_CONN_PAGERDUTY_DEFAULT", json.dumps(conn))
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpStandIn]:
    standin = SmtpStandIn().start()
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": standin.port,
        "extra": {
            "disable_tls": True,
            "disable_ssl": True,
            "from_email": "delivery@visiobook.io",
            "timeout": 10,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def slack_api(slack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Slack stand-in behind the Web API connection ``slack_api`` (a bot token)."""
    conn = {"conn_type": "slack", "password": SLACK_TOKEN, "extra": {"base_url": f"{slack.url}/api/"}}
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_API", json.dumps(conn))
    return slack


@pytest.fixture
def standins(
    slack_api: Any, pagerduty: PagerDutyStandIn, smtp: SmtpStandIn
) -> tuple[Any, PagerDutyStandIn, SmtpStandIn]:
    return slack_api, pagerduty, smtp
