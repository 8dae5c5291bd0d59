"""The Alertmanager receiver against a real Airflow and a real Alertmanager."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from tests.rollback.conftest import Alertmanager, RollbackEnv, fixture_payload

pytestmark = [pytest.mark.e2e, pytest.mark.duration(70)]

ALERT_DAG = "rollback_rb_alert"


def test_bad_or_missing_token_is_401(rollback_env: RollbackEnv) -> None:
    body = fixture_payload("firing-rollback.json")
    for token in ("wrong-token", ""):
        resp = rollback_env.post_webhook(body, token=token)
        assert resp.status_code == 401, resp.text
        assert rollback_env.token not in resp.text
    assert rollback_env.runs("rollback_rb_web") == [] or all(
        not r["dag_run_id"].startswith("alert__") for r in rollback_env.runs("rollback_rb_web")
    )


def test_ineligible_alerts_are_ignored_with_their_reason(rollback_env: RollbackEnv) -> None:
    resp = rollback_env.post_webhook(fixture_payload("firing-not-eligible.json"))
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["triggered"] == []
    reasons = {item["fingerprint"]: item["reason"] for item in result["ignored"]}
    assert reasons == {
        "1a30ba71cca2921f": "alert has no 'service' label",
        "2b41cb82ddb3a32a": "service 'visiobook-unknown' is not in the catalog",
        "3c52dc93eec4b43b": 'alert is not labelled rollback="auto"',
    }

    resp = rollback_env.post_webhook(fixture_payload("resolved-rollback.json"))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "triggered": [],
        "ignored": [{"fingerprint": "6c1d1e4f0b7a9e21", "reason": "alert is resolved, not firing"}],
    }


def _wait_runs(env: RollbackEnv, dag_id: str, count: int, timeout: float = 60) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        runs = env.runs(dag_id)
        if len(runs) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def test_firing_alert_starts_exactly_one_rollback(
    rollback_env: RollbackEnv, alertmanager: Alertmanager
) -> None:
    env = rollback_env
    env.deploy("rb-alert", env.good_tag, verified=True)
    env.deploy("rb-alert", "d" * 40, verified=None)
    labels = {
        "alertname": "HTTPErrorRateCritical",
        "service": "rb-alert",
        "environment": "production",
        "severity": "P1",
        "rollback": "auto",
    }
    summary = "rb-alert production: 5xx ratio above 5%"
    alertmanager.fire(labels, {"summary": summary})

    runs = _wait_runs(env, ALERT_DAG, 1)
    assert len(runs) == 1, runs
    run = runs[0]
    assert str(run["dag_run_id"]).startswith("alert__")
    conf = run["conf"]
    assert isinstance(conf, dict)
    assert conf["reason"] == f"automatic rollback: HTTPErrorRateCritical ({summary})"
    assert conf["environment"] == "production"
    assert conf["alert"] == labels
    assert conf["fingerprint"]

    # Alertmanager repeats the still-firing group every 2 s (twice here): no second run, ever.
    sent = alertmanager.webhook_notifications()
    deadline = time.monotonic() + 30
    while alertmanager.webhook_notifications() < sent + 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert alertmanager.webhook_notifications() >= sent + 2, "Alertmanager did not repeat the notification"
    assert [r["dag_run_id"] for r in env.runs(ALERT_DAG)] == [run["dag_run_id"]]

    state = env.airflow.wait_run(ALERT_DAG, str(run["dag_run_id"]), timeout=180)
    assert state == "success", env.airflow.task_states(ALERT_DAG, str(run["dag_run_id"]))
    head = env.log("rb-alert")[0]
    assert head["Delivery-Action"] == "rollback" and head["Delivery-Image-Tag"] == env.good_tag
    assert head["Delivery-Reason"] == conf["reason"]

    # Resolved: Alertmanager sends it (send_resolved in this test's config); it starts nothing.
    sent = alertmanager.webhook_notifications()
    alertmanager.fire(labels, {"summary": summary}, ends_at=datetime.now(UTC).isoformat())
    deadline = time.monotonic() + 30
    while alertmanager.webhook_notifications() < sent + 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert alertmanager.webhook_notifications() >= sent + 1
    time.sleep(2)
    assert [r["dag_run_id"] for r in env.runs(ALERT_DAG)] == [run["dag_run_id"]]


def test_concurrent_copies_start_one_run_and_an_old_alert_keeps_the_current_release(
    rollback_env: RollbackEnv,
) -> None:
    env = rollback_env
    body = fixture_payload("firing-rollback.json")
    alert = body["alerts"][0]
    alert["labels"]["service"] = "rb-alert"
    alert["fingerprint"] = "77aa77aa77aa77aa"
    alert["startsAt"] = "2020-01-01T00:00:00.123456789Z"  # before the current release of rb-alert
    head = env.log("rb-alert")[0]["sha"]
    before = {r["dag_run_id"] for r in env.runs(ALERT_DAG)}

    results: list[dict[str, object]] = []

    def post() -> None:
        resp = env.post_webhook(body)
        assert resp.status_code == 200, resp.text
        results.append(resp.json())

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    triggered = [t for r in results for t in r["triggered"]]  # type: ignore[attr-defined]
    assert len(triggered) == 1, results
    new = {r["dag_run_id"] for r in env.runs(ALERT_DAG)} - before
    assert new == {triggered[0]["run_id"]}
    for r in results:
        for item in r["ignored"]:  # type: ignore[attr-defined]
            assert "already" in item["reason"], item

    run_id = triggered[0]["run_id"]
    assert env.airflow.wait_run(ALERT_DAG, run_id, timeout=120) == "success"
    states = env.airflow.task_states(ALERT_DAG, run_id)
    assert states["identify"] == "skipped" and states["revert"] == "skipped", states
    assert env.log("rb-alert")[0]["sha"] == head, "a stale alert must not roll back further"
