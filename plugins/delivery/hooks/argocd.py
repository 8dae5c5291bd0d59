"""Argo CD REST API hook, plus the pure helpers shared with the trigger and the operator.

The hook speaks the Argo CD API server's gRPC-gateway JSON API (``/api/v1/...``):

* ``GET  /api/v1/applications/{name}``                     -> ``v1alpha1Application``
* ``POST /api/v1/applications/{name}/sync``                -> ``v1alpha1Application``
* ``GET  /api/v1/applications/{applicationName}/resource-tree`` -> ``v1alpha1ApplicationTree``
* ``POST /api/v1/applications/{name}/rollback``            -> ``v1alpha1Application``

Errors come back as ``runtimeError`` bodies (``{code, error, message, details}``) and are turned into
:class:`ArgoCDError` subclasses whose messages never contain the API token.

Connection (``conn_type`` ``http``, default id ``argocd_default``):

* ``host``: the API server host name, or a full base URL (``https://argocd.example.com/argocd``);
* ``schema``: URL scheme when ``host`` is a bare name (``http`` when empty, as for the HTTP provider);
* ``port``: optional port;
* ``password``: the API token, sent as ``Authorization: Bearer <token>``;
* extras: ``verify`` (bool, or a CA bundle path), ``timeout`` (seconds per request).
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from airflow.sdk.bases.hook import BaseHook
from airflow.sdk.exceptions import AirflowException
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

if TYPE_CHECKING:
    from airflow.sdk.definitions.connection import Connection

__all__ = [
    "AppState",
    "ArgoCDAuthError",
    "ArgoCDDeploymentError",
    "ArgoCDError",
    "ArgoCDHook",
    "ArgoCDNotFoundError",
    "ArgoCDOperationInProgressError",
    "ConnectionSettings",
    "build_event",
    "connection_settings",
    "error_from_response",
    "evaluate_status",
    "format_event_message",
    "format_resource",
    "revision_matches",
    "summarize_application",
    "unhealthy_resources",
]

DEFAULT_REQUEST_TIMEOUT = 30.0
RETRY_STATUSES = frozenset({500, 502, 503, 504})
OPERATION_IN_PROGRESS = "another operation is already in progress"
MAX_REPORTED_RESOURCES = 50  # keep trigger events small on large applications

_HEX_REVISION = re.compile(r"^[0-9a-fA-F]{7,64}$")


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
    """The application does not exist (HTTP 404)."""


class ArgoCDOperationInProgressError(ArgoCDError):
    """A sync or rollback was refused because another operation is running on the application."""


class ArgoCDDeploymentError(ArgoCDError):
    """The application ended Degraded, failed its sync operation, or did not converge in time."""


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


def error_from_response(
    *, status: int, body: str, conn_id: str, app_name: str | None = None, action: str = "call"
) -> ArgoCDError:
    """
    Build the exception for a non-2xx Argo CD answer.

    The message names the connection id and the application, and carries Argo CD's own
    ``runtimeError.message``; it never contains the token.
    """
    message, code = _runtime_error_message(body)
    target = f"application {app_name!r}" if app_name else "the Argo CD API"
    detail = f": {message}" if message else ""
    if status == 401:
        return ArgoCDAuthError(
            f"Argo CD rejected the credentials of connection {conn_id!r} (HTTP 401) while trying to "
            f"{action} {target}{detail}. Check the API token stored as the connection's password.",
            http_status=status,
            grpc_code=code,
        )
    if status == 403:
        return ArgoCDAuthError(
            f"Argo CD denied access to {target} for connection {conn_id!r} (HTTP 403) while trying to "
            f"{action} it{detail}. Check the connection's API token and that its account or project role "
            "may act on this application (Argo CD also answers 403 for an application of another project).",
            http_status=status,
            grpc_code=code,
        )
    if status == 404:
        name = f"Application {app_name!r}" if app_name else "The requested resource"
        return ArgoCDNotFoundError(
            f"{name} was not found on the Argo CD server of connection {conn_id!r} (HTTP 404){detail}.",
            http_status=status,
            grpc_code=code,
        )
    if OPERATION_IN_PROGRESS in message:
        return ArgoCDOperationInProgressError(
            f"Argo CD could not {action} {target}: {message} (HTTP {status}).",
            http_status=status,
            grpc_code=code,
        )
    return ArgoCDError(
        f"Argo CD answered HTTP {status} when trying to {action} {target} "
        f"(connection {conn_id!r}){detail or ' with no error message'}.",
        http_status=status,
        grpc_code=code,
    )


# --------------------------------------------------------------------------------------------------
# Connection settings (shared with the async trigger)
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
    if "://" in host:
        parts = urlsplit(host)
        scheme, netloc, path = parts.scheme, parts.netloc, parts.path
    else:
        scheme = (conn.schema or "http").strip().lower() or "http"
        host_part, _, path = host.partition("/")
        netloc = host_part
        path = f"/{path}" if path else ""
    if conn.port and ":" not in netloc.rsplit("]", 1)[-1]:
        netloc = f"{netloc}:{conn.port}"
    base_url = urlunsplit((scheme, netloc, path.rstrip("/"), "", ""))

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
        base_url=base_url,
        token=conn.password or None,
        verify=verify,
        timeout=timeout,
    )


def application_path(name: str) -> str:
    return f"/api/v1/applications/{quote(name, safe='')}"


# --------------------------------------------------------------------------------------------------
# Pure status helpers
# --------------------------------------------------------------------------------------------------


class AppState(StrEnum):
    """Where an application stands with respect to a wanted revision."""

    SYNCED_HEALTHY = "synced_healthy"
    PROGRESSING = "progressing"
    DEGRADED = "degraded"
    SUSPENDED = "suspended"
    MISSING = "missing"
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        """True for states that end a wait (success or failure)."""
        return self in (AppState.SYNCED_HEALTHY, AppState.DEGRADED)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def revision_matches(observed: str | None, wanted: str) -> bool:
    """``observed`` (a resolved revision) is ``wanted``; a short commit SHA matches its full form."""
    if not observed or not wanted:
        return False
    if observed == wanted:
        return True
    return bool(_HEX_REVISION.match(wanted)) and observed.lower().startswith(wanted.lower())


def _any_matches(observed: Iterable[Any], wanted: str) -> bool:
    return any(isinstance(item, str) and revision_matches(item, wanted) for item in observed)


def _operation_revisions(operation_state: Mapping[str, Any]) -> list[str]:
    revisions: list[str] = []
    sync_result = _mapping(operation_state.get("syncResult"))
    sync_op = _mapping(_mapping(operation_state.get("operation")).get("sync"))
    for source in (sync_result, sync_op):
        if isinstance(source.get("revision"), str) and source["revision"]:
            revisions.append(source["revision"])
        revisions.extend(r for r in source.get("revisions") or () if isinstance(r, str) and r)
    return revisions


def evaluate_status(app: Mapping[str, Any], revision: str) -> AppState:
    """
    Classify an Application (``v1alpha1Application``) against the revision a sync asked for.

    * ``SYNCED_HEALTHY``: ``sync.status`` is ``Synced`` at ``revision`` (``sync.revision`` or one of
      ``sync.revisions``), ``health.status`` is ``Healthy`` and no operation is pending or running;
    * ``DEGRADED``: the last operation for ``revision`` ended ``Failed``/``Error``, or the app is
      ``Degraded`` once it reached ``revision`` (a Degraded app still at an older revision is only
      waiting for the sync, so it stays ``PROGRESSING``);
    * ``PROGRESSING``: an operation is requested or running, the revision is not reached yet, the app is
      ``OutOfSync``, or its health is ``Progressing``;
    * ``SUSPENDED`` / ``MISSING`` / ``UNKNOWN``: the health status of that name at ``revision``.
    """
    status = _mapping(app.get("status"))
    sync = _mapping(status.get("sync"))
    health = _mapping(status.get("health"))
    operation_state = _mapping(status.get("operationState"))
    phase = operation_state.get("phase")

    if operation_state and phase in ("Failed", "Error"):
        op_revisions = _operation_revisions(operation_state)
        if not op_revisions or _any_matches(op_revisions, revision):
            return AppState.DEGRADED
    if app.get("operation") or phase in ("Running", "Terminating"):
        return AppState.PROGRESSING

    at_revision = revision_matches(sync.get("revision"), revision) or _any_matches(
        sync.get("revisions") or (), revision
    )
    if not at_revision:
        return AppState.PROGRESSING

    health_status = health.get("status")
    if health_status == "Degraded":
        return AppState.DEGRADED
    if sync.get("status") != "Synced":
        return AppState.PROGRESSING
    if health_status == "Healthy":
        return AppState.SYNCED_HEALTHY
    if health_status == "Progressing":
        return AppState.PROGRESSING
    if health_status == "Suspended":
        return AppState.SUSPENDED
    if health_status == "Missing":
        return AppState.MISSING
    return AppState.UNKNOWN


def conditions_of(app: Mapping[str, Any]) -> list[dict[str, str]]:
    """``status.conditions`` as ``[{type, message}]``."""
    conditions = _mapping(app.get("status")).get("conditions") or []
    return [
        {"type": str(c.get("type", "")), "message": str(c.get("message", ""))}
        for c in conditions
        if isinstance(c, Mapping)
    ]


def unhealthy_resources(tree: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Nodes of a ``v1alpha1ApplicationTree`` whose ``health.status`` is set and not ``Healthy``."""
    result: list[dict[str, str]] = []
    for node in _mapping(tree).get("nodes") or ():
        if not isinstance(node, Mapping):
            continue
        health = _mapping(node.get("health"))
        status = health.get("status")
        if not status or status == "Healthy":
            continue
        result.append(
            {
                "kind": str(node.get("kind", "")),
                "namespace": str(node.get("namespace") or ""),
                "name": str(node.get("name", "")),
                "health": str(status),
                "message": str(health.get("message") or ""),
            }
        )
    return result


