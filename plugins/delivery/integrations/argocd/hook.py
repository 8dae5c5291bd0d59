"""Argo CD REST API hook, plus the pure helpers shared with the trigger and the operator.

The hook speaks the Argo CD API server's gRPC-gateway JSON API:

* ``GET  /api/v1/applications/{name}``                     -> ``v1alpha1Application``
* ``POST /api/v1/applications/{name}/sync``                -> ``v1alpha1Application``
* ``GET  /api/v1/applications/{applicationName}/resource-tree`` -> ``v1alpha1ApplicationTree``
* ``POST /api/v1/applications/{name}/rollback``            -> ``v1alpha1Application``
* ``GET  /api/v1/session/userinfo`` and ``GET /api/version`` (connection test)

How the answers are read follows the Argo CD server and controller code (argo-cd
``server/application/application.go``, ``controller/appcontroller.go``, ``util/argo/argo.go``):

* ``status.sync.revision`` is the revision of the controller's last comparison, i.e. the *current head*
  of ``spec.source.targetRevision``; it moves with every commit on the GitOps branch. The revision a sync
  applied is ``status.operationState.syncResult.revision`` (``revisions`` for multi-source apps), so a
  wait is judged on the operation, then on the sync and health status of a refresh made after the
  operation finished (``status.reconciledAt`` not before ``operationState.finishedAt``, the rule of
  ``argocd app wait``);
* without ``project`` the server answers 403 for a missing application (it hides existence); the hook
  sends ``project`` whenever it is known, so a missing app, or one of another project, is a 404;
* ``syncOptions`` sent with a sync *replace* the app's ``spec.syncPolicy.syncOptions`` for that
  operation; :func:`plan_sync` merges the app's own options with the requested ones;
* multi-source apps ignore ``revision``; they take ``revisions`` + ``sourcePositions`` (1-based).

Errors come back as ``runtimeError`` bodies (``{code, error, message}``) and are turned into
:class:`ArgoCDError` subclasses whose messages say what to change and never contain the API token.

Connection (``conn_type`` ``http``, default id ``argocd_default``):

* ``host``: the API server host name, or a full base URL (``https://argocd.example.com/argocd``);
* ``schema``: URL scheme when ``host`` is a bare name (``http`` when empty, as for the HTTP provider);
* ``port``: optional port (the base URL is read by :func:`delivery.integrations.http.base_url`, as for
  every HTTP integration);
* ``password``: the API token, sent as ``Authorization: Bearer <token>``;
* extras: ``verify`` (bool, or a CA bundle path), ``timeout`` (seconds per request).

Why not the HTTP provider's ``HttpHook``/``HttpAsyncHook``: both authenticate with ``login``/``password``
as HTTP Basic, where Argo CD wants a bearer token and no login; both turn connection extras they do not
know into request headers; and ``HttpAsyncHook`` hands the ``verify`` extra to aiohttp as ``verify_ssl``,
which ignores a CA bundle path, so the worker and the triggerer would trust different certificates for the
same connection. This hook reads the connection once (:func:`connection_settings`) and builds both
clients from it: ``requests`` with urllib3 retries for the worker, ``httpx`` for the triggerer
(:meth:`ArgoCDHook.async_api`).
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
import requests
from airflow.sdk.bases.hook import BaseHook
from airflow.sdk.exceptions import AirflowException
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from delivery.integrations.http import base_url as connection_base_url

if TYPE_CHECKING:
    from airflow.sdk.definitions.connection import Connection

__all__ = [
    "AppState",
    "ArgoCDAsyncApi",
    "ArgoCDAuthError",
    "ArgoCDConfigurationError",
    "ArgoCDDeploymentError",
    "ArgoCDError",
    "ArgoCDHook",
    "ArgoCDNotFoundError",
    "ArgoCDOperationInProgressError",
    "ConnectionSettings",
    "SyncPlan",
    "WaitTarget",
    "build_event",
    "connection_settings",
    "error_from_response",
    "evaluate_status",
    "expected_revisions",
    "format_event_message",
    "format_resource",
    "merge_sync_options",
    "plan_sync",
    "revision_matches",
    "summarize_application",
    "unhealthy_resources",
]

DEFAULT_REQUEST_TIMEOUT = 30.0
RETRY_STATUSES = frozenset({500, 502, 503, 504})
OPERATION_IN_PROGRESS = "another operation is already in progress"
MAX_REPORTED_RESOURCES = 50  # keep trigger events small on large applications

_HEX_REVISION = re.compile(r"^[0-9a-fA-F]{7,64}$")
_IGNORE_HEALTHCHECK = "argocd.argoproj.io/ignore-healthcheck"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class ArgoCDError(AirflowException):
    """An Argo CD API call failed, or an application did not reach the wanted state."""

    def __init__(self, message: str, *, http_status: int | None = None, grpc_code: int | None = None):
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code


class ArgoCDAuthError(ArgoCDError):
    """Argo CD refused the token (HTTP 401) or the token's role (HTTP 403)."""


class ArgoCDNotFoundError(ArgoCDError):
    """The application does not exist (in the given project and namespace) (HTTP 404)."""


class ArgoCDOperationInProgressError(ArgoCDError):
    """A sync or rollback was refused because another operation is running on the application."""


class ArgoCDConfigurationError(ArgoCDError):
    """The application is set up in a way the pipelines cannot sync; the message says what to change."""


class ArgoCDDeploymentError(ArgoCDError):
    """The sync failed, the app ended unhealthy or OutOfSync for good, or it did not converge in time."""


def _runtime_error_message(body: str) -> tuple[str, int | None]:
    """Return ``(message, grpc code)`` from a ``runtimeError`` body, tolerating non-JSON bodies."""
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    if isinstance(payload, Mapping):
        message = payload.get("message") or payload.get("error") or ""
        code = payload.get("code")
        return str(message), code if isinstance(code, int) else None
    text = (body or "").strip()
    return (text[:300] + "...") if len(text) > 300 else text, None


