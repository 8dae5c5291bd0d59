from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from delivery.hooks.argocd import ArgoCDAuthError, ArgoCDDeploymentError, ArgoCDError, ArgoCDNotFoundError
from delivery.operators.argocd import ArgoCDSyncOperator
from delivery.triggers.argocd import ArgoCDSyncTrigger
from tests.argocd.support import APP, CONN_ID, DEST_NAMESPACE, NEW_REV, OLD_REV, TOKEN, first_event
from tests.standins.argocd_server import ArgoCDStandIn, never_healthy, rollout_degraded, rollout_ok

CONTEXT: Any = {}


def _operator(**overrides: Any) -> ArgoCDSyncOperator:
    kwargs: dict[str, Any] = {
        "task_id": "deploy_staging",
        "app_name": APP,
        "revision": NEW_REV,
        "argocd_conn_id": CONN_ID,
        "poll_interval": 0.05,
        "timeout": 10.0,
    }
    kwargs.update(overrides)
    return ArgoCDSyncOperator(**kwargs)


def _defer(operator: ArgoCDSyncOperator) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute(CONTEXT)
    return excinfo.value


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
        timeout=timedelta(minutes=20),
    )
    assert operator.template_fields == ("app_name", "revision")
    assert operator.timeout == 1200.0


def test_rendered_values_are_checked_again_at_execute(argocd_conn: str) -> None:
    operator = _operator(app_name="{{ params.app }}")
    operator.app_name = "Not Valid"  # what a bad rendering would leave
    with pytest.raises(ValueError, match="'Not Valid'"):
        operator.execute(CONTEXT)


# ---------------------------------------------------------------------------------- deferrable path


def test_execute_syncs_then_defers_to_the_trigger(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV)

    deferred = _defer(_operator(timeout=120.0, prune=True))

    (sync,) = argocd_server.requests_to("POST", f"/applications/{APP}/sync")
    assert sync.body["revision"] == NEW_REV
    assert sync.body["prune"] is True
    assert sync.headers["authorization"] == f"Bearer {TOKEN}"
    assert deferred.method_name == "execute_complete"
    assert isinstance(deferred.trigger, ArgoCDSyncTrigger)
    classpath, kwargs = deferred.trigger.serialize()
    assert classpath == "delivery.triggers.argocd.ArgoCDSyncTrigger"
    assert (kwargs["app_name"], kwargs["revision"], kwargs["argocd_conn_id"]) == (APP, NEW_REV, CONN_ID)
    assert kwargs["timeout"] == 120.0
    assert isinstance(deferred.timeout, timedelta)
    assert deferred.timeout > timedelta(seconds=120)


def test_full_deferral_round_trip_success(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, scenario=rollout_ok())
    operator = _operator()

    deferred = _defer(operator)
    event = first_event(deferred.trigger)
    result = operator.execute_complete(CONTEXT, event=event)

    assert result == {
        "app": APP,
        "revision": NEW_REV,
        "sync_revision": NEW_REV,
        "health": "Healthy",
        "sync": "Synced",
    }


def test_full_deferral_round_trip_degraded(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(
        APP, deployed_revision=OLD_REV, scenario=rollout_degraded(), dest_namespace=DEST_NAMESPACE
    )
    operator = _operator()
    event = first_event(_defer(operator).trigger)

    with pytest.raises(ArgoCDDeploymentError) as excinfo:
        operator.execute_complete(CONTEXT, event=event)

    message = str(excinfo.value)
    assert isinstance(excinfo.value, AirflowException)
    assert f"Application {APP!r} failed to deploy revision {NEW_REV!r}" in message
    assert f"SyncError: Failed sync attempt to {NEW_REV}" in message
    expected = (
        f'Deployment {DEST_NAMESPACE}/{APP}: Degraded - Deployment "{APP}" exceeded its progress deadline'
    )
    assert expected in message


def test_full_deferral_round_trip_timeout(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, scenario=never_healthy())
    operator = _operator(timeout=0.4)
    event = first_event(_defer(operator).trigger)

    with pytest.raises(ArgoCDDeploymentError, match=r"within 0\.4s; last observed sync=Synced") as excinfo:
        operator.execute_complete(CONTEXT, event=event)
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
        (None, ArgoCDError, "ended without an event"),
    ],
)
def test_execute_complete_errors(event: dict[str, Any] | None, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        _operator().execute_complete(CONTEXT, event=event)


def test_auth_error_at_sync_time_hides_the_token(
    argocd_server: ArgoCDStandIn, bad_token_conn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV)
    with pytest.raises(ArgoCDAuthError, match=f"connection {CONN_ID!r}") as excinfo:
        _operator().execute(CONTEXT)
    captured = capsys.readouterr()
    for text in (str(excinfo.value), captured.out, captured.err):
        assert TOKEN not in text
        assert "wrong-token" not in text


# ---------------------------------------------------------------------------------- operation in progress


def test_sync_waits_while_another_operation_is_in_progress(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, busy_syncs=2)

    _defer(_operator())

    assert len(argocd_server.requests_to("POST", "/sync")) == 3


def test_waiting_for_another_operation_is_bounded(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, busy_syncs=1000)

    with pytest.raises(ArgoCDError, match=r"still in progress after 0\.3s \(\d+ attempts\)"):
        _operator(operation_in_progress_timeout=0.3).execute(CONTEXT)
    assert 2 <= len(argocd_server.requests_to("POST", "/sync")) <= 10


# ---------------------------------------------------------------------------------- non-deferrable path


def test_non_deferrable_success(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, scenario=rollout_ok())

    result = _operator(deferrable=False).execute(CONTEXT)

    assert result["sync_revision"] == NEW_REV
    assert (result["sync"], result["health"]) == ("Synced", "Healthy")
    assert len(argocd_server.requests_to("GET", f"/applications/{APP}")) == 4


def test_non_deferrable_degraded(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(
        APP, deployed_revision=OLD_REV, scenario=rollout_degraded(), dest_namespace=DEST_NAMESPACE
    )
    with pytest.raises(ArgoCDDeploymentError, match=f"Deployment {DEST_NAMESPACE}/{APP}: Degraded"):
        _operator(deferrable=False).execute(CONTEXT)


def test_non_deferrable_timeout(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, scenario=never_healthy())
    with pytest.raises(ArgoCDDeploymentError, match=r"within 0\.3s") as excinfo:
        _operator(deferrable=False, timeout=0.3).execute(CONTEXT)
    assert "Pod" in str(excinfo.value)


def test_operator_serializes_in_a_dag() -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("argocd_serialization", schedule=None) as dag:
        ArgoCDSyncOperator(
            task_id="deploy", app_name="visiobook-api", revision="{{ params.rev }}", argocd_conn_id=CONN_ID
        )
    task = DagSerialization.to_dict(dag)["dag"]["tasks"][0]["__var"]
    assert task["task_type"] == "ArgoCDSyncOperator"
    assert task["_task_module"] == "delivery.operators.argocd"
    assert (task["app_name"], task["revision"]) == ("visiobook-api", "{{ params.rev }}")
