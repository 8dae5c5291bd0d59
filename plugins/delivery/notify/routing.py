"""Pipeline events, their fixed severities, and where each one goes (pure).

The severity of an event is fixed here; its destinations come from the
catalog: ``platform.notifications`` gives the default route of each severity,
and a service's ``notifications`` replaces a whole severity route (not single
fields of it). :func:`route` turns that into a list of :class:`Destination`.
Something that is not a service (a git poller DAG) uses the platform's routes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from delivery.catalog.models import NotificationRoute, Platform, Service, Severity

SLACK_API_CONN_ID = "slack_api"
"""Slack Web API connection (conn_type ``slack``, password = bot token) used to post to channels.

The catalog's ``connections.slack`` (``slack_delivery``) is an incoming webhook, which can only
post to the one channel it was created for, so channel routing needs a bot token of its own.
"""


class PipelineEvent(StrEnum):
    """What happened in a delivery pipeline run. The severity of each is fixed."""

    PRODUCTION_DEPLOY_FAILED = "production_deploy_failed"
    ROLLBACK_FAILED = "rollback_failed"
    ROLLBACK_ABORTED = "rollback_aborted"
    BREAK_GLASS_DEPLOY = "break_glass_deploy"
    PRODUCTION_GATE_REFUSED = "production_gate_refused"
    PRODUCTION_VERIFICATION_FAILED = "production_verification_failed"
    STAGING_FAILED = "staging_failed"
    APPROVAL_TIMED_OUT = "approval_timed_out"
    VERIFICATION_INCONCLUSIVE = "verification_inconclusive"
    APPROVAL_REQUESTED = "approval_requested"
    DEPLOY_SUCCEEDED = "deploy_succeeded"
    ROLLBACK_SUCCEEDED = "rollback_succeeded"
    TASK_FAILED = "task_failed"
    """A task failed that raises no event of its own (a CI stage, a poller): the failure callback."""
    RUN_FINISHED = "run_finished"
    """The end-of-run summary of an outcome no other event describes (CI passed, failed, rejected...)."""

    @property
    def severity(self) -> Severity:
        return EVENT_SEVERITY[self]

    @property
    def family(self) -> str:
        """Events of one family share a PagerDuty incident (and so a dedup key)."""
        return EVENT_FAMILY.get(self, self.value)

    @property
    def default_environment(self) -> str:
        """The environment the event is about unless its details say; "" when it is about no environment."""
        if self is PipelineEvent.STAGING_FAILED:
            return "staging"
        if self in (PipelineEvent.TASK_FAILED, PipelineEvent.RUN_FINISHED):
            return ""
        return "production"


EVENT_SEVERITY: dict[PipelineEvent, Severity] = {
    PipelineEvent.PRODUCTION_DEPLOY_FAILED: Severity.P1,
    PipelineEvent.ROLLBACK_FAILED: Severity.P1,
    PipelineEvent.ROLLBACK_ABORTED: Severity.P1,
    PipelineEvent.BREAK_GLASS_DEPLOY: Severity.P1,
    PipelineEvent.PRODUCTION_GATE_REFUSED: Severity.P2,
    PipelineEvent.PRODUCTION_VERIFICATION_FAILED: Severity.P1,
    PipelineEvent.STAGING_FAILED: Severity.P2,
    PipelineEvent.APPROVAL_TIMED_OUT: Severity.P2,
    PipelineEvent.VERIFICATION_INCONCLUSIVE: Severity.P2,
    PipelineEvent.APPROVAL_REQUESTED: Severity.P3,
    PipelineEvent.DEPLOY_SUCCEEDED: Severity.P3,
    PipelineEvent.ROLLBACK_SUCCEEDED: Severity.P3,
    PipelineEvent.TASK_FAILED: Severity.P3,
    PipelineEvent.RUN_FINISHED: Severity.P3,
}

PRODUCTION_FAILURE = "production_failure"
"""The family of a broken production release: failed deploy or failed verification.