def _forbidden_error(
    message: str, *, conn_id: str, target: str, action: str, project: str | None
) -> ArgoCDError:
    """HTTP 403: a sync window, a missing ``override`` grant, or the token's role (or, without a project,
    a missing application: ``getAppEnforceRBAC`` answers 403 so as not to reveal what exists)."""
    if "blocked by sync window" in message:
        return ArgoCDError(
            f"Argo CD refused to {action} {target}: {message} (HTTP 403). A deny sync window of the "
            "application's project is active; wait for it to close, or change the project's syncWindows."
        )
    if "applications, override," in message:
        return ArgoCDAuthError(
            f"Argo CD refused to {action} {target} at a specific revision for connection {conn_id!r}: "
            f"{message} (HTTP 403). The server sets application.sync.requireOverridePrivilegeForRevisionSync, "
            "so syncing to a commit other than the app's targetRevision needs the 'override' action: grant "
            "'applications, override' on this application to the token's role (see docs/argocd.md)."
        )
    detail = f": {message}" if message else ""
    text = (
        f"Argo CD denied access to {target} for connection {conn_id!r} (HTTP 403) while trying to {action} "
        f"it{detail}. The token's role needs 'applications, get' and 'applications, sync' on it."
    )
    if not project:
        text += (
            " No project was sent, and then Argo CD also answers 403 for an application that does not "
            "exist: check the application name, or set the environment's argocd_project so that a missing "
            "application is reported as such."
        )
    return ArgoCDAuthError(text)


def error_from_response(
    *,
    status: int,
    body: str,
    conn_id: str,
    app_name: str | None = None,
    action: str = "call",
    project: str | None = None,
) -> ArgoCDError:
    """
    Build the exception for a non-2xx Argo CD answer.

    The message names the connection id, the application (and project), carries Argo CD's own
    ``runtimeError.message`` and says what to fix; it never contains the token.
    """
    message, code = _runtime_error_message(body)
    target = f"application {app_name!r}" if app_name else "the Argo CD API"
    if app_name and project:
        target += f" of project {project!r}"
    detail = f": {message}" if message else ""
    error: ArgoCDError
    if status == 401:
        error = ArgoCDAuthError(
            f"Argo CD rejected the credentials of connection {conn_id!r} (HTTP 401) while trying to "
            f"{action} {target}{detail}. Check the API token stored as the connection's password."
        )
    elif status == 403:
        error = _forbidden_error(message, conn_id=conn_id, target=target, action=action, project=project)
    elif status == 404:
        where = f" in project {project!r}" if project else ""
        name = f"Application {app_name!r}" if app_name else "The requested resource"
        error = ArgoCDNotFoundError(
            f"{name} was not found{where} on the Argo CD server of connection {conn_id!r} (HTTP 404)"
            f"{detail}. Check the environment's argocd_app, argocd_project and argocd_app_namespace."
        )
    elif "auto-sync currently set to" in message:
        error = ArgoCDConfigurationError(
            f"Argo CD refused to {action} {target}: {message} (HTTP {status}). Argo CD does not sync an "
            "application with automated sync to a specific commit; the pipelines need manual sync: remove "
            "spec.syncPolicy.automated (or set automated.enabled: false) on the application."
        )
    elif OPERATION_IN_PROGRESS in message:
        error = ArgoCDOperationInProgressError(
            f"Argo CD could not {action} {target}: {message} (HTTP {status})."
        )
    else:
        error = ArgoCDError(
            f"Argo CD answered HTTP {status} when trying to {action} {target} "
            f"(connection {conn_id!r}){detail or ' with no error message'}."
        )
    error.http_status = status
    error.grpc_code = code
    return error


# --------------------------------------------------------------------------------------------------
# Connection settings (shared by the sync and the async client)
# --------------------------------------------------------------------------------------------------


