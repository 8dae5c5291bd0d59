"""Severity of each event, destinations from the catalog, dedup keys and the approval link (pure)."""

from __future__ import annotations

from delivery.catalog import Catalog
from delivery.catalog.models import NotificationRoute, NotificationRouting
from delivery.notify import (
    EVENT_SEVERITY,
    SLACK_API_CONN_ID,
    Destination,
    DestinationKind,
    PipelineEvent,
    dedup_key,
    hitl_url,
    route,
)

PD = DestinationKind.PAGERDUTY
SLACK = DestinationKind.SLACK
EMAIL = DestinationKind.EMAIL


def _summary(destinations: list[Destination]) -> list[str]:
    return [str(d) for d in destinations]


def test_every_event_has_its_fixed_severity() -> None:
    expected = {
        "production_deploy_failed": "P1",
        "rollback_failed": "P1",
        "rollback_aborted": "P1",
        "break_glass_deploy": "P1",
        "production_gate_refused": "P2",
        "production_verification_failed": "P1",
        "staging_failed": "P2",
        "approval_timed_out": "P2",
        "verification_inconclusive": "P2",
        "approval_requested": "P3",
        "deploy_succeeded": "P3",
        "rollback_succeeded": "P3",
        # One path for every notification: task failures and the end-of-run summary are events too.
        "task_failed": "P3",
        "run_finished": "P3",
    }
    assert {e.value: s.value for e, s in EVENT_SEVERITY.items()} == expected
    assert {e.value for e in PipelineEvent} == set(expected)


def test_platform_defaults_route_each_severity(catalog: Catalog) -> None:
    svc, platform = catalog.service("visiobook-web"), catalog.platform
    for event in ("production_deploy_failed", "rollback_failed", "production_verification_failed"):
        assert _summary(route(PipelineEvent(event), service=svc, platform=platform)) == [
            "pagerduty:events-v2 (trigger)",
            "slack:#critical-alerts",
        ]
    for event in ("staging_failed", "approval_timed_out", "verification_inconclusive"):
        assert _summary(route(PipelineEvent(event), service=svc, platform=platform)) == [
            "slack:#alerts",
            "email:oncall@visiobook.io",
        ]
    for event in ("approval_requested", "deploy_succeeded", "task_failed", "run_finished"):
        assert _summary(route(PipelineEvent(event), service=svc, platform=platform)) == ["slack:#monitoring"]
    # A good rollback restores service: the P1 incident is resolved, and #monitoring is told.
    assert _summary(route(PipelineEvent.ROLLBACK_SUCCEEDED, service=svc, platform=platform)) == [
        "pagerduty:events-v2 (resolve)",
        "slack:#monitoring",
    ]
    p1 = route(PipelineEvent.ROLLBACK_FAILED, service=svc, platform=platform)
    assert p1[0].conn_id == "pagerduty_default" and p1[1].conn_id == SLACK_API_CONN_ID
    p2 = route(PipelineEvent.STAGING_FAILED, service=svc, platform=platform)
    assert p2[1].conn_id == "smtp_default"


def test_a_service_route_replaces_the_whole_severity_route(catalog: Catalog) -> None:
    base = catalog.service("visiobook-api")
    svc = base.model_copy(
        update={
            "notifications": NotificationRouting(
                P2=NotificationRoute(slack_channels=["#api-team", "#api-team"]),
                P3=NotificationRoute(),  # silence P3 for this service
            )
        }
    )
    platform = catalog.platform
    # P2: the service's route, not merged with the platform's (no e-mail), duplicates removed.
    assert _summary(route(PipelineEvent.STAGING_FAILED, service=svc, platform=platform)) == [
        "slack:#api-team"
    ]
    # P1 is not overridden: platform default.
    assert _summary(route(PipelineEvent.PRODUCTION_DEPLOY_FAILED, service=svc, platform=platform)) == [
        "pagerduty:events-v2 (trigger)",
        "slack:#critical-alerts",
    ]
    assert route(PipelineEvent.DEPLOY_SUCCEEDED, service=svc, platform=platform) == []
    # The resolve follows the P1 route that paged, not the (empty) P3 route.
    assert _summary(route(PipelineEvent.ROLLBACK_SUCCEEDED, service=svc, platform=platform)) == [
        "pagerduty:events-v2 (resolve)"
    ]
    # A service that does not page for P1 does not resolve either.
    quiet = base.model_copy(
        update={"notifications": NotificationRouting(P1=NotificationRoute(slack_channels=["#api-oncall"]))}
    )
    assert _summary(route(PipelineEvent.ROLLBACK_FAILED, service=quiet, platform=platform)) == [
        "slack:#api-oncall"
    ]
    assert _summary(route(PipelineEvent.ROLLBACK_SUCCEEDED, service=quiet, platform=platform)) == [
        "slack:#monitoring"
    ]


def test_dedup_key_identifies_service_environment_run_and_family() -> None:
    args = {
        "service": "visiobook-api",
        "environment": "production",
        "dag_id": "deliver_visiobook_api",
        "run_id": "manual__2025-05-01T10:00:00+00:00",
        "family": "production_failure",
    }
    key = dedup_key(**args)
    assert key == dedup_key(**args)  # deterministic: a retried task sends the same key
    assert key.startswith("delivery/visiobook-api/production/production_failure/")
    assert len(key) <= 255
    for name, other in (("run_id", "manual__2"), ("dag_id", "rollback_x"), ("family", "rollback_failed")):
        assert dedup_key(**{**args, name: other}) != key
    assert len(dedup_key(**{**args, "run_id": "x" * 1000})) <= 255


def test_approval_link_is_the_required_actions_page_of_the_task() -> None:
    url = hitl_url(
        base_url="https://airflow.visiobook.io/",
        dag_id="deliver_visiobook_api",
        run_id="manual__2025-05-01T10:00:00+00:00",
        task_id="approval.approve_production",
    )
    assert url == (
        "https://airflow.visiobook.io/dags/deliver_visiobook_api/runs/manual__2025-05-01T10%3A00%3A00%2B00%3A00"
        "/tasks/approval.approve_production/required_actions?map_index=-1"
    )
    behind_proxy = hitl_url(base_url="https://ops.visiobook.io/airflow", dag_id="d", run_id="r", task_id="t")
    assert (
        behind_proxy == "https://ops.visiobook.io/airflow/dags/d/runs/r/tasks/t/required_actions?map_index=-1"
    )
