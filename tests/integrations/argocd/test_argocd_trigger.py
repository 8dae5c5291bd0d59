from __future__ import annotations

import importlib
import json
import logging
import time

import pytest

from delivery.integrations.argocd.hook import ArgoCDHook
from delivery.integrations.argocd.trigger import ArgoCDSyncTrigger
from tests.integrations.argocd.support import (
    APP,
    CONN_ID,
    DEST_NAMESPACE,
    NEW_REV,
    OLD_REV,
    OTHER_APP,
    OTHER_REV,
    PROJECT,
    TOKEN,
    WRONG_TOKEN,
    first_event,
    release,
)
from tests.standins.argocd_server import (
    ArgoCDStandIn,
    Frame,
    Push,
    controller_idle,
    never_healthy,
    rollout_degraded,
    rollout_ok,
)


def _trigger(**overrides: object) -> ArgoCDSyncTrigger:
    kwargs: dict[str, object] = {
        "app_name": APP,
        "revision": NEW_REV,
        "argocd_conn_id": CONN_ID,
        "project": PROJECT,
        "poll_interval": 0.05,
        "timeout": 10.0,
    }
    kwargs.update(overrides)
    return ArgoCDSyncTrigger(**kwargs)  # type: ignore[arg-type]


def _synced(server: ArgoCDStandIn, conn_id: str, frames: list[Frame], **app_kwargs: object) -> None:
    """The pipeline's commit is pushed and its sync accepted; the controller then plays ``frames``."""
    release(server, scenario=frames, **app_kwargs)
    ArgoCDHook(argocd_conn_id=conn_id).sync(APP, NEW_REV, project=PROJECT)


def test_success_once_the_sync_operation_ended_synced_and_healthy(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    _synced(argocd_server, argocd_conn, rollout_ok())

    event = first_event(_trigger())

    assert event["status"] == "success"
    assert event["app"] == APP
    assert event["revision"] == NEW_REV
    assert (event["applied_revision"], event["head_revision"]) == (NEW_REV, NEW_REV)
    assert (event["sync"], event["health"]) == ("Synced", "Healthy")
    # pending -> Running -> applied, Progressing -> Succeeded, Healthy: four polls, the first three not success
    gets = argocd_server.requests_to("GET", f"/applications/{APP}")
    assert len(gets) == 4
    assert all(r.query == {"project": [PROJECT]} for r in gets)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in argocd_server.requests)
    json.dumps(event)  # the payload is plain JSON


