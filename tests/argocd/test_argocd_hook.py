from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from airflow.sdk.definitions.connection import Connection
from airflow.sdk.exceptions import AirflowException

from delivery.hooks.argocd import (
    AppState,
    ArgoCDAuthError,
    ArgoCDError,
    ArgoCDHook,
    ArgoCDNotFoundError,
    ArgoCDOperationInProgressError,
    build_event,
    connection_settings,
    evaluate_status,
    revision_matches,
    unhealthy_resources,
)
from tests.argocd.support import APP, CONN_ID, DEST_NAMESPACE, NEW_REV, OLD_REV, TOKEN, WRONG_TOKEN
from tests.standins.argocd_server import ArgoCDStandIn, make_application


def _app(**status_changes: Any) -> dict[str, Any]:
    doc = make_application(APP, revision=NEW_REV)
    for dotted, value in status_changes.items():
        node = doc["status"]
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return doc


# ---------------------------------------------------------------------------------- evaluate_status


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(_app(), AppState.SYNCED_HEALTHY, id="synced-healthy-at-revision"),
        pytest.param(_app(sync__revision=OLD_REV), AppState.PROGRESSING, id="synced-healthy-older-revision"),
        pytest.param(
            _app(sync__revision=None, sync__revisions=[OLD_REV, NEW_REV]),
            AppState.SYNCED_HEALTHY,
            id="multi-source-revisions",
        ),
        pytest.param(_app(sync__status="OutOfSync"), AppState.PROGRESSING, id="out-of-sync"),
        pytest.param(_app(health__status="Progressing"), AppState.PROGRESSING, id="health-progressing"),
        pytest.param(_app(operationState__phase="Running"), AppState.PROGRESSING, id="operation-running"),
        pytest.param(_app(operationState=None), AppState.SYNCED_HEALTHY, id="no-operation-state"),
        pytest.param(_app(health__status="Degraded"), AppState.DEGRADED, id="degraded-at-revision"),
        pytest.param(
            _app(health__status="Degraded", sync__revision=OLD_REV),
            AppState.PROGRESSING,
            id="degraded-at-older-revision-waits",
        ),
        pytest.param(_app(operationState__phase="Failed"), AppState.DEGRADED, id="operation-failed"),
        pytest.param(_app(operationState__phase="Error"), AppState.DEGRADED, id="operation-error"),
        pytest.param(_app(health__status="Suspended"), AppState.SUSPENDED, id="suspended"),
        pytest.param(_app(health__status="Missing"), AppState.MISSING, id="missing"),
        pytest.param(_app(health__status="Unknown"), AppState.UNKNOWN, id="unknown"),
        pytest.param({"metadata": {"name": APP}}, AppState.PROGRESSING, id="no-status"),
    ],
)
def test_evaluate_status(doc: dict[str, Any], expected: AppState) -> None:
    assert evaluate_status(doc, NEW_REV) is expected


def test_failed_operation_for_an_older_revision_is_not_a_failure_of_this_one() -> None:
    doc = _app(sync__revision=OLD_REV, operationState__phase="Failed")
    doc["status"]["operationState"]["syncResult"]["revision"] = OLD_REV
    doc["status"]["operationState"]["operation"]["sync"]["revision"] = OLD_REV
    assert evaluate_status(doc, NEW_REV) is AppState.PROGRESSING


def test_pending_operation_is_progressing_even_at_the_same_revision() -> None:
    doc = _app()
    doc["operation"] = {"sync": {"revision": NEW_REV}, "initiatedBy": {"username": "admin"}}
    assert evaluate_status(doc, NEW_REV) is AppState.PROGRESSING


def test_revision_matches_short_sha_but_not_other_names() -> None:
    assert revision_matches(NEW_REV, NEW_REV[:7])
    assert revision_matches(NEW_REV, NEW_REV[:12].upper())
    assert not revision_matches(NEW_REV, "2b7e15")  # too short to be a SHA prefix
    assert not revision_matches("main-2", "main")
    assert not revision_matches(None, NEW_REV)


