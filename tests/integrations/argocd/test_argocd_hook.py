from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from airflow.sdk.definitions.connection import Connection
from airflow.sdk.exceptions import AirflowException

from delivery.integrations.argocd.hook import (
    AppState,
    ArgoCDAuthError,
    ArgoCDConfigurationError,
    ArgoCDError,
    ArgoCDHook,
    ArgoCDNotFoundError,
    ArgoCDOperationInProgressError,
    WaitTarget,
    build_event,
    connection_settings,
    error_from_response,
    evaluate_status,
    merge_sync_options,
    plan_sync,
    revision_matches,
    unhealthy_resources,
)
from tests.integrations.argocd.support import (
    APP,
    CONN_ID,
    NEW_REV,
    OLD_REV,
    OTHER_REV,
    PROJECT,
    TOKEN,
    WRONG_TOKEN,
    release,
)
from tests.standins.argocd_server import GITOPS_REPO, ArgoCDStandIn, make_application

TARGET = WaitTarget(app_name=APP, revision=NEW_REV)


def _app(**changes: Any) -> dict[str, Any]:
    """An app whose sync to NEW_REV succeeded and was reconciled after it, with ``changes`` applied
    (``a__b=value`` sets ``doc[a][b]``; ``None`` deletes)."""
    doc = make_application(APP, revision=NEW_REV)
    doc["status"]["reconciledAt"] = "2025-01-02T10:00:06Z"
    doc["status"]["operationState"] = {
        "operation": {"sync": {"revision": NEW_REV}, "initiatedBy": {"username": "delivery"}},
        "phase": "Succeeded",
        "message": "successfully synced (all tasks run)",
        "syncResult": {"revision": NEW_REV},
        "startedAt": "2025-01-02T10:00:00Z",
        "finishedAt": "2025-01-02T10:00:05Z",
    }
    for dotted, value in changes.items():
        node = doc
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
        pytest.param(_app(), AppState.SYNCED_HEALTHY, id="operation-succeeded-synced-healthy"),
        pytest.param(
            _app(status__sync__revision=OTHER_REV),
            AppState.SYNCED_HEALTHY,
            id="synced-at-a-newer-branch-head",
        ),
        pytest.param(_app(status__sync__status="OutOfSync"), AppState.PROGRESSING, id="out-of-sync"),
        pytest.param(_app(status__health__status="Progressing"), AppState.PROGRESSING, id="progressing"),
        pytest.param(_app(status__health__status="Unknown"), AppState.PROGRESSING, id="unknown-health"),
        pytest.param(
            _app(status__reconciledAt="2025-01-02T10:00:04Z"),
            AppState.PROGRESSING,
            id="not-reconciled-since-the-operation-finished",
        ),
        pytest.param(
            _app(status__reconciledAt="2025-01-02T10:00:05Z"),
            AppState.SYNCED_HEALTHY,
            id="reconciled-in-the-same-second",
        ),
        pytest.param(
            _app(status__operationState__phase="Running", status__operationState__finishedAt=None),
            AppState.PROGRESSING,
            id="operation-running",
        ),
        pytest.param(_app(status__operationState=None), AppState.PROGRESSING, id="no-operation-state"),
        pytest.param(_app(status__operationState__phase="Failed"), AppState.DEGRADED, id="operation-failed"),
        pytest.param(_app(status__operationState__phase="Error"), AppState.DEGRADED, id="operation-error"),
        pytest.param(_app(status__health__status="Degraded"), AppState.DEGRADED, id="degraded"),
        pytest.param(_app(status__health__status="Suspended"), AppState.SUSPENDED, id="suspended"),
        pytest.param(_app(status__health__status="Missing"), AppState.MISSING, id="missing"),
        pytest.param(
            _app(status__operationState__syncResult__revision=OTHER_REV),
            AppState.SUPERSEDED,
            id="operation-for-another-revision",
        ),
        pytest.param({"metadata": {"name": APP}}, AppState.PROGRESSING, id="no-status"),
    ],
)
def test_evaluate_status(doc: dict[str, Any], expected: AppState) -> None:
    assert evaluate_status(doc, TARGET) is expected


def test_pending_operation_is_ours_or_a_replacement() -> None:
    doc = _app(status__operationState=None)
    doc["operation"] = {"sync": {"revision": NEW_REV}, "initiatedBy": {"username": "delivery"}}
    assert evaluate_status(doc, TARGET) is AppState.PROGRESSING
    doc["operation"]["sync"]["revision"] = OTHER_REV
    assert evaluate_status(doc, TARGET) is AppState.SUPERSEDED


