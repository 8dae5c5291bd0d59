"""Severity-routed notifications of pipeline events: PagerDuty, Slack channels, e-mail.

``route(event, service=..., platform=...)`` says where an event goes (pure);
``notify_event(event, service_name=..., context=..., details=...)`` sends it
there through the Airflow providers and never raises.
"""

from __future__ import annotations

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
    XCOM_ERRORS_KEY,
    Delivery,
    NotifyReport,
    PipelineEventNotifier,
    event_dedup_key,
    notify_event,
)

__all__ = [
    "APPROVAL_TASK_ID",
    "EVENT_SEVERITY",
    "SLACK_API_CONN_ID",
    "XCOM_ERRORS_KEY",
    "Delivery",
    "Destination",
    "DestinationKind",
    "NotifyReport",
    "PipelineEvent",
    "PipelineEventNotifier",
    "build_message",
    "dedup_key",
    "event_dedup_key",
    "hitl_url",
    "notify_event",
    "route",
    "run_url",
]