def unhealthy_from_status(app: Mapping[str, Any]) -> list[dict[str, str]]:
    """Fallback when the resource tree is unavailable: ``status.resources[]`` not ``Healthy``."""
    return unhealthy_resources({"nodes": _mapping(app.get("status")).get("resources") or []})


def format_resource(resource: Mapping[str, Any]) -> str:
    """``Deployment visiobook/api: Degraded - <message>``."""
    where = f"{resource.get('namespace')}/{resource.get('name')}" if resource.get("namespace") else ""
    where = where or str(resource.get("name", ""))
    text = f"{resource.get('kind')} {where}: {resource.get('health')}"
    if resource.get("message"):
        text += f" - {resource['message']}"
    return text


def summarize_application(app: Mapping[str, Any], revision: str) -> dict[str, Any]:
    """A JSON-safe summary of an application's status, for events, logs and XCom."""
    status = _mapping(app.get("status"))
    sync = _mapping(status.get("sync"))
    health = _mapping(status.get("health"))
    operation_state = _mapping(status.get("operationState"))
    return {
        "app": _mapping(app.get("metadata")).get("name"),
        "revision": revision,
        "sync": sync.get("status"),
        "sync_revision": sync.get("revision") or (sync.get("revisions") or [None])[0],
        "health": health.get("status"),
        "health_message": health.get("message") or "",
        "operation_phase": operation_state.get("phase"),
        "operation_message": operation_state.get("message") or "",
        "conditions": conditions_of(app),
    }


