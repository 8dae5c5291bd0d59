"""Notifications of pipeline events: one path from event to PagerDuty, Slack channels and e-mail.

``route(event, service=..., platform=...)`` says where an event goes (pure),
``build_message`` says what it says (pure), and ``notify_event(event,
service_name=..., context=..., details=...)`` sends it through the provider hooks
under one retry policy, within a bounded time, and never raises. Task failure
callbacks (``TaskFailureNotifier``) and the end-of-run summary are events of this
same path.
"""

from __future__ import annotations

from delivery.notify.failure import TaskFailureNotifier
from delivery.notify.messages import APPROVAL_TASK_ID, build_message, hitl_url, run_url
from delivery.notify.routing import (
    EVENT_SEVERITY,
    SLACK_API_CONN_ID,
    Destination,
    DestinationKind,
    PipelineEvent,
    dedup_key,
    route,
)
from delivery.notify.send import (
    RETRY_POLICY,
    Delivery,
    DeliveryStatus,
    NotifyReport,
    PipelineEventNotifier,
    RetryPolicy,
    event_dedup_key,
    notify_event,
)

__all__ = [
    "APPROVAL_TASK_ID",
    "EVENT_SEVERITY",
    "RETRY_POLICY",
    "SLACK_API_CONN_ID",
    "Delivery",
    "DeliveryStatus",
    "Destination",
    "DestinationKind",
    "NotifyReport",
    "PipelineEvent",
    "PipelineEventNotifier",
    "RetryPolicy",
    "TaskFailureNotifier",
    "build_message",
    "dedup_key",
    "event_dedup_key",
    "hitl_url",
    "notify_event",
    "route",
    "run_url",
]