def test_resources_left_for_pruning_end_the_wait() -> None:
    doc = _app(status__sync__status="OutOfSync")
    doc["status"]["resources"].append(
        {"version": "v1", "kind": "ConfigMap", "namespace": "ns", "name": "old", "status": "OutOfSync",
         "requiresPruning": True}
    )  # fmt: skip
    doc["status"]["operationState"]["syncResult"]["resources"] = [
        {"kind": "ConfigMap", "namespace": "ns", "name": "old", "status": "PruneSkipped",
         "message": "ignored (requires pruning)"}
    ]  # fmt: skip
    assert evaluate_status(doc, TARGET) is AppState.PRUNE_REQUIRED
    event = build_event(AppState.PRUNE_REQUIRED, doc, TARGET)
    assert "  - ConfigMap ns/old (ignored (requires pruning))" in event["message"]
    assert "The sync ran with prune=False" in event["message"]


def test_multi_source_operations_are_matched_on_every_source() -> None:
    target = WaitTarget(app_name=APP, revision=NEW_REV, expected=("1.4.2", NEW_REV), multi_source=True)
    doc = _app(status__operationState__syncResult={"revisions": ["1.4.2", NEW_REV]})
    assert evaluate_status(doc, target) is AppState.SYNCED_HEALTHY
    doc = _app(status__operationState__syncResult={"revisions": ["1.4.2", OTHER_REV]})
    assert evaluate_status(doc, target) is AppState.SUPERSEDED


def test_revision_matches_short_sha_but_not_other_names() -> None:
    assert revision_matches(NEW_REV, NEW_REV[:7])
    assert revision_matches(NEW_REV, NEW_REV[:12].upper())
    assert not revision_matches(NEW_REV, "2b7e15")  # too short to be a SHA prefix
    assert not revision_matches("main-2", "main")
    assert not revision_matches(None, NEW_REV)


def test_unhealthy_resources_and_event_message() -> None:
    tree = {
        "nodes": [
            {
                "kind": "Service",
                "namespace": "ns",
                "name": "api",
                "uid": "1",
                "health": {"status": "Healthy"},
            },
            {"kind": "ConfigMap", "namespace": "ns", "name": "cfg", "uid": "2"},
            {"kind": "Secret", "namespace": "ns", "name": "never-created"},
            {
                "kind": "Deployment",
                "namespace": "ns",
                "name": "api",
                "uid": "3",
                "health": {"status": "Degraded", "message": "exceeded its progress deadline"},
            },
        ]
    }
    assert unhealthy_resources(tree) == [
        {
            "kind": "Secret",
            "namespace": "ns",
            "name": "never-created",
            "health": "Missing",
            "message": "Resource has not been created",
        },
        {
            "kind": "Deployment",
            "namespace": "ns",
            "name": "api",
            "health": "Degraded",
            "message": "exceeded its progress deadline",
        },
    ]
    doc = _app(
        status__health__status="Degraded", status__conditions=[{"type": "SyncError", "message": "boom"}]
    )
    event = build_event(AppState.DEGRADED, doc, TARGET, tree=tree)
    assert (event["status"], event["state"]) == ("failed", "degraded")
    assert "SyncError: boom" in event["message"]
    assert "Deployment ns/api: Degraded - exceeded its progress deadline" in event["message"]


# ---------------------------------------------------------------------------------- plan_sync


def test_plan_sync_single_source() -> None:
    plan = plan_sync(make_application(APP, revision=OLD_REV), NEW_REV, gitops_repo_url=GITOPS_REPO)
    assert (plan.revision, plan.source_positions, plan.sync_options) == (NEW_REV, (), None)
    # the same repository written another way
    plan_sync(
        make_application(APP, revision=OLD_REV), NEW_REV, gitops_repo_url="git@GitHub.com:visiobook/gitops"
    )


def test_plan_sync_refuses_an_app_of_another_repository() -> None:
    app = make_application(APP, revision=OLD_REV, repo_url="https://github.com/visiobook/charts.git")
    with pytest.raises(
        ArgoCDConfigurationError, match="does not deploy from the GitOps repository"
    ) as excinfo:
        plan_sync(app, NEW_REV, gitops_repo_url=GITOPS_REPO)
    assert "https://github.com/visiobook/charts.git" in str(excinfo.value)


