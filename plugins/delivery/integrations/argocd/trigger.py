"""Deferrable wait for the sync operation of an Argo CD application to end Synced and Healthy."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from delivery.integrations.argocd.hook import (
    AppState,
    ArgoCDAsyncApi,
    ArgoCDAuthError,
    ArgoCDError,
    ArgoCDHook,
    ArgoCDNotFoundError,
    WaitTarget,
    build_event,
    evaluate_status,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence


class ArgoCDSyncTrigger(BaseTrigger):
    """
    Poll ``GET /api/v1/applications/{name}`` until the sync operation a deploy started has ended.

    The operation is followed by the revision(s) it carries (``expected_revisions``, from the sync
    answer's ``operation.sync.revision(s)``), not by ``status.sync.revision``, which follows the head of
    the GitOps branch (see :func:`delivery.integrations.argocd.hook.evaluate_status`).

    Fires exactly one event, whose payload ``status`` is:

    * ``success``: the operation succeeded and the app is Synced and Healthy (plus a status summary);
    * ``failed``: ``state`` says why: ``degraded`` (failed operation or Degraded health),
      ``prune_required``, ``suspended``, ``missing``, or ``superseded`` (another sync replaced ours);
      carries ``details``, ``conditions``, ``unhealthy_resources`` and a readable ``message``;
    * ``timeout``: ``deadline`` passed; carries the last observed state and what it means;
    * ``error``: the token was refused (``error_type`` ``auth``), the app or connection is missing
      (``not_found``), the connection is unusable (``config``), or the API kept failing (``api``).

    :param app_name: Argo CD application name.
    :param revision: the revision the sync asked for.
    :param expected_revisions: the resolved revision(s) of the sync operation (one per source of a
        multi-source app); defaults to ``[revision]``.
    :param multi_source: the application has ``spec.sources``.
    :param prune: the sync was asked to prune (only changes the advice of a ``prune_required`` event).
    :param argocd_conn_id: Airflow connection id of the Argo CD API.
    :param project: the application's Argo CD project (sent so a missing app is a 404, not a 403).
    :param app_namespace: ``appNamespace`` for apps outside the control plane namespace.
    :param poll_interval: seconds between two polls.
    :param timeout: seconds to wait; used to compute ``deadline`` when it is not given.
    :param deadline: absolute end of the wait (epoch seconds), kept across triggerer restarts.
    :param request_timeout: seconds per HTTP request (defaults to the connection's setting).
    :param max_consecutive_errors: transient API failures tolerated in a row before giving up.
    """

    def __init__(
        self,
        *,
        app_name: str,
        revision: str,
        expected_revisions: Sequence[str] = (),
        multi_source: bool = False,
        prune: bool = False,
        argocd_conn_id: str = ArgoCDHook.default_conn_name,
        project: str | None = None,
        app_namespace: str | None = None,
        poll_interval: float = 10.0,
        timeout: float = 900.0,
        deadline: float | None = None,
        request_timeout: float | None = None,
        max_consecutive_errors: int = 5,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.target = WaitTarget(
            app_name=app_name,
            revision=revision,
            expected=tuple(expected_revisions),
            multi_source=multi_source,
            prune=prune,
        )
        self.argocd_conn_id = argocd_conn_id
        self.project = project or None
        self.app_namespace = app_namespace or None
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout)
        self.deadline = float(deadline) if deadline is not None else time.time() + self.timeout
        self.request_timeout = request_timeout
        self.max_consecutive_errors = max_consecutive_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "delivery.integrations.argocd.trigger.ArgoCDSyncTrigger",
            {
                "app_name": self.target.app_name,
                "revision": self.target.revision,
                "expected_revisions": list(self.target.expected),
                "multi_source": self.target.multi_source,
                "prune": self.target.prune,
                "argocd_conn_id": self.argocd_conn_id,
                "project": self.project,
                "app_namespace": self.app_namespace,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "deadline": self.deadline,
                "request_timeout": self.request_timeout,
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    def _error_event(self, error_type: str, message: str) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": "error",
                "error_type": error_type,
                "app": self.target.app_name,
                "revision": self.target.revision,
                "message": message,
            }
        )

    async def _tree(self, api: ArgoCDAsyncApi) -> dict[str, Any] | None:
        """The resource tree, or None (the event then falls back to ``status.resources``)."""
        try:
            return await api.resource_tree(
                self.target.app_name, project=self.project, app_namespace=self.app_namespace
            )
        except ArgoCDError as err:
            self.log.warning("Could not read the resource tree of %s: %s", self.target.app_name, err)
            return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = ArgoCDHook(argocd_conn_id=self.argocd_conn_id, timeout=self.request_timeout)
        try:
            async with hook.async_api() as api:
                self.log.info(
                    "Waiting for the sync of Argo CD application %s at %s (poll every %ss)",
                    self.target.app_name,
                    self.target.revision,
                    self.poll_interval,
                )
                yield await self._poll(api)
        except AirflowNotFoundException:
            yield self._error_event(
                "not_found", f"Airflow connection {self.argocd_conn_id!r} is not defined."
            )
        except ArgoCDError as err:  # the connection is unusable (no host, bad timeout extra)
            yield self._error_event("config", str(err))

    async def _poll(self, api: ArgoCDAsyncApi) -> TriggerEvent:
        """Poll until a final state, a fatal error, too many errors in a row, or the deadline."""
        errors = 0
        last_app: dict[str, Any] | None = None
        last_state = AppState.PROGRESSING
        while True:
            try:
                app = await api.get_application(
                    self.target.app_name, project=self.project, app_namespace=self.app_namespace
                )
            except ArgoCDAuthError as err:
                return self._error_event("auth", str(err))
            except ArgoCDNotFoundError as err:
                return self._error_event("not_found", str(err))
            except ArgoCDError as err:
                errors += 1
                self.log.warning(
                    "Argo CD poll %d/%d for %s failed: %s",
                    errors,
                    self.max_consecutive_errors,
                    self.target.app_name,
                    err,
                )
                if errors >= self.max_consecutive_errors:
                    return self._error_event(
                        "api",
                        f"Argo CD API kept failing while waiting for application {self.target.app_name!r} "
                        f"({errors} errors in a row); last error: {err}",
                    )
            else:
                errors = 0
                last_app = app
                last_state = evaluate_status(app, self.target)
                self.log.info("Argo CD application %s: %s", self.target.app_name, last_state.value)
                if last_state is AppState.SYNCED_HEALTHY:
                    return TriggerEvent(build_event(last_state, app, self.target))
                if last_state.is_final:
                    tree = await self._tree(api)
                    return TriggerEvent(build_event(last_state, app, self.target, tree=tree))

            remaining = self.deadline - time.time()
            if remaining <= 0:
                tree = await self._tree(api) if last_app is not None else None
                observed = last_app if last_app is not None else {"metadata": {"name": self.target.app_name}}
                event = build_event(
                    last_state, observed, self.target, tree=tree, timed_out=True, timeout=self.timeout
                )
                return TriggerEvent(event)
            await asyncio.sleep(min(self.poll_interval, remaining))
