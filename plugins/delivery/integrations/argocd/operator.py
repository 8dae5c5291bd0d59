"""Sync an Argo CD application to a GitOps revision and wait until that sync ends Synced and Healthy."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import tenacity
from airflow.sdk import BaseOperator

from delivery.integrations.argocd.hook import (
    AppState,
    ArgoCDAuthError,
    ArgoCDDeploymentError,
    ArgoCDError,
    ArgoCDHook,
    ArgoCDNotFoundError,
    ArgoCDOperationInProgressError,
    SyncPlan,
    WaitTarget,
    build_event,
    evaluate_status,
    expected_revisions,
    plan_sync,
)
from delivery.integrations.argocd.trigger import ArgoCDSyncTrigger

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


def _check_optional_name(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or None, got {value!r}")
    if value and not _templated(value) and not _APP_NAME.match(value):
        raise ValueError(f"{name} {value!r} is not a valid Argo CD {name.replace('_', ' ')}")


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class ArgoCDSyncOperator(BaseOperator):
    """
    Sync an Argo CD application to ``revision``, then wait until that sync ends Synced and Healthy.

    Before syncing, the application is read (with ``project``, so a missing app is reported as such) and
    checked: an app with automated sync, a source hydrator, or no source on ``gitops_repo_url`` is
    refused with what to change (see docs/argocd.md). A multi-source app is synced with ``revisions`` +
    ``sourcePositions`` on its sources from ``gitops_repo_url``.

    When another operation is already running on the application, the sync is retried every
    ``poll_interval`` seconds for up to ``operation_in_progress_timeout`` seconds.

    The wait follows the sync *operation* (``status.operationState``), because ``status.sync.revision``
    follows the head of the GitOps branch and moves with every other service's commit. It runs in the
    triggerer (:class:`~delivery.integrations.argocd.trigger.ArgoCDSyncTrigger`) unless ``deferrable=False``, in
    which case the worker polls in-process with the same rules.

    Returns ``{"app", "revision", "applied_revision", "head_revision", "sync", "health"}`` (pushed to XCom).
    Raises :class:`~delivery.integrations.argocd.hook.ArgoCDDeploymentError` when the sync fails, the app ends
    Degraded, Suspended, Missing or OutOfSync for want of pruning, another sync replaces this one, or the
    app does not converge within ``timeout``; the message says why and lists Argo CD's conditions and the
    unhealthy resources (``kind namespace/name: health - message``).

    :param app_name: Argo CD application (templated).
    :param revision: Git revision (commit SHA, tag or branch) to sync to (templated).
    :param argocd_conn_id: Airflow connection id of the Argo CD API.
    :param project: the application's Argo CD project (templated; empty means not sent). Sent with every
        call so that a missing application, or one of another project, is a 404 instead of a 403.
    :param app_namespace: ``appNamespace`` for apps outside the Argo CD control plane namespace (templated).
    :param gitops_repo_url: the GitOps repository ``revision`` belongs to: checks that the app deploys
        from it, and picks the sources of a multi-source app to sync to ``revision``.
    :param prune: let the sync delete resources no longer in Git. Without it, such resources keep the app
        OutOfSync and the task fails saying which they are.
    :param sync_options: extra Argo CD sync options such as ``["ServerSideApply=true"]``. Argo CD replaces
        the app's own ``spec.syncPolicy.syncOptions`` with the options of a sync request, so these are
        merged onto the app's own (same key: these win); none sends none, and the app's own apply.
    :param poll_interval: seconds between two status polls.
    :param timeout: seconds to wait for the sync to end Synced and Healthy after it was accepted.
    :param operation_in_progress_timeout: seconds to keep retrying while another operation runs.
    :param deferrable: wait in the triggerer (True) or in the worker (False).
    """

    template_fields: Sequence[str] = ("app_name", "revision", "project", "app_namespace")
    ui_color = "#ef7b4d"

    def __init__(
        self,
        *,
        app_name: str,
        revision: str,
        argocd_conn_id: str = ArgoCDHook.default_conn_name,
        project: str | None = None,
        app_namespace: str | None = None,
        gitops_repo_url: str | None = None,
        prune: bool = False,
        sync_options: Sequence[str] | None = None,
        poll_interval: float | timedelta = 10.0,
        timeout: float | timedelta = 900.0,
        operation_in_progress_timeout: float | timedelta = 300.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_app_name(app_name)
        _check_revision(revision)
        _check_optional_name("project", project)
        _check_optional_name("app_namespace", app_namespace)
        if not isinstance(argocd_conn_id, str) or not argocd_conn_id:
            raise ValueError(f"argocd_conn_id must be a non-empty string, got {argocd_conn_id!r}")
        if isinstance(sync_options, str) or (
            sync_options is not None and not all(isinstance(o, str) and o for o in sync_options)
        ):
            raise ValueError(f"sync_options must be a list of 'Name=value' strings, got {sync_options!r}")
        self.app_name = app_name
        self.revision = revision
        self.argocd_conn_id = argocd_conn_id
        self.project = project
        self.app_namespace = app_namespace
        self.gitops_repo_url = gitops_repo_url
        self.prune = prune
        self.sync_options = list(sync_options or ())
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

    @property
    def _where(self) -> dict[str, str | None]:
        """``project`` and ``app_namespace`` as the hook takes them (a template rendered empty is None)."""
        return {"project": self.project or None, "app_namespace": self.app_namespace or None}

    def _request_sync(self, plan: SyncPlan) -> dict[str, Any]:
        """Ask for the sync; retry (bounded) while another operation runs on the application."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(ArgoCDOperationInProgressError),
            stop=tenacity.stop_after_delay(self.operation_in_progress_timeout),
            wait=tenacity.wait_fixed(self.poll_interval),
            before_sleep=lambda state: self.log.info(
                "Another operation is running on %s; retrying the sync in %ss (attempt %d)",
                self.app_name,
                self.poll_interval,
                state.attempt_number,
            ),
        )
        try:
            return retrying(
                self.hook.sync,
                self.app_name,
                plan.revision,
                source_positions=plan.source_positions,
                prune=self.prune,
                sync_options=plan.sync_options,
                **self._where,
            )
        except tenacity.RetryError as err:
            last = err.last_attempt
            raise ArgoCDError(
                f"Could not sync application {self.app_name!r} at {self.revision!r}: another operation was "
                f"still in progress after {self.operation_in_progress_timeout:g}s ({last.attempt_number} "
                f"attempts). Last answer: {last.exception()}"
            ) from None

    def execute(self, context: Context) -> dict[str, Any]:
        _check_app_name(self.app_name)
        _check_revision(self.revision)
        _check_optional_name("project", self.project)
        _check_optional_name("app_namespace", self.app_namespace)
        app = self.hook.get_application(self.app_name, **self._where)
        plan = plan_sync(
            app, self.revision, gitops_repo_url=self.gitops_repo_url, sync_options=self.sync_options
        )
        response = self._request_sync(plan)
        target = WaitTarget(
            app_name=self.app_name,
            revision=self.revision,
            expected=expected_revisions(response, plan),
            multi_source=plan.multi_source,
            prune=self.prune,
        )
        if not self.deferrable:
            return self.execute_complete(context, self._wait_in_process(target))
        self.defer(
            trigger=ArgoCDSyncTrigger(
                app_name=self.app_name,
                revision=self.revision,
                expected_revisions=list(target.expected),
                multi_source=target.multi_source,
                prune=self.prune,
                argocd_conn_id=self.argocd_conn_id,
                poll_interval=self.poll_interval,
                timeout=self.timeout,
                project=self._where["project"],
                app_namespace=self._where["app_namespace"],
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + 2 * self.poll_interval + _DEFER_GRACE_SECONDS),
        )

    def _wait_in_process(self, target: WaitTarget) -> dict[str, Any]:
        """The trigger's rules, polled synchronously in the worker; returns the same event payload."""
        deadline = time.monotonic() + self.timeout
        while True:
            app = self.hook.get_application(self.app_name, **self._where)
            state = evaluate_status(app, target)
            self.log.info("Argo CD application %s: %s", self.app_name, state.value)
            if state is AppState.SYNCED_HEALTHY:
                return build_event(state, app, target)
            timed_out = time.monotonic() >= deadline
            if state.is_final or timed_out:
                try:
                    tree: dict[str, Any] | None = self.hook.resource_tree(self.app_name, **self._where)
                except ArgoCDError as err:
                    self.log.warning("Could not read the resource tree of %s: %s", self.app_name, err)
                    tree = None
                return build_event(
                    state, app, target, tree=tree, timed_out=not state.is_final, timeout=self.timeout
                )
            time.sleep(min(self.poll_interval, max(deadline - time.monotonic(), 0.0)))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event:
            raise ArgoCDError(f"The Argo CD wait for application {self.app_name!r} ended without an event.")
        status = event.get("status")
        message = (
            event.get("message") or f"The Argo CD wait for application {self.app_name!r} failed: {event!r}"
        )
        if status == "success":
            self.log.info("%s", message)
            return {
                "app": event.get("app") or self.app_name,
                "revision": event.get("revision") or self.revision,
                "applied_revision": event.get("applied_revision"),
                "head_revision": event.get("head_revision"),
                "sync": event.get("sync"),
                "health": event.get("health"),
            }
        if status == "error":
            error_type = event.get("error_type")
            if error_type == "auth":
                raise ArgoCDAuthError(message)
            if error_type == "not_found":
                raise ArgoCDNotFoundError(message)
            raise ArgoCDError(message)
        raise ArgoCDDeploymentError(message)
