"""Stand-ins for Slack (Web API), PagerDuty (Events API v2) and SMTP, and the connections to them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from delivery.catalog import Catalog, load_catalog
from delivery.notify import RetryPolicy
from delivery.notify.dedup import STATE_DIR_ENV
from tests.standins.pagerduty_server import PagerDutyStandIn
from tests.standins.smtp_server import SmtpStandIn

ROUTING_KEY = "0123456789abcdef0123456789abcdef"
SLACK_TOKEN = "xoxb-0000-1111-secrettoken"


@dataclass
class FakeTaskInstance:
    """What the notification path reads from ``context["ti"]`` in a task process.

    ``xcoms`` records any XCom pushed (the notification path pushes none);
    ``states``/``pulled`` answer ``get_task_states``/``xcom_pull`` like the Task SDK does.
    """

    dag_id: str = "deliver_visiobook_api"
    run_id: str = "manual__2025-05-01T10:00:00+00:00"
    task_id: str = "deploy_production.health_check"
    try_number: int = 1
    map_index: int = -1
    state: str | None = "failed"
    xcoms: dict[str, Any] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    pulled: dict[str, Any] = field(default_factory=dict)

    @property
    def log_url(self) -> str:
        return f"http://localhost:8080/dags/{self.dag_id}/runs/{self.run_id}/tasks/{self.task_id}"

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.pulled.get(task_ids)

    def get_task_states(self, *, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {run_id: dict(self.states) for run_id in run_ids}


@dataclass
class DagProcessorTaskInstance(FakeTaskInstance):
    """The task instance of a failure callback run by the dag-processor (scheduler-decided failure).

    As observed on Airflow 3.3.2 (``dag_processing/processor.py`` builds it with
    ``RuntimeTaskInstance.model_construct``): ``state`` is None, and ``xcom_push`` never
    returns (the dag-processor's supervisor does not handle ``SetXCom``). Here it records
    the attempt and raises instead of hanging the test.
    """

    state: str | None = None
    push_attempts: list[str] = field(default_factory=list)

    def xcom_push(self, key: str, value: Any) -> None:
        self.push_attempts.append(key)
        raise RuntimeError("SetXCom is not handled in the dag-processor: this call would hang")


def context_of(ti: FakeTaskInstance) -> dict[str, Any]:
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id}


def dag_processor_context(ti: DagProcessorTaskInstance) -> dict[str, Any]:
    """The keys the dag-processor gives a failure callback: no ``exception``, no ``reason``."""
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id, "params": {}, "var": {}, "conn": None}


FAST = RetryPolicy(backoff_s=0.01)
"""The production policy with a short backoff, so that retry tests stay quick."""


@pytest.fixture(autouse=True)
def sent_marks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own dedup marks (what the failure callbacks already sent)."""
    directory = tmp_path / "sent"
    monkeypatch.setenv(STATE_DIR_ENV, str(directory))
    return directory


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
    """The Slack stand-in behind the Web API connection ``slack_api`` (a bot token it knows)."""
    slack.token = SLACK_TOKEN
    conn = {"conn_type": "slack", "password": SLACK_TOKEN, "extra": {"base_url": f"{slack.url}/api/"}}
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_API", json.dumps(conn))
    return slack


@pytest.fixture
def standins(
    slack_api: Any, pagerduty: PagerDutyStandIn, smtp: SmtpStandIn
) -> tuple[Any, PagerDutyStandIn, SmtpStandIn]:
    return slack_api, pagerduty, smtp
