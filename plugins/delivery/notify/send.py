"""The one notification path: event → routing → message → providers. Never raises.

:func:`notify_event` routes an event (:mod:`delivery.notify.routing`), builds its
message (:mod:`delivery.notify.messages`) and hands it to the provider of each
destination (:mod:`delivery.notify.providers`) under one retry policy
(:data:`RETRY_POLICY`, tenacity):

* each destination is independent: they are sent in parallel, and a broken Slack
  never delays or stops PagerDuty or e-mail;
* only transient errors are retried (network, timeout, 429, 5xx, SMTP 4xx), with
  exponential backoff; a refused request is not retried, and a destination without
  a connection is reported as ``not configured``, never tried;
* the whole send is bounded: every request has a short timeout and no retry starts
  after the deadline, so a send ends within about ``deadline_s`` whatever the
  destinations do. A failure callback run by the dag-processor must end long before
  its 50 s limit, which would kill it with every other callback of its batch.

Outcomes are logged and returned in a :class:`NotifyReport`; nothing is written to
XCom here (a callback in the dag-processor cannot write XCom: it would hang). The
end-of-run step returns the report in its own return value. A notification never
changes a pipeline's result.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import tenacity
from airflow.sdk.bases.notifier import BaseNotifier
from tenacity.stop import stop_base

from delivery.notification_inbox import EntryStatus, InboxEntry, Source, record, slack_plain, store_from_env
from delivery.notify.messages import EventMessage, RunInfo, build_message
from delivery.notify.routing import (
    PRODUCTION_FAILURE,
    Destination,
    DestinationKind,
    PipelineEvent,
    dedup_key,
    route,
)
from delivery.runtime import catalog as active_catalog

if TYPE_CHECKING:
    from delivery.catalog.models import Catalog, Service
    from delivery.notify.dedup import SentMarks
    from delivery.notify.providers import Provider

log = logging.getLogger(__name__)

_SECRETS = re.compile(
    r"(xox[a-z]-[A-Za-z0-9-]+|https://hooks\.slack\.com/\S+|\b[A-Za-z0-9]{32,}\b|(?<=://)[^/\s:@]+:[^/\s@]+(?=@))"
)


def redact(text: str) -> str:
    """Remove what looks like a token, routing key, webhook URL or URL credentials from a text."""
    return _SECRETS.sub("[redacted]", text)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How hard one notification tries. One policy for every destination and every caller."""

    attempts: int = 3
    backoff_s: float = 1.0
    """Wait before the 2nd try; doubled before each next one."""
    request_timeout_s: float = 5.0
    deadline_s: float = 20.0
    """No request or retry starts after this (from the start of the send)."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts!r}")
        if self.backoff_s < 0 or self.request_timeout_s <= 0 or self.deadline_s <= 0:
            raise ValueError(
                "backoff_s must be >= 0, request_timeout_s and deadline_s > 0, got "
                f"{self.backoff_s!r}, {self.request_timeout_s!r}, {self.deadline_s!r}"
            )


RETRY_POLICY = RetryPolicy()
MIN_REQUEST_S = 0.5
"""A try needs at least this much time left before the deadline, or it is not started."""


class DeliveryStatus(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    NOT_CONFIGURED = "not configured"
    ALREADY_SENT = "already sent"
    """A repeated failure callback: this destination had the message already (see ``dedup``)."""


@dataclass(frozen=True, kw_only=True)
class Delivery:
    destination: Destination
    status: DeliveryStatus
    attempts: int = 0
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status in (DeliveryStatus.DELIVERED, DeliveryStatus.ALREADY_SENT)

    def as_dict(self) -> dict[str, Any]:
        return {
            "destination": str(self.destination),
            "status": self.status.value,
            "attempts": self.attempts,
            "error": self.error,
        }


@dataclass(kw_only=True)
class NotifyReport:
    event: PipelineEvent | None
    severity: str
    service: str
    dedup_key: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every destination has the message."""
        return all(d.delivered for d in self.deliveries)

    @property
    def errors(self) -> list[str]:
        return [f"{d.destination}: {d.error}" for d in self.deliveries if d.status is DeliveryStatus.FAILED]

    @property
    def not_configured(self) -> list[str]:
        return [str(d.destination) for d in self.deliveries if d.status is DeliveryStatus.NOT_CONFIGURED]

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event.value if self.event else None,
            "severity": self.severity,
            "service": self.service,
            "dedup_key": self.dedup_key,
            "deliveries": [d.as_dict() for d in self.deliveries],
            "errors": self.errors,
            "not_configured": self.not_configured,
        }