def test_another_services_commit_lands_while_this_deploy_waits(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    """status.sync.revision moves to the other commit; the deploy still succeeds on its operation."""
    argocd_server.add_app(OTHER_APP, deployed_revision=OLD_REV)
    frames = [
        Frame(phase="Running", operation_message="one or more tasks are running"),
        Frame(
            phase="Running",
            applied=True,
            health="Progressing",
            push=Push(OTHER_REV, apps=(OTHER_APP,)),
        ),
        Frame(),
    ]
    _synced(argocd_server, argocd_conn, frames)

    event = first_event(_trigger())

    assert event["status"] == "success", event["message"]
    assert argocd_server.head == OTHER_REV
    assert event["head_revision"] == OTHER_REV  # the branch head: never NEW_REV again
    assert event["applied_revision"] == NEW_REV
    assert (event["sync"], event["health"]) == ("Synced", "Healthy")


def test_a_newer_commit_of_the_same_app_is_explained_at_the_timeout(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    frames = [Frame(phase="Running"), Frame(push=Push(OTHER_REV, apps=(APP,)))]
    _synced(argocd_server, argocd_conn, frames)

    event = first_event(_trigger(timeout=0.4))

    assert event["status"] == "timeout"
    assert (event["sync"], event["applied_revision"], event["head_revision"]) == (
        "OutOfSync",
        NEW_REV,
        OTHER_REV,
    )
    assert (
        f"The head of main is now {OTHER_REV}: a later commit changed this application, so it stays "
        "OutOfSync until that commit is synced."
    ) in event["message"]


def test_stale_status_before_the_post_sync_refresh_is_not_success(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    """The operation succeeded, but the status is still the one of before the commit: Synced/Healthy."""
    argocd_server.add_app(APP, deployed_revision=OLD_REV, project=PROJECT, scenario=[Frame(reconciled=False)])
    argocd_server.push(NEW_REV, apps=[APP], refresh=False)  # no Git webhook
    ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV, project=PROJECT)

    event = first_event(_trigger(timeout=0.4))

    assert event["status"] == "timeout"
    assert (event["sync"], event["health"], event["head_revision"]) == ("Synced", "Healthy", OLD_REV)
    assert (event["operation_phase"], event["applied_revision"]) == ("Succeeded", NEW_REV)
    assert "has not refreshed the application since the sync finished" in event["message"]


def test_operation_never_started_is_explained(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    _synced(argocd_server, argocd_conn, controller_idle())

    event = first_event(_trigger(timeout=0.4))

    assert event["status"] == "timeout"
    assert event["operation_phase"] is None
    assert f"at revision {NEW_REV!r}" not in event["message"]
    assert "never started the sync operation" in event["message"]
    assert "namespace 'argocd'" in event["message"]
    assert len(argocd_server.requests_to("GET", f"/applications/{APP}")) >= 3


def test_a_sync_started_by_someone_else_supersedes_this_one(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    frames = [
        Frame(phase="Running"),
        Frame(applied=True, health="Progressing", push=Push(OTHER_REV, apps=(APP,))),
        Frame(phase=None, health="Progressing", foreign_sync="alice"),
    ]
    _synced(argocd_server, argocd_conn, frames)

    event = first_event(_trigger())

    assert (event["status"], event["state"]) == ("failed", "superseded")
    assert f"the sync of revision {NEW_REV!r} was replaced by another operation" in event["message"]
    assert f"syncs {OTHER_REV}, started by 'alice' (phase pending)" in event["message"]


def test_short_sha_revision_is_matched(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    _synced(argocd_server, argocd_conn, rollout_ok())
    assert first_event(_trigger(revision=NEW_REV[:10]))["status"] == "success"


def test_degraded_event_carries_conditions_and_unhealthy_resources(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    _synced(argocd_server, argocd_conn, rollout_degraded())

    event = first_event(_trigger())

    assert (event["status"], event["state"]) == ("failed", "degraded")
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
    assert message.startswith(f"Application {APP!r} failed to deploy revision {NEW_REV!r}")
    assert f"SyncError: Failed sync attempt to {NEW_REV}" in message
    assert (
        f'Deployment {DEST_NAMESPACE}/{APP}: Degraded - Deployment "{APP}" exceeded its progress deadline'
        in message
    )
    assert "back-off 40s restarting failed container" in message
    assert argocd_server.requests_to("GET", "/resource-tree")[0].query == {"project": [PROJECT]}


def test_degraded_health_after_a_successful_sync_is_a_failure(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    frames = [
        Frame(phase="Running", applied=True, health="Progressing"),
        Frame(
            health="Degraded",
            health_message="rollout aborted",
            resource_health=(("Deployment", "Degraded", "Deployment has minimum availability: false"),),
        ),
    ]
    _synced(argocd_server, argocd_conn, frames)

    event = first_event(_trigger())

    assert (event["status"], event["state"]) == ("failed", "degraded")
    assert event["operation_phase"] == "Succeeded"
    assert event["conditions"] == []
    assert "Health: rollout aborted" in event["message"]
    assert "Deployment has minimum availability: false" in event["message"]


def test_resources_deleted_from_git_without_prune_end_the_wait(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    argocd_server.add_app(
        APP, deployed_revision=OLD_REV, project=PROJECT, extra_resources=("ConfigMap/legacy-config",)
    )
    argocd_server.push(NEW_REV, apps=[APP], removes=[(APP, "ConfigMap/legacy-config")])
    argocd_server.set_scenario(APP, rollout_ok())
    ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV, project=PROJECT, prune=False)
    started = time.monotonic()

    event = first_event(_trigger(timeout=30.0, prune=False))

    assert time.monotonic() - started < 10  # not the timeout
    assert (event["status"], event["state"], event["sync"]) == ("failed", "prune_required", "OutOfSync")
    message = event["message"]
    assert f"applied revision {NEW_REV!r} but stays OutOfSync" in message
    assert f"  - ConfigMap {DEST_NAMESPACE}/legacy-config (ignored (requires pruning))" in message
    assert "The sync ran with prune=False: delete these resources, or sync with prune=True." in message


def test_the_same_commit_synced_with_prune_succeeds(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(
        APP, deployed_revision=OLD_REV, project=PROJECT, extra_resources=("ConfigMap/legacy-config",)
    )
    argocd_server.push(NEW_REV, apps=[APP], removes=[(APP, "ConfigMap/legacy-config")])
    ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV, project=PROJECT, prune=True)

    event = first_event(_trigger(prune=True))

    assert event["status"] == "success", event["message"]
    kinds = {r["kind"] for r in argocd_server.application(APP)["status"]["resources"]}
    assert kinds == {"Service", "Deployment"}


def test_suspended_health_ends_the_wait(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    frames = [
        Frame(phase="Running"),
        Frame(health="Suspended", resource_health=(("Deployment", "Suspended", "Deployment is paused"),)),
    ]
    _synced(argocd_server, argocd_conn, frames)

    event = first_event(_trigger(timeout=30.0))

    assert (event["status"], event["state"]) == ("failed", "suspended")
    assert f"Application {APP!r} is Suspended after syncing revision {NEW_REV!r}" in event["message"]
    assert f"Deployment {DEST_NAMESPACE}/{APP}: Suspended - Deployment is paused" in event["message"]
    assert 'argocd.argoproj.io/ignore-healthcheck: "true"' in event["message"]


def test_missing_health_ends_the_wait(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    frames = [Frame(phase="Running"), Frame(deleted_live=True)]  # e.g. the namespace is deleted meanwhile
    _synced(argocd_server, argocd_conn, frames)

    event = first_event(_trigger(timeout=30.0))

    assert (event["status"], event["state"], event["health"]) == ("failed", "missing", "Missing")
    assert f"Application {APP!r} has no live resources after syncing revision {NEW_REV!r}" in event["message"]
    assert "check spec.destination" in event["message"]
    assert f"Deployment {DEST_NAMESPACE}/{APP}: Missing - Resource has not been created" in event["message"]


def test_timeout_event_carries_the_last_observed_state(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    _synced(argocd_server, argocd_conn, never_healthy())
    started = time.monotonic()

    event = first_event(_trigger(timeout=0.5))

    assert 0.4 < time.monotonic() - started < 5
    assert event["status"] == "timeout"
    assert event["timeout"] == 0.5
    assert (event["sync"], event["health"], event["applied_revision"]) == ("Synced", "Progressing", NEW_REV)
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
    release(argocd_server)
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
    assert f"Application 'ghost' was not found in project {PROJECT!r}" in event["message"]

    event = first_event(_trigger(app_name="ghost", project=None))
    assert (event["status"], event["error_type"]) == ("error", "auth")  # Argo CD hides what exists
    assert "also answers 403 for an application that does not exist" in event["message"]

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
    trigger = _trigger(
        app_namespace="team-a",
        request_timeout=7.0,
        expected_revisions=["1.4.2", NEW_REV],
        multi_source=True,
        prune=True,
    )
    classpath, kwargs = trigger.serialize()

    assert classpath == "delivery.integrations.argocd.trigger.ArgoCDSyncTrigger"
    module_name, _, class_name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    rebuilt = cls(**json.loads(json.dumps(kwargs)))

    assert isinstance(rebuilt, ArgoCDSyncTrigger)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.target == trigger.target
    assert (kwargs["project"], kwargs["app_namespace"]) == (PROJECT, "team-a")
    assert kwargs["deadline"] == trigger.deadline


@pytest.mark.parametrize(("field", "value"), [("poll_interval", 0), ("timeout", -1.0)])
def test_bad_trigger_arguments_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a positive number of seconds, got {value!r}"):
        _trigger(**{field: value})
