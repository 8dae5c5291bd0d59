"""Notifiers that record delivery metrics from a task's lifecycle (``notifiers=``, callbacks)."""

from __future__ import annotations

from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from delivery.reporting import metrics

__all__ = ["ApprovalPendingNotifier"]


class ApprovalPendingNotifier(BaseNotifier):
    """``delivery_approvals_pending`` of the run: 1 while its approval waits, 0 once it is answered.

    In the approval operator's ``notifiers`` (called when the task starts waiting for its answer)
    with ``pending=True``; as its ``on_success_callback`` and ``on_failure_callback`` (answered,
    timed out to its default, or failed) with ``pending=False``. The end of the run sets it to 0
    again, whatever happened in between. Never raises.
    """

    template_fields = ()

    def __init__(self, *, service_name: str, pending: bool, environment: str = "production") -> None:
        super().__init__()
        self.service_name = service_name
        self.pending = pending
        self.environment = environment

    def notify(self, context: Any) -> None:
        run = metrics.Run.of(self.service_name, context)
        metrics.record_approvals_pending(run, environment=self.environment, pending=self.pending)