def event_dedup_key(
    event: PipelineEvent, *, service: Service | str, run: RunInfo, details: dict[str, Any]
) -> str:
    """The PagerDuty dedup key of ``event`` in this run (tries and retried tasks share it).

    ``rollback_succeeded`` resolves the production failure of the run that paged:
    the same run by default, or ``details["incident_dag_id"/"incident_run_id"]`` for a
    rollback run by hand from another DAG.
    """
    event = PipelineEvent(event)
    name = service if isinstance(service, str) else service.name
    if event.family == PRODUCTION_FAILURE:
        return dedup_key(
            service=name,
            environment="production",
            dag_id=str(details.get("incident_dag_id") or run.dag_id),
            run_id=str(details.get("incident_run_id") or run.run_id),
            family=PRODUCTION_FAILURE,
        )
    return dedup_key(
        service=name,
        environment=str(details.get("environment") or event.default_environment or "pipeline"),
        dag_id=run.dag_id,
        run_id=run.run_id,
        family=event.family,
    )


# -- sending ---------------------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    from delivery.notify.providers import SendFailed  # noqa: PLC0415 Slack/PagerDuty clients: only to send

    return isinstance(exc, SendFailed) and exc.transient


def _error_text(exc: BaseException) -> str:
    from delivery.notify.providers import SendFailed  # noqa: PLC0415 Slack/PagerDuty clients: only to send

    text = str(exc) if isinstance(exc, SendFailed) else f"{type(exc).__name__}: {exc}"
    return redact(text)[:500]


class _StopBefore(stop_base):
    """Stop when the next try could not start (after its backoff) before ``deadline`` (monotonic)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep + MIN_REQUEST_S > self.deadline


def _deliver_one(
    provider: Provider,
    destination: Destination,
    message: EventMessage,
    *,
    key: str | None,
    policy: RetryPolicy,
    deadline: float,
) -> Delivery:
    """One destination under the retry policy, until ``deadline`` (monotonic). Never raises."""
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        timeout = min(policy.request_timeout_s, deadline - time.monotonic())
        provider.send(destination, message, dedup_key=key, timeout_s=timeout)

    def log_retry(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "Notification to %s failed (attempt %d), retrying in %.1fs: %s",
            destination,
            state.attempt_number,
            state.upcoming_sleep,
            _error_text(error) if error else "?",
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts) | _StopBefore(deadline),
        wait=tenacity.wait_exponential(multiplier=policy.backoff_s, min=0, max=policy.deadline_s),
        retry=tenacity.retry_if_exception(_transient),
        before_sleep=log_retry,
        sleep=time.sleep,
        reraise=True,
    )
    try:
        retrying(attempt)
    except Exception as exc:
        error = _error_text(exc)
        log.error(
            "Notification to %s failed after %d attempt(s); the pipeline's result is unchanged: %s",
            destination,
            attempts,
            error,
        )
        return Delivery(destination=destination, status=DeliveryStatus.FAILED, attempts=attempts, error=error)
    return Delivery(destination=destination, status=DeliveryStatus.DELIVERED, attempts=attempts)


def _prepare(
    destination: Destination,
    *,
    providers: Mapping[Any, Provider],
    marks: SentMarks | None,
    mark_key: str | None,
) -> Delivery | Provider:
    """The provider to send with, or the delivery's final state (no provider, not configured, sent)."""
    from delivery.notify.providers import NotConfigured  # noqa: PLC0415 Slack/PagerDuty clients: only to send

    provider = providers.get(destination.kind)
    if provider is None:
        return Delivery(destination=destination, status=DeliveryStatus.FAILED, error="no provider for it")
    if marks is not None and mark_key and marks.seen(f"{mark_key}|{destination}"):
        log.info("Notification to %s already sent for %s: not sent again", destination, mark_key)
        return Delivery(destination=destination, status=DeliveryStatus.ALREADY_SENT)
    try:
        provider.check(destination)
    except NotConfigured as exc:
        log.warning("Notification to %s not sent: not configured (%s)", destination, exc)
        return Delivery(destination=destination, status=DeliveryStatus.NOT_CONFIGURED, error=str(exc))
    except Exception as exc:  # a broken secrets backend must not fail the task either
        return Delivery(destination=destination, status=DeliveryStatus.FAILED, error=_error_text(exc))
    return provider


