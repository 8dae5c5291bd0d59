"""A stand-in Argo CD API server for tests, modelled on Argo CD's own code rather than on our client.

It is a real HTTP server (stdlib ``ThreadingHTTPServer``) on 127.0.0.1 and an ephemeral port. The client
code under test (hook, trigger, operator) runs unchanged against it.

Every behaviour below was read from argoproj/argo-cd at commit 37ee0097cf851bc2dd7665fc081bbce61a7e836e
(2026-08-22, ``VERSION`` 3.6.0, the development line after v3.5.1). Paths are relative to that tree.

Gateway and JSON (``util/grpc/json.go``, ``pkg/apiclient/application/application.pb.gw.go``,
grpc-gateway v1 ``runtime``):

* bodies are decoded with plain ``encoding/json``: unknown fields are ignored; a value of the wrong JSON
  type is a 400 ``InvalidArgument`` ``json: cannot unmarshal string into Go struct field
  ApplicationRollbackRequest.id of type int64`` (so a string rollback ``id`` is refused, and so are
  string ``sourcePositions``); the path's ``name`` wins over the body's;
* responses are ``encoding/json`` with the ``omitempty`` tags of ``pkg/apis/application/v1alpha1/types.go``:
  ``false``/empty fields are left out (``operation``, ``operationState``, ``loggedIn``...); times are
  RFC 3339 to the second (``metav1.Time``);
* errors are ``{"error", "code", "message"}`` with grpc-gateway v1's HTTP mapping (InvalidArgument and
  FailedPrecondition 400, Unauthenticated 401, PermissionDenied 403, NotFound 404, Unknown 500,
  Unavailable 503).

Authentication (``server/server.go`` ``getClaims``): no token is 401 ``no session information``, a bad
one 401 ``invalid session: ...``. ``GET /api/version`` (``server/version/version.go``) and
``GET /api/v1/session/userinfo`` (``server/session/session.go``) need no token: the first then answers
only ``{"Version"}``, the second ``{}`` (``loggedIn`` false, omitted).

Application look-up and RBAC (``server/application/application.go`` ``getAppEnforceRBAC``,
``util/security/rbac.go``, ``util/security/application_namespaces.go``, ``util/rbac/rbac.go``):

* without ``project``, a missing application is 403 ``permission denied`` (existence is hidden);
  with ``project`` it is 404 ``applications.argoproj.io "<name>" not found``, and so is an application
  of another project; a token without ``get`` on ``<project>/<name>`` is 403 either way;
* ``appNamespace`` selects the application's namespace (default: the control plane's, ``argocd``);
  a namespace not enabled for applications is 403;
* RBAC objects are ``<project>/<name>``, or ``<project>/<namespace>/<name>`` outside the control plane
  namespace; a refused action is 403 ``permission denied: applications, <action>, <object>, sub: <user>,
  iat: <time>`` (``EnforceErr``).

Sync (``Server.Sync`` and ``resolveSourceRevisions``), checks in the server's order: ``get``, sync
windows (403 ``cannot sync: blocked by sync window``), ``sync``; then, for a revision other than the
source's ``targetRevision``: ``override`` when ``application.sync.requireOverridePrivilegeForRevisionSync``
is set, and for an automated app 400 ``Cannot sync to <rev>: auto-sync currently set to <targetRevision>``.
Multi-source applications ignore ``revision`` and read ``revisions`` + ``sourcePositions`` (1-based; out of
range is a plain error, HTTP 500). ``syncOptions`` in the request replace the app's
``spec.syncPolicy.syncOptions``. A 40-hex revision is taken as is; a branch name is resolved to its head.

Operations (``util/argo/argo.go`` ``SetAppOperation``, ``controller/appcontroller.go``
``processRequestedAppOperation`` and ``setOperationState``, ``controller/sync.go`` ``SyncAppState``):
a sync sets ``operation`` and clears ``status.operationState``; a second one while ``operation`` is set is
400 ``error setting app operation: another operation is already in progress``. The controller then writes
``operationState`` (phase ``Running``, ``syncResult.revision(s)`` = the resolved revision), keeps
``operation`` until the phase is completed, then sets ``finishedAt``, removes ``operation``, appends
``status.history`` on success and refreshes the app.

Refresh (``processAppRefreshQueueItem``, ``controller/state.go``, ``controller/health.go``):
``status.sync.revision`` is the head of ``spec.source.targetRevision``, also for commits made after the
sync; an app is Synced when its manifests at that head are what is live. A live resource no longer in
Git is OutOfSync with ``requiresPruning`` and keeps the app OutOfSync; a sync without ``prune`` reports
it ``PruneSkipped`` ``ignored (requires pruning)`` (``gitops-engine/pkg/sync/sync_context.go``), with
``prune`` it is ``Pruned``. The app's health is Missing when none of its resources is live.
``reconciledAt`` moves on each full refresh.

Rollback (``Server.Rollback``): 400 ``rollback cannot be initiated when auto-sync is enabled``; 400
``application <ns>/<name> does not have deployment with id <id>``.

What the test decides: each application plays a *scenario* once a sync (or rollback) is accepted, a list
of :class:`Frame`, one per ``GET`` of the application; the last frame repeats. A frame says how far the
controller got (operation phase, whether it reconciled, health) and may land a Git commit
(:class:`Push`) or another user's sync; everything else follows the rules above.

Not modelled: the controller's own automated syncs (the pipelines refuse automated apps before they
sync), hooks and sync waves, Helm chart resolution (a non-GitOps source keeps its ``targetRevision``),
local manifests, ``Replace=true``, deletion. The ``ComparisonError`` text for an unknown commit is
approximate.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "GITOPS_REPO",
    "ArgoCDStandIn",
    "Frame",
    "Push",
    "RecordedRequest",
    "controller_idle",
    "make_application",
    "never_healthy",
    "rollout_degraded",
    "rollout_ok",
]

GITOPS_REPO = "https://github.com/visiobook/gitops.git"
CHART_REPO = "https://charts.visiobook.io"
BRANCH = "main"  # the one branch of the GitOps repository
CONTROL_PLANE_NAMESPACE = "argocd"
DEFAULT_POLICIES = (("get", "*/*"), ("sync", "*/*"))

_GRPC_HTTP_STATUS = {2: 500, 3: 400, 5: 404, 7: 403, 9: 400, 13: 500, 14: 503, 16: 401}
_COMMIT_SHA = re.compile(r"^[0-9A-Fa-f]{40}$")  # util/git/git.go commitSHARegex
_COMPLETED = frozenset({"Succeeded", "Failed", "Error"})
_JSON_TYPE = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object"}

# encoding/json targets of the request messages (pkg/apiclient/application/application.pb.go)
_SYNC_REQUEST = {
    "name": "string",
    "revision": "string",
    "dryRun": "bool",
    "prune": "bool",
    "manifests": "[]string",
    "revisions": "[]string",
    "sourcePositions": "[]int64",
    "appNamespace": "string",
    "project": "string",
    "syncOptions": "SyncOptions",
}
_ROLLBACK_REQUEST = {
    "name": "string",
    "id": "int64",
    "dryRun": "bool",
    "prune": "bool",
    "appNamespace": "string",
    "project": "string",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(*parts: str) -> str:
    digest = hashlib.sha1("/".join(parts).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


@dataclass(frozen=True)
class Push:
    """A commit on the GitOps branch.

    :param revision: the commit SHA.
    :param apps: applications whose manifests the commit changes.
    :param removes: ``(app, "Kind/name")`` resources the commit deletes from Git.
    :param refresh: refresh the apps at once, as Argo CD's Git webhook does.
    """

    revision: str
    apps: tuple[str, ...] = ()
    removes: tuple[tuple[str, str], ...] = ()
    refresh: bool = True


@dataclass(frozen=True)
class Frame:
    """How far the controller got at one ``GET`` of the application.

    :param phase: the phase the running operation reaches (``Running``, ``Succeeded``, ``Failed``,
        ``Error``); ``None``: the controller has not picked the operation up. Ignored when no operation
        is running.
    :param applied: whether the operation's manifests are live after this step (default: once the phase
        is ``Succeeded``).
    :param health: the app's ``status.health.status`` when it is refreshed.
    :param health_message: ``status.health.message``.
    :param operation_message: ``status.operationState.message``.
    :param conditions: ``status.conditions`` as ``(type, message)``; ``{revision}`` becomes the target.
    :param resource_health: ``(kind, status, message)``: health of the live resources (and resource-tree
        nodes) of that kind; the others are Healthy. ``{name}`` becomes the app name.
    :param reconciled: the controller refreshes the app in this step (``status.sync``, ``health``,
        ``resources``, ``reconciledAt``); when False the status stays as it was.
    :param push: a commit lands on the GitOps branch before this step.
    :param foreign_sync: a user of that name syncs the app to the branch head in this step (when no
        operation is running).
    :param deleted_live: the app's live resources are deleted behind Argo CD's back in this step (e.g.
        with their namespace).
    """

    phase: str | None = "Succeeded"
    applied: bool | None = None
    health: str = "Healthy"
    health_message: str = ""
    operation_message: str = "successfully synced (all tasks run)"
    conditions: tuple[tuple[str, str], ...] = ()
    resource_health: tuple[tuple[str, str, str], ...] = ()
    reconciled: bool = True
    push: Push | None = None
    foreign_sync: str | None = None
    deleted_live: bool = False


def rollout_ok() -> list[Frame]:
    """Pending -> Running -> applied, Progressing -> Succeeded, Healthy."""
    return [
        Frame(phase=None),
        Frame(phase="Running", operation_message="one or more tasks are running"),
        Frame(
            phase="Running",
            applied=True,
            health="Progressing",
            operation_message="one or more tasks are running",
            resource_health=(
                ("Deployment", "Progressing", "Waiting for rollout to finish: 1 old replicas are pending..."),
                ("ReplicaSet", "Progressing", "Waiting for rollout to finish: 0 of 1 updated replicas..."),
                ("Pod", "Progressing", "ContainerCreating"),
            ),
        ),
        Frame(),
    ]


def rollout_degraded(
    *,
    conditions: tuple[tuple[str, str], ...] = (
        (
            "SyncError",
            "Failed sync attempt to {revision}: one or more synchronization tasks completed unsuccessfully "
            "(retried 2 times).",
        ),
    ),
) -> list[Frame]:
    """Running, applied -> Progressing -> Failed operation, Degraded (a condition, an unhealthy Deployment)."""
    degraded = (
        ("Deployment", "Degraded", 'Deployment "{name}" exceeded its progress deadline'),
        (
            "ReplicaSet",
            "Progressing",
            "Waiting for rollout to finish: 0 of 1 updated replicas are available...",
        ),
        ("Pod", "Degraded", "back-off 40s restarting failed container=app pod={name}-7d9c6b5f4-x2x7q"),
    )
    return [
        Frame(phase="Running", operation_message="one or more tasks are running"),
        Frame(
            phase="Running",
            applied=True,
            health="Progressing",
            operation_message="one or more tasks are running",
            resource_health=(("Deployment", "Progressing", "Waiting for rollout to finish"),),
        ),
        Frame(
            phase="Failed",
            applied=True,
            health="Degraded",
            health_message='Deployment "{name}" exceeded its progress deadline',
            operation_message="one or more synchronization tasks completed unsuccessfully (retried 2 times).",
            conditions=conditions,
            resource_health=degraded,
        ),
    ]


def never_healthy() -> list[Frame]:
    """The sync succeeds, but the Deployment keeps Progressing."""
    return [
        Frame(phase="Running", operation_message="one or more tasks are running"),
        Frame(
            health="Progressing",
            health_message="Waiting for rollout to finish",
            resource_health=(
                ("Deployment", "Progressing", "Waiting for rollout to finish: 0 of 2 updated replicas..."),
                ("Pod", "Progressing", "ImagePullBackOff"),
            ),
        ),
    ]


def controller_idle() -> list[Frame]:
    """The application controller never picks the operation up (``operation`` stays pending)."""
    return [Frame(phase=None, reconciled=False)]


def make_application(
    name: str,
    *,
    revision: str,
    namespace: str = CONTROL_PLANE_NAMESPACE,
    project: str = "default",
    repo_url: str = GITOPS_REPO,
    path: str | None = None,
    target_revision: str = BRANCH,
    dest_namespace: str = "visiobook",
    dest_server: str = "https://kubernetes.default.svc",
    auto_sync: bool | str = False,
    sync_options: tuple[str, ...] = ("CreateNamespace=true", "ApplyOutOfSyncOnly=true"),
    multi_source: bool = False,
    extra_resources: tuple[str, ...] = (),
    history_revisions: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A ``v1alpha1Application`` Synced and Healthy at ``revision``, deployed by its last history entry.

    :param auto_sync: ``True`` for ``spec.syncPolicy.automated``; ``"disabled"`` for
        ``automated: {enabled: false}``.
    :param multi_source: ``spec.sources`` = a Helm chart from a chart repository plus the GitOps repo as
        ``$values`` (``ref: values``) instead of ``spec.source``.
    :param extra_resources: more live resources, as ``"Kind/name"`` (core group, version v1).
    :param history_revisions: revisions deployed before ``revision`` (``status.history``, ids from 0).
    """
    gitops_source: dict[str, Any] = {
        "repoURL": repo_url,
        "path": path or f"apps/{name}",
        "targetRevision": target_revision,
        "helm": {"valueFiles": ["values.yaml"]},
    }
    spec: dict[str, Any] = {
        "destination": {"server": dest_server, "namespace": dest_namespace},
        "project": project,
    }
    if multi_source:
        spec["sources"] = [
            {
                "repoURL": CHART_REPO,
                "chart": "visiobook-service",
                "targetRevision": "1.4.2",
                "helm": {"valueFiles": [f"$values/apps/{name}/values.yaml"]},
            },
            {"repoURL": repo_url, "targetRevision": target_revision, "ref": "values"},
        ]
    else:
        spec["source"] = gitops_source
    sync_policy: dict[str, Any] = {}
    if sync_options:
        sync_policy["syncOptions"] = list(sync_options)
    if auto_sync:
        sync_policy["automated"] = {"prune": True, "selfHeal": True}
        if auto_sync == "disabled":
            sync_policy["automated"]["enabled"] = False
    if sync_policy:
        spec["syncPolicy"] = sync_policy
    resources = [
        _resource("", "v1", "Service", dest_namespace, name),
        _resource("apps", "v1", "Deployment", dest_namespace, name),
    ]
    for ref in extra_resources:
        kind, _, resource_name = ref.partition("/")
        resources.append(_resource("", "v1", kind, dest_namespace, resource_name))
    sources = spec.get("sources") or [spec["source"]]
    history = []
    for index, deployed in enumerate((*history_revisions, revision)):
        entry: dict[str, Any] = {
            "id": index,
            "deployStartedAt": f"2025-01-{index + 1:02d}T10:00:00Z",
            "deployedAt": f"2025-01-{index + 1:02d}T10:00:05Z",
            "initiatedBy": {"username": "delivery"},
        }
        if multi_source:
            revisions = [deployed if s["repoURL"] == repo_url else s["targetRevision"] for s in sources]
            entry.update(revisions=revisions, sources=copy.deepcopy(sources))
        else:
            entry.update(revision=deployed, source=copy.deepcopy(sources[0]))
        history.append(entry)
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": _uid(namespace, name),
            "resourceVersion": "1000",
            "generation": 10,
            "creationTimestamp": "2025-01-01T09:00:00Z",
            "labels": {"app.kubernetes.io/part-of": "visiobook"},
            "finalizers": ["resources-finalizer.argocd.argoproj.io"],
        },
        "spec": spec,
        "status": {
            "resources": [{**r, "status": "Synced", "health": {"status": "Healthy"}} for r in resources],
            "sync": {"status": "Synced", "revision": revision},
            "health": {"status": "Healthy"},
            "history": history,
            "reconciledAt": "2025-01-01T10:00:05Z",
            "sourceType": "Helm",
            "summary": {"images": [f"registry.visiobook.io/{name}:{revision[:12]}"]},
            "controllerNamespace": CONTROL_PLANE_NAMESPACE,
        },
    }


