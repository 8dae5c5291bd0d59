"""The Argo CD stand-in answers as Argo CD's server and controller code does (plain HTTP, no client code).

Each test names the argo-cd code it follows (commit 37ee0097cf85, see the stand-in's docstring); these
are the behaviours the hook, trigger and operator tests rely on.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.integrations.argocd.support import (
    APP,
    NEW_REV,
    OLD_REV,
    OTHER_APP,
    OTHER_REV,
    PROJECT,
    TOKEN,
    release,
)
from tests.standins.argocd_server import GITOPS_REPO, ArgoCDStandIn, Frame


def _call(
    server: ArgoCDStandIn,
    method: str,
    path: str,
    *,
    body: Any = None,
    token: str | None = TOKEN,
    **params: Any,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.request(
        method, f"{server.url}{path}", json=body, params=params or None, headers=headers, timeout=5
    )
    return response.status_code, response.json()


def _sync(server: ArgoCDStandIn, body: dict[str, Any], name: str = APP) -> tuple[int, dict[str, Any]]:
    return _call(server, "POST", f"/api/v1/applications/{name}/sync", body=body)


@pytest.fixture
def server() -> Any:
    with ArgoCDStandIn(token=TOKEN, enabled_namespaces=["team-*"]) as standin:
        release(standin)
        yield standin


# ---------------------------------------------------------------- getAppEnforceRBAC


def test_missing_app_is_403_without_project_and_404_with_it(server: ArgoCDStandIn) -> None:
    assert _call(server, "GET", "/api/v1/applications/ghost") == (
        403,
        {"error": "permission denied", "code": 7, "message": "permission denied"},
    )
    status, body = _call(server, "GET", "/api/v1/applications/ghost", project=PROJECT)
    assert (status, body["code"], body["message"]) == (404, 5, 'applications.argoproj.io "ghost" not found')


def test_app_of_another_project_is_404_and_a_forbidden_project_403(server: ArgoCDStandIn) -> None:
    assert _call(server, "GET", f"/api/v1/applications/{APP}", project="default")[0] == 404
    assert _call(server, "GET", f"/api/v1/applications/{APP}", project=PROJECT)[0] == 200
    server.set_policies([("get", "default/*"), ("sync", "default/*")])
    assert _call(server, "GET", f"/api/v1/applications/{APP}", project=PROJECT)[0] == 403
    assert _call(server, "GET", f"/api/v1/applications/{APP}")[0] == 403


def test_app_namespace_selects_the_namespace(server: ArgoCDStandIn) -> None:
    server.add_app("team-app", deployed_revision=OLD_REV, namespace="team-a")
    assert _call(server, "GET", "/api/v1/applications/team-app")[0] == 403  # looked up in argocd
    status, body = _call(server, "GET", "/api/v1/applications/team-app", appNamespace="team-a")
    assert (status, body["metadata"]["namespace"]) == (200, "team-a")
    # a namespace not enabled for applications: 403 even with a project
    assert (
        _call(server, "GET", "/api/v1/applications/x", appNamespace="kube-system", project="default")[0]
        == 403
    )


def test_tokens(server: ArgoCDStandIn) -> None:
    path = f"/api/v1/applications/{APP}"
    assert _call(server, "GET", path, token=None) == (
        401,
        {"error": "no session information", "code": 16, "message": "no session information"},
    )
    assert _call(server, "GET", path, token="nope")[1]["message"].startswith("invalid session: ")
    # neither endpoint needs a token; only userinfo tells whether the token is good
    assert _call(server, "GET", "/api/version", token="nope") == (200, {"Version": "v3.6.0+standin"})
    assert _call(server, "GET", "/api/v1/session/userinfo", token="nope") == (200, {})
    assert _call(server, "GET", "/api/v1/session/userinfo")[1]["loggedIn"] is True


# ---------------------------------------------------------------- encoding/json bodies


def test_bodies_are_plain_encoding_json(server: ArgoCDStandIn) -> None:
    # an unknown field is ignored, not refused
    status, app = _sync(server, {"revison": NEW_REV, "revision": NEW_REV, "colour": "blue"})
    assert status == 200
    assert app["operation"]["sync"]["revision"] == NEW_REV


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "rollback",
            {"id": "0"},
            "json: cannot unmarshal string into Go struct field ApplicationRollbackRequest.id of type int64",
        ),
        (
            "rollback",
            {"id": 1.5},
            "json: cannot unmarshal number 1.5 into Go struct field ApplicationRollbackRequest.id of type int64",
        ),
        (
            "sync",
            {"syncOptions": ["Prune=true"]},
            "json: cannot unmarshal array into Go struct field ApplicationSyncRequest.syncOptions "
            "of type application.SyncOptions",
        ),
        (
            "sync",
            {"revisions": [NEW_REV], "sourcePositions": ["2"]},
            "json: cannot unmarshal string into Go struct field ApplicationSyncRequest.sourcePositions "
            "of type int64",
        ),
    ],
)
def test_wrong_json_types_are_400(
    server: ArgoCDStandIn, path: str, body: dict[str, Any], message: str
) -> None:
    status, answer = _call(server, "POST", f"/api/v1/applications/{APP}/{path}", body=body)
    assert (status, answer["code"], answer["message"]) == (400, 3, message)


# ---------------------------------------------------------------- Server.Sync / SetAppOperation


def test_sync_sets_operation_and_clears_operation_state(server: ArgoCDStandIn) -> None:
    server.set_scenario(APP, [Frame(phase="Running"), Frame()])
    assert _sync(server, {"revision": NEW_REV})[0] == 200
    _call(server, "GET", f"/api/v1/applications/{APP}")  # Running
    status, app = _call(server, "GET", f"/api/v1/applications/{APP}")  # Succeeded
    assert app["status"]["operationState"]["phase"] == "Succeeded"
    assert "operation" not in app

    status, app = _sync(server, {"revision": NEW_REV})
    assert status == 200
    assert "operationState" not in app["status"]  # cleared by SetAppOperation
    assert app["operation"]["sync"]["revision"] == NEW_REV
    status, busy = _sync(server, {"revision": NEW_REV})
    assert (status, busy["code"]) == (400, 9)
    assert busy["message"] == "error setting app operation: another operation is already in progress"


def test_operation_is_kept_until_it_completes(server: ArgoCDStandIn) -> None:
    server.set_scenario(APP, [Frame(phase=None), Frame(phase="Running"), Frame(phase="Failed")])
    _sync(server, {"revision": NEW_REV})
    seen = []
    for _ in range(3):
        app = _call(server, "GET", f"/api/v1/applications/{APP}")[1]
        seen.append(("operation" in app, app["status"].get("operationState", {}).get("phase")))
    assert seen == [(True, None), (True, "Running"), (False, "Failed")]


def test_sync_revision_follows_the_branch_head(server: ArgoCDStandIn) -> None:
    server.add_app(OTHER_APP, deployed_revision=OLD_REV)
    server.set_scenario(APP, [Frame(push=None), Frame()])
    _sync(server, {"revision": NEW_REV})
    _call(server, "GET", f"/api/v1/applications/{APP}")
    server.push(OTHER_REV, apps=[OTHER_APP])  # another service's commit, after the sync
    status = _call(server, "GET", f"/api/v1/applications/{APP}")[1]["status"]
    assert status["sync"] == {**status["sync"], "status": "Synced", "revision": OTHER_REV}
    assert status["operationState"]["syncResult"]["revision"] == NEW_REV
    other = _call(server, "GET", f"/api/v1/applications/{OTHER_APP}")[1]["status"]["sync"]
    assert (other["status"], other["revision"]) == ("OutOfSync", OTHER_REV)


def test_request_sync_options_replace_the_apps(server: ArgoCDStandIn) -> None:
    app = _sync(server, {"revision": NEW_REV, "syncOptions": {"items": ["ServerSideApply=true"]}})[1]
    assert app["operation"]["sync"]["syncOptions"] == ["ServerSideApply=true"]  # CreateNamespace gone


def test_automated_app_refuses_a_revision_but_not_its_branch(server: ArgoCDStandIn) -> None:
    server.add_app("auto", deployed_revision=OLD_REV, auto_sync=True)
    status, body = _sync(server, {"revision": NEW_REV}, name="auto")
    assert (status, body["code"]) == (400, 9)
    assert body["message"] == f"Cannot sync to {NEW_REV}: auto-sync currently set to main"
    assert _sync(server, {"revision": "main"}, name="auto")[1]["operation"]["sync"]["revision"] == NEW_REV
    server.add_app("paused", deployed_revision=OLD_REV, auto_sync="disabled")  # automated.enabled: false
    assert _sync(server, {"revision": NEW_REV}, name="paused")[0] == 200


def test_override_privilege_for_a_revision_sync(server: ArgoCDStandIn) -> None:
    server.require_override_for_revision_sync = True
    status, body = _sync(server, {"revision": NEW_REV})
    assert (status, body["code"]) == (403, 7)
    assert body["message"].startswith(f"permission denied: applications, override, {PROJECT}/{APP}, sub: ")
    assert _sync(server, {"revision": "main"})[0] == 200  # the app's own targetRevision needs no override


def test_multi_source_apps_ignore_revision(server: ArgoCDStandIn) -> None:
    server.add_app("multi", deployed_revision=OLD_REV, multi_source=True)
    server.push(OTHER_REV, apps=["multi"])
    app = _sync(server, {"revision": NEW_REV}, name="multi")[1]
    assert app["operation"]["sync"]["revisions"] == ["1.4.2", OTHER_REV]  # the head, not NEW_REV
    assert "revision" not in app["operation"]["sync"]


def test_multi_source_revisions_and_positions(server: ArgoCDStandIn) -> None:
    server.add_app("multi", deployed_revision=OLD_REV, multi_source=True)
    app = _sync(server, {"revisions": [NEW_REV], "sourcePositions": [2]}, name="multi")[1]
    assert app["operation"]["sync"]["revisions"] == ["1.4.2", NEW_REV]
    assert app["operation"]["sync"]["sources"][1]["repoURL"] == GITOPS_REPO
    server.add_app("multi2", deployed_revision=OLD_REV, multi_source=True)
    status, body = _sync(server, {"revisions": [NEW_REV], "sourcePositions": [3]}, name="multi2")
    assert (status, body["message"]) == (500, "source position is out of range")


def test_rollback_rules(server: ArgoCDStandIn) -> None:
    status, body = _call(server, "POST", f"/api/v1/applications/{APP}/rollback", body={"id": 7})
    assert (status, body["message"]) == (400, f"application argocd/{APP} does not have deployment with id 7")
    server.add_app("auto", deployed_revision=OLD_REV, auto_sync=True)
    status, body = _call(server, "POST", "/api/v1/applications/auto/rollback", body={"id": 0})
    assert (status, body["message"]) == (400, "rollback cannot be initiated when auto-sync is enabled")
