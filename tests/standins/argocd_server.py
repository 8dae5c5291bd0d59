"""A stand-in Argo CD API server for tests.

It is a real HTTP server (stdlib ``ThreadingHTTPServer``) bound to 127.0.0.1 on an ephemeral port that
speaks the Argo CD gRPC-gateway JSON shapes:

* ``GET  /api/v1/applications/{name}``                  -> ``v1alpha1Application``
* ``POST /api/v1/applications/{name}/sync``             <- ``applicationApplicationSyncRequest``
* ``GET  /api/v1/applications/{applicationName}/resource-tree`` -> ``v1alpha1ApplicationTree``
* ``POST /api/v1/applications/{name}/rollback``         <- ``applicationApplicationRollbackRequest``
* ``GET  /api/version``

Errors use the ``runtimeError`` body ``{code, error, message, details}`` with the gRPC code and the HTTP
status the gateway maps it to (Unauthenticated 16 -> 401, NotFound 5 -> 404, InvalidArgument 3 and
FailedPrecondition 9 -> 400, Unavailable 14 -> 503).

Each application plays a *scenario* once a sync (or rollback) is accepted: a list of :class:`Frame`,
one per ``GET`` of the application; the last frame repeats. Every request is recorded so tests can
assert on the sync body and the ``Authorization`` header.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "PREVIOUS",
    "TARGET",
    "ArgoCDStandIn",
    "Frame",
    "RecordedRequest",
    "healthy_at_previous",
    "make_application",
    "never_healthy",
    "rollout_degraded",
    "rollout_ok",
]

TARGET = "target"
"""``Frame.at``: the revision the last sync or rollback asked for."""
PREVIOUS = "previous"
"""``Frame.at``: the revision deployed before the sync."""

SYNC_REQUEST_FIELDS = frozenset(
    {
        "name",
        "revision",
        "revisions",
        "dryRun",
        "prune",
        "strategy",
        "resources",
        "manifests",
        "infos",
        "retryStrategy",
        "syncOptions",
        "appNamespace",
        "project",
        "sourcePositions",
    }
)
ROLLBACK_REQUEST_FIELDS = frozenset({"name", "id", "dryRun", "prune", "appNamespace", "project"})

_GRPC_HTTP_STATUS = {3: 400, 5: 404, 7: 403, 9: 400, 14: 503, 16: 401}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(*parts: str) -> str:
    digest = hashlib.sha1("/".join(parts).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


@dataclass(frozen=True)
class Frame:
    """What ``GET /api/v1/applications/{name}`` shows on one poll after a sync was accepted.

    :param sync: ``status.sync.status`` (``Synced``, ``OutOfSync``, ``Unknown``).
    :param health: ``status.health.status``.
    :param at: ``status.sync.revision``: :data:`TARGET`, :data:`PREVIOUS` or a literal revision.
    :param phase: ``status.operationState.phase``; ``None`` leaves the previous operation state as is.
    :param operation_message: ``status.operationState.message``.
    :param health_message: ``status.health.message``.
    :param conditions: ``status.conditions`` as ``(type, message)``; ``{revision}`` is replaced by the target.
    :param resource_health: per kind, ``(kind, status, message)``: the health of the app's resources
        (and of their resource-tree nodes) of that kind; the others are Healthy.
    :param pending: keep the top-level ``operation`` (the controller has not picked the sync up yet).
    """

    sync: str = "Synced"
    health: str = "Healthy"
    at: str = TARGET
    phase: str | None = "Succeeded"
    operation_message: str = "successfully synced (all tasks run)"
    health_message: str = ""
    conditions: tuple[tuple[str, str], ...] = ()
    resource_health: tuple[tuple[str, str, str], ...] = ()
    pending: bool = False


def rollout_ok() -> list[Frame]:
    """Sync accepted -> OutOfSync/Running -> Synced/Progressing -> Synced/Healthy at the target."""
    return [
        Frame(at=PREVIOUS, phase=None, pending=True),
        Frame(
            sync="OutOfSync", at=PREVIOUS, phase="Running", operation_message="one or more tasks are running"
        ),
        Frame(
            health="Progressing",
            phase="Running",
            operation_message="waiting for healthy state of apps/Deployment",
            resource_health=(
                (
                    "Deployment",
                    "Progressing",
                    "Waiting for rollout to finish: 1 old replicas are pending termination...",
                ),
                (
                    "ReplicaSet",
                    "Progressing",
                    "Waiting for rollout to finish: 0 of 1 updated replicas are available...",
                ),
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
    """Sync accepted -> Progressing -> Degraded (failed operation, a condition, an unhealthy Deployment)."""
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
        Frame(
            sync="OutOfSync", at=PREVIOUS, phase="Running", operation_message="one or more tasks are running"
        ),
        Frame(
            health="Progressing",
            phase="Running",
            operation_message="waiting for healthy state of apps/Deployment",
            resource_health=(("Deployment", "Progressing", "Waiting for rollout to finish"),),
        ),
        Frame(
            health="Degraded",
            phase="Failed",
            operation_message="one or more synchronization tasks completed unsuccessfully",
            conditions=conditions,
            resource_health=degraded,
        ),
    ]


def never_healthy() -> list[Frame]:
    """Sync accepted, revision reached, but the Deployment keeps Progressing."""
    return [
        Frame(
            sync="OutOfSync", at=PREVIOUS, phase="Running", operation_message="one or more tasks are running"
        ),
        Frame(
            health="Progressing",
            health_message="Waiting for rollout to finish",
            resource_health=(
                (
                    "Deployment",
                    "Progressing",
                    "Waiting for rollout to finish: 0 of 2 updated replicas are available...",
                ),
                ("Pod", "Progressing", "ImagePullBackOff"),
            ),
        ),
    ]


def healthy_at_previous() -> list[Frame]:
    """The sync never takes effect: Synced and Healthy, but still at the previous revision."""
    return [Frame(at=PREVIOUS, phase=None)]


def make_application(
    name: str,
    *,
    revision: str,
    namespace: str = "argocd",
    project: str = "default",
    repo_url: str = "https://github.com/visiobook/gitops.git",
    path: str | None = None,
    target_revision: str = "main",
    dest_namespace: str = "visiobook",
    dest_server: str = "https://kubernetes.default.svc",
    history_revisions: tuple[str, ...] = (),
    auto_sync: bool = False,
) -> dict[str, Any]:
    """A ``v1alpha1Application`` Synced and Healthy at ``revision``, with a Service and a Deployment."""
    source = {
        "repoURL": repo_url,
        "path": path or f"apps/{name}",
        "targetRevision": target_revision,
        "helm": {"valueFiles": ["values.yaml"]},
    }
    destination = {"server": dest_server, "namespace": dest_namespace}
    sync_policy: dict[str, Any] = {"syncOptions": ["CreateNamespace=true", "ApplyOutOfSyncOnly=true"]}
    if auto_sync:
        sync_policy["automated"] = {"prune": True, "selfHeal": True}
    resources: list[dict[str, Any]] = [
        {
            "version": "v1",
            "kind": "Service",
            "namespace": dest_namespace,
            "name": name,
            "status": "Synced",
            "health": {"status": "Healthy"},
        },
        {
            "group": "apps",
            "version": "v1",
            "kind": "Deployment",
            "namespace": dest_namespace,
            "name": name,
            "status": "Synced",
            "health": {"status": "Healthy"},
        },
    ]
    revisions = (*history_revisions, revision)
    history = [
        {
            "id": index,
            "revision": rev,
            "deployStartedAt": f"2025-01-{min(index, 28):02d}T10:00:00Z",
            "deployedAt": f"2025-01-{min(index, 28):02d}T10:00:05Z",
            "source": copy.deepcopy(source),
            "initiatedBy": {"username": "admin"},
        }
        for index, rev in enumerate(revisions, start=1)
    ]
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
        "spec": {
            "source": source,
            "destination": destination,
            "project": project,
            "syncPolicy": sync_policy,
        },
        "status": {
            "resources": resources,
            "sync": {
                "status": "Synced",
                "comparedTo": {"source": copy.deepcopy(source), "destination": destination},
                "revision": revision,
            },
            "health": {"status": "Healthy"},
            "history": history,
            "reconciledAt": "2025-01-01T10:00:05Z",
            "operationState": {
                "operation": {
                    "sync": {"revision": revision, "syncOptions": ["ApplyOutOfSyncOnly=true"]},
                    "initiatedBy": {"username": "admin"},
                    "retry": {},
                },
                "phase": "Succeeded",
                "message": "successfully synced (all tasks run)",
                "syncResult": {
                    "resources": [
                        {
                            "group": r.get("group", ""),
                            "version": "v1",
                            "kind": r["kind"],
                            "namespace": dest_namespace,
                            "name": name,
                            "status": "Synced",
                            "message": f"{r['kind'].lower()}/{name} configured",
                            "hookPhase": "Running",
                            "syncPhase": "Sync",
                        }
                        for r in resources
                    ],
                    "revision": revision,
                    "source": copy.deepcopy(source),
                },
                "startedAt": "2025-01-01T10:00:00Z",
                "finishedAt": "2025-01-01T10:00:05Z",
            },
            "sourceType": "Helm",
            "summary": {"images": [f"registry.visiobook.local/{name}:{revision[:12]}"]},
            "controllerNamespace": namespace,
        },
    }


@dataclass
class RecordedRequest:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None


@dataclass
class _App:
    doc: dict[str, Any]
    scenario: list[Frame]
    deployed: str
    head: str
    target: str | None = None
    cursor: int = 0
    busy_syncs: int = 0
    operation: dict[str, Any] | None = None
    recorded_history: bool = False
    frames_seen: list[Frame] = field(default_factory=list)


class _RuntimeError(Exception):
    def __init__(self, code: int, message: str, *, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _GRPC_HTTP_STATUS.get(code, 500)


class ArgoCDStandIn:
    """The stand-in server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, *, token: str = "standin-token") -> None:
        self.token = token
        self._lock = threading.Lock()
        self._apps: dict[str, _App] = {}
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

    def add_app(
        self,
        name: str,
        *,
        deployed_revision: str,
        head_revision: str | None = None,
        scenario: list[Frame] | None = None,
        busy_syncs: int = 0,
        **app_kwargs: Any,
    ) -> dict[str, Any]:
        """Register an application, Synced and Healthy at ``deployed_revision``.

        :param head_revision: what an empty sync revision resolves to (``targetRevision``'s head).
        :param scenario: frames played after a sync is accepted (default :func:`rollout_ok`).
        :param busy_syncs: how many sync requests to refuse with "another operation is already in progress".
        """
        doc = make_application(name, revision=deployed_revision, **app_kwargs)
        with self._lock:
            self._apps[name] = _App(
                doc=doc,
                scenario=list(scenario or rollout_ok()),
                deployed=deployed_revision,
                head=head_revision or deployed_revision,
                busy_syncs=busy_syncs,
            )
        return copy.deepcopy(doc)

    def set_scenario(self, name: str, frames: list[Frame]) -> None:
        with self._lock:
            self._apps[name].scenario = list(frames)

    def fail_next(self, count: int = 1, *, status: int = 503) -> None:
        """Answer the next ``count`` API requests with ``status`` (an Unavailable ``runtimeError``)."""
        with self._lock:
            self._failures.extend([status] * count)

    def application(self, name: str) -> dict[str, Any]:
        """The application as it stands (without advancing its scenario)."""
        with self._lock:
            return self._render(self._apps[name])

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, suffix: str = "") -> list[RecordedRequest]:
        """Recorded requests of ``method`` whose path ends with ``suffix``."""
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    # ------------------------------------------------------------------ behaviour

    def _render(self, app: _App) -> dict[str, Any]:
        doc = copy.deepcopy(app.doc)
        if app.operation is not None:
            doc["operation"] = copy.deepcopy(app.operation)
        return doc

    def _advance(self, app: _App) -> None:
        """Apply the next frame of the scenario (one per GET of the application)."""
        if app.target is None or not app.scenario:
            return
        frame = app.scenario[min(app.cursor, len(app.scenario) - 1)]
        app.cursor += 1
        app.frames_seen.append(frame)
        target = app.target
        name = app.doc["metadata"]["name"]
        status = app.doc["status"]
        revision = {TARGET: target, PREVIOUS: app.deployed}.get(frame.at, frame.at)
        status["sync"]["status"] = frame.sync
        status["sync"]["revision"] = revision
        status["health"] = {"status": frame.health}
        if frame.health_message:
            status["health"]["message"] = frame.health_message
        overrides = {kind: (health, msg) for kind, health, msg in frame.resource_health}
        for resource in status["resources"]:
            health, msg = overrides.get(resource["kind"], ("Healthy", ""))
            resource["health"] = {"status": health, **({"message": msg.format(name=name)} if msg else {})}
            resource["status"] = frame.sync
        if frame.conditions:
            status["conditions"] = [
                {"type": ctype, "message": message.format(revision=target), "lastTransitionTime": _now()}
                for ctype, message in frame.conditions
            ]
        else:
            status.pop("conditions", None)
        if frame.phase is not None:
            operation = copy.deepcopy(app.operation) or {"sync": {"revision": target}}
            state = {
                "operation": operation,
                "phase": frame.phase,
                "message": frame.operation_message,
                "syncResult": {"revision": target, "source": copy.deepcopy(app.doc["spec"]["source"])},
                "startedAt": status["operationState"].get("startedAt", _now()),
            }
            if frame.phase not in ("Running", "Terminating"):
                state["finishedAt"] = _now()
            status["operationState"] = state
        if not frame.pending:
            app.operation = None
        status["reconciledAt"] = _now()
        if (
            frame.phase == "Succeeded"
            and frame.sync == "Synced"
            and revision == target
            and not app.recorded_history
        ):
            history = status.setdefault("history", [])
            next_id = max((h["id"] for h in history), default=0) + 1
            history.append(
                {
                    "id": next_id,
                    "revision": target,
                    "deployStartedAt": status["operationState"]["startedAt"],
                    "deployedAt": _now(),
                    "source": copy.deepcopy(app.doc["spec"]["source"]),
                    "initiatedBy": {"username": "admin"},
                }
            )
            app.recorded_history = True

    def _operation_running(self, app: _App) -> bool:
        phase = app.doc["status"].get("operationState", {}).get("phase")
        return app.operation is not None or phase in ("Running", "Terminating")

    def _start_operation(self, app: _App, target: str, sync: dict[str, Any]) -> None:
        app.target = target
        app.cursor = 0
        app.recorded_history = False
        app.operation = {
            "sync": sync,
            "initiatedBy": {"username": "admin"},
            "retry": {},
        }
        app.doc["status"]["operationState"]["startedAt"] = _now()

    def _sync(self, app: _App, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - SYNC_REQUEST_FIELDS)
        if unknown:
            raise _RuntimeError(3, f'proto: unknown field "{unknown[0]}"')
        for key in ("name", "revision", "appNamespace", "project"):
            if key in body and not isinstance(body[key], str):
                raise _RuntimeError(3, f"invalid value for string field {key}: {body[key]!r}")
        for key in ("prune", "dryRun"):
            if key in body and not isinstance(body[key], bool):
                raise _RuntimeError(3, f"invalid value for bool field {key}: {body[key]!r}")
        if "syncOptions" in body:
            options = body["syncOptions"]
            if not isinstance(options, dict) or not all(
                isinstance(item, str) for item in options.get("items", [])
            ):
                raise _RuntimeError(
                    3,
                    "json: cannot unmarshal "
                    f"{type(options).__name__} into Go struct field "
                    "ApplicationSyncRequest.syncOptions of type application.SyncOptions",
                )
        if app.busy_syncs > 0:
            app.busy_syncs -= 1
            raise _RuntimeError(9, "another operation is already in progress")
        if self._operation_running(app):
            raise _RuntimeError(9, "another operation is already in progress")
        target = body.get("revision") or app.head
        sync: dict[str, Any] = {"revision": target}
        if body.get("prune"):
            sync["prune"] = True
        if body.get("dryRun"):
            sync["dryRun"] = True
        if body.get("syncOptions", {}).get("items"):
            sync["syncOptions"] = list(body["syncOptions"]["items"])
        self._start_operation(app, target, sync)
        return self._render(app)

    def _rollback(self, app: _App, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - ROLLBACK_REQUEST_FIELDS)
        if unknown:
            raise _RuntimeError(3, f'proto: unknown field "{unknown[0]}"')
        raw_id = body.get("id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, int | str):
            raise _RuntimeError(3, f"invalid value for int64 field id: {raw_id!r}")
        try:
            history_id = int(raw_id)
        except ValueError:
            raise _RuntimeError(3, f"invalid value for int64 field id: {raw_id!r}") from None
        meta = app.doc["metadata"]
        if app.doc["spec"].get("syncPolicy", {}).get("automated"):
            raise _RuntimeError(9, "rollback cannot be initiated when auto-sync is enabled")
        entry = next((h for h in app.doc["status"].get("history", []) if h["id"] == history_id), None)
        if entry is None:
            qualified = f"{meta['namespace']}/{meta['name']}"
            raise _RuntimeError(3, f"application {qualified} does not have deployment with id {history_id}")
        if self._operation_running(app):
            raise _RuntimeError(9, "another operation is already in progress")
        self._start_operation(app, entry["revision"], {"revision": entry["revision"]})
        return self._render(app)

    def _tree(self, app: _App) -> dict[str, Any]:
        status = app.doc["status"]
        nodes: list[dict[str, Any]] = []
        for resource in status["resources"]:
            ref = {
                "group": resource.get("group", ""),
                "version": resource["version"],
                "kind": resource["kind"],
                "namespace": resource["namespace"],
                "name": resource["name"],
                "uid": _uid(resource["kind"], resource["name"]),
            }
            nodes.append(
                {
                    **ref,
                    "resourceVersion": "2000",
                    "health": copy.deepcopy(resource["health"]),
                    "createdAt": "2025-01-01T09:00:00Z",
                }
            )
            if resource["kind"] != "Deployment":
                continue
            frame = app.frames_seen[-1] if app.frames_seen else Frame()
            overrides = {kind: (health, msg) for kind, health, msg in frame.resource_health}
            name = resource["name"]
            rs_name = f"{name}-7d9c6b5f4"
            rs_ref = {**ref, "kind": "ReplicaSet", "name": rs_name, "uid": _uid("ReplicaSet", rs_name)}
            pod_name = f"{rs_name}-x2x7q"
            for child, parent in (
                (rs_ref, ref),
                (
                    {**rs_ref, "group": "", "kind": "Pod", "name": pod_name, "uid": _uid("Pod", pod_name)},
                    rs_ref,
                ),
            ):
                health, msg = overrides.get(child["kind"], ("Healthy", ""))
                nodes.append(
                    {
                        **child,
                        "parentRefs": [parent],
                        "resourceVersion": "2001",
                        "health": {"status": health, **({"message": msg.format(name=name)} if msg else {})},
                        "createdAt": "2025-01-01T09:00:01Z",
                    }
                )
        return {"nodes": nodes}

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes
    ) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        path = parts.path
        body: Any = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = raw_body.decode("utf-8", "replace")
        with self._lock:
            self._requests.append(
                RecordedRequest(method, path, parse_qs(parts.query), dict(headers), copy.deepcopy(body))
            )
            try:
                return 200, self._dispatch(method, path, headers, body)
            except _RuntimeError as err:
                return err.status, {"error": err.message, "code": err.code, "message": err.message}

    def _dispatch(self, method: str, path: str, headers: dict[str, str], body: Any) -> dict[str, Any]:
        if method == "GET" and path == "/api/version":
            return {"Version": "v3.1.0+standin", "Platform": "linux/amd64"}
        if not path.startswith("/api/v1/"):
            raise _RuntimeError(5, "Not Found")
        if self._failures:
            status = self._failures.pop(0)
            raise _RuntimeError(
                14, "upstream connect error or disconnect/reset before headers", status=status
            )
        authorization = headers.get("authorization", "")
        if not authorization:
            raise _RuntimeError(16, "no session information")
        if authorization != f"Bearer {self.token}":
            raise _RuntimeError(16, "invalid session: token signature is invalid")

        segments = [unquote(s) for s in path.removeprefix("/api/v1/").split("/")]
        if not segments or segments[0] != "applications" or len(segments) not in (2, 3):
            raise _RuntimeError(5, "Not Found")
        name = segments[1]
        action = segments[2] if len(segments) == 3 else None
        app = self._apps.get(name)
        if app is None:
            raise _RuntimeError(5, f'applications.argoproj.io "{name}" not found')

        if method == "GET" and action is None:
            self._advance(app)
            return self._render(app)
        if method == "GET" and action == "resource-tree":
            return self._tree(app)
        if method == "POST" and action in ("sync", "rollback"):
            if not isinstance(body, dict):
                raise _RuntimeError(3, "the request body must be a JSON object")
            return self._sync(app, body) if action == "sync" else self._rollback(app, body)
        raise _RuntimeError(5, "Not Found")


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