def send_message(
    message: EventMessage,
    destinations: list[Destination],
    *,
    key: str | None = None,
    policy: RetryPolicy = RETRY_POLICY,
    deadline_s: float | None = None,
    providers: Mapping[Any, Provider] | None = None,
    marks: SentMarks | None = None,
    mark_key: str | None = None,
) -> list[Delivery]:
    """Send ``message`` to every destination, in parallel, within the deadline. Never raises.

    ``marks``/``mark_key``: skip destinations that already had the message for ``mark_key``,
    and mark the ones that accept it now.
    """
    if providers is None:
        from delivery.notify.providers import PROVIDERS  # noqa: PLC0415 Slack/PagerDuty clients: only to send

        providers = PROVIDERS
    budget = policy.deadline_s if deadline_s is None else min(deadline_s, policy.deadline_s)
    deadline = time.monotonic() + budget
    results: list[Delivery | None] = []
    threads: list[threading.Thread] = []
    for index, destination in enumerate(destinations):
        ready = _prepare(destination, providers=providers, marks=marks, mark_key=mark_key)
        results.append(ready if isinstance(ready, Delivery) else None)
        if isinstance(ready, Delivery):
            continue

        def run(
            index: int = index, destination: Destination = destination, provider: Provider = ready
        ) -> None:
            results[index] = _deliver_one(
                provider, destination, message, key=key, policy=policy, deadline=deadline
            )

        thread = threading.Thread(target=run, name=f"notify-{destination.kind.value}", daemon=True)
        threads.append(thread)
        thread.start()
    give_up_at = deadline + 1.0  # a last request may run up to a second past the deadline (whole seconds)
    for thread in threads:
        thread.join(timeout=max(0.0, give_up_at - time.monotonic()))
    deliveries = []
    for destination, result in zip(destinations, results, strict=True):
        if result is None:  # still waiting on a request past its timeout
            log.error("Notification to %s got no answer within %.0fs: given up", destination, budget)
            deliveries.append(
                Delivery(destination=destination, status=DeliveryStatus.FAILED, error="no answer in time")
            )
            continue
        if result.status is DeliveryStatus.DELIVERED and marks is not None and mark_key:
            marks.mark(f"{mark_key}|{destination}")
        deliveries.append(result)
    _record_undelivered(message, deliveries, key=key)
    return deliveries


_UNDELIVERED = {
    DeliveryStatus.NOT_CONFIGURED: EntryStatus.NOT_CONFIGURED,
    DeliveryStatus.FAILED: EntryStatus.FAILED,
}


def _record_undelivered(message: EventMessage, deliveries: list[Delivery], *, key: str | None) -> None:
    """In the local profile, list in the notification inbox what did not reach its destination.

    What was delivered is recorded by the inbox's own endpoints, as it arrives; this records
    the rest, so that a destination without a connection shows as such. Never raises.
    """
    missed = [d for d in deliveries if d.status in _UNDELIVERED]
    if not missed or store_from_env() is None:
        return
    text, links = slack_plain(message.slack_text())
    for delivery in missed:
        destination = delivery.destination
        pagerduty = destination.kind is DestinationKind.PAGERDUTY
        detail = {"reason": delivery.error or "", "connection": destination.conn_id}
        if pagerduty and key:
            detail["dedup_key"] = key
        record(
            InboxEntry(
                source=Source.PIPELINE,
                kind=destination.kind.value,
                destination=destination.action if pagerduty else destination.target,
                title=message.title,
                text=text,
                severity=message.event.severity.value,
                status=_UNDELIVERED[delivery.status],
                link=links[-1] if links else message.run_url,
                detail=detail,
            )
        )


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    message: EventMessage
    destinations: list[Destination]
    key: str | None


