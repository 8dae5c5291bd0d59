from __future__ import annotations

import importlib
import json
import logging
import time

import pytest

from delivery.hooks.argocd import ArgoCDHook
from delivery.triggers.argocd import ArgoCDSyncTrigger
from tests.argocd.support import (
    APP,
    CONN_ID,
    DEST_NAMESPACE,
    NEW_REV,
    OLD_REV,
    TOKEN,
    WRONG_TOKEN,
    first_event,
)
from tests.standins.argocd_server import (
    ArgoCDStandIn,
    Frame,
    healthy_at_previous,
    never_healthy,
    rollout_degraded,
    rollout_ok,
)


def _trigger(**overrides: object) -> ArgoCDSyncTrigger:
    kwargs: dict[str, object] = {
        "app_name": APP,
        "revision": NEW_REV,
        "argocd_conn_id": CONN_ID,
        "poll_interval": 0.05,
        "timeout": 10.0,
    }
    kwargs.update(overrides)
    return ArgoCDSyncTrigger(**kwargs)  # type: ignore[arg-type]


def _synced(server: ArgoCDStandIn, conn_id: str, frames: list[Frame], revision: str = NEW_REV) -> None:
    server.add_app(APP, deployed_revision=OLD_REV, scenario=frames, dest_namespace=DEST_NAMESPACE)
    ArgoCDHook(argocd_conn_id=conn_id).sync(APP, revision)


def test_success_only_once_synced_and_healthy_at_the_revision(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    _synced(argocd_server, argocd_conn, rollout_ok())

    event = first_event(_trigger())

    assert event["status"] == "success"
    assert event["app"] == APP
    assert event["revision"] == NEW_REV
    assert event["sync_revision"] == NEW_REV
    assert (event["sync"], event["health"]) == ("Synced", "Healthy")
    # pending -> OutOfSync -> Progressing -> Healthy: exactly four polls, the first three not success
    assert len(argocd_server.requests_to("GET", f"/applications/{APP}")) == 4
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in argocd_server.requests)
    json.dumps(event)  # the payload is plain JSON


