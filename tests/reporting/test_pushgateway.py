"""Delivery metrics through a real Pushgateway, and the shipped rules evaluated by a real Prometheus
over what the pipeline pushed (the rules' ``increase()`` must see each run's events)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from delivery.reporting import metrics
from delivery.reporting.metrics import Deploy, Pushgateway, Run, RunOutcome
from tests.reporting.conftest import Gateway, Prometheus

pytestmark = pytest.mark.e2e


def _run(service: str, n: int, dag: str = "deliver") -> Run:
    return Run(service=service, dag_id=f"{dag}_{service.replace('-', '_')}", run_id=f"manual__2026-05-0{n}")


def test_each_run_is_its_own_group_and_the_runs_add_up(pushgateway: Gateway) -> None:
    service = "groups-api"
    first, second, third = (_run(service, n) for n in (1, 2, 3))
    for run in (first, second, third):
        assert metrics.open_run(run)
    assert pushgateway.total("delivery_deploy_total", service=service) == 0
    assert (
        len({labels["run_id"] for _, labels, _ in pushgateway.series() if labels.get("service") == service})
        == 3
    )

    production = Deploy(environment="production", result="success", duration_s=50)
    assert metrics.record_run(first, RunOutcome(pipeline="success", deploys=(production,)))
    assert metrics.record_run(second, RunOutcome(pipeline="success", deploys=(production,)))
    assert metrics.record_run(
        third, RunOutcome(pipeline="failed", deploys=(Deploy(environment="staging", result="failed"),))
    )

    prod = {"service": service, "environment": "production"}
    assert pushgateway.total("delivery_deploy_total", **prod, result="success") == 2
    assert pushgateway.total("delivery_deploy_total", **prod, result="failed") == 0
    assert (
        pushgateway.total("delivery_deploy_total", service=service, environment="staging", result="failed")
        == 1
    )
    assert pushgateway.total("delivery_pipeline_runs_total", service=service, result="failed") == 1
    assert pushgateway.total("delivery_deploy_duration_seconds_count", **prod) == 2
    assert pushgateway.total("delivery_deploy_duration_seconds_sum", **prod) == 100
    assert pushgateway.total("delivery_deploy_duration_seconds_bucket", **prod, le="60") == 2
    assert pushgateway.total("delivery_deploy_duration_seconds_bucket", **prod, le="30") == 0
    # The grouping labels are on every series, so a run's series are its own.
    series = [labels for name, labels, _ in pushgateway.series() if labels.get("service") == service]
    assert all(labels["job"] == "delivery" and labels["dag_id"] == "deliver_groups_api" for labels in series)


def test_concurrent_runs_lose_no_count(pushgateway: Gateway) -> None:
    """No push reads another's values back, so runs ending at the same instant all count."""
    service = "busy-api"
    runs = [Run(service=service, dag_id="deliver_busy_api", run_id=f"run-{n}") for n in range(24)]
    outcome = RunOutcome(pipeline="success", deploys=(Deploy(environment="staging", result="success"),))
    with ThreadPoolExecutor(max_workers=12) as pool:
        assert all(pool.map(lambda run: metrics.record_run(run, outcome), runs))
    assert pushgateway.total("delivery_pipeline_runs_total", service=service, result="success") == 24
    assert (
        pushgateway.total("delivery_deploy_total", service=service, environment="staging", result="success")
        == 24
    )


def test_a_pending_approval_belongs_to_its_run_and_ends_with_it(pushgateway: Gateway) -> None:
    service = "approvals-api"
    first, second = _run(service, 1), _run(service, 2)
    for run in (first, second):
        metrics.open_run(run)
        assert metrics.record_approvals_pending(run, pending=True)
    assert pushgateway.total("delivery_approvals_pending", service=service, environment="production") == 2
    assert metrics.record_approvals_pending(first, pending=False)  # answered
    assert pushgateway.total("delivery_approvals_pending", service=service) == 1
    assert metrics.record_run(second, RunOutcome(pipeline="failed", approval="timeout"))  # end of run
    assert pushgateway.total("delivery_approvals_pending", service=service) == 0
    assert pushgateway.total("delivery_approval_total", service=service, result="timeout") == 1


def test_old_groups_and_abandoned_approvals_expire(pushgateway: Gateway) -> None:
    service = "expiring-api"
    finished, waiting = _run(service, 1), _run(service, 2)
    metrics.open_run(finished)
    metrics.record_run(finished, RunOutcome(pipeline="success"))
    metrics.open_run(waiting)
    metrics.record_approvals_pending(waiting, pending=True)
    other = _run("other-api", 1)
    metrics.open_run(other)
    gateway = Pushgateway.from_env()

    # A day past the approval timeout, only the run still "waiting" is gone: it was stopped from outside.
    later = time.time() + timedelta(hours=1, days=1, minutes=1).total_seconds()
    assert gateway.expire(service=service, approval_timeout=timedelta(hours=1), now=later) == [
        waiting.grouping_key()
    ]
    assert {
        labels["run_id"] for _, labels, _ in pushgateway.series() if labels.get("service") == service
    } == {finished.run_id}
    # Past the retention (7 days), every group of the service goes; other services' groups stay.
    much_later = time.time() + timedelta(days=7, minutes=1).total_seconds()
    assert gateway.expire(service=service, approval_timeout=None, now=much_later) == [finished.grouping_key()]
    assert pushgateway.total("delivery_pipeline_runs_total", service=service) == 0
    assert any(labels.get("service") == "other-api" for _, labels, _ in pushgateway.series())


def test_the_shipped_rules_fire_on_what_the_pipeline_pushed(
    pushgateway: Gateway, prometheus: Prometheus
) -> None:
    """``DeployFailed`` uses ``increase()`` on the counter: it must see the run's 0 -> 1."""
    run = _run("alerting-api", 1)
    assert metrics.open_run(run)
    prometheus.wait_for(f'delivery_deploy_total{{run_id="{run.run_id}",service="alerting-api"}}')
    time.sleep(1.5)  # one more scrape of the zeros
    failed = Deploy(environment="production", result="failed")
    assert metrics.record_run(run, RunOutcome(pipeline="failed", deploys=(failed,)))
    assert metrics.record_approvals_pending(_run("alerting-api", 2), pending=True)

    [alert] = prometheus.wait_for(
        'ALERTS{alertname="DeployFailed",service="alerting-api",alertstate="firing"}'
    )
    assert alert["metric"]["severity"] == "P1" and alert["metric"]["environment"] == "production"
    [increase] = prometheus.query(
        'sum(increase(delivery_deploy_total{service="alerting-api",result="failed"}[1m]))'
    )
    assert float(increase["value"][1]) >= 1
    # ApprovalPendingTooLong waits 4 h before firing; its expression already holds.
    [pending] = prometheus.wait_for('ALERTS{alertname="ApprovalPendingTooLong",service="alerting-api"}')
    assert pending["metric"]["alertstate"] == "pending"