def test_unhealthy_resources_and_event_message() -> None:
    tree = {
        "nodes": [
            {"kind": "Service", "namespace": "ns", "name": "api", "health": {"status": "Healthy"}},
            {"kind": "ConfigMap", "namespace": "ns", "name": "cfg"},
            {
                "kind": "Deployment",
                "namespace": "ns",
                "name": "api",
                "health": {"status": "Degraded", "message": "exceeded its progress deadline"},
            },
        ]
    }
    assert unhealthy_resources(tree) == [
        {
            "kind": "Deployment",
            "namespace": "ns",
            "name": "api",
            "health": "Degraded",
            "message": "exceeded its progress deadline",
        }
    ]
    doc = _app(health__status="Degraded", conditions=[{"type": "SyncError", "message": "boom"}])
    event = build_event(AppState.DEGRADED, doc, NEW_REV, tree=tree)
    assert event["status"] == "degraded"
    assert "SyncError: boom" in event["message"]
    assert "Deployment ns/api: Degraded - exceeded its progress deadline" in event["message"]


# ---------------------------------------------------------------------------------- connection


def test_connection_settings_from_host_schema_port_and_extras() -> None:
    conn = Connection(
        conn_id="c",
        conn_type="http",
        host="argocd.example.com",
        schema="https",
        port=8443,
        password=TOKEN,
        extra='{"verify": "false", "timeout": 5}',
    )
    settings = connection_settings(conn)
    assert settings.base_url == "https://argocd.example.com:8443"
    assert settings.verify is False
    assert settings.timeout == 5.0
    assert settings.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in repr(settings)


def test_connection_settings_from_full_url_in_host() -> None:
    conn = Connection(
        conn_id="c",
        conn_type="http",
        host="https://gitops.example.com/argocd/",
        extra='{"verify": "/ca.pem"}',
    )
    settings = connection_settings(conn)
    assert settings.base_url == "https://gitops.example.com/argocd"
    assert settings.verify == "/ca.pem"
    assert "Authorization" not in settings.headers


def test_connection_without_host_is_explained() -> None:
    with pytest.raises(ArgoCDError, match="'c' has no host"):
        connection_settings(Connection(conn_id="c", conn_type="http"))


def test_hook_metadata() -> None:
    assert ArgoCDHook.conn_name_attr == "argocd_conn_id"
    assert ArgoCDHook.default_conn_name == "argocd_default"
    assert ArgoCDHook.conn_type == "http"
    assert issubclass(ArgoCDError, AirflowException)


# ---------------------------------------------------------------------------------- over HTTP


def test_sync_posts_the_documented_body_with_bearer_token(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, dest_namespace=DEST_NAMESPACE)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)

    app = hook.sync(APP, NEW_REV, prune=True, sync_options=["ApplyOutOfSyncOnly=true"])

    (request,) = argocd_server.requests_to("POST", f"/api/v1/applications/{APP}/sync")
    assert request.body == {
        "name": APP,
        "revision": NEW_REV,
        "prune": True,
        "dryRun": False,
        "syncOptions": {"items": ["ApplyOutOfSyncOnly=true"]},
    }
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert app["metadata"]["name"] == APP
    assert app["operation"]["sync"]["revision"] == NEW_REV


def test_get_application_and_resource_tree(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)

    app = hook.get_application(APP, app_namespace="argocd")
    tree = hook.resource_tree(APP)

    assert app["status"]["sync"] == {**app["status"]["sync"], "status": "Synced", "revision": OLD_REV}
    assert app["status"]["health"]["status"] == "Healthy"
    assert all(isinstance(h["id"], int) for h in app["status"]["history"])
    assert evaluate_status(app, OLD_REV) is AppState.SYNCED_HEALTHY
    assert {n["kind"] for n in tree["nodes"]} == {"Service", "Deployment", "ReplicaSet", "Pod"}
    assert unhealthy_resources(tree) == []
    get = argocd_server.requests_to("GET", f"/applications/{APP}")[0]
    assert get.query == {"appNamespace": ["argocd"]}
    assert argocd_server.requests_to("GET", f"/applications/{APP}/resource-tree")


def test_rollback_posts_history_id(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=NEW_REV, history_revisions=(OLD_REV,))
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)
    history = hook.get_application(APP)["status"]["history"]
    previous = next(h for h in history if h["revision"] == OLD_REV)

    app = hook.rollback(APP, previous["id"])

    (request,) = argocd_server.requests_to("POST", "/rollback")
    assert request.body == {"name": APP, "id": previous["id"], "prune": False, "dryRun": False}
    assert app["operation"]["sync"]["revision"] == OLD_REV
    with pytest.raises(ArgoCDError, match="does not have deployment with id 99"):
        hook.rollback(APP, 99)
    with pytest.raises(ValueError, match="'1'"):
        hook.rollback(APP, "1")  # type: ignore[arg-type]