def test_synced_and_healthy_at_an_older_revision_is_not_success(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    _synced(argocd_server, argocd_conn, healthy_at_previous())

    event = first_event(_trigger(timeout=0.4))

    assert event["status"] == "timeout"
    assert (event["sync"], event["health"]) == ("Synced", "Healthy")
    assert event["sync_revision"] == OLD_REV
    assert f"at revision {NEW_REV!r}" in event["message"]
    assert f"at {OLD_REV!r}" in event["message"]
    assert len(argocd_server.requests_to("GET", f"/applications/{APP}")) >= 3


def test_short_sha_revision_is_matched(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    _synced(argocd_server, argocd_conn, rollout_ok())
    assert first_event(_trigger(revision=NEW_REV[:10]))["status"] == "success"


def test_degraded_event_carries_conditions_and_unhealthy_resources(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    _synced(argocd_server, argocd_conn, rollout_degraded())

    event = first_event(_trigger())

    assert event["status"] == "degraded"
    assert event["health"] == "Degraded"
    assert event["operation_phase"] == "Failed"
    assert event["conditions"] == [
        {
            "type": "SyncError",
            "message": f"Failed sync attempt to {NEW_REV}: one or more synchronization tasks "
            "completed unsuccessfully (retried 2 times).",
        }
    ]
    deployment = {
        "kind": "Deployment",
        "namespace": DEST_NAMESPACE,
        "name": APP,
        "health": "Degraded",
        "message": f'Deployment "{APP}" exceeded its progress deadline',
    }
    assert deployment in event["unhealthy_resources"]
    assert {r["kind"] for r in event["unhealthy_resources"]} == {"Deployment", "ReplicaSet", "Pod"}
    message = event["message"]
    assert f"SyncError: Failed sync attempt to {NEW_REV}" in message
    assert (
        f'Deployment {DEST_NAMESPACE}/{APP}: Degraded - Deployment "{APP}" exceeded its progress deadline'
        in message
    )
    assert "back-off 40s restarting failed container" in message
    assert argocd_server.requests_to("GET", "/resource-tree")


def test_degraded_health_alone_is_a_failure(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    frames = [
        Frame(health="Progressing", phase="Running"),
        Frame(
            health="Degraded",
            health_message="rollout aborted",
            resource_health=(("Deployment", "Degraded", "Deployment has minimum availability: false"),),
        ),
    ]
    _synced(argocd_server, argocd_conn, frames)

    event = first_event(_trigger())

    assert event["status"] == "degraded"
    assert event["operation_phase"] == "Succeeded"
    assert event["conditions"] == []
    assert "Health: rollout aborted" in event["message"]
    assert "Deployment has minimum availability: false" in event["message"]


def test_timeout_event_carries_the_last_observed_state(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    _synced(argocd_server, argocd_conn, never_healthy())
    started = time.monotonic()

    event = first_event(_trigger(timeout=0.5))

    assert 0.4 < time.monotonic() - started < 5
    assert event["status"] == "timeout"
    assert event["timeout"] == 0.5
    assert (event["sync"], event["health"], event["sync_revision"]) == ("Synced", "Progressing", NEW_REV)
    assert event["health_message"] == "Waiting for rollout to finish"
    kinds = {(r["kind"], r["health"]) for r in event["unhealthy_resources"]}
    assert ("Deployment", "Progressing") in kinds
    assert ("Pod", "Progressing") in kinds
    assert "ImagePullBackOff" in event["message"]
    assert "within 0.5s" in event["message"]


def test_deadline_survives_serialization(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    """A trigger re-created from serialize() (e.g. on another triggerer) keeps the original deadline."""
    _synced(argocd_server, argocd_conn, never_healthy())
    trigger = _trigger(timeout=600.0, deadline=time.time() - 1)
    _, kwargs = trigger.serialize()
    event = first_event(ArgoCDSyncTrigger(**kwargs))
    assert event["status"] == "timeout"
    assert len(argocd_server.requests_to("GET", f"/applications/{APP}")) == 1


def test_auth_error_names_the_connection_and_hides_the_token(
    argocd_server: ArgoCDStandIn,
    bad_token_conn: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV)
    caplog.set_level(logging.DEBUG)

    event = first_event(_trigger())

    assert event["status"] == "error"
    assert event["error_type"] == "auth"
    assert repr(CONN_ID) in event["message"]
    assert "token" in event["message"]
    captured = capsys.readouterr()
    for text in (json.dumps(event), caplog.text, captured.out, captured.err):
        assert WRONG_TOKEN not in text
        assert TOKEN not in text


def test_unknown_application_and_unknown_connection(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    event = first_event(_trigger(app_name="ghost"))
    assert (event["status"], event["error_type"]) == ("error", "not_found")
    assert "'ghost'" in event["message"]

    event = first_event(_trigger(argocd_conn_id="argocd_nowhere"))
    assert (event["status"], event["error_type"]) == ("error", "not_found")
    assert "'argocd_nowhere' is not defined" in event["message"]


def test_transient_api_errors_are_tolerated(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    _synced(argocd_server, argocd_conn, rollout_ok())
    argocd_server.fail_next(2)
    assert first_event(_trigger())["status"] == "success"


def test_persistent_api_errors_end_the_wait(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    _synced(argocd_server, argocd_conn, rollout_ok())
    argocd_server.fail_next(10, status=500)
    event = first_event(_trigger(max_consecutive_errors=3))
    assert (event["status"], event["error_type"]) == ("error", "api")
    assert "3 errors in a row" in event["message"]


def test_serialize_round_trips_through_the_classpath() -> None:
    trigger = _trigger(app_namespace="team-a", request_timeout=7.0)
    classpath, kwargs = trigger.serialize()

    assert classpath == "delivery.triggers.argocd.ArgoCDSyncTrigger"
    module_name, _, class_name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    rebuilt = cls(**json.loads(json.dumps(kwargs)))

    assert isinstance(rebuilt, ArgoCDSyncTrigger)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["app_name"] == APP
    assert kwargs["revision"] == NEW_REV
    assert kwargs["argocd_conn_id"] == CONN_ID
    assert kwargs["deadline"] == trigger.deadline


@pytest.mark.parametrize(("field", "value"), [("poll_interval", 0), ("timeout", -1.0)])
def test_bad_trigger_arguments_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a positive number of seconds, got {value!r}"):
        _trigger(**{field: value})
