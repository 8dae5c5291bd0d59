"""A failing stage really posts its Slack notification, through the Slack provider, to a local stand-in.

The DAG is the real ``deliver_visiobook_web`` built from the catalog, run by
``dag.test()``: its first task cannot resolve the ref (the repository is not
reachable from here), so every failure path of the pipeline runs.
"""

from __future__ import annotations

import json

import pytest

from delivery.notify.failure import slack_failure_notifier


@pytest.fixture
def slack_conn(slack, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    conn = {"conn_type": "slackwebhook", "password": slack.webhook_url}
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_DELIVERY", json.dumps(conn))
    return "slack_delivery"


@pytest.fixture
def web_dag(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from delivery.catalog import load_catalog
    from delivery.pipeline.factory import DagFactory

    monkeypatch.setenv("DELIVERY_PROFILE", "kubernetes")
    catalog, _ = load_catalog()
    return DagFactory(catalog=catalog).build(catalog.service("visiobook-web"))


def test_failure_is_posted_with_dag_task_run_and_log_link(airflow_db, slack, slack_conn, web_dag) -> None:  # type: ignore[no-untyped-def]
    run = web_dag.test(run_conf={"ref": "no-such-branch"})
    assert run.state == "failed"
    texts = [m["text"] for m in slack.messages()]
    failure = next(t for t in texts if "task `validate.checkout` failed" in t)
    assert "*deliver_visiobook_web*" in failure
    assert f"run `{run.run_id}`" in failure
    assert "no-such-branch" in failure  # the error says what went wrong
    log_link = failure.split("Log: ", 1)[1]
    assert (
        log_link.startswith("http")
        and "deliver_visiobook_web" in log_link
        and "validate.checkout" in log_link
    )
    # The end-of-run summary says the run failed, and where.
    summary = next(t for t in texts if "*visiobook-web*" in t)
    assert "failed at validate.checkout" in summary
    assert all(r.path == "/services/T0000/B0000/XXXXXXXX" for r in slack.requests)


def test_a_broken_slack_never_changes_the_result(airflow_db, slack, slack_conn, web_dag) -> None:  # type: ignore[no-untyped-def]
    slack.fail_next(100, status=500)
    run = web_dag.test(run_conf={"ref": "no-such-branch"})
    ti_states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    # Slack was down: every message was retried and swallowed; the run fails for its own reason only.
    assert run.state == "failed"
    assert ti_states["validate.checkout"] == "failed"
    assert ti_states["notify.summary"] == "success"
    assert ti_states["rollback.plan"] == "skipped"  # production was never touched
    assert len(slack.requests) >= 2 * 3  # two messages, three attempts each


def test_safe_notifier_recovers_after_a_transient_error(slack, slack_conn: str) -> None:  # type: ignore[no-untyped-def]
    from delivery.notify.failure import send_slack

    slack.fail_next(1, status=503)
    delivered = send_slack(slack_conn_id=slack_conn, text="deployed visiobook-web", context={})
    assert delivered is True
    assert [m["text"] for m in slack.messages()] == ["deployed visiobook-web", "deployed visiobook-web"]


def test_notifier_rejects_nonsense_settings() -> None:
    notifier = slack_failure_notifier(slack_conn_id="x")
    with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
        type(notifier)(inner=notifier.inner, attempts=0)
