"""The SonarQube quality gate of seed flow 2, over SonarQube's REST API (stand-in on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from delivery.integrations.sonarqube import QualityGateFailed, SonarQualityGateOperator
from tests.helpers import free_port
from tests.standins.sonarqube_server import SonarStandIn


@pytest.fixture
def sonar(monkeypatch: pytest.MonkeyPatch) -> Iterator[SonarStandIn]:
    standin = SonarStandIn().start()
    conn = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "schema": "http",
        "port": standin.port,
        "password": standin.token,
    }
    monkeypatch.setenv("AIRFLOW_CONN_SONAR_TEST", json.dumps(conn))
    yield standin
    standin.stop()


def _gate(**kwargs: object) -> SonarQualityGateOperator:
    return SonarQualityGateOperator(
        task_id="quality_gate",
        project_key="visiobook-web",
        sonarqube_conn_id="sonar_test",
        poll_interval_s=0.01,
        **kwargs,
    )


def test_passing_gate_waits_for_the_analysis_then_returns_ok(sonar: SonarStandIn) -> None:
    sonar.queue_polls = 2
    result = _gate(branch="main").execute(context={})  # type: ignore[arg-type]
    assert result["status"] == "OK"
    paths = [path for path, _, _ in sonar.requests]
    assert paths == ["/api/ce/component"] * 3 + ["/api/qualitygates/project_status"]
    _, query, auth = sonar.requests[-1]
    assert query == {"projectKey": ["visiobook-web"], "branch": ["main"]}
    assert auth == "Bearer sonar-token"


def test_failing_gate_lists_the_failed_conditions(sonar: SonarStandIn) -> None:
    sonar.gate = {
        "status": "ERROR",
        "conditions": [
            {
                "status": "ERROR",
                "metricKey": "new_coverage",
                "comparator": "LT",
                "errorThreshold": "80",
                "actualValue": "61.2",
            },
            {
                "status": "OK",
                "metricKey": "new_bugs",
                "comparator": "GT",
                "errorThreshold": "0",
                "actualValue": "0",
            },
            {
                "status": "ERROR",
                "metricKey": "new_security_hotspots_reviewed",
                "comparator": "LT",
                "errorThreshold": "100",
                "actualValue": "50",
            },
        ],
    }
    with pytest.raises(QualityGateFailed) as excinfo:
        _gate(pull_request="42").execute(context={})  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert "Quality gate of visiobook-web is ERROR" in message
    assert "new_coverage=61.2 (LT 80)" in message and "new_security_hotspots_reviewed=50 (LT 100)" in message
    assert "new_bugs" not in message
    assert sonar.requests[-1][1]["pullRequest"] == ["42"]


def test_failed_analysis_and_bad_token_say_what_to_fix(
    sonar: SonarStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    sonar.analysis_status = "FAILED"
    with pytest.raises(
        QualityGateFailed,
        match="analysis of visiobook-web ended FAILED: Analysis report could not be processed",
    ):
        _gate().execute(context={})  # type: ignore[arg-type]
    sonar.token = "rotated"
    with pytest.raises(QualityGateFailed, match="refused the token of connection 'sonar_test' \\(401\\)"):
        _gate().execute(context={})  # type: ignore[arg-type]


def test_a_sonarqube_that_is_starting_is_asked_again(sonar: SonarStandIn) -> None:
    sonar.unavailable = 2
    result = _gate(branch="main").execute(context={})  # type: ignore[arg-type]
    assert result["status"] == "OK"
    assert [path for path, _, _ in sonar.requests] == ["/api/ce/component"] * 3 + [
        "/api/qualitygates/project_status"
    ]


def test_a_sonarqube_that_stays_down_fails_the_gate_with_its_answer(sonar: SonarStandIn) -> None:
    sonar.unavailable = 10
    with pytest.raises(QualityGateFailed, match=r"SonarQube /api/ce/component answered 503: .*maintenance"):
        _gate().execute(context={})  # type: ignore[arg-type]
    assert len(sonar.requests) == 3  # three attempts, then the last answer is reported


def test_an_unreachable_sonarqube_says_where(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SONAR_DOWN", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port})
    )
    gate = SonarQualityGateOperator(
        task_id="quality_gate", project_key="visiobook-web", sonarqube_conn_id="sonar_down"
    )
    with pytest.raises(QualityGateFailed, match=f"unreachable at http://127.0.0.1:{port}"):
        gate.execute(context={})  # type: ignore[arg-type]


def test_queue_that_never_drains_times_out(sonar: SonarStandIn) -> None:
    sonar.queue_polls = 10_000
    with pytest.raises(QualityGateFailed, match="still queued after 0s"):
        _gate(wait_timeout_s=0.05).execute(context={})  # type: ignore[arg-type]


def test_empty_project_key_is_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match="project_key must not be empty"):
        SonarQualityGateOperator(task_id="quality_gate", project_key="")
