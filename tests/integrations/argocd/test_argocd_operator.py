from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from delivery.integrations.argocd.hook import (
    ArgoCDAuthError,
    ArgoCDConfigurationError,
    ArgoCDDeploymentError,
    ArgoCDError,
    ArgoCDHook,
    ArgoCDNotFoundError,
)
from delivery.integrations.argocd.operator import ArgoCDSyncOperator
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
    first_event,
    release,
)
from tests.standins.argocd_server import (
    GITOPS_REPO,
    ArgoCDStandIn,
    Frame,
    Push,
    never_healthy,
    rollout_degraded,
    rollout_ok,
)

CONTEXT: Any = {}


def _operator(**overrides: Any) -> ArgoCDSyncOperator:
    kwargs: dict[str, Any] = {
        "task_id": "deploy_staging",
        "app_name": APP,
        "revision": NEW_REV,
        "argocd_conn_id": CONN_ID,
        "project": PROJECT,
        "gitops_repo_url": GITOPS_REPO,
        "poll_interval": 0.05,
        "timeout": 10.0,
    }
    kwargs.update(overrides)
    return ArgoCDSyncOperator(**kwargs)


def _defer(operator: ArgoCDSyncOperator) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute(CONTEXT)
    return excinfo.value


def _round_trip(operator: ArgoCDSyncOperator) -> dict[str, Any]:
    """execute -> defer -> the trigger's event -> execute_complete, as Airflow runs them."""
    return operator.execute_complete(CONTEXT, event=first_event(_defer(operator).trigger))


# ---------------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("overrides", "bad"),
    [
        ({"app_name": ""}, ""),
        ({"app_name": "Visiobook_API"}, "Visiobook_API"),
        ({"app_name": 42}, 42),
        ({"revision": ""}, ""),
        ({"revision": "main branch"}, "main branch"),
        ({"revision": None}, None),
        ({"project": "Visio Book"}, "Visio Book"),
        ({"app_namespace": 3}, 3),
        ({"poll_interval": 0}, 0),
        ({"poll_interval": "10"}, "10"),
        ({"timeout": -5}, -5),
        ({"timeout": timedelta(0)}, 0.0),
        ({"operation_in_progress_timeout": 0}, 0),
        ({"sync_options": "Prune=true"}, "Prune=true"),
        ({"argocd_conn_id": ""}, ""),
    ],
)
def test_bad_arguments_are_refused_quoting_the_value(overrides: dict[str, Any], bad: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        _operator(**overrides)


def test_poll_interval_longer_than_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match=r"poll_interval \(60\) must not be longer than timeout \(30\)"):
        _operator(poll_interval=60, timeout=30)


def test_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ArgoCDSyncOperator("t", APP, NEW_REV)  # type: ignore[call-arg]


def test_templated_values_and_timedeltas_are_accepted() -> None:
    operator = _operator(
        app_name="{{ params.app }}",
        revision="{{ ti.xcom_pull(task_ids='bump') }}",
        project="{{ params.project }}",
        timeout=timedelta(minutes=20),
    )
    assert operator.template_fields == ("app_name", "revision", "project", "app_namespace")
    assert operator.timeout == 1200.0


def test_rendered_values_are_checked_again_at_execute(argocd_conn: str) -> None:
    operator = _operator(app_name="{{ params.app }}")
    operator.app_name = "Not Valid"  # what a bad rendering would leave
    with pytest.raises(ValueError, match="'Not Valid'"):
        operator.execute(CONTEXT)


# ---------------------------------------------------------------------------------- deferrable path


def test_execute_reads_the_app_syncs_then_defers(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)

    deferred = _defer(_operator(timeout=120.0, prune=True))

    (read,) = argocd_server.requests_to("GET", f"/applications/{APP}")
    assert read.query == {"project": [PROJECT]}
    (sync,) = argocd_server.requests_to("POST", f"/applications/{APP}/sync")
    assert sync.body == {"name": APP, "revision": NEW_REV, "prune": True, "dryRun": False, "project": PROJECT}
    assert sync.headers["authorization"] == f"Bearer {TOKEN}"
    assert deferred.method_name == "execute_complete"
    assert isinstance(deferred.trigger, ArgoCDSyncTrigger)
    classpath, kwargs = deferred.trigger.serialize()
    assert classpath == "delivery.integrations.argocd.trigger.ArgoCDSyncTrigger"
    assert (kwargs["app_name"], kwargs["revision"], kwargs["argocd_conn_id"]) == (APP, NEW_REV, CONN_ID)
    assert (kwargs["expected_revisions"], kwargs["project"], kwargs["prune"]) == ([NEW_REV], PROJECT, True)
    assert kwargs["timeout"] == 120.0
    assert isinstance(deferred.timeout, timedelta)
    assert deferred.timeout > timedelta(seconds=120)


def test_full_deferral_round_trip_success(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, scenario=rollout_ok())

    assert _round_trip(_operator()) == {
        "app": APP,
        "revision": NEW_REV,
        "applied_revision": NEW_REV,
        "head_revision": NEW_REV,
        "sync": "Synced",
        "health": "Healthy",
    }