def _as_bool_or_path(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if value is None:
        return True
    text = str(value).strip()
    if text.lower() in {"true", "1", "yes", "on", ""}:
        return True
    if text.lower() in {"false", "0", "no", "off"}:
        return False
    return text


@dataclass(frozen=True)
class ConnectionSettings:
    """What a client needs to talk to Argo CD, read from an Airflow connection."""

    conn_id: str
    base_url: str
    token: str | None
    verify: bool | str
    timeout: float

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def ssl_verify(self) -> bool | ssl.SSLContext:
        """``verify`` in the form httpx expects (a CA bundle path becomes an SSL context)."""
        if isinstance(self.verify, str):
            return ssl.create_default_context(cafile=self.verify)
        return self.verify

    def __repr__(self) -> str:  # never show the token
        return (
            f"ConnectionSettings(conn_id={self.conn_id!r}, base_url={self.base_url!r}, "
            f"token={'***' if self.token else None}, verify={self.verify!r}, timeout={self.timeout!r})"
        )


def connection_settings(
    conn: Connection, *, timeout: float | None = None, extras: Mapping[str, Any] | None = None
) -> ConnectionSettings:
    """
    Read base URL, token, TLS verification and timeout from an Airflow connection.

    ``extras`` are the connection's parsed extras when the caller already has them (async callers
    read them with ``await conn.aextra_dejson()``); otherwise ``conn.extra_dejson`` is used.
    """
    host = (conn.host or "").strip()
    if not host:
        raise ArgoCDError(
            f"Connection {conn.conn_id!r} has no host; set it to the Argo CD API server "
            "(a host name, or a full URL such as 'https://argocd.example.com')."
        )
    base = connection_base_url(conn)

    if extras is None:
        extras = conn.extra_dejson
    verify = _as_bool_or_path(extras.get("verify", True))
    if timeout is None:
        raw_timeout = extras.get("timeout", DEFAULT_REQUEST_TIMEOUT)
        try:
            timeout = float(raw_timeout)
        except (TypeError, ValueError):
            raise ArgoCDError(
                f"Connection {conn.conn_id!r} has an invalid 'timeout' extra: {raw_timeout!r} "
                "(expected a number of seconds)."
            ) from None
    return ConnectionSettings(
        conn_id=conn.conn_id,
        base_url=base,
        token=conn.password or None,
        verify=verify,
        timeout=timeout,
    )


def application_path(name: str) -> str:
    return f"/api/v1/applications/{quote(name, safe='')}"


def _read_call(
    name: str, *, tree: bool, project: str | None, app_namespace: str | None, refresh: str | None = None
) -> dict[str, Any]:
    """Path, query and wording of ``GET`` an application or its resource tree (sync and async clients)."""
    return {
        "path": f"{application_path(name)}/resource-tree" if tree else application_path(name),
        "app_name": name,
        "action": "read the resource tree of" if tree else "read",
        "params": _query(project=project, app_namespace=app_namespace, refresh=refresh),
        "project": project,
    }


def _query(
    *, project: str | None = None, app_namespace: str | None = None, refresh: str | None = None
) -> dict[str, str]:
    """Query parameters of ``ApplicationQuery`` / ``ResourcesQuery`` (``project`` is the name both take)."""
    params: dict[str, str] = {}
    if project:
        params["project"] = project
    if app_namespace:
        params["appNamespace"] = app_namespace
    if refresh:
        params["refresh"] = refresh
    return params


def _json_object(status: int, text: str, content_type: str | None, method: str, path: str) -> dict[str, Any]:
    try:
        payload = json.loads(text) if text else {}
    except ValueError:
        raise ArgoCDError(
            f"Argo CD answered {method} {path} (HTTP {status}) with a body that is not JSON "
            f"(content-type {content_type!r})."
        ) from None
    if not isinstance(payload, dict):
        raise ArgoCDError(f"Argo CD answered {method} {path} with a JSON {type(payload).__name__}.")
    return payload


# --------------------------------------------------------------------------------------------------
# Planning a sync from the application's spec
# --------------------------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _normalize_repo(url: str) -> str:
    """A repository URL reduced to ``host/path`` (scheme, user, ``.git`` and case of the host dropped)."""
    text = url.strip()
    scp = re.match(r"^(?:[^@/]+@)?([^:/]+):(?!\d+/)(.+)$", text)  # git@github.com:org/repo.git
    if "://" not in text and scp:
        host, path = scp.group(1), scp.group(2)
    else:
        parts = urlsplit(text if "://" in text else f"https://{text}")
        host, path = (parts.hostname or ""), parts.path
    path = path.strip("/").removesuffix(".git").rstrip("/")
    return f"{host.lower()}/{path}"


def _auto_sync_enabled(spec: Mapping[str, Any]) -> bool:
    """``SyncPolicy.IsAutomatedSyncEnabled``: ``automated`` is set and ``enabled`` is not false."""
    automated = _mapping(spec.get("syncPolicy")).get("automated")
    return isinstance(automated, Mapping) and automated.get("enabled") is not False


def _option_key(option: str) -> str:
    return option.split("=", 1)[0].strip()


def merge_sync_options(app_options: Iterable[str], requested: Iterable[str]) -> list[str]:
    """
    The app's ``spec.syncPolicy.syncOptions`` with ``requested`` on top (same key: ``requested`` wins).

    A sync request's ``syncOptions`` replace the app's own for that operation (argo-cd
    ``Server.Sync``), so sending only the requested ones would drop e.g. ``CreateNamespace=true``.
    """
    wanted = list(requested)
    keys = {_option_key(option) for option in wanted}
    merged = [o for o in app_options if isinstance(o, str) and _option_key(o) not in keys]
    return merged + [o for o in wanted if o not in merged]


@dataclass(frozen=True)
class SyncPlan:
    """What to send for one sync, decided from the application's spec.

    :param revision: the revision to sync to.
    :param source_positions: for a multi-source app, the 1-based positions of the sources that take
        ``revision`` (the others keep their ``targetRevision``); empty for a single-source app.
    :param sync_options: the options to send, or ``None`` to let the app's own apply unchanged.
    """

    revision: str
    source_positions: tuple[int, ...] = ()
    sync_options: tuple[str, ...] | None = None

    @property
    def multi_source(self) -> bool:
        return bool(self.source_positions)


def _sources(app: Mapping[str, Any], name: str) -> tuple[list[Mapping[str, Any]], bool]:
    spec = _mapping(app.get("spec"))
    if spec.get("sourceHydrator"):
        raise ArgoCDConfigurationError(
            f"Application {name!r} uses spec.sourceHydrator: Argo CD syncs the hydrated branch, not the "
            "commit the pipeline made. Give the application a plain spec.source on the GitOps repository."
        )
    sources = [_mapping(s) for s in spec.get("sources") or ()]
    if sources:
        return sources, True
    if not spec.get("source"):
        raise ArgoCDConfigurationError(f"Application {name!r} has neither spec.source nor spec.sources.")
    return [_mapping(spec["source"])], False


def _gitops_positions(
    sources: Sequence[Mapping[str, Any]], multi: bool, name: str, gitops_repo_url: str | None
) -> tuple[int, ...]:
    repos = [str(s.get("repoURL", "")) for s in sources]
    if gitops_repo_url is None:
        if multi:
            raise ArgoCDConfigurationError(
                f"Application {name!r} has {len(sources)} sources ({', '.join(repos)}); Argo CD then ignores "
                "'revision' and needs the positions of the sources to pin. Pass gitops_repo_url (the "
                "pipelines pass platform.gitops.repo_url) so the GitOps sources can be found."
            )
        return ()
    wanted = _normalize_repo(gitops_repo_url)
    positions = tuple(i for i, repo in enumerate(repos, start=1) if _normalize_repo(repo) == wanted)
    if not positions:
        raise ArgoCDConfigurationError(
            f"Application {name!r} does not deploy from the GitOps repository {gitops_repo_url!r} (its "
            f"source{'s' if multi else ''}: {', '.join(repos)}), so it cannot be synced to a GitOps commit. "
            "Point the application at the GitOps repository, or fix platform.gitops.repo_url."
        )
    return positions if multi else ()


def plan_sync(
    app: Mapping[str, Any],
    revision: str,
    *,
    gitops_repo_url: str | None = None,
    sync_options: Iterable[str] = (),
) -> SyncPlan:
    """
    Check that ``app`` (a ``v1alpha1Application``) can be synced to ``revision``, and say how.

    Raises :class:`ArgoCDConfigurationError` for what Argo CD would refuse or silently ignore: automated
    sync (Argo CD refuses a sync to another revision than ``targetRevision``), a source hydrator, a
    multi-source app without ``gitops_repo_url``, an app that does not deploy from that repository.
    """
    name = str(_mapping(app.get("metadata")).get("name") or "?")
    sources, multi = _sources(app, name)
    positions = _gitops_positions(sources, multi, name, gitops_repo_url)
    spec = _mapping(app.get("spec"))
    pinned = [sources[p - 1] for p in positions] if multi else sources
    branches = {str(s.get("targetRevision") or "HEAD") for s in pinned}
    if _auto_sync_enabled(spec) and branches != {revision}:
        raise ArgoCDConfigurationError(
            f"Application {name!r} has automated sync (spec.syncPolicy.automated) following "
            f"{', '.join(sorted(branches))}; Argo CD refuses to sync it to {revision!r} ('Cannot sync to "
            f"{revision}: auto-sync currently set to ...'). The pipelines deploy one exact GitOps commit and "
            "need manual sync: remove spec.syncPolicy.automated (or set automated.enabled: false)."
        )
    options = None
    requested = list(sync_options)
    if requested:
        own = _mapping(spec.get("syncPolicy")).get("syncOptions") or ()
        options = tuple(merge_sync_options(own, requested))
    return SyncPlan(revision=revision, source_positions=positions, sync_options=options)


def expected_revisions(sync_response: Mapping[str, Any], plan: SyncPlan) -> tuple[str, ...]:
    """The resolved revision(s) the accepted sync operation carries (``operation.sync.revision(s)``)."""
    sync = _mapping(_mapping(sync_response.get("operation")).get("sync"))
    if plan.multi_source:
        revisions = tuple(str(r) for r in sync.get("revisions") or ())
        if not revisions:
            raise ArgoCDError(
                "Argo CD accepted the sync of a multi-source application, but its answer carries no "
                "operation.sync.revisions to follow."
            )
        return revisions
    revision = sync.get("revision")
    return (str(revision),) if revision else (plan.revision,)


# --------------------------------------------------------------------------------------------------
# Reading an application's status
# --------------------------------------------------------------------------------------------------


class AppState(StrEnum):
    """Where an application stands with respect to the sync operation a deploy started."""

    SYNCED_HEALTHY = "synced_healthy"
    PROGRESSING = "progressing"
    DEGRADED = "degraded"
    PRUNE_REQUIRED = "prune_required"
    SUSPENDED = "suspended"
    MISSING = "missing"
    SUPERSEDED = "superseded"

    @property
    def is_final(self) -> bool:
        """True for states that end a wait (success or failure)."""
        return self is not AppState.PROGRESSING


@dataclass(frozen=True)
class WaitTarget:
    """The sync operation a wait follows.

    :param app_name: the Argo CD application.
    :param revision: the revision the deploy asked for (for messages).
    :param expected: the resolved revision(s) the operation carries: one, or one per source of a
        multi-source app (``operation.sync.revisions``). Defaults to ``(revision,)``.
    :param multi_source: the app has ``spec.sources``.
    :param prune: the sync was asked to prune.
    """

    app_name: str
    revision: str
    expected: tuple[str, ...] = field(default=())
    multi_source: bool = False
    prune: bool = False

    @property
    def revisions(self) -> tuple[str, ...]:
        return self.expected or (self.revision,)


def revision_matches(observed: str | None, wanted: str) -> bool:
    """``observed`` (a resolved revision) is ``wanted``; a short commit SHA matches its full form."""
    if not observed or not wanted:
        return False
    if observed == wanted:
        return True
    return bool(_HEX_REVISION.match(wanted)) and observed.lower().startswith(wanted.lower())


def _revisions(holder: Mapping[str, Any], multi_source: bool) -> list[str]:
    if multi_source:
        return [str(r) for r in holder.get("revisions") or ()]
    revision = holder.get("revision")
    return [str(revision)] if revision else []


def _is_ours(observed: Sequence[str], target: WaitTarget) -> bool:
    # Stricter reading for multi-source apps: every source must carry the revision the sync resolved,
    # not only the GitOps ones (argo-cd resolves them all at sync time and keeps them in syncResult).
    expected = target.revisions
    return len(observed) == len(expected) and all(
        revision_matches(o, e) for o, e in zip(observed, expected, strict=True)
    )


def _state_revisions(operation_state: Mapping[str, Any], multi_source: bool) -> list[str]:
    """The revision(s) an operation works on: ``syncResult`` once the controller resolved it."""
    observed = _revisions(_mapping(operation_state.get("syncResult")), multi_source)
    if observed:
        return observed
    return _revisions(_mapping(_mapping(operation_state.get("operation")).get("sync")), multi_source)


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _reconciled_since_finish(status: Mapping[str, Any], operation_state: Mapping[str, Any]) -> bool:
    """``argocd app wait``'s rule (cmd/argocd/commands/app.go ``checkAppWaitConditions``): the status is
    fresh once ``reconciledAt`` is not before ``finishedAt``. Both are whole seconds, so a refresh in the
    same second counts; requiring a later second would wait for the next periodic refresh (minutes)."""
    finished = _time(operation_state.get("finishedAt"))
    reconciled = _time(status.get("reconciledAt"))
    return finished is not None and reconciled is not None and not reconciled < finished


def _requires_pruning(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in map(_mapping, status.get("resources") or ()) if r.get("requiresPruning")]


def _settled_state(status: Mapping[str, Any]) -> AppState:
    """The state once the operation succeeded and the controller refreshed the app after it.

    Stricter readings where Argo CD leaves it open: OutOfSync is never success, even when the branch
    head has moved past the synced commit (the head may hold a change to this very app); Suspended ends
    the wait as a failure rather than being waited out (a timed canary pause would resume by itself, but
    nothing tells it apart from a Deployment paused for good).
    """
    sync = _mapping(status.get("sync")).get("status")
    health = _mapping(status.get("health")).get("status")
    if sync == "OutOfSync" and _requires_pruning(status):
        return AppState.PRUNE_REQUIRED
    if health == "Degraded":
        return AppState.DEGRADED
    if health == "Missing":
        return AppState.MISSING
    if health == "Suspended":
        return AppState.SUSPENDED
    if sync == "Synced" and health == "Healthy":
        return AppState.SYNCED_HEALTHY
    return AppState.PROGRESSING


def evaluate_status(app: Mapping[str, Any], target: WaitTarget) -> AppState:
    """
    Classify an Application (``v1alpha1Application``) against the sync operation of ``target``.

    * a pending ``operation`` (the controller removes it only when the operation completes) or an
      operation state for other revisions than ``target``'s: ``PROGRESSING`` if ours, ``SUPERSEDED``
      if another sync replaced it;
    * ``operationState.phase`` ``Failed``/``Error``: ``DEGRADED``; ``Running``: ``PROGRESSING``;
    * ``Succeeded``: judged on a refresh made after it finished (``reconciledAt`` >= ``finishedAt``):
      ``PRUNE_REQUIRED`` (OutOfSync because resources deleted from Git were not pruned), ``DEGRADED``,
      ``MISSING`` or ``SUSPENDED`` health, ``SYNCED_HEALTHY`` when Synced and Healthy (whatever the
      branch head ``status.sync.revision`` is now), else ``PROGRESSING``.
    """
    status = _mapping(app.get("status"))
    operation = _mapping(app.get("operation"))
    if operation:
        ours = _is_ours(_revisions(_mapping(operation.get("sync")), target.multi_source), target)
        return AppState.PROGRESSING if ours else AppState.SUPERSEDED
    operation_state = _mapping(status.get("operationState"))
    if not operation_state:
        return AppState.PROGRESSING
    if not _is_ours(_state_revisions(operation_state, target.multi_source), target):
        return AppState.SUPERSEDED
    phase = operation_state.get("phase")
    if phase in ("Failed", "Error"):
        return AppState.DEGRADED
    if phase != "Succeeded" or not _reconciled_since_finish(status, operation_state):
        return AppState.PROGRESSING
    return _settled_state(status)


def conditions_of(app: Mapping[str, Any]) -> list[dict[str, str]]:
    """``status.conditions`` as ``[{type, message}]``."""
    conditions = _mapping(app.get("status")).get("conditions") or []
    return [
        {"type": str(c.get("type", "")), "message": str(c.get("message", ""))}
        for c in conditions
        if isinstance(c, Mapping)
    ]


def _resource_summary(node: Mapping[str, Any], health: str, message: str) -> dict[str, str]:
    return {
        "kind": str(node.get("kind", "")),
        "namespace": str(node.get("namespace") or ""),
        "name": str(node.get("name", "")),
        "health": health,
        "message": message,
    }


def unhealthy_resources(tree: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Nodes of a ``v1alpha1ApplicationTree`` that are not ``Healthy``; a managed resource that does not
    exist (no ``uid``, no health) is reported ``Missing`` as the API server infers it."""
    result: list[dict[str, str]] = []
    for node in map(_mapping, _mapping(tree).get("nodes") or ()):
        health = _mapping(node.get("health"))
        status = health.get("status")
        if not status and not node.get("uid") and not node.get("resourceVersion"):
            result.append(_resource_summary(node, "Missing", "Resource has not been created"))
        elif status and status != "Healthy":
            result.append(_resource_summary(node, str(status), str(health.get("message") or "")))
    return result


def unhealthy_from_status(app: Mapping[str, Any]) -> list[dict[str, str]]:
    """Fallback when the resource tree is unavailable: ``status.resources[]`` not ``Healthy``."""
    result: list[dict[str, str]] = []
    for resource in map(_mapping, _mapping(app.get("status")).get("resources") or ()):
        health = _mapping(resource.get("health"))
        if health.get("status") and health.get("status") != "Healthy":
            result.append(
                _resource_summary(resource, str(health["status"]), str(health.get("message") or ""))
            )
    return result


def format_resource(resource: Mapping[str, Any]) -> str:
    """``Deployment visiobook/api: Degraded - <message>``."""
    where = f"{resource.get('namespace')}/{resource.get('name')}" if resource.get("namespace") else ""
    where = where or str(resource.get("name", ""))
    text = f"{resource.get('kind')} {where}"
    if resource.get("health"):
        text += f": {resource.get('health')}"
    if resource.get("message"):
        text += f" - {resource['message']}"
    return text


def _joined(revisions: Sequence[str]) -> str | None:
    return ",".join(revisions) if revisions else None


def summarize_application(app: Mapping[str, Any], target: WaitTarget) -> dict[str, Any]:
    """A JSON-safe summary of an application's status, for events, logs and XCom."""
    status = _mapping(app.get("status"))
    sync = _mapping(status.get("sync"))
    health = _mapping(status.get("health"))
    operation_state = _mapping(status.get("operationState"))
    return {
        "app": _mapping(app.get("metadata")).get("name") or target.app_name,
        "revision": target.revision,
        "sync": sync.get("status"),
        "head_revision": _joined(_revisions(sync, target.multi_source)),
        "health": health.get("status"),
        "health_message": health.get("message") or "",
        "operation_phase": operation_state.get("phase"),
        "operation_message": operation_state.get("message") or "",
        "applied_revision": _joined(_state_revisions(operation_state, target.multi_source)),
        "conditions": conditions_of(app),
    }


# --------------------------------------------------------------------------------------------------
# Explaining the outcome of a wait
# --------------------------------------------------------------------------------------------------


def _superseded_details(app: Mapping[str, Any], target: WaitTarget) -> list[str]:
    operation = _mapping(app.get("operation"))
    operation_state = _mapping(_mapping(app.get("status")).get("operationState"))
    current = operation or _mapping(operation_state.get("operation"))
    revisions = (
        _revisions(_mapping(current.get("sync")), target.multi_source)
        if operation
        else _state_revisions(operation_state, target.multi_source)
    )
    initiator = _mapping(current.get("initiatedBy"))
    who = "an automated sync" if initiator.get("automated") else f"{initiator.get('username') or 'someone'!r}"
    phase = "pending" if operation and not operation_state else operation_state.get("phase") or "pending"
    return [
        f"The operation now on the application syncs {_joined(revisions) or 'the branch head'}, started by "
        f"{who} (phase {phase}). This deploy cannot tell whether {target.revision} became healthy: check that "
        "operation, and do not start syncs of the application by hand while a pipeline deploys it."
    ]


def _prune_details(app: Mapping[str, Any], target: WaitTarget) -> list[str]:
    status = _mapping(app.get("status"))
    results = {
        (r.get("kind"), r.get("namespace"), r.get("name")): str(r.get("message") or "")
        for r in map(
            _mapping,
            _mapping(_mapping(status.get("operationState")).get("syncResult")).get("resources") or (),
        )
    }
    lines = ["These resources are no longer in Git but are still in the cluster:"]
    no_prune = False
    for resource in _requires_pruning(status):
        result = results.get((resource.get("kind"), resource.get("namespace"), resource.get("name")), "")
        no_prune = no_prune or "no prune" in result
        lines.append(
            f"  - {format_resource({**resource, 'health': ''})}" + (f" ({result})" if result else "")
        )
    if no_prune:
        lines.append(
            "Their argocd.argoproj.io/sync-options: Prune=false annotation keeps Argo CD from deleting them: "
            "delete them by hand, or drop the annotation."
        )
    if not target.prune:
        lines.append("The sync ran with prune=False: delete these resources, or sync with prune=True.")
    return lines


def _out_of_sync_details(app: Mapping[str, Any], target: WaitTarget) -> list[str]:
    status = _mapping(app.get("status"))
    sync = _mapping(status.get("sync"))
    head = _revisions(sync, target.multi_source)
    if head and not _is_ours(head, target):
        branch = ",".join(str(s.get("targetRevision") or "HEAD") for s in _spec_sources(app))
        return [
            f"The head of {branch} is now {_joined(head)}: a later commit changed this application, so it "
            "stays OutOfSync until that commit is synced."
        ]
    drifted = [
        format_resource({**r, "health": ""})
        for r in map(_mapping, status.get("resources") or ())
        if r.get("status") == "OutOfSync"
    ]
    if not drifted:
        return []
    return [
        f"These resources still differ from Git after the sync: {', '.join(drifted)}. Something in the cluster "
        "changes them after each sync (see the application's ignoreDifferences)."
    ]


def _spec_sources(app: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = _mapping(app.get("spec"))
    return [_mapping(s) for s in spec.get("sources") or ()] or [_mapping(spec.get("source"))]


def _timeout_details(app: Mapping[str, Any], target: WaitTarget) -> list[str]:
    status = _mapping(app.get("status"))
    operation_state = _mapping(status.get("operationState"))
    namespace = _mapping(app.get("metadata")).get("namespace") or "argocd"
    if app.get("operation") and not operation_state:
        return [
            "The application controller never started the sync operation: check that it runs and that it "
            f"manages applications in namespace {namespace!r}."
        ]
    if operation_state.get("phase") in ("Running", "Terminating"):
        return [
            f"The sync operation is still {operation_state['phase']}: {operation_state.get('message') or ''}"
        ]
    if operation_state and not _reconciled_since_finish(status, operation_state):
        return ["The application controller has not refreshed the application since the sync finished."]
    if _mapping(status.get("sync")).get("status") == "OutOfSync":
        return _out_of_sync_details(app, target)
    return []


def _details(state: AppState, app: Mapping[str, Any], target: WaitTarget, timed_out: bool) -> list[str]:
    if state is AppState.SUPERSEDED:
        return _superseded_details(app, target)
    if state is AppState.PRUNE_REQUIRED:
        return _prune_details(app, target)
    if state is AppState.SUSPENDED:
        return [
            "A paused Deployment or Rollout waits to be resumed or promoted; a suspended CronJob or Job stays "
            "suspended. Resume or promote it; resources meant to stay suspended need the annotation "
            f'{_IGNORE_HEALTHCHECK}: "true" so that the application can be Healthy.'
        ]
    if state is AppState.MISSING:
        return [
            "None of the application's resources exist in the cluster: check spec.destination (cluster and "
            "namespace) and the sync result."
        ]
    return _timeout_details(app, target) if timed_out else []


_HEADS = {
    AppState.DEGRADED: "Application {app!r} failed to deploy revision {revision!r} ({observed}).",
    AppState.PRUNE_REQUIRED: (
        "Application {app!r} applied revision {revision!r} but stays OutOfSync: resources deleted from Git "
        "were not pruned ({observed})."
    ),
    AppState.SUSPENDED: (
        "Application {app!r} is Suspended after syncing revision {revision!r}; the pipelines need Healthy "
        "({observed})."
    ),
    AppState.MISSING: (
        "Application {app!r} has no live resources after syncing revision {revision!r} ({observed})."
    ),
    AppState.SUPERSEDED: (
        "Application {app!r}: the sync of revision {revision!r} was replaced by another operation before it "
        "finished ({observed})."
    ),
}


def format_event_message(event: Mapping[str, Any]) -> str:
    """Human text for a trigger event: what happened, why, Argo's conditions and unhealthy resources."""
    app, revision, status = event.get("app"), event.get("revision"), event.get("status")
    observed = (
        f"sync={event.get('sync')} at {event.get('head_revision')!r}, health={event.get('health')}, "
        f"operation={event.get('operation_phase')} at {event.get('applied_revision')!r}"
    )
    if status == "success":
        return f"Application {app!r} is Synced and Healthy after syncing revision {revision!r} ({observed})."
    if status == "timeout":
        head = (
            f"Application {app!r} did not become Synced and Healthy after syncing revision {revision!r} "
            f"within {event.get('timeout')}s; last observed {observed}."
        )
    elif status in ("failed", "degraded"):
        template = _HEADS.get(AppState(event.get("state") or "degraded"), _HEADS[AppState.DEGRADED])
        head = template.format(app=app, revision=revision, observed=observed)
    else:
        return str(event.get("message") or f"Argo CD wait for application {app!r} failed.")
    lines = [head, *(event.get("details") or ())]
    if event.get("operation_message"):
        lines.append(f"Operation: {event['operation_message']}")
    if event.get("health_message"):
        lines.append(f"Health: {event['health_message']}")
    conditions = event.get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        lines.extend(f"  - {c.get('type')}: {c.get('message')}" for c in conditions)
    resources = event.get("unhealthy_resources") or []
    if resources:
        lines.append("Unhealthy resources:")
        lines.extend(f"  - {format_resource(r)}" for r in resources)
        hidden = int(event.get("unhealthy_resources_total") or 0) - len(resources)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
    return "\n".join(lines)


def build_event(
    state: AppState,
    app: Mapping[str, Any],
    target: WaitTarget,
    *,
    tree: Mapping[str, Any] | None = None,
    timed_out: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The payload of the trigger's event (also used by the operator's in-process wait).

    ``status`` is ``success``, ``failed`` (``state`` says why) or ``timeout``.
    """
    summary = summarize_application(app, target)
    if state is AppState.SYNCED_HEALTHY:
        event: dict[str, Any] = {"status": "success", "state": state.value, **summary}
    else:
        resources = unhealthy_resources(tree) if tree is not None else unhealthy_from_status(app)
        event = {
            "status": "timeout" if timed_out else "failed",
            "state": state.value,
            **summary,
            "details": _details(state, app, target, timed_out),
            "unhealthy_resources": resources[:MAX_REPORTED_RESOURCES],
            "unhealthy_resources_total": len(resources),
        }
        if timed_out:
            event["timeout"] = timeout
    event["message"] = format_event_message(event)
    return event


# --------------------------------------------------------------------------------------------------
# Hook
# --------------------------------------------------------------------------------------------------


class ArgoCDAsyncApi:
    """The read calls the trigger polls with, over one ``httpx.AsyncClient`` (see
    :meth:`ArgoCDHook.async_api`)."""

    def __init__(self, client: httpx.AsyncClient, settings: ConnectionSettings) -> None:
        self._client = client
        self.settings = settings

    async def _get(
        self, path: str, *, app_name: str, action: str, params: Mapping[str, str], project: str | None
    ) -> dict[str, Any]:
        try:
            response = await self._client.get(path, params=params)
        except httpx.HTTPError as err:
            raise ArgoCDError(
                f"Could not reach Argo CD at {self.settings.base_url} (connection {self.settings.conn_id!r}) "
                f"to {action} application {app_name!r}: {type(err).__name__}: {err}"
            ) from None
        if response.status_code >= 400:
            raise error_from_response(
                status=response.status_code,
                body=response.text,
                conn_id=self.settings.conn_id,
                app_name=app_name,
                action=action,
                project=project,
            )
        return _json_object(
            response.status_code, response.text, response.headers.get("content-type"), "GET", path
        )

    async def get_application(
        self, name: str, *, project: str | None = None, app_namespace: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/v1/applications/{name}``."""
        return await self._get(**_read_call(name, tree=False, project=project, app_namespace=app_namespace))

    async def resource_tree(
        self, name: str, *, project: str | None = None, app_namespace: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/v1/applications/{applicationName}/resource-tree``."""
        return await self._get(**_read_call(name, tree=True, project=project, app_namespace=app_namespace))


class ArgoCDHook(BaseHook):
    """
    Talk to the Argo CD API server: ``requests`` in the worker, ``httpx`` in the triggerer.

    GET requests are retried on connection errors and HTTP 500/502/503/504 with exponential backoff;
    POST requests are retried on connection errors only (a sync must not be sent twice).

    :param argocd_conn_id: Airflow connection id (``conn_type`` ``http``).
    :param timeout: seconds per request; defaults to the connection's ``timeout`` extra, else 30.
    :param retries: how many times to retry a failed request.
    :param backoff_factor: urllib3 backoff factor (sleep ``factor * 2 ** (retry - 1)`` seconds).
    """

    conn_name_attr = "argocd_conn_id"
    default_conn_name = "argocd_default"
    conn_type = "http"
    hook_name = "Argo CD"

    def __init__(
        self,
        *,
        argocd_conn_id: str = default_conn_name,
        timeout: float | None = None,
        retries: int = 3,
        backoff_factor: float = 0.5,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.argocd_conn_id = argocd_conn_id
        self.timeout = timeout
        self.retries = retries
        self.backoff_factor = backoff_factor

    @cached_property
    def settings(self) -> ConnectionSettings:
        return connection_settings(self.get_connection(self.argocd_conn_id), timeout=self.timeout)

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @cached_property
    def session(self) -> requests.Session:
        settings = self.settings
        if not settings.token:
            self.log.warning(
                "Connection %r has no password: calling Argo CD without an API token.", self.argocd_conn_id
            )
        retry = Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            backoff_factor=self.backoff_factor,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "HEAD"}),
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update(settings.headers)
        session.verify = settings.verify
        return session

    def get_conn(self) -> requests.Session:
        return self.session

    @asynccontextmanager
    async def async_api(self) -> AsyncIterator[ArgoCDAsyncApi]:
        """An :class:`ArgoCDAsyncApi` on the same connection, for the triggerer's event loop.

        Connection-level failures are retried by the transport; HTTP errors are left to the caller's
        polling loop.
        """
        conn = await self.aget_connection(self.argocd_conn_id)
        extras = await conn.aextra_dejson()  # masks secrets without a blocking call into the supervisor
        settings = connection_settings(conn, timeout=self.timeout, extras=extras)
        transport = httpx.AsyncHTTPTransport(verify=settings.ssl_verify(), retries=min(self.retries, 2))
        async with httpx.AsyncClient(
            base_url=settings.base_url,
            headers=settings.headers,
            timeout=settings.timeout,
            transport=transport,
        ) as client:
            yield ArgoCDAsyncApi(client, settings)

    def _request(
        self,
        method: str,
        path: str,
        *,
        app_name: str | None,
        action: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        self.log.debug("Argo CD %s %s", method, url)
        try:
            response = self.session.request(
                method, url, params=params, json=body, timeout=self.settings.timeout
            )
        except requests.RequestException as err:
            target = f"application {app_name!r}" if app_name else "the API"
            raise ArgoCDError(
                f"Could not reach Argo CD at {self.base_url} (connection {self.argocd_conn_id!r}) to "
                f"{action} {target}: {type(err).__name__}: {err}"
            ) from None
        if not response.ok:
            raise error_from_response(
                status=response.status_code,
                body=response.text,
                conn_id=self.argocd_conn_id,
                app_name=app_name,
                action=action,
                project=project,
            )
        return _json_object(
            response.status_code, response.text, response.headers.get("content-type"), method, path
        )

    def get_application(
        self,
        name: str,
        *,
        project: str | None = None,
        app_namespace: str | None = None,
        refresh: str | None = None,
    ) -> dict[str, Any]:
        """``GET /api/v1/applications/{name}``; ``refresh`` may be ``normal`` or ``hard``.

        With ``project``, a missing application (or one of another project) is a 404
        (:class:`ArgoCDNotFoundError`); without it Argo CD answers 403.
        """
        call = _read_call(name, tree=False, project=project, app_namespace=app_namespace, refresh=refresh)
        return self._request("GET", **call)

    def sync(
        self,
        name: str,
        revision: str,
        *,
        source_positions: Sequence[int] = (),
        prune: bool = False,
        dry_run: bool = False,
        sync_options: Iterable[str] | None = None,
        project: str | None = None,
        app_namespace: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/applications/{name}/sync`` with an ``applicationApplicationSyncRequest`` body.

        :param source_positions: for a multi-source application, the 1-based positions of the sources
            to sync to ``revision`` (sent as ``revisions`` + ``sourcePositions``; Argo CD ignores
            ``revision`` for such apps). Empty for a single-source application.
        :param sync_options: sent as ``syncOptions``, they *replace* the application's own
            ``spec.syncPolicy.syncOptions`` for this operation (even an empty list does); ``None`` keeps
            the app's. Use :func:`merge_sync_options` to add to them.
        """
        body: dict[str, Any] = {"name": name, "prune": prune, "dryRun": dry_run}
        if source_positions:
            body["revisions"] = [revision] * len(source_positions)
            body["sourcePositions"] = [int(p) for p in source_positions]
        else:
            body["revision"] = revision
        if sync_options is not None:
            body["syncOptions"] = {"items": list(sync_options)}
        if app_namespace:
            body["appNamespace"] = app_namespace
        if project:
            body["project"] = project
        self.log.info("Requesting sync of Argo CD application %s at revision %s", name, revision)
        return self._request(
            "POST", f"{application_path(name)}/sync", app_name=name, action="sync", body=body, project=project
        )

    def resource_tree(
        self, name: str, *, project: str | None = None, app_namespace: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/v1/applications/{applicationName}/resource-tree``."""
        return self._request(
            "GET", **_read_call(name, tree=True, project=project, app_namespace=app_namespace)
        )

    def rollback(
        self,
        name: str,
        history_id: int,
        *,
        prune: bool = False,
        dry_run: bool = False,
        project: str | None = None,
        app_namespace: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/applications/{name}/rollback`` to the ``status.history[].id`` given.

        The id is an int64 and must be a JSON number: Argo CD refuses a string (HTTP 400).
        """
        if isinstance(history_id, bool) or not isinstance(history_id, int):
            raise ValueError(f"history_id must be an integer history id, got {history_id!r}")
        body: dict[str, Any] = {"name": name, "id": history_id, "prune": prune, "dryRun": dry_run}
        if app_namespace:
            body["appNamespace"] = app_namespace
        if project:
            body["project"] = project
        self.log.info("Requesting rollback of Argo CD application %s to history id %s", name, history_id)
        return self._request(
            "POST",
            f"{application_path(name)}/rollback",
            app_name=name,
            action="roll back",
            body=body,
            project=project,
        )

    def test_connection(self) -> tuple[bool, str]:
        """Check that the server accepts the token (used by the UI's *Test* button).

        ``/api/version`` answers without a token, so it proves nothing about one;
        ``/api/v1/session/userinfo`` also answers without one, but says ``loggedIn`` only for a valid token.
        """
        try:
            info = self._request("GET", "/api/v1/session/userinfo", app_name=None, action="read the user of")
            if not info.get("loggedIn"):
                what = (
                    "has no API token"
                    if not self.settings.token
                    else "has an API token Argo CD does not accept"
                )
                return False, (
                    f"Connection {self.argocd_conn_id!r} {what} (Argo CD at {self.base_url} reports the "
                    "session as not logged in). Put a valid Argo CD API token in the connection's password."
                )
            version = self._request("GET", "/api/version", app_name=None, action="read the version of")
        except ArgoCDError as err:
            return False, str(err)
        return True, (
            f"Argo CD {version.get('Version', 'unknown version')} at {self.base_url}: "
            f"logged in as {info.get('username') or 'an unnamed account'!r}"
        )