def format_event_message(event: Mapping[str, Any]) -> str:
    """Human text for a trigger event: what happened, then Argo's conditions and unhealthy resources."""
    app = event.get("app")
    revision = event.get("revision")
    status = event.get("status")
    observed = (
        f"sync={event.get('sync')} at {event.get('sync_revision')!r}, health={event.get('health')}, "
        f"operation={event.get('operation_phase')}"
    )
    if status == "success":
        head = f"Application {app!r} is Synced and Healthy at revision {revision!r}."
    elif status == "degraded":
        head = f"Application {app!r} failed to deploy revision {revision!r} ({observed})."
    elif status == "timeout":
        head = (
            f"Application {app!r} did not become Synced and Healthy at revision {revision!r} "
            f"within {event.get('timeout')}s; last observed {observed}."
        )
    else:
        return str(event.get("message") or f"Argo CD wait for application {app!r} failed.")
    lines = [head]
    if event.get("operation_message") and status != "success":
        lines.append(f"Operation: {event['operation_message']}")
    if event.get("health_message") and status != "success":
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
    revision: str,
    *,
    tree: Mapping[str, Any] | None = None,
    timed_out: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The payload of the trigger's event (also used by the operator's in-process wait)."""
    summary = summarize_application(app, revision)
    if state is AppState.SYNCED_HEALTHY:
        event: dict[str, Any] = {"status": "success", "state": state.value, **summary}
    else:
        resources = unhealthy_resources(tree) if tree is not None else unhealthy_from_status(app)
        event = {
            "status": "timeout" if timed_out else "degraded",
            "state": state.value,
            **summary,
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


class ArgoCDHook(BaseHook):
    """
    Talk to the Argo CD API server with a ``requests`` session.

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

    def _request(
        self,
        method: str,
        path: str,
        *,
        app_name: str | None,
        action: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        self.log.debug("Argo CD %s %s", method, url)
        try:
            response = self.session.request(
                method, url, params=params, json=body, timeout=self.settings.timeout
            )
        except requests.RequestException as err:
            raise ArgoCDError(
                f"Could not reach Argo CD at {self.base_url} (connection {self.argocd_conn_id!r}) to "
                f"{action} application {app_name!r}: {type(err).__name__}: {err}"
            ) from None
        if not response.ok:
            raise error_from_response(
                status=response.status_code,
                body=response.text,
                conn_id=self.argocd_conn_id,
                app_name=app_name,
                action=action,
            )
        try:
            payload = response.json()
        except ValueError:
            raise ArgoCDError(
                f"Argo CD answered {method} {path} with a body that is not JSON "
                f"(content-type {response.headers.get('content-type')!r})."
            ) from None
        if not isinstance(payload, dict):
            raise ArgoCDError(f"Argo CD answered {method} {path} with a JSON {type(payload).__name__}.")
        return payload

    @staticmethod
    def _query(app_namespace: str | None, refresh: str | None = None) -> dict[str, str]:
        params: dict[str, str] = {}
        if app_namespace:
            params["appNamespace"] = app_namespace
        if refresh:
            params["refresh"] = refresh
        return params

    def get_application(
        self, name: str, *, app_namespace: str | None = None, refresh: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/v1/applications/{name}``; ``refresh`` may be ``normal`` or ``hard``."""
        return self._request(
            "GET",
            application_path(name),
            app_name=name,
            action="read",
            params=self._query(app_namespace, refresh),
        )

    def sync(
        self,
        name: str,
        revision: str,
        *,
        prune: bool = False,
        dry_run: bool = False,
        sync_options: Iterable[str] | None = None,
        app_namespace: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/applications/{name}/sync`` with an ``applicationApplicationSyncRequest`` body."""
        body: dict[str, Any] = {"name": name, "revision": revision, "prune": prune, "dryRun": dry_run}
        options = list(sync_options or ())
        if options:
            body["syncOptions"] = {"items": options}
        if app_namespace:
            body["appNamespace"] = app_namespace
        self.log.info("Requesting sync of Argo CD application %s at revision %s", name, revision)
        return self._request(
            "POST", f"{application_path(name)}/sync", app_name=name, action="sync", body=body
        )

    def resource_tree(self, name: str, *, app_namespace: str | None = None) -> dict[str, Any]:
        """``GET /api/v1/applications/{applicationName}/resource-tree``."""
        return self._request(
            "GET",
            f"{application_path(name)}/resource-tree",
            app_name=name,
            action="read the resource tree of",
            params=self._query(app_namespace),
        )

    def rollback(
        self,
        name: str,
        history_id: int,
        *,
        prune: bool = False,
        dry_run: bool = False,
        app_namespace: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/applications/{name}/rollback`` to the ``status.history[].id`` given."""
        if isinstance(history_id, bool) or not isinstance(history_id, int):
            raise ValueError(f"history_id must be an integer history id, got {history_id!r}")
        body: dict[str, Any] = {"name": name, "id": history_id, "prune": prune, "dryRun": dry_run}
        if app_namespace:
            body["appNamespace"] = app_namespace
        self.log.info("Requesting rollback of Argo CD application %s to history id %s", name, history_id)
        return self._request(
            "POST", f"{application_path(name)}/rollback", app_name=name, action="roll back", body=body
        )

    def test_connection(self) -> tuple[bool, str]:
        """Check the server answers ``/api/version`` (used by the UI's *Test* button)."""
        try:
            payload = self._request("GET", "/api/version", app_name=None, action="read the version of")
        except ArgoCDError as err:
            return False, str(err)
        return True, f"Argo CD {payload.get('Version', 'unknown version')} at {self.base_url}"