def _resource(group: str, version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
    ref = {"group": group, "version": version, "kind": kind, "namespace": namespace, "name": name}
    return {k: v for k, v in ref.items() if v}


def _ref(resource: Mapping[str, Any]) -> str:
    return f"{resource['kind']}/{resource['name']}"


@dataclass
class RecordedRequest:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None


@dataclass
class _Account:
    username: str
    policies: list[tuple[str, str]]


@dataclass
class _Commit:
    revision: str
    apps: set[str]
    removes: dict[str, set[str]]


@dataclass
class _App:
    doc: dict[str, Any]
    scenario: list[Frame]
    base_resources: list[dict[str, Any]]
    live_revision: str
    live_refs: set[str]
    operation: dict[str, Any] | None = None
    op_target: list[str] = field(default_factory=list)
    started: bool = False
    cursor: int = 0
    frame: Frame = field(default_factory=Frame)

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def multi_source(self) -> bool:
        return bool(self.doc["spec"].get("sources"))

    def sources(self) -> list[dict[str, Any]]:
        spec = self.doc["spec"]
        return list(spec["sources"]) if self.multi_source else [spec["source"]]


def _auto_sync_enabled(app: _App) -> bool:
    """``SyncPolicy.IsAutomatedSyncEnabled``: ``automated`` is set and ``enabled`` is not false."""
    automated = app.doc["spec"].get("syncPolicy", {}).get("automated")
    return automated is not None and automated.get("enabled") is not False


class _RuntimeError(Exception):
    def __init__(self, code: int, message: str, *, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _GRPC_HTTP_STATUS.get(code, 500)


def _permission_denied() -> _RuntimeError:
    return _RuntimeError(7, "permission denied")  # common.PermissionDeniedAPIError


def _not_found(name: str) -> _RuntimeError:
    return _RuntimeError(5, f'applications.argoproj.io "{name}" not found')


def _decode(body: Any, schema: Mapping[str, str], struct: str) -> dict[str, Any]:
    """``encoding/json`` into a request message: unknown fields ignored, wrong JSON types refused."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _RuntimeError(
            3, f"json: cannot unmarshal {_JSON_TYPE.get(type(body), 'value')} into Go value of type {struct}"
        )
    decoded: dict[str, Any] = {}
    for key, value in body.items():
        kind = schema.get(key)
        if kind is None or value is None:
            continue
        decoded[key] = _decode_value(
            value, kind, f"Go struct field {struct.rsplit('.', maxsplit=1)[-1]}.{key}"
        )
    return decoded


def _decode_value(value: Any, kind: str, where: str) -> Any:
    def refuse(got: Any, go_type: str) -> _RuntimeError:
        text = _JSON_TYPE.get(type(got), "value")
        if isinstance(got, int | float) and not isinstance(got, bool):
            text = f"number {got}"
        return _RuntimeError(3, f"json: cannot unmarshal {text} into {where} of type {go_type}")

    if kind == "string" and not isinstance(value, str):
        raise refuse(value, "string")
    if kind == "bool" and not isinstance(value, bool):
        raise refuse(value, "bool")
    if kind == "int64" and (isinstance(value, bool) or not isinstance(value, int)):
        raise refuse(value, "int64")
    if kind.startswith("[]"):
        if not isinstance(value, list):
            raise refuse(value, kind)
        return [_decode_value(item, kind[2:], where) for item in value if item is not None]
    if kind == "SyncOptions":
        if not isinstance(value, dict):
            raise refuse(value, "application.SyncOptions")
        items = value.get("items") or []
        if not isinstance(items, list):
            raise refuse(items, "[]string")
        return {"items": [_decode_value(i, "string", f"{where}.items") for i in items]}
    return value


class ArgoCDStandIn:
    """The stand-in server; use as a context manager or call :meth:`start` / :meth:`stop`.

    :param token: the API token of the ``delivery`` account (``get`` and ``sync`` on ``*/*``).
    :param enabled_namespaces: namespaces besides ``argocd`` that may hold applications
        (``application.namespaces``; shell-style patterns).
    """

    def __init__(self, *, token: str = "standin-token", enabled_namespaces: Iterable[str] = ()) -> None:
        self.token = token
        self.enabled_namespaces = tuple(enabled_namespaces)
        self.require_override_for_revision_sync = False
        self._accounts: dict[str, _Account] = {token: _Account("delivery", list(DEFAULT_POLICIES))}
        self._blocked_projects: set[str] = set()
        self._lock = threading.Lock()
        self._apps: dict[tuple[str, str], _App] = {}
        self._commits: list[_Commit] = []
        self._requests: list[RecordedRequest] = []
        self._failures: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ArgoCDStandIn:
        handler = type("_BoundHandler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="argocd-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ArgoCDStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection_json(self, *, token: str | None = None) -> str:
        """The Airflow JSON connection (for ``AIRFLOW_CONN_<ID>``) pointing at this server."""
        return json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": self.port,
                "password": self.token if token is None else token,
            }
        )

    # ------------------------------------------------------------------ scripting

    def set_policies(self, policies: Iterable[tuple[str, str]], *, token: str | None = None) -> None:
        """Replace the RBAC policies of a token's account (default: the main token)."""
        with self._lock:
            self._accounts[token or self.token].policies = list(policies)

    def block_syncs(self, project: str) -> None:
        """A deny sync window of ``project`` is active."""
        with self._lock:
            self._blocked_projects.add(project)

    def add_app(
        self,
        name: str,
        *,
        deployed_revision: str,
        scenario: list[Frame] | None = None,
        **app_kwargs: Any,
    ) -> dict[str, Any]:
        """Register an application, Synced and Healthy at ``deployed_revision`` (a commit touching it).

        :param scenario: frames played after a sync is accepted (default :func:`rollout_ok`).
        :param app_kwargs: passed to :func:`make_application`.
        """
        doc = make_application(name, revision=deployed_revision, **app_kwargs)
        namespace = doc["metadata"]["namespace"]
        with self._lock:
            for revision in (*app_kwargs.get("history_revisions", ()), deployed_revision):
                self._record_commit(revision, [name], {})
            base = [
                {k: v for k, v in r.items() if k not in ("status", "health")}
                for r in doc["status"]["resources"]
            ]
            app = _App(
                doc=doc,
                scenario=list(scenario or rollout_ok()),
                base_resources=base,
                live_revision=deployed_revision,
                live_refs={_ref(r) for r in base},
            )
            self._apps[(namespace, name)] = app
            self._refresh(app, Frame(), stamp=False)  # as last reconciled when it was deployed
            return copy.deepcopy(app.doc)

    def push(
        self,
        revision: str,
        *,
        apps: Iterable[str] = (),
        removes: Iterable[tuple[str, str]] = (),
        refresh: bool = True,
    ) -> None:
        """A commit lands on the GitOps branch; with ``refresh`` the apps are refreshed (Git webhook)."""
        with self._lock:
            self._push(Push(revision, tuple(apps), tuple(removes), refresh))

    def set_scenario(
        self, name: str, frames: list[Frame], *, namespace: str = CONTROL_PLANE_NAMESPACE
    ) -> None:
        with self._lock:
            self._apps[(namespace, name)].scenario = list(frames)

    def fail_next(self, count: int = 1, *, status: int = 503) -> None:
        """Answer the next ``count`` API requests with ``status`` (an Unavailable ``runtimeError``)."""
        with self._lock:
            self._failures.extend([status] * count)

    def application(self, name: str, *, namespace: str = CONTROL_PLANE_NAMESPACE) -> dict[str, Any]:
        """The application as it stands (without advancing its scenario)."""
        with self._lock:
            return self._render(self._apps[(namespace, name)])

    @property
    def head(self) -> str:
        with self._lock:
            return self._commits[-1].revision

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, suffix: str = "") -> list[RecordedRequest]:
        """Recorded requests of ``method`` whose path ends with ``suffix``."""
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    # ------------------------------------------------------------------ Git

    def _record_commit(self, revision: str, apps: Iterable[str], removes: Mapping[str, set[str]]) -> None:
        for commit in self._commits:
            if commit.revision == revision:
                commit.apps.update(apps)
                return
        self._commits.append(_Commit(revision, set(apps), {k: set(v) for k, v in removes.items()}))

    def _push(self, push: Push) -> None:
        if self._index(push.revision) is not None:
            raise ValueError(f"commit {push.revision} is already on the branch")
        removes: dict[str, set[str]] = {}
        for app_name, ref in push.removes:
            removes.setdefault(app_name, set()).add(ref)
        self._record_commit(push.revision, [*push.apps, *removes], removes)
        if push.refresh:
            for app in self._apps.values():
                self._refresh(app, app.frame)

    def _index(self, revision: str) -> int | None:
        return next((i for i, c in enumerate(self._commits) if c.revision == revision), None)

    def _manifest_version(self, app: _App, revision: str) -> int | None:
        """Index of the last commit up to ``revision`` that changed the app's manifests."""
        index = self._index(revision)
        if index is None:
            return None
        return max((i for i in range(index + 1) if app.name in self._commits[i].apps), default=None)

    def _desired_refs(self, app: _App, revision: str) -> set[str]:
        index = self._index(revision)
        removed: set[str] = set()
        for commit in self._commits[: (index or 0) + 1]:
            removed |= commit.removes.get(app.name, set())
        return {_ref(r) for r in app.base_resources} - removed

    def _is_gitops(self, source: Mapping[str, Any]) -> bool:
        return str(source.get("repoURL", "")).rstrip("/") == GITOPS_REPO

    def _resolve(self, source: Mapping[str, Any], wanted: str) -> str:
        """``Server.resolveRevision``: a SHA as is, a branch to its head; other repos keep the revision."""
        if not self._is_gitops(source):
            return wanted
        if _COMMIT_SHA.match(wanted):
            return wanted
        if wanted in ("HEAD", BRANCH):
            return self._commits[-1].revision
        raise _RuntimeError(
            9,
            "error resolving repo revision: rpc error: code = Unknown desc = "
            f"unable to resolve '{wanted}' to a commit SHA: revision not found",
        )

    # ------------------------------------------------------------------ controller

    def _render(self, app: _App) -> dict[str, Any]:
        doc = copy.deepcopy(app.doc)
        if app.operation is not None:
            doc["operation"] = copy.deepcopy(app.operation)
        return doc

    def _head_revisions(self, app: _App) -> list[str]:
        return [self._resolve(s, s.get("targetRevision") or "HEAD") for s in app.sources()]

    def _refresh(self, app: _App, frame: Frame, *, stamp: bool = True) -> None:
        """A full refresh (CompareWithLatest): sync status against the branch head, health, reconciledAt."""
        status = app.doc["status"]
        head = self._commits[-1].revision
        desired = self._desired_refs(app, head)
        same = self._manifest_version(app, head) == self._manifest_version(app, app.live_revision)
        overrides = {kind: (health, msg) for kind, health, msg in frame.resource_health}
        resources = []
        for base in app.base_resources:
            ref = _ref(base)
            if ref not in desired and ref not in app.live_refs:
                continue
            resource = dict(base)
            if ref not in app.live_refs:
                resource.update(status="OutOfSync", health={"status": "Missing"})
            else:
                health, msg = overrides.get(base["kind"], ("Healthy", ""))
                resource["status"] = "Synced" if same and ref in desired else "OutOfSync"
                resource["health"] = {
                    "status": health,
                    **({"message": msg.format(name=app.name)} if msg else {}),
                }
                if ref not in desired:
                    resource["requiresPruning"] = True
            resources.append(resource)
        status["resources"] = resources
        revisions = self._head_revisions(app)
        sync: dict[str, Any] = {
            "status": "Synced" if all(r["status"] == "Synced" for r in resources) else "OutOfSync",
            "comparedTo": {"destination": app.doc["spec"]["destination"]},
        }
        if app.multi_source:
            sync["comparedTo"]["sources"] = copy.deepcopy(app.sources())
            sync["revisions"] = revisions
        else:
            sync["comparedTo"]["source"] = copy.deepcopy(app.sources()[0])
            sync["revision"] = revisions[0]
        status["sync"] = sync
        # controller/health.go: Missing when resources are expected but none is live; none expected: Healthy
        health = "Missing" if resources and not app.live_refs else frame.health
        status["health"] = {"status": health}
        if frame.health_message and health == frame.health:
            status["health"]["message"] = frame.health_message.format(name=app.name)
        if frame.conditions:
            target = ",".join(app.op_target)
            status["conditions"] = [
                {"type": kind, "message": message.format(revision=target), "lastTransitionTime": _now()}
                for kind, message in frame.conditions
            ]
        else:
            status.pop("conditions", None)
        if stamp:
            status["reconciledAt"] = _now()

    def _advance(self, app: _App) -> None:
        """Apply the next frame of the scenario (one per GET of the application)."""
        if not app.started or not app.scenario:
            return
        first_time = app.cursor < len(app.scenario)  # the last frame repeats; its events happen once
        frame = app.scenario[min(app.cursor, len(app.scenario) - 1)]
        app.cursor += 1
        app.frame = frame
        if frame.push is not None and first_time:
            self._push(Push(frame.push.revision, frame.push.apps, frame.push.removes, refresh=False))
        if frame.foreign_sync and first_time and app.operation is None:
            targets = self._head_revisions(app)
            self._set_operation(app, targets, {"prune": False}, username=frame.foreign_sync)
        self._progress_operation(app, frame)
        if frame.deleted_live and first_time:
            app.live_refs = set()
        if frame.reconciled:
            self._refresh(app, frame)

    def _progress_operation(self, app: _App, frame: Frame) -> None:
        """``processRequestedAppOperation`` + ``SyncAppState`` for one step of the running operation."""
        if app.operation is None or frame.phase is None:
            return
        status = app.doc["status"]
        state = status.get("operationState") or {
            "operation": copy.deepcopy(app.operation),
            "phase": "Running",
            "startedAt": _now(),
        }
        phase, message = frame.phase, frame.operation_message
        unknown = [r for r in app.op_target if _COMMIT_SHA.match(r) and self._index(r) is None]
        if unknown:
            phase = "Error"
            message = (
                "ComparisonError: Failed to load target state: failed to generate manifest for source 1 of 1: "
                f"rpc error: code = Unknown desc = unable to resolve '{unknown[0]}' to a commit SHA"
            )
        state["phase"] = phase
        state["message"] = message
        sync_result = state.setdefault("syncResult", {})
        if app.multi_source:
            sync_result.update(revisions=list(app.op_target), sources=copy.deepcopy(app.sources()))
        else:
            sync_result.update(revision=app.op_target[0], source=copy.deepcopy(app.sources()[0]))
        if not unknown and (frame.applied if frame.applied is not None else phase == "Succeeded"):
            sync_result["resources"] = self._apply(app)
        if phase in _COMPLETED:
            state["finishedAt"] = _now()
            if phase == "Succeeded" and not app.operation["sync"].get("dryRun"):
                self._record_history(app, state)
            app.operation = None
        status["operationState"] = state

    def _apply(self, app: _App) -> list[dict[str, Any]]:
        """Make the operation's manifests live; the ``syncResult.resources`` of gitops-engine."""
        target = self._gitops_target(app)
        prune = bool(app.operation and app.operation["sync"].get("prune"))
        desired = self._desired_refs(app, target)
        results = []
        for base in app.base_resources:
            ref = _ref(base)
            if ref in desired:
                verb = "configured" if ref in app.live_refs else "created"
                result = {"status": "Synced", "message": f"{base['kind'].lower()}/{base['name']} {verb}"}
            elif ref in app.live_refs:
                result = (
                    {"status": "Pruned", "message": "pruned"}
                    if prune
                    else {
                        "status": "PruneSkipped",
                        "message": "ignored (requires pruning)",
                    }
                )
            else:
                continue
            results.append({**base, **result, "syncPhase": "Sync"})
        app.live_refs = desired | (set() if prune else app.live_refs - desired)
        app.live_revision = target
        return results

    def _gitops_target(self, app: _App) -> str:
        for source, revision in zip(app.sources(), app.op_target, strict=True):
            if self._is_gitops(source):
                return revision
        return app.live_revision

    def _record_history(self, app: _App, state: Mapping[str, Any]) -> None:
        history = app.doc["status"].setdefault("history", [])
        entry: dict[str, Any] = {
            "id": history[-1]["id"] + 1 if history else 0,  # persistRevisionHistory
            "deployStartedAt": state["startedAt"],
            "deployedAt": state["finishedAt"],
            "initiatedBy": copy.deepcopy(state["operation"]["initiatedBy"]),
        }
        if app.multi_source:
            entry.update(revisions=list(app.op_target), sources=copy.deepcopy(app.sources()))
        else:
            entry.update(revision=app.op_target[0], source=copy.deepcopy(app.sources()[0]))
        history.append(entry)

    def _set_operation(self, app: _App, targets: list[str], sync: dict[str, Any], *, username: str) -> None:
        """``argo.SetAppOperation``: refuse while ``operation`` is set, else set it and clear the state."""
        if app.operation is not None:
            raise _RuntimeError(9, "error setting app operation: another operation is already in progress")
        if app.multi_source:
            sync.update(revisions=list(targets), sources=copy.deepcopy(app.sources()))
        else:
            sync.update(revision=targets[0], source=copy.deepcopy(app.sources()[0]))
        app.operation = {
            "sync": {k: v for k, v in sync.items() if v not in (None, False, [], {})},
            "initiatedBy": {"username": username},
            "retry": {},
        }
        app.op_target = list(targets)
        app.doc["status"].pop("operationState", None)

    # ------------------------------------------------------------------ API server

    def _account(self, headers: Mapping[str, str]) -> _Account | None:
        authorization = headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        return self._accounts.get(token) if token else None

    def _authenticate(self, headers: Mapping[str, str]) -> _Account:
        authorization = headers.get("authorization", "")
        if not authorization:
            raise _RuntimeError(16, "no session information")
        account = self._account(headers)
        if account is None:
            raise _RuntimeError(16, "invalid session: token signature is invalid")
        return account

    def _enforce(self, account: _Account, action: str, obj: str) -> None:
        """``Enforcer.EnforceErr``: 403 naming the resource, action, object and subject."""
        if not any(
            a in (action, "*") and fnmatch.fnmatchcase(obj, pattern) for a, pattern in account.policies
        ):
            raise _RuntimeError(
                7,
                f"permission denied: applications, {action}, {obj}, sub: {account.username}, "
                "iat: 2025-01-01T08:00:00Z",
            )

    def _rbac_name(self, project: str, namespace: str, name: str) -> str:
        if namespace and namespace != CONTROL_PLANE_NAMESPACE:
            return f"{project}/{namespace}/{name}"
        return f"{project}/{name}"

    def _lookup(self, account: _Account, action: str, project: str, namespace: str, name: str) -> _App:
        """``getAppEnforceRBAC``: 403 hides existence unless a ``project`` is given."""
        namespace = namespace or CONTROL_PLANE_NAMESPACE
        if project:
            try:
                self._enforce(account, action, self._rbac_name(project, namespace, name))
            except _RuntimeError:
                raise _permission_denied() from None
        enabled = namespace == CONTROL_PLANE_NAMESPACE or any(
            fnmatch.fnmatchcase(namespace, pattern) for pattern in self.enabled_namespaces
        )
        app = self._apps.get((namespace, name)) if enabled else None
        if app is None:
            if project and enabled:
                raise _not_found(name)
            raise _permission_denied()
        app_project = app.doc["spec"].get("project") or "default"
        try:
            self._enforce(account, action, self._rbac_name(app_project, namespace, name))
        except _RuntimeError:
            raise (_not_found(name) if project else _permission_denied()) from None
        if project and project != app_project:
            raise _not_found(name)
        return app

    def _sync(self, account: _Account, name: str, body: Any) -> dict[str, Any]:
        request = _decode(body, _SYNC_REQUEST, "application.ApplicationSyncRequest")
        app = self._lookup(account, "get", request.get("project", ""), request.get("appNamespace", ""), name)
        project = app.doc["spec"].get("project") or "default"
        if project in self._blocked_projects:
            raise _RuntimeError(7, "cannot sync: blocked by sync window")
        rbac_name = self._rbac_name(project, app.doc["metadata"]["namespace"], name)
        self._enforce(account, "sync", rbac_name)
        targets = self._resolve_source_revisions(account, app, request, rbac_name)
        options = app.doc["spec"].get("syncPolicy", {}).get("syncOptions", [])
        if "syncOptions" in request:
            options = request["syncOptions"]["items"]  # the request's options replace the app's
        sync = {"prune": request.get("prune"), "dryRun": request.get("dryRun"), "syncOptions": list(options)}
        self._set_operation(app, targets, sync, username=account.username)
        app.started = True
        app.cursor = 0
        return self._render(app)

    def _resolve_source_revisions(
        self, account: _Account, app: _App, request: Mapping[str, Any], rbac_name: str
    ) -> list[str]:
        sources = app.sources()
        desired = [""] * len(sources)
        if app.multi_source:
            wanted = request.get("revisions", [])
            for index, position in enumerate(request.get("sourcePositions", [])):
                if position <= 0 or position > len(sources):
                    raise _RuntimeError(2, "source position is out of range")
                if index >= len(wanted):
                    raise _RuntimeError(
                        2, f"runtime error: index out of range [{index}] with length {len(wanted)}"
                    )
                desired[position - 1] = wanted[index]
        else:
            desired[0] = request.get("revision", "")
        auto_sync = _auto_sync_enabled(app)
        resolved = []
        for source, revision in zip(sources, desired, strict=True):
            target = source.get("targetRevision") or "HEAD"
            if revision and revision != target:
                if self.require_override_for_revision_sync:
                    self._enforce(account, "override", rbac_name)
                if auto_sync and not request.get("dryRun"):
                    what = f"source {source['repoURL']}" if app.multi_source else ""
                    raise _RuntimeError(
                        9,
                        f"Cannot sync {what + ' ' if what else ''}to {revision}: "
                        f"auto-sync currently set to {source.get('targetRevision', '')}",
                    )
            resolved.append(self._resolve(source, revision or target))
        return resolved

    def _rollback(self, account: _Account, name: str, body: Any) -> dict[str, Any]:
        request = _decode(body, _ROLLBACK_REQUEST, "application.ApplicationRollbackRequest")
        app = self._lookup(account, "sync", request.get("project", ""), request.get("appNamespace", ""), name)
        if _auto_sync_enabled(app):
            raise _RuntimeError(9, "rollback cannot be initiated when auto-sync is enabled")
        history_id = request.get("id", 0)
        entry = next((h for h in app.doc["status"].get("history", []) if h["id"] == history_id), None)
        if entry is None:
            meta = app.doc["metadata"]
            raise _RuntimeError(
                3,
                f"application {meta['namespace']}/{meta['name']} does not have deployment with id {history_id}",
            )
        targets = list(entry.get("revisions") or [entry["revision"]])
        sync = {"prune": request.get("prune"), "dryRun": request.get("dryRun")}
        self._set_operation(app, targets, sync, username=account.username)
        app.started = True
        app.cursor = 0
        return self._render(app)

    def _tree(self, app: _App) -> dict[str, Any]:
        nodes: list[dict[str, Any]] = []
        overrides = {kind: (health, msg) for kind, health, msg in app.frame.resource_health}
        for resource in app.doc["status"]["resources"]:
            ref = {k: resource[k] for k in ("group", "version", "kind", "namespace", "name") if k in resource}
            if _ref(resource) not in app.live_refs:
                nodes.append(ref)  # a managed resource that does not exist: no uid, no health
                continue
            ref["uid"] = _uid(resource["kind"], resource["name"])
            nodes.append(
                {**ref, "resourceVersion": "2000", "health": copy.deepcopy(resource.get("health", {}))}
            )
            if resource["kind"] != "Deployment":
                continue
            rs_name = f"{resource['name']}-7d9c6b5f4"
            rs_ref = {**ref, "kind": "ReplicaSet", "name": rs_name, "uid": _uid("ReplicaSet", rs_name)}
            pod_name = f"{rs_name}-x2x7q"
            pod_ref = {**rs_ref, "kind": "Pod", "name": pod_name, "uid": _uid("Pod", pod_name)}
            pod_ref.pop("group", None)
            for child, parent in ((rs_ref, ref), (pod_ref, rs_ref)):
                health, msg = overrides.get(child["kind"], ("Healthy", ""))
                message = {"message": msg.format(name=resource["name"])} if msg else {}
                nodes.append({**child, "parentRefs": [parent], "health": {"status": health, **message}})
        return {"nodes": nodes}

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes
    ) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        body: Any = None
        with self._lock:
            try:
                if raw_body.strip():
                    try:
                        body = json.loads(raw_body)
                    except ValueError as err:
                        body = raw_body.decode("utf-8", "replace")
                        raise _RuntimeError(3, f"invalid character in JSON body: {err}") from None
                return 200, self._dispatch(method, parts.path, query, headers, body)
            except _RuntimeError as err:
                return err.status, {"error": err.message, "code": err.code, "message": err.message}
            except Exception as err:  # a bug in a test's script: answer it, as a recovered panic would
                message = f"stand-in: {type(err).__name__}: {err}"
                return 500, {"error": message, "code": 2, "message": message}
            finally:
                self._requests.append(
                    RecordedRequest(method, parts.path, query, dict(headers), copy.deepcopy(body))
                )

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any
    ) -> dict[str, Any]:
        if self._failures and path.startswith("/api/"):
            status = self._failures.pop(0)
            raise _RuntimeError(
                14, "upstream connect error or disconnect/reset before headers", status=status
            )
        if method == "GET" and path == "/api/version":
            if self._account(headers) is None:
                return {"Version": "v3.6.0+standin"}
            return {"Version": "v3.6.0+standin", "Platform": "linux/amd64", "GoVersion": "go1.25.0"}
        if method == "GET" and path == "/api/v1/session/userinfo":
            account = self._account(headers)
            if account is None:
                return {}
            return {"loggedIn": True, "username": account.username, "iss": "argocd"}
        if not path.startswith("/api/v1/"):
            raise _RuntimeError(5, "Not Found")
        account = self._authenticate(headers)
        segments = [unquote(s) for s in path.removeprefix("/api/v1/").split("/")]
        if segments[0] != "applications" or len(segments) not in (2, 3):
            raise _RuntimeError(5, "Not Found")
        name, action = segments[1], (segments[2] if len(segments) == 3 else None)
        if method == "POST" and action == "sync":
            return self._sync(account, name, body)
        if method == "POST" and action == "rollback":
            return self._rollback(account, name, body)
        if method != "GET" or action not in (None, "resource-tree"):
            raise _RuntimeError(5, "Not Found")
        namespace = (query.get("appNamespace") or [""])[0]
        if action == "resource-tree":
            project = (query.get("project") or [""])[0]
            return self._tree(self._lookup(account, "get", project, namespace, name))
        projects = query.get("project") or query.get("projects") or []
        if len(projects) > 1:
            raise _RuntimeError(
                3, "multiple projects specified - the get endpoint accepts either zero or one project"
            )
        app = self._lookup(account, "get", projects[0] if projects else "", namespace, name)
        self._advance(app)
        if query.get("refresh"):
            self._refresh(app, app.frame)
        return self._render(app)


class _Handler(BaseHTTPRequestHandler):
    standin: ArgoCDStandIn
    protocol_version = "HTTP/1.1"
    server_version = "argocd-standin"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        status, payload = self.standin.handle(self.command, self.path, headers, raw_body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve
