"""Send one pipeline event to every destination of its severity; never raise.

Each destination is independent: it gets its own retries with backoff (like
:class:`delivery.notify.failure.SafeNotifier`), and a failure of one (Slack
down) never stops the others (PagerDuty, e-mail). Failures are logged, returned
in the :class:`NotifyReport` and recorded on the task as the XCom
``notification_errors``. A notification never changes a pipeline's result.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.notifier import BaseNotifier

from delivery.notify.messages import EventMessage, RunInfo, build_message
from delivery.notify.routing import (
    PRODUCTION_FAILURE,
    Destination,
    DestinationKind,
    PipelineEvent,
    dedup_key,
    route,
)

if TYPE_CHECKING:
    from delivery.catalog.models import Catalog, Service

log = logging.getLogger(__name__)

XCOM_ERRORS_KEY = "notification_errors"
SLACK_USERNAME = "Visiobook Delivery"
FROM_EMAIL = "delivery@visiobook.io"

_SECRETS = re.compile(r"(xox[a-z]-[A-Za-z0-9-]+|https://hooks\.slack\.com/\S+|\b[A-Za-z0-9]{32,}\b)")


def redact(text: str) -> str:
    """Remove what looks like a token, routing key or webhook URL from an error message."""
    return _SECRETS.sub("[redacted]", text)


@dataclass(frozen=True, kw_only=True)
class Delivery:
    destination: Destination
    delivered: bool
    attempts: int
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "destination": str(self.destination),
            "delivered": self.delivered,
            "attempts": self.attempts,
            "error": self.error,
        }


@dataclass(kw_only=True)
class NotifyReport:
    event: PipelineEvent
    severity: str
    service: str
    dedup_key: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.delivered for d in self.deliveries)

    @property
    def errors(self) -> list[str]:
        return [f"{d.destination}: {d.error}" for d in self.deliveries if not d.delivered]

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event.value,
            "severity": self.severity,
            "service": self.service,
            "dedup_key": self.dedup_key,
            "deliveries": [d.as_dict() for d in self.deliveries],
            "errors": self.errors,
        }


def event_dedup_key(event: PipelineEvent, *, service: Service, run: RunInfo, details: dict[str, Any]) -> str:
    """The PagerDuty dedup key of ``event`` in this run (tries and retried tasks share it).

    ``rollback_succeeded`` resolves the production failure of the run that paged:
    the same run by default, or ``details["incident_dag_id"/"incident_run_id"]`` for a
    rollback run by hand from another DAG.
    """
    event = PipelineEvent(event)
    if event.family == PRODUCTION_FAILURE:
        return dedup_key(
            service=service.name,
            environment="production",
            dag_id=str(details.get("incident_dag_id") or run.dag_id),
            run_id=str(details.get("incident_run_id") or run.run_id),
            family=PRODUCTION_FAILURE,
        )
    return dedup_key(
        service=service.name,
        environment=str(details.get("environment") or event.default_environment),
        dag_id=run.dag_id,
        run_id=run.run_id,
        family=event.family,
    )


def _notifier(destination: Destination, *, message: EventMessage, key: str | None) -> BaseNotifier:
    from delivery.notify.providers import PlainPagerdutyNotifier, PlainSlackNotifier, PlainSmtpNotifier

    if destination.kind is DestinationKind.SLACK:
        return PlainSlackNotifier(
            slack_conn_id=destination.conn_id,
            channel=destination.target,
            text=message.slack_text(),
            username=SLACK_USERNAME,
            unfurl_links=False,
        )
    if destination.kind is DestinationKind.EMAIL:
        return PlainSmtpNotifier(
            to=destination.target,
            subject=message.email_subject(),
            html_content=message.email_html(),
            smtp_conn_id=destination.conn_id,
        )
    fields = message.pagerduty_event()
    if destination.action == "resolve":
        fields["summary"] = f"{message.service}: {message.headline}"
    return PlainPagerdutyNotifier(
        pagerduty_events_conn_id=destination.conn_id,
        action=destination.action,
        dedup_key=key,
        **fields,
    )


def deliver(
    notifier: BaseNotifier,
    *,
    destination: Destination,
    context: Any,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> Delivery:
    """One destination, with retries and exponential backoff. Never raises."""
    error = "not attempted"
    for attempt in range(1, attempts + 1):
        try:
            notifier.notify(context)
            return Delivery(destination=destination, delivered=True, attempts=attempt)
        except Exception as exc:
            error = redact(f"{type(exc).__name__}: {exc}")[:500]
            if "isn't defined" in str(exc):  # AirflowNotFoundException: no connection, retrying cannot help
                log.warning("Notification to %s skipped: %s", destination, error)
                return Delivery(destination=destination, delivered=False, attempts=attempt, error=error)
            if attempt == attempts:
                break
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning(
                "Notification to %s failed (attempt %d), retrying in %.1fs: %s",
                destination,
                attempt,
                delay,
                error,
            )
            time.sleep(delay)
    log.error(
        "Notification to %s failed after %d attempts; the pipeline's result is unchanged: %s",
        destination,
        attempts,
        error,
    )
    return Delivery(destination=destination, delivered=False, attempts=attempts, error=error)


def notify_event(
    event: PipelineEvent | str,
    *,
    service_name: str,
    context: Any,
    details: dict[str, Any] | None = None,
    catalog: Catalog | None = None,
    slack_conn_id: str | None = None,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> NotifyReport:
    """Send ``event`` of ``service_name`` to every destination of its severity. Never raises."""
    try:
        event = PipelineEvent(event)
    except ValueError:
        log.error("Unknown pipeline event %r: nothing sent", event)
        return NotifyReport(event=PipelineEvent.DEPLOY_SUCCEEDED, severity="?", service=service_name)
    details = dict(details or {})
    report = NotifyReport(event=event, severity=event.severity.value, service=service_name)
    try:
        if catalog is None:
            from delivery.runtime import catalog as load

            catalog = load()
        svc = catalog.service(service_name)
        platform = catalog.platform
        run = RunInfo.from_context(context, default_dag_id=svc.dag_id)
        message = build_message(
            event, service=svc, base_url=platform.airflow_base_url, run=run, details=details
        )
        destinations = route(
            event,
            service=svc,
            platform=platform,
            slack_conn_id=slack_conn_id or platform.connections.slack_api,
        )
        if any(d.kind is DestinationKind.PAGERDUTY for d in destinations):
            report.dedup_key = event_dedup_key(event, service=svc, run=run, details=details)
    except Exception as exc:  # a broken catalog must not fail the task either
        error = redact(f"{type(exc).__name__}: {exc}")[:500]
        log.error("Could not prepare the %s notification of %s: %s", event.value, service_name, error)
        report.deliveries.append(
            Delivery(
                destination=Destination(kind=DestinationKind.SLACK, target="(routing)", conn_id=""),
                delivered=False,
                attempts=0,
                error=error,
            )
        )
        _record(context, report)
        return report
    for destination in destinations:
        try:
            notifier = _notifier(destination, message=message, key=report.dedup_key)
        except Exception as exc:
            error = redact(f"{type(exc).__name__}: {exc}")[:500]
            log.error("Notification to %s could not be prepared: %s", destination, error)
            report.deliveries.append(
                Delivery(destination=destination, delivered=False, attempts=0, error=error)
            )
            continue
        report.deliveries.append(
            deliver(
                notifier, destination=destination, context=context, attempts=attempts, backoff_s=backoff_s
            )
        )
    log.info(
        "%s %s of %s: delivered to %d of %d destinations",
        event.severity.value,
        event.value,
        service_name,
        sum(d.delivered for d in report.deliveries),
        len(report.deliveries),
    )
    _record(context, report)
    return report


def _record(context: Any, report: NotifyReport) -> None:
    """Keep the failures visible on the task (XCom ``notification_errors``) without raising."""
    if report.ok:
        return
    try:
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key=XCOM_ERRORS_KEY, value=report.errors)
    except Exception:  # the task may already be finished; the log has it
        log.debug("could not record the notification failures", exc_info=True)


class PipelineEventNotifier(BaseNotifier):
    """:func:`notify_event` as a notifier: for ``HITLOperator(notifiers=...)`` or task callbacks.

    ``PipelineEventNotifier(event=PipelineEvent.APPROVAL_REQUESTED, service_name="visiobook-api")``
    in the approval operator's ``notifiers`` posts the *Required actions* link when the
    approval is created. Never raises.
    """

    template_fields = ()

    def __init__(
        self, *, event: PipelineEvent | str, service_name: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.event = PipelineEvent(event)
        self.service_name = service_name
        self.details = dict(details or {})

    def notify(self, context: Any) -> None:
        details = dict(self.details)
        exception = context.get("exception") if hasattr(context, "get") else None
        if exception is not None and "error" not in details:
            details["error"] = str(exception)
        notify_event(self.event, service_name=self.service_name, context=context, details=details)