def test_401_raises_auth_error_naming_the_connection_not_the_token(
    argocd_server: ArgoCDStandIn,
    bad_token_conn: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ArgoCDAuthError) as excinfo:
        ArgoCDHook(argocd_conn_id=bad_token_conn).get_application(APP)

    message = str(excinfo.value)
    assert excinfo.value.http_status == 401
    assert repr(CONN_ID) in message
    assert "token" in message
    assert "invalid session" in message  # Argo's runtimeError message
    captured = capsys.readouterr()
    for text in (message, caplog.text, captured.out, captured.err):
        assert WRONG_TOKEN not in text
        assert TOKEN not in text
    # the wrong token was really sent as a Bearer token
    assert argocd_server.requests[0].headers["authorization"] == f"Bearer {WRONG_TOKEN}"


def test_404_names_the_application(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    with pytest.raises(ArgoCDNotFoundError, match="'no-such-app' was not found") as excinfo:
        ArgoCDHook(argocd_conn_id=argocd_conn).get_application("no-such-app")
    assert 'applications.argoproj.io "no-such-app" not found' in str(excinfo.value)


def test_operation_in_progress_is_its_own_error(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, busy_syncs=1)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)
    with pytest.raises(ArgoCDOperationInProgressError, match="another operation is already in progress"):
        hook.sync(APP, NEW_REV)
    hook.sync(APP, NEW_REV)  # the next attempt goes through


def test_get_is_retried_on_5xx_but_sync_is_not(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn, backoff_factor=0.01)

    argocd_server.fail_next(2)
    assert hook.get_application(APP)["metadata"]["name"] == APP
    assert len(argocd_server.requests_to("GET")) == 3

    argocd_server.fail_next(1, status=502)
    with pytest.raises(ArgoCDError, match=r"HTTP 502.*upstream connect error") as excinfo:
        hook.sync(APP, NEW_REV)
    assert excinfo.value.http_status == 502
    assert len(argocd_server.requests_to("POST")) == 1


def test_sync_body_is_validated_by_the_standin(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    """The stand-in refuses what real Argo CD refuses, e.g. syncOptions as a bare array."""
    argocd_server.add_app(APP, deployed_revision=OLD_REV)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)
    session = hook.session
    response = session.post(
        f"{hook.base_url}/api/v1/applications/{APP}/sync",
        json={"name": APP, "revision": NEW_REV, "syncOptions": ["Prune=true"]},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["code"] == 3
    response = session.post(
        f"{hook.base_url}/api/v1/applications/{APP}/sync", json={"revison": NEW_REV}, timeout=5
    )
    assert response.status_code == 400
    assert "unknown field" in response.json()["message"]


def test_unreachable_server_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    with ArgoCDStandIn() as server:
        port = server.port
    monkeypatch.setenv(
        "AIRFLOW_CONN_ARGOCD_TEST",
        f'{{"conn_type": "http", "host": "127.0.0.1", "port": {port}, "password": "{TOKEN}"}}',
    )
    hook = ArgoCDHook(argocd_conn_id=CONN_ID, retries=0)
    with pytest.raises(ArgoCDError, match="Could not reach Argo CD") as excinfo:
        hook.get_application(APP)
    assert TOKEN not in str(excinfo.value)


def test_standin_application_copy_is_isolated(argocd_server: ArgoCDStandIn) -> None:
    doc = argocd_server.add_app(APP, deployed_revision=OLD_REV)
    mutated = copy.deepcopy(doc)
    mutated["status"]["health"]["status"] = "Degraded"
    assert argocd_server.application(APP)["status"]["health"]["status"] == "Healthy"


def test_403_and_other_errors_carry_argo_message() -> None:
    from delivery.hooks.argocd import error_from_response

    body = '{"code": 7, "error": "permission denied", "message": "permission denied: applications, sync"}'
    err = error_from_response(status=403, body=body, conn_id=CONN_ID, app_name=APP, action="sync")
    assert isinstance(err, ArgoCDAuthError)
    assert "permission denied: applications, sync" in str(err)
    assert repr(CONN_ID) in str(err)
    assert err.grpc_code == 7

    body = '{"code": 9, "error": "application is deleting", "message": "application is deleting"}'
    err = error_from_response(status=400, body=body, conn_id=CONN_ID, app_name=APP, action="sync")
    assert type(err) is ArgoCDError
    assert "HTTP 400" in str(err)
    assert "application is deleting" in str(err)


def test_test_connection(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    ok, message = ArgoCDHook(argocd_conn_id=argocd_conn).test_connection()
    assert ok, message
    assert "v3.1.0+standin" in message