A successful rollback restores service, so ``rollback_succeeded`` resolves this family.
"""

EVENT_FAMILY: dict[PipelineEvent, str] = {
    PipelineEvent.PRODUCTION_DEPLOY_FAILED: PRODUCTION_FAILURE,
    PipelineEvent.PRODUCTION_VERIFICATION_FAILED: PRODUCTION_FAILURE,
    PipelineEvent.ROLLBACK_SUCCEEDED: PRODUCTION_FAILURE,
}

PAGERDUTY_SEVERITY: dict[Severity, str] = {
    Severity.P1: "critical",
    Severity.P2: "warning",
    Severity.P3: "info",
}


class DestinationKind(StrEnum):
    PAGERDUTY = "pagerduty"
    SLACK = "slack"
    EMAIL = "email"


@dataclass(frozen=True, kw_only=True)
class Destination:
    """One place a notification goes. ``target``: a Slack channel, an e-mail address, or ``events-v2``.

    Small and plain on purpose: the kind picks the provider, the connection id says how to reach
    it, and a sink that records what was sent (a local inbox) needs nothing more.
    """

    kind: DestinationKind
    target: str
    conn_id: str
    action: str = "send"
    """``trigger`` or ``resolve`` for PagerDuty, ``send`` otherwise."""

    def __str__(self) -> str:
        suffix = f" ({self.action})" if self.kind is DestinationKind.PAGERDUTY else ""
        return f"{self.kind.value}:{self.target}{suffix}"


def effective_route(
    severity: Severity, *, service: Service | None, platform: Platform
) -> NotificationRoute | None:
    """The service's route of ``severity`` if it sets one, else the platform's default."""
    own = getattr(service.notifications, severity.value) if service is not None else None
    return own if own is not None else getattr(platform.notifications, severity.value)


def route(
    event: PipelineEvent,
    *,
    service: Service | None,
    platform: Platform,
    slack_conn_id: str | None = None,
) -> list[Destination]:
    """Where ``event`` goes for ``service``: PagerDuty first, then Slack channels, then e-mail.

    ``rollback_succeeded`` also resolves the PagerDuty incident of the production failure
    when the P1 route pages, whatever its own (P3) route says. Slack goes through the
    Web API connection ``platform.connections.slack_api`` unless ``slack_conn_id`` is given.
    """
    event = PipelineEvent(event)
    slack_conn_id = slack_conn_id or platform.connections.slack_api
    found = effective_route(event.severity, service=service, platform=platform)
    destinations: list[Destination] = []
    pagerduty_conn = platform.connections.pagerduty
    if event is PipelineEvent.ROLLBACK_SUCCEEDED:
        paging = effective_route(Severity.P1, service=service, platform=platform)
        if paging is not None and paging.pagerduty:
            destinations.append(
                Destination(
                    kind=DestinationKind.PAGERDUTY,
                    target="events-v2",
                    conn_id=pagerduty_conn,
                    action="resolve",
                )
            )
    elif found is not None and found.pagerduty:
        destinations.append(
            Destination(
                kind=DestinationKind.PAGERDUTY, target="events-v2", conn_id=pagerduty_conn, action="trigger"
            )
        )
    if found is not None:
        destinations += [
            Destination(kind=DestinationKind.SLACK, target=channel, conn_id=slack_conn_id)
            for channel in dict.fromkeys(found.slack_channels)
        ]
        destinations += [
            Destination(kind=DestinationKind.EMAIL, target=address, conn_id=platform.connections.smtp)
            for address in dict.fromkeys(found.email)
        ]
    return destinations


_KEY_PART = re.compile(r"[^A-Za-z0-9_.-]+")


def dedup_key(*, service: str, environment: str, dag_id: str, run_id: str, family: str) -> str:
    """PagerDuty dedup key of one incident: the same for every try of every task of a run.

    Readable prefix, then a hash of the whole identity (PagerDuty keys are at most 255 chars).
    """
    identity = "\x1f".join((service, environment, dag_id, run_id, family))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    prefix = "/".join(_KEY_PART.sub("-", part)[:60] for part in ("delivery", service, environment, family))
    return f"{prefix}/{digest}"