def _prepare_event(
    event: PipelineEvent,
    *,
    catalog: Catalog | None,
    service_name: str | None,
    subject: str | None,
    context: Any,
    details: dict[str, Any],
    slack_conn_id: str | None,
    failed_task: bool,
) -> _Prepared:
    if catalog is None:
        catalog = active_catalog()
    svc = catalog.service(service_name) if service_name else None
    name = svc.name if svc is not None else (subject or "delivery")
    run = RunInfo.from_context(context, default_dag_id=svc.dag_id if svc is not None else name)
    message = build_message(
        event,
        service=svc,
        subject=name,
        base_url=catalog.platform.airflow_base_url,
        run=run,
        details=details,
        failed_task=failed_task,
    )
    destinations = route(event, service=svc, platform=catalog.platform, slack_conn_id=slack_conn_id)
    key = event_dedup_key(event, service=name, run=run, details=details)
    return _Prepared(message=message, destinations=destinations, key=key)


def notify_event(
    event: PipelineEvent | str,
    *,
    service_name: str | None,
    context: Any,
    details: dict[str, Any] | None = None,
    catalog: Catalog | None = None,
    subject: str | None = None,
    slack_conn_id: str | None = None,
    failed_task: bool = False,
    policy: RetryPolicy = RETRY_POLICY,
    deadline_s: float | None = None,
    providers: Mapping[Any, Provider] | None = None,
    marks: SentMarks | None = None,
    mark_key: str | None = None,
) -> NotifyReport:
    """Send ``event`` of ``service_name`` to every destination of its severity. Never raises.

    ``service_name=None``: an event about something that is not a service (``subject``,
    a git poller for example), routed by the platform's defaults.
    """
    try:
        event = PipelineEvent(event)
    except ValueError:
        log.error("Unknown pipeline event %r: nothing sent", event)
        return NotifyReport(event=None, severity="?", service=service_name or subject or "?")
    details = dict(details or {})
    report = NotifyReport(event=event, severity=event.severity.value, service=service_name or subject or "?")
    try:
        prepared = _prepare_event(
            event,
            catalog=catalog,
            service_name=service_name,
            subject=subject,
            context=context,
            details=details,
            slack_conn_id=slack_conn_id,
            failed_task=failed_task,
        )
        if any(d.kind is DestinationKind.PAGERDUTY for d in prepared.destinations):
            report.dedup_key = prepared.key
        report.deliveries = send_message(
            prepared.message,
            prepared.destinations,
            key=prepared.key,
            policy=policy,
            deadline_s=deadline_s,
            providers=providers,
            marks=marks,
            mark_key=mark_key,
        )
    except Exception as exc:  # a broken catalog must not fail the task either
        error = _error_text(exc)
        log.error("Could not send the %s notification of %s: %s", event.value, report.service, error)
        routing = Destination(kind=DestinationKind.SLACK, target="(routing)", conn_id="")
        report.deliveries.append(Delivery(destination=routing, status=DeliveryStatus.FAILED, error=error))
        record(
            InboxEntry(
                source=Source.PIPELINE,
                kind="routing",
                destination="(no destination known)",
                title=f"[{report.severity}] {report.service}: {event.value}",
                severity=report.severity,
                status=EntryStatus.FAILED,
                detail={"reason": error},
            )
        )
    log.info(
        "%s %s of %s: %s",
        event.severity.value,
        event.value,
        report.service,
        ", ".join(f"{d.destination} {d.status.value}" for d in report.deliveries) or "no destination",
    )
    return report


class PipelineEventNotifier(BaseNotifier):
    """:func:`notify_event` as a notifier, for ``HITLOperator(notifiers=...)``.

    ``PipelineEventNotifier(event=PipelineEvent.APPROVAL_REQUESTED, service_name="visiobook-api")``
    in the approval operator's ``notifiers`` posts the *Required actions* link when the
    approval is created. Nothing is templated. Never raises.
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
        notify_event(self.event, service_name=self.service_name, context=context, details=self.details)
