"""Deferrable wait for an Argo CD application to be Synced and Healthy at a revision."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from delivery.hooks.argocd import (
    AppState,
    ArgoCDAuthError,
    ArgoCDError,
    ArgoCDHook,
    ArgoCDNotFoundError,
    ConnectionSettings,
    application_path,
    build_event,
    connection_settings,
    error_from_response,
    evaluate_status,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class ArgoCDSyncTrigger(BaseTrigger):
    """
    Poll ``GET /api/v1/applications/{name}`` until the app is Synced and Healthy at ``revision``.

    Fires exactly one event, whose payload ``status`` is:

    * ``success``: Synced and Healthy at the revision (plus the observed sync/health summary);
    * ``degraded``: Degraded health or a Failed/Error sync operation; carries ``conditions``,
      ``unhealthy_resources`` (from the resource tree) and a readable ``message``;
    * ``timeout``: ``deadline`` passed; carries the last observed sync/health/revision, conditions and
      unhealthy resources;
    * ``error``: the token was refused (``error_type`` ``auth``), the app or connection is missing
      (``not_found``), or the API kept failing (``api``).

    :param app_name: Argo CD application name.
    :param revision: the revision the sync asked for.
    :param argocd_conn_id: Airflow connection id of the Argo CD API.
    :param poll_interval: seconds between two polls.
    :param timeout: seconds to wait; used to compute ``deadline`` when it is not given.
    :param deadline: absolute end of the wait (epoch seconds), kept across triggerer restarts.
    :param app_namespace: optional ``appNamespace`` for apps outside the control plane namespace.
    :param request_timeout: seconds per HTTP request (defaults to the connection's setting).
    :param max_consecutive_errors: transient API failures tolerated in a row before giving up.
    """

    def __init__(
        self,
        *,
        app_name: str,
        revision: str,
        argocd_conn_id: str = ArgoCDHook.default_conn_name,
        poll_interval: float = 10.0,
        timeout: float = 900.0,
        deadline: float | None = None,
        app_namespace: str | None = None,
        request_timeout: float | None = None,
        max_consecutive_errors: int = 5,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.app_name = app_name
        self.revision = revision
        self.argocd_conn_id = argocd_conn_id
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout)
        self.deadline = float(deadline) if deadline is not None else time.time() + self.timeout
        self.app_namespace = app_namespace
        self.request_timeout = request_timeout
        self.max_consecutive_errors = max_consecutive_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "delivery.triggers.argocd.ArgoCDSyncTrigger",
            {
                "app_name": self.app_name,
                "revision": self.revision,
                "argocd_conn_id": self.argocd_conn_id,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "deadline": self.deadline,
                "app_namespace": self.app_namespace,
                "request_timeout": self.request_timeout,
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    def _error_event(self, error_type: str, message: str) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": "error",
                "error_type": error_type,
                "app": self.app_name,
                "revision": self.revision,
                "message": message,
            }
        )

    async def _get(
        self, client: httpx.AsyncClient, path: str, settings: ConnectionSettings, action: str
    ) -> dict[str, Any]:
        params = {"appNamespace": self.app_namespace} if self.app_namespace else None
        response = await client.get(path, params=params)
        if response.status_code != 200:
            raise error_from_response(
                status=response.status_code,
                body=response.text,
                conn_id=settings.conn_id,
                app_name=self.app_name,
                action=action,
            )
        try:
            payload = response.json()
        except ValueError:
            raise ArgoCDError(f"Argo CD answered GET {path} with a body that is not JSON.") from None
        if not isinstance(payload, dict):
            raise ArgoCDError(f"Argo CD answered GET {path} with a JSON {type(payload).__name__}.")
        return payload

    async def _tree(self, client: httpx.AsyncClient, settings: ConnectionSettings) -> dict[str, Any] | None:
        """The resource tree, or None (the event then falls back to ``status.resources``)."""
        try:
            return await self._get(
                client,
                f"{application_path(self.app_name)}/resource-tree",
                settings,
                "read the resource tree of",
            )
        except (ArgoCDError, httpx.HTTPError) as err:
            self.log.warning("Could not read the resource tree of %s: %s", self.app_name, err)
            return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            conn = await ArgoCDHook.aget_connection(self.argocd_conn_id)
            # the async reader masks secrets without a blocking call into the supervisor
            extras = await conn.aextra_dejson()
            settings = connection_settings(conn, timeout=self.request_timeout, extras=extras)
        except AirflowNotFoundException:
            yield self._error_event(
                "not_found", f"Airflow connection {self.argocd_conn_id!r} is not defined."
            )
            return
        except ArgoCDError as err:
            yield self._error_event("config", str(err))
            return

        path = application_path(self.app_name)
        self.log.info(
            "Waiting for Argo CD application %s to be Synced and Healthy at %s (poll every %ss)",
            self.app_name,
            self.revision,
            self.poll_interval,
        )
        errors = 0
        last_app: dict[str, Any] | None = None
        last_state = AppState.UNKNOWN
        # connection-level retries; HTTP errors are counted by the polling loop below
        transport = httpx.AsyncHTTPTransport(verify=settings.ssl_verify(), retries=2)
        async with httpx.AsyncClient(
            base_url=settings.base_url,
            headers=settings.headers,
            timeout=settings.timeout,
            transport=transport,
        ) as client:
            while True:
                try:
                    app = await self._get(client, path, settings, "read")
                except ArgoCDAuthError as err:
                    yield self._error_event("auth", str(err))
                    return
                except ArgoCDNotFoundError as err:
                    yield self._error_event("not_found", str(err))
                    return
                except (ArgoCDError, httpx.HTTPError) as err:
                    errors += 1
                    self.log.warning(
                        "Argo CD poll %d/%d for %s failed: %s",
                        errors,
                        self.max_consecutive_errors,
                        self.app_name,
                        err,
                    )
                    if errors >= self.max_consecutive_errors:
                        yield self._error_event(
                            "api",
                            f"Argo CD API kept failing while waiting for application {self.app_name!r} "
                            f"({errors} errors in a row); last error: {err}",
                        )
                        return
                else:
                    errors = 0
                    last_app = app
                    last_state = evaluate_status(app, self.revision)
                    self.log.info("Argo CD application %s: %s", self.app_name, last_state.value)
                    if last_state is AppState.SYNCED_HEALTHY:
                        yield TriggerEvent(build_event(last_state, app, self.revision))
                        return
                    if last_state is AppState.DEGRADED:
                        tree = await self._tree(client, settings)
                        yield TriggerEvent(build_event(last_state, app, self.revision, tree=tree))
                        return

                remaining = self.deadline - time.time()
                if remaining <= 0:
                    tree = await self._tree(client, settings) if last_app is not None else None
                    observed = last_app if last_app is not None else {"metadata": {"name": self.app_name}}
                    yield TriggerEvent(
                        build_event(
                            last_state,
                            observed,
                            self.revision,
                            tree=tree,
                            timed_out=True,
                            timeout=self.timeout,
                        )
                    )
                    return
                await asyncio.sleep(min(self.poll_interval, remaining))