def test_plan_sync_refuses_automated_sync_saying_what_to_change() -> None:
    with pytest.raises(ArgoCDConfigurationError) as excinfo:
        plan_sync(make_application(APP, revision=OLD_REV, auto_sync=True), NEW_REV)
    message = str(excinfo.value)
    assert f"Application {APP!r} has automated sync" in message
    assert "remove spec.syncPolicy.automated (or set automated.enabled: false)" in message
    # automated.enabled: false is manual sync; syncing the branch itself is allowed even when automated
    plan_sync(make_application(APP, revision=OLD_REV, auto_sync="disabled"), NEW_REV)
    plan_sync(make_application(APP, revision=OLD_REV, auto_sync=True), "main")


def test_plan_sync_multi_source() -> None:
    app = make_application(APP, revision=OLD_REV, multi_source=True)
    assert plan_sync(app, NEW_REV, gitops_repo_url=GITOPS_REPO).source_positions == (2,)
    with pytest.raises(ArgoCDConfigurationError, match=r"has 2 sources .* Pass gitops_repo_url"):
        plan_sync(app, NEW_REV)


def test_plan_sync_refuses_a_source_hydrator() -> None:
    app = make_application(APP, revision=OLD_REV)
    app["spec"]["sourceHydrator"] = {"drySource": {"repoURL": GITOPS_REPO}}
    with pytest.raises(ArgoCDConfigurationError, match=r"uses spec\.sourceHydrator"):
        plan_sync(app, NEW_REV)


def test_sync_options_are_merged_onto_the_apps() -> None:
    assert merge_sync_options(
        ["CreateNamespace=true", "ApplyOutOfSyncOnly=true"],
        ["ApplyOutOfSyncOnly=false", "ServerSideApply=true"],
    ) == ["CreateNamespace=true", "ApplyOutOfSyncOnly=false", "ServerSideApply=true"]
    plan = plan_sync(make_application(APP, revision=OLD_REV), NEW_REV, sync_options=["ServerSideApply=true"])
    assert plan.sync_options == ("CreateNamespace=true", "ApplyOutOfSyncOnly=true", "ServerSideApply=true")


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
    release(argocd_server)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)

    app = hook.sync(APP, NEW_REV, prune=True, sync_options=["ApplyOutOfSyncOnly=true"], project=PROJECT)

    (request,) = argocd_server.requests_to("POST", f"/api/v1/applications/{APP}/sync")
    assert request.body == {
        "name": APP,
        "revision": NEW_REV,
        "prune": True,
        "dryRun": False,
        "syncOptions": {"items": ["ApplyOutOfSyncOnly=true"]},
        "project": PROJECT,
    }
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert app["metadata"]["name"] == APP
    assert app["operation"]["sync"]["revision"] == NEW_REV
    assert "operationState" not in app["status"]


def test_multi_source_sync_sends_revisions_and_positions(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    release(argocd_server, multi_source=True)
    app = ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV, source_positions=[2])
    (request,) = argocd_server.requests_to("POST", "/sync")
    assert (request.body["revisions"], request.body["sourcePositions"]) == ([NEW_REV], [2])
    assert "revision" not in request.body
    assert app["operation"]["sync"]["revisions"] == ["1.4.2", NEW_REV]


def test_get_application_and_resource_tree(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    argocd_server.add_app(APP, deployed_revision=OLD_REV, namespace="team-a")
    argocd_server.enabled_namespaces = ("team-*",)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)

    app = hook.get_application(APP, project="default", app_namespace="team-a")
    tree = hook.resource_tree(APP, project="default", app_namespace="team-a")

    assert app["status"]["sync"] == {**app["status"]["sync"], "status": "Synced", "revision": OLD_REV}
    assert app["status"]["health"]["status"] == "Healthy"
    assert all(isinstance(h["id"], int) for h in app["status"]["history"])
    assert {n["kind"] for n in tree["nodes"]} == {"Service", "Deployment", "ReplicaSet", "Pod"}
    assert unhealthy_resources(tree) == []
    get = argocd_server.requests_to("GET", f"/applications/{APP}")[0]
    assert get.query == {"project": ["default"], "appNamespace": ["team-a"]}
    assert argocd_server.requests_to("GET", f"/applications/{APP}/resource-tree")[0].query == get.query


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


def test_missing_app_without_project_is_a_403_that_names_both_causes(
    argocd_server: ArgoCDStandIn, argocd_conn: str
) -> None:
    with pytest.raises(ArgoCDAuthError) as excinfo:
        ArgoCDHook(argocd_conn_id=argocd_conn).get_application("visiobook-apy-staging")
    message = str(excinfo.value)
    assert excinfo.value.http_status == 403
    assert "application 'visiobook-apy-staging'" in message
    assert "'applications, get' and 'applications, sync'" in message
    assert "also answers 403 for an application that does not exist" in message
    assert "set the environment's argocd_project" in message