def test_another_services_commit_while_the_deploy_waits(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    argocd_server.add_app(OTHER_APP, deployed_revision=OLD_REV)
    frames = [
        Frame(phase="Running"),
        Frame(phase="Running", applied=True, health="Progressing", push=Push(OTHER_REV, apps=(OTHER_APP,))),
        Frame(),
    ]
    release(argocd_server, scenario=frames)

    result = _round_trip(_operator())

    assert (result["applied_revision"], result["head_revision"]) == (NEW_REV, OTHER_REV)
    assert (result["sync"], result["health"]) == ("Synced", "Healthy")


def test_full_deferral_round_trip_degraded(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, scenario=rollout_degraded())

    with pytest.raises(ArgoCDDeploymentError) as excinfo:
        _round_trip(_operator())

    message = str(excinfo.value)
    assert isinstance(excinfo.value, AirflowException)
    assert f"Application {APP!r} failed to deploy revision {NEW_REV!r}" in message
    assert f"SyncError: Failed sync attempt to {NEW_REV}" in message
    expected = (
        f'Deployment {DEST_NAMESPACE}/{APP}: Degraded - Deployment "{APP}" exceeded its progress deadline'
    )
    assert expected in message


def test_full_deferral_round_trip_timeout(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, scenario=never_healthy())

    with pytest.raises(ArgoCDDeploymentError, match=r"within 0\.4s; last observed sync=Synced") as excinfo:
        _round_trip(_operator(timeout=0.4))
    assert "health=Progressing" in str(excinfo.value)
    assert "ImagePullBackOff" in str(excinfo.value)


@pytest.mark.parametrize(
    ("event", "error", "text"),
    [
        (
            {"status": "error", "error_type": "auth", "message": "token refused"},
            ArgoCDAuthError,
            "token refused",
        ),
        ({"status": "error", "error_type": "not_found", "message": "gone"}, ArgoCDNotFoundError, "gone"),
        ({"status": "error", "error_type": "api", "message": "503s"}, ArgoCDError, "503s"),
        ({"status": "failed", "state": "suspended", "message": "paused"}, ArgoCDDeploymentError, "paused"),
        (None, ArgoCDError, "ended without an event"),
    ],
)
def test_execute_complete_errors(event: dict[str, Any] | None, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        _operator().execute_complete(CONTEXT, event=event)


def test_auth_error_at_sync_time_hides_the_token(
    argocd_server: ArgoCDStandIn, bad_token_conn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    release(argocd_server)
    with pytest.raises(ArgoCDAuthError, match=f"connection {CONN_ID!r}") as excinfo:
        _operator().execute(CONTEXT)
    captured = capsys.readouterr()
    for text in (str(excinfo.value), captured.out, captured.err):
        assert TOKEN not in text
        assert "wrong-token" not in text


# ---------------------------------------------------------------------------------- before the sync


def test_a_mistyped_app_name_is_not_found_in_its_project(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    release(argocd_server)
    with pytest.raises(
        ArgoCDNotFoundError, match="'visiobook-apy-staging' was not found in project 'visiobook'"
    ):
        _operator(app_name="visiobook-apy-staging").execute(CONTEXT)
    assert not argocd_server.requests_to("POST")


def test_without_a_project_a_mistyped_name_is_a_403_naming_both_causes(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    release(argocd_server)
    with pytest.raises(ArgoCDAuthError, match="also answers 403 for an application that does not exist"):
        _operator(app_name="visiobook-apy-staging", project="").execute(CONTEXT)
    assert argocd_server.requests_to("GET")[0].query == {}  # an empty rendered project is not sent


def test_automated_sync_is_refused_before_syncing(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, auto_sync=True)
    with pytest.raises(ArgoCDConfigurationError, match=r"remove spec\.syncPolicy\.automated"):
        _operator().execute(CONTEXT)
    assert not argocd_server.requests_to("POST")


def test_an_app_in_another_namespace(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.enabled_namespaces = ("team-a",)
    release(argocd_server, namespace="team-a")

    result = _round_trip(_operator(app_namespace="team-a"))

    assert result["health"] == "Healthy"
    (sync,) = argocd_server.requests_to("POST", "/sync")
    assert (sync.body["appNamespace"], sync.body["project"]) == ("team-a", PROJECT)
    assert {tuple(r.query.get("appNamespace", [])) for r in argocd_server.requests_to("GET")} == {("team-a",)}


def test_multi_source_app_syncs_its_gitops_source(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, multi_source=True)

    result = _round_trip(_operator())

    (sync,) = argocd_server.requests_to("POST", "/sync")
    assert (sync.body["revisions"], sync.body["sourcePositions"]) == ([NEW_REV], [2])
    assert "revision" not in sync.body
    assert (result["applied_revision"], result["head_revision"]) == (f"1.4.2,{NEW_REV}", f"1.4.2,{NEW_REV}")


def test_multi_source_app_without_the_gitops_repo_is_refused(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    release(argocd_server, multi_source=True)
    with pytest.raises(ArgoCDConfigurationError, match="Pass gitops_repo_url"):
        _operator(gitops_repo_url=None).execute(CONTEXT)
    assert not argocd_server.requests_to("POST")


def test_sync_options_keep_the_apps_own(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)
    _defer(_operator(sync_options=["ServerSideApply=true", "ApplyOutOfSyncOnly=false"]))
    (sync,) = argocd_server.requests_to("POST", "/sync")
    assert sync.body["syncOptions"] == {
        "items": ["CreateNamespace=true", "ServerSideApply=true", "ApplyOutOfSyncOnly=false"]
    }
    operation = argocd_server.application(APP)["operation"]["sync"]
    assert "CreateNamespace=true" in operation["syncOptions"]


def test_no_sync_options_sends_none(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)
    _defer(_operator())
    (sync,) = argocd_server.requests_to("POST", "/sync")
    assert "syncOptions" not in sync.body
    operation = argocd_server.application(APP)["operation"]["sync"]
    assert operation["syncOptions"] == ["CreateNamespace=true", "ApplyOutOfSyncOnly=true"]


# ---------------------------------------------------------------------------------- operation in progress


def test_sync_waits_while_another_operation_is_in_progress(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    release(argocd_server, scenario=[Frame(phase="Running"), Frame(phase="Running"), Frame()])
    someone = ArgoCDHook(argocd_conn_id=CONN_ID)
    someone.sync(APP, NEW_REV)  # someone else's sync, not finished yet

    operator = _operator()
    sync = operator.hook.sync

    def sync_while_the_controller_works(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return sync(*args, **kwargs)
        finally:
            someone.get_application(APP)  # the stand-in's controller moves one step per GET

    operator.hook.sync = sync_while_the_controller_works  # type: ignore[method-assign]
    deferred = _defer(operator)

    posts = argocd_server.requests_to("POST", "/sync")
    # someone's sync, then ours: refused while the other one runs (the operator's own read moved it to
    # Running, then Running), accepted once it Succeeded
    assert len(posts) == 1 + 3
    assert posts[-1].body["project"] == PROJECT
    assert deferred.trigger.serialize()[1]["expected_revisions"] == [NEW_REV]


def test_waiting_for_another_operation_is_bounded(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, scenario=[Frame(phase=None)])
    _operator().hook.sync(APP, NEW_REV)  # never picked up by the controller

    with pytest.raises(ArgoCDError, match=r"still in progress after 0\.3s \(\d+ attempts\)") as excinfo:
        _operator(operation_in_progress_timeout=0.3).execute(CONTEXT)
    assert "another operation is already in progress" in str(excinfo.value)
    assert 3 <= len(argocd_server.requests_to("POST", "/sync")) <= 11


# ---------------------------------------------------------------------------------- non-deferrable path


def test_non_deferrable_success(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, scenario=rollout_ok())

    result = _operator(deferrable=False).execute(CONTEXT)

    assert result["applied_revision"] == NEW_REV
    assert (result["sync"], result["health"]) == ("Synced", "Healthy")
    assert len(argocd_server.requests_to("GET", f"/applications/{APP}")) == 1 + 4  # the check + 4 polls


def test_non_deferrable_degraded(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, scenario=rollout_degraded())
    with pytest.raises(ArgoCDDeploymentError, match=f"Deployment {DEST_NAMESPACE}/{APP}: Degraded"):
        _operator(deferrable=False).execute(CONTEXT)


def test_non_deferrable_timeout(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, scenario=never_healthy())
    with pytest.raises(ArgoCDDeploymentError, match=r"within 0\.3s") as excinfo:
        _operator(deferrable=False, timeout=0.3).execute(CONTEXT)
    assert "Pod" in str(excinfo.value)


def test_non_deferrable_prune_required(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, extra_resources=("ConfigMap/legacy-config",))
    argocd_server.push(OTHER_REV, apps=[APP], removes=[(APP, "ConfigMap/legacy-config")])
    with pytest.raises(
        ArgoCDDeploymentError, match="stays OutOfSync: resources deleted from Git were not pruned"
    ):
        _operator(deferrable=False, revision=OTHER_REV, timeout=30.0).execute(CONTEXT)


def test_operator_serializes_in_a_dag() -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("argocd_serialization", schedule=None) as dag:
        ArgoCDSyncOperator(
            task_id="deploy",
            app_name="visiobook-api",
            revision="{{ params.rev }}",
            argocd_conn_id=CONN_ID,
            project="visiobook",
            gitops_repo_url=GITOPS_REPO,
        )
    task = DagSerialization.to_dict(dag)["dag"]["tasks"][0]["__var"]
    assert task["task_type"] == "ArgoCDSyncOperator"
    assert task["_task_module"] == "delivery.integrations.argocd.operator"
    assert (task["app_name"], task["revision"], task["project"]) == (
        "visiobook-api",
        "{{ params.rev }}",
        "visiobook",
    )
