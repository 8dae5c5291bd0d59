"""Sync an Argo CD application to a revision and wait until it is Synced and Healthy there."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from delivery.hooks.argocd import (
    AppState,
    ArgoCDAuthError,
    ArgoCDDeploymentError,
    ArgoCDError,
    ArgoCDHook,
    ArgoCDNotFoundError,
    ArgoCDOperationInProgressError,
    build_event,
    evaluate_status,
    format_event_message,
)
from delivery.triggers.argocd import ArgoCDSyncTrigger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

# Argo CD application names are Kubernetes object names (DNS-1123 subdomain).
_APP_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DEFER_GRACE_SECONDS = 60.0


def _templated(value: str) -> bool:
    return "{{" in value or "{%" in value


def _check_app_name(value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"app_name must be a non-empty string, got {value!r}")
    if not _templated(value) and not _APP_NAME.match(value):
        raise ValueError(
            f"app_name {value!r} is not a valid Argo CD application name "
            "(lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        )


def _check_revision(value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"revision must be a non-empty string (commit SHA, tag or branch), got {value!r}")
    if not _templated(value) and any(ch.isspace() for ch in value):
        raise ValueError(f"revision must not contain whitespace, got {value!r}")


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class ArgoCDSyncOperator(BaseOperator):
    """
    Sync an Argo CD application at ``revision``, then wait until it is Synced and Healthy at it.

    When another operation is already running on the application, the sync is retried every
    ``poll_interval`` seconds for up to ``operation_in_progress_timeout`` seconds.

    The wait runs in the triggerer (:class:`~delivery.triggers.argocd.ArgoCDSyncTrigger`) unless
    ``deferrable=False``, in which case the worker polls in-process.

    Returns ``{"app", "revision", "sync_revision", "health", "sync"}`` (pushed to XCom). Raises
    :class:`~delivery.hooks.argocd.ArgoCDDeploymentError` when the app ends Degraded, its sync fails, or
    it does not converge within ``timeout``; the message lists Argo CD's conditions and the unhealthy
    resources (``kind namespace/name: health - message``).

    :param app_name: Argo CD application (templated).
    :param revision: Git revision (commit SHA, tag or branch) to sync to (templated).
    :param argocd_conn_id: Airflow connection id of the Argo CD API.
    :param prune: let the sync prune resources no longer in Git.
    :param sync_options: Argo CD sync options such as ``["ApplyOutOfSyncOnly=true"]``.
    :param app_namespace: ``appNamespace`` for apps outside the Argo CD control plane namespace.
    :param poll_interval: seconds between two status polls.
    :param timeout: seconds to wait for Synced and Healthy after the sync was accepted.
    :param operation_in_progress_timeout: seconds to keep retrying while another operation runs.
    :param deferrable: wait in the triggerer (True) or in the worker (False).
    """

    template_fields: Sequence[str] = ("app_name", "revision")
    ui_color = "#ef7b4d"

    def __init__(
        self,
        *,
        app_name: str,
        revision: str,
        argocd_conn_id: str = ArgoCDHook.default_conn_name,
        prune: bool = False,
        sync_options: Sequence[str] | None = None,
        app_namespace: str | None = None,
        poll_interval: float | timedelta = 10.0,
        timeout: float | timedelta = 900.0,
        operation_in_progress_timeout: float | timedelta = 300.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_app_name(app_name)
        _check_revision(revision)
        if not isinstance(argocd_conn_id, str) or not argocd_conn_id:
            raise ValueError(f"argocd_conn_id must be a non-empty string, got {argocd_conn_id!r}")
        if isinstance(sync_options, str) or (
            sync_options is not None and not all(isinstance(o, str) and o for o in sync_options)
        ):
            raise ValueError(f"sync_options must be a list of 'Name=value' strings, got {sync_options!r}")
        self.app_name = app_name
        self.revision = revision
        self.argocd_conn_id = argocd_conn_id
        self.prune = prune
        self.sync_options = list(sync_options or ())
        self.app_namespace = app_namespace
        self.poll_interval = _check_seconds("poll_interval", poll_interval)
        self.timeout = _check_seconds("timeout", timeout)
        self.operation_in_progress_timeout = _check_seconds(
            "operation_in_progress_timeout", operation_in_progress_timeout
        )
        if self.poll_interval > self.timeout:
            raise ValueError(
                f"poll_interval ({poll_interval!r}) must not be longer than timeout ({timeout!r})"
            )
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> ArgoCDHook:
        return ArgoCDHook(argocd_conn_id=self.argocd_conn_id)

    def _request_sync(self) -> None:
        """Ask for the sync; wait (bounded) while another operation runs on the application."""
        give_up_at = time.monotonic() + self.operation_in_progress_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                self.hook.sync(
                    self.app_name,
                    self.revision,
                    prune=self.prune,
                    sync_options=self.sync_options,
                    app_namespace=self.app_namespace,
                )
                return
            except ArgoCDOperationInProgressError as err:
                if time.monotonic() + self.poll_interval > give_up_at:
                    raise ArgoCDError(
                        f"Could not sync application {self.app_name!r} at {self.revision!r}: another "
                        f"operation was still in progress after {self.operation_in_progress_timeout:g}s "
                        f"({attempt} attempts). Last answer: {err}"
                    ) from None
                self.log.info(
                    "Another operation is running on %s; retrying the sync in %ss (attempt %d)",
                    self.app_name,
                    self.poll_interval,
                    attempt,
                )
                time.sleep(self.poll_interval)

    def execute(self, context: Context) -> dict[str, Any]:
        _check_app_name(self.app_name)
        _check_revision(self.revision)
        self._request_sync()
        if not self.deferrable:
            return self.execute_complete(context, self._wait_in_process())
        self.defer(
            trigger=ArgoCDSyncTrigger(
                app_name=self.app_name,
                revision=self.revision,
                argocd_conn_id=self.argocd_conn_id,
                poll_interval=self.poll_interval,
                timeout=self.timeout,
                app_namespace=self.app_namespace,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + 2 * self.poll_interval + _DEFER_GRACE_SECONDS),
        )

    def _wait_in_process(self) -> dict[str, Any]:
        """The trigger's loop, run synchronously in the worker; returns the same event payload."""
        deadline = time.monotonic() + self.timeout
        while True:
            app = self.hook.get_application(self.app_name, app_namespace=self.app_namespace)
            state = evaluate_status(app, self.revision)
            self.log.info("Argo CD application %s: %s", self.app_name, state.value)
            if state is AppState.SYNCED_HEALTHY:
                return build_event(state, app, self.revision)
            if state is AppState.DEGRADED or time.monotonic() >= deadline:
                try:
                    tree: dict[str, Any] | None = self.hook.resource_tree(
                        self.app_name, app_namespace=self.app_namespace
                    )
                except ArgoCDError as err:
                    self.log.warning("Could not read the resource tree of %s: %s", self.app_name, err)
                    tree = None
                timed_out = state is not AppState.DEGRADED
                return build_event(
                    state, app, self.revision, tree=tree, timed_out=timed_out, timeout=self.timeout
                )
            time.sleep(min(self.poll_interval, max(deadline - time.monotonic(), 0.0)))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event:
            raise ArgoCDError(f"The Argo CD wait for application {self.app_name!r} ended without an event.")
        status = event.get("status")
        if status == "success":
            self.log.info(
                "Argo CD application %s is Synced and Healthy at %s",
                event.get("app"),
                event.get("sync_revision"),
            )
            return {
                "app": event.get("app") or self.app_name,
                "revision": event.get("revision") or self.revision,
                "sync_revision": event.get("sync_revision"),
                "health": event.get("health"),
                "sync": event.get("sync"),
            }
        message = format_event_message(event) if status in ("degraded", "timeout") else event.get("message")
        message = message or f"The Argo CD wait for application {self.app_name!r} failed: {event!r}"
        if status == "error":
            error_type = event.get("error_type")
            if error_type == "auth":
                raise ArgoCDAuthError(message)
            if error_type == "not_found":
                raise ArgoCDNotFoundError(message)
            raise ArgoCDError(message)
        raise ArgoCDDeploymentError(message)