def test_missing_app_with_project_is_not_found(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)
    with pytest.raises(ArgoCDNotFoundError) as excinfo:
        hook.get_application("visiobook-apy-staging", project=PROJECT)
    message = str(excinfo.value)
    assert f"Application 'visiobook-apy-staging' was not found in project {PROJECT!r}" in message
    assert 'applications.argoproj.io "visiobook-apy-staging" not found' in message
    assert "Check the environment's argocd_app, argocd_project and argocd_app_namespace" in message
    with pytest.raises(ArgoCDNotFoundError, match="in project 'default'"):
        hook.get_application(APP, project="default")  # it exists, in another project


def test_403_with_project_is_the_tokens_role(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)
    argocd_server.set_policies([("get", f"{PROJECT}/*")])  # no sync
    with pytest.raises(ArgoCDAuthError) as excinfo:
        ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV, project=PROJECT)
    message = str(excinfo.value)
    assert f"permission denied: applications, sync, {PROJECT}/{APP}, sub: delivery" in message
    assert "does not exist" not in message


def test_override_grant_is_explained(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)
    argocd_server.require_override_for_revision_sync = True
    with pytest.raises(ArgoCDAuthError) as excinfo:
        ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV, project=PROJECT)
    message = str(excinfo.value)
    assert "requireOverridePrivilegeForRevisionSync" in message
    assert "grant 'applications, override'" in message
    argocd_server.set_policies([("*", f"{PROJECT}/*")])
    ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV, project=PROJECT)


def test_auto_sync_refusal_by_the_server_is_explained(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server, auto_sync=True)
    with pytest.raises(ArgoCDConfigurationError) as excinfo:
        ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV)
    message = str(excinfo.value)
    assert f"Cannot sync to {NEW_REV}: auto-sync currently set to main" in message
    assert "remove spec.syncPolicy.automated" in message


def test_sync_window_is_explained(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)
    argocd_server.block_syncs(PROJECT)
    with pytest.raises(ArgoCDError, match=r"cannot sync: blocked by sync window .* A deny sync window"):
        ArgoCDHook(argocd_conn_id=argocd_conn).sync(APP, NEW_REV)


def test_operation_in_progress_is_its_own_error(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn)
    hook.sync(APP, NEW_REV)
    with pytest.raises(ArgoCDOperationInProgressError, match="another operation is already in progress"):
        hook.sync(APP, NEW_REV)


def test_get_is_retried_on_5xx_but_sync_is_not(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    release(argocd_server)
    hook = ArgoCDHook(argocd_conn_id=argocd_conn, backoff_factor=0.01)

    argocd_server.fail_next(2)
    assert hook.get_application(APP)["metadata"]["name"] == APP
    assert len(argocd_server.requests_to("GET")) == 3

    argocd_server.fail_next(1, status=502)
    with pytest.raises(ArgoCDError, match=r"HTTP 502.*upstream connect error") as excinfo:
        hook.sync(APP, NEW_REV)
    assert excinfo.value.http_status == 502
    assert len(argocd_server.requests_to("POST")) == 1


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


def test_other_errors_carry_argo_message() -> None:
    body = '{"code": 9, "error": "application is deleting", "message": "application is deleting"}'
    err = error_from_response(status=400, body=body, conn_id=CONN_ID, app_name=APP, action="sync")
    assert type(err) is ArgoCDError
    assert "HTTP 400" in str(err)
    assert "application is deleting" in str(err)
    assert err.grpc_code == 9


# ---------------------------------------------------------------------------------- test_connection


def test_test_connection_logs_in(argocd_server: ArgoCDStandIn, argocd_conn: str) -> None:
    ok, message = ArgoCDHook(argocd_conn_id=argocd_conn).test_connection()
    assert ok, message
    assert "v3.6.0+standin" in message
    assert "logged in as 'delivery'" in message


def test_test_connection_fails_on_a_bad_token(argocd_server: ArgoCDStandIn, bad_token_conn: str) -> None:
    ok, message = ArgoCDHook(argocd_conn_id=bad_token_conn).test_connection()
    assert not ok
    assert f"Connection {CONN_ID!r} has an API token Argo CD does not accept" in message
    assert WRONG_TOKEN not in message
    # /api/version alone would have passed: it answers without a valid token
    assert argocd_server.requests_to("GET", "/api/v1/session/userinfo")


def test_test_connection_fails_without_a_token(
    argocd_server: ArgoCDStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ARGOCD_TEST", argocd_server.connection_json(token=""))
    ok, message = ArgoCDHook(argocd_conn_id=CONN_ID).test_connection()
    assert (ok, f"Connection {CONN_ID!r} has no API token" in message) == (False, True)
