"""Providers: one small object per kind of destination, sending a ready message through a provider hook.

No notifier class of the Airflow providers is used here: their ``template_fields``
(Slack ``text``, PagerDuty ``summary``, SMTP ``subject``/``html_content``) are
rendered with Jinja, and a message quotes foreign text (an error, a reason, a ref),
so ``{{ conn.x.password }}`` in a commit message would be evaluated. Each provider
calls the hook itself with the plain text of :class:`~delivery.notify.messages.EventMessage`.

A provider sends once. The retry policy belongs to the caller
(:mod:`delivery.notify.send`): the clients' own retries are turned off and every
request gets the caller's timeout. Errors come back as :class:`NotConfigured` (no
connection, or one without its secret: nothing to retry) or :class:`SendFailed`,
whose ``transient`` says whether trying again can help (network errors, timeouts,
HTTP 429 and 5xx, SMTP 4xx) or not (a bad request, a refused token or recipient).

A destination is only ``(kind, target, conn_id)``: another provider for a kind (a local
sink that records what is sent) needs nothing more than :class:`Provider`.

PagerDuty: the provider's ``PagerdutyEventsHook`` always talks to
``https://events.pagerduty.com``. :class:`RegionalPagerdutyEventsHook` keeps
its connection handling and event building (``prepare_event_data``) and
passes the ``pagerduty`` client's supported ``base_url`` setting from the
connection's extra ``events_base_url`` (for example
``https://events.eu.pagerduty.com`` for an EU account). The client only
accepts ``https://`` base URLs. The extra ``events_ca_file`` (a PEM file) makes
this one client trust that certificate authority instead of the system's: the
local profile's inbox serves PagerDuty's endpoint over TLS with a certificate of
its own (:mod:`delivery.devenv.inbox_server`). Trusting it through ``SSL_CERT_FILE``
instead, as a test can, would replace the trusted roots of every TLS client of the
process and of the programs it starts (git, the Docker CLI), not of this one.
"""

from __future__ import annotations

import math
import os
import smtplib
import ssl
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pagerduty
from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsHook, prepare_event_data
from airflow.providers.slack.hooks.slack import SlackHook
from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from slack_sdk.errors import SlackApiError

from delivery.notify.routing import Destination, DestinationKind

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from delivery.notify.messages import EventMessage

EVENTS_BASE_URL_EXTRA = "events_base_url"
EVENTS_CA_FILE_EXTRA = "events_ca_file"
SLACK_USERNAME = "Visiobook Delivery"
FROM_EMAIL = "delivery@visiobook.io"


class NotConfigured(Exception):
    """The destination has no usable connection: reported, never retried."""


class SendFailed(Exception):
    """The destination refused or could not be reached. ``transient``: a retry may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Provider(Protocol):
    """Sends one message to one destination of its kind, once."""

    kind: ClassVar[DestinationKind]

    def check(self, destination: Destination) -> None:
        """Raise :class:`NotConfigured` when the destination cannot be used at all."""

    def send(
        self, destination: Destination, message: EventMessage, *, dedup_key: str | None, timeout_s: float
    ) -> None:
        """Deliver or raise :class:`SendFailed`; never wait longer than ``timeout_s`` per request."""


def connection(conn_id: str, *, secret: str | None = None) -> Connection:
    """The Airflow connection ``conn_id``; :class:`NotConfigured` if it is missing or lacks ``secret``."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise NotConfigured(f"connection {conn_id!r} is not defined") from None
    if secret and not conn.password:
        raise NotConfigured(f"connection {conn_id!r} has no {secret} (its password field)")
    return conn


def _http_transient(status: int | None) -> bool:
    return status is None or status == 429 or status >= 500


class SlackProvider:
    """Slack Web API ``chat.postMessage`` to the destination's channel (connection: a bot token)."""

    kind: ClassVar[DestinationKind] = DestinationKind.SLACK

    def check(self, destination: Destination) -> None:
        connection(destination.conn_id, secret="bot token")

    def send(
        self, destination: Destination, message: EventMessage, *, dedup_key: str | None, timeout_s: float
    ) -> None:
        hook = SlackHook(
            slack_conn_id=destination.conn_id,
            timeout=max(1, math.floor(timeout_s)),
            retry_handlers=[],  # the caller's policy retries, not slack_sdk's
        )
        body = {
            "channel": destination.target,
            "text": message.slack_text(),
            "username": SLACK_USERNAME,
            "unfurl_links": False,
            "unfurl_media": False,
        }
        try:
            hook.call("chat.postMessage", json=body)
        except SlackApiError as err:
            status = getattr(err.response, "status_code", None)
            reason = err.response.get("error") if err.response is not None else None
            raise SendFailed(
                f"Slack answered {status}: {reason}", transient=_http_transient(status)
            ) from None
        except OSError as err:  # refused, reset, DNS, timeout (urllib)
            raise SendFailed(f"Slack unreachable: {type(err).__name__}: {err}", transient=True) from None


class RegionalPagerdutyEventsHook(PagerdutyEventsHook):
    """``PagerdutyEventsHook`` that honours the extra ``events_base_url`` and a request timeout.

    The ``pagerduty`` client retries by itself (network errors 3 times, HTTP 429 without
    limit) and waits up to 60 s per request; here it sends once within ``timeout_s`` and
    hands back the first error answer, so that the caller's policy is the only one.
    """

    def __init__(
        self, *, pagerduty_events_conn_id: str, integration_key: str | None = None, timeout_s: float = 10.0
    ) -> None:
        super().__init__(integration_key=integration_key, pagerduty_events_conn_id=pagerduty_events_conn_id)
        extra = self.get_connection(pagerduty_events_conn_id).extra_dejson or {}
        self.events_base_url: str | None = extra.get(EVENTS_BASE_URL_EXTRA) or None
        self.events_ca_file: str | None = extra.get(EVENTS_CA_FILE_EXTRA) or None
        self.timeout_s = timeout_s

    def send_event(self, summary: str, severity: str, **kwargs: Any) -> str:  # type: ignore[override]
        data = prepare_event_data(summary=summary, severity=severity, **kwargs)
        tls: dict[str, Any] = {}
        if self.events_ca_file:  # httpx2's ``verify``: this client only trusts that authority
            tls["verify"] = ssl.create_default_context(cafile=self.events_ca_file)
        client = pagerduty.EventsApiV2Client(self.integration_key, base_url=self.events_base_url, **tls)
        client.timeout = self.timeout_s  # type: ignore[assignment]  # httpx takes float seconds
        client.max_network_attempts = 0  # the first network error is raised
        client.retry = {429: 1}  # a 429 follows the counted path below, not the unlimited one
        client.max_http_attempts = -1  # ... which hands the first error answer back at once
        try:
            return str(client.send_event(**data))
        finally:
            client.close()


class PagerDutyProvider:
    """PagerDuty Events API v2: trigger or resolve, with the event's dedup key."""

    kind: ClassVar[DestinationKind] = DestinationKind.PAGERDUTY

    def check(self, destination: Destination) -> None:
        conn = connection(destination.conn_id, secret="routing key")
        ca_file = (conn.extra_dejson or {}).get(EVENTS_CA_FILE_EXTRA)
        if ca_file and not os.access(ca_file, os.R_OK):
            raise NotConfigured(
                f"connection {destination.conn_id!r}: its extra {EVENTS_CA_FILE_EXTRA} {ca_file!r} "
                "cannot be read (a PEM file of the certificate authority to trust)"
            )

    def send(
        self, destination: Destination, message: EventMessage, *, dedup_key: str | None, timeout_s: float
    ) -> None:
        fields = message.pagerduty_event()
        if destination.action == "resolve":
            fields["summary"] = f"{message.service}: {message.headline}"[:1024]
        hook = RegionalPagerdutyEventsHook(pagerduty_events_conn_id=destination.conn_id, timeout_s=timeout_s)
        try:
            hook.send_event(action=destination.action, dedup_key=dedup_key, **fields)
        except pagerduty.Error as err:
            status = err.response.status_code if err.response is not None else None
            what = f"PagerDuty answered {status}" if status else "PagerDuty unreachable"
            raise SendFailed(f"{what}: {err}", transient=_http_transient(status)) from None


class BoundedSmtpHook(SmtpHook):
    """``SmtpHook`` that tries once (the caller retries) within the caller's timeout."""

    def __init__(self, *, smtp_conn_id: str, timeout_s: float) -> None:
        super().__init__(smtp_conn_id=smtp_conn_id)
        self.timeout_cap = max(1, math.floor(timeout_s))

    @property
    def smtp_retry_limit(self) -> int:
        return 0

    @property
    def timeout(self) -> int:
        return min(int(self.conn.extra_dejson.get("timeout", 30)), self.timeout_cap)


class EmailProvider:
    """One e-mail per address through the SMTP connection (HTML body, already escaped)."""

    kind: ClassVar[DestinationKind] = DestinationKind.EMAIL

    def check(self, destination: Destination) -> None:
        if not connection(destination.conn_id).host:
            raise NotConfigured(f"connection {destination.conn_id!r} has no host")

    def send(
        self, destination: Destination, message: EventMessage, *, dedup_key: str | None, timeout_s: float
    ) -> None:
        try:
            with BoundedSmtpHook(smtp_conn_id=destination.conn_id, timeout_s=timeout_s) as hook:
                hook.send_email_smtp(
                    to=[destination.target],
                    subject=message.email_subject(),
                    html_content=message.email_html(),
                    from_email=hook.from_email or FROM_EMAIL,
                )
        except smtplib.SMTPResponseException as err:  # 4xx: try later; 5xx: refused for good
            raise SendFailed(f"SMTP answered {err.smtp_code}", transient=400 <= err.smtp_code < 500) from None
        except smtplib.SMTPRecipientsRefused as err:
            codes = sorted({code for code, _ in err.recipients.values()})
            transient = all(400 <= code < 500 for code in codes)
            raise SendFailed(f"SMTP refused the recipient ({codes})", transient=transient) from None
        except (smtplib.SMTPException, OSError) as err:  # disconnected, refused, timeout
            raise SendFailed(f"SMTP unreachable: {type(err).__name__}: {err}", transient=True) from None
        except Exception as err:
            # SmtpHook turns a failed connection into AirflowException("Unable to connect ...").
            transient = isinstance(err.__context__, smtplib.SMTPException | OSError)
            raise SendFailed(f"SMTP: {type(err).__name__}: {err}", transient=transient) from None


PROVIDERS: dict[DestinationKind, Provider] = {
    DestinationKind.SLACK: SlackProvider(),
    DestinationKind.PAGERDUTY: PagerDutyProvider(),
    DestinationKind.EMAIL: EmailProvider(),
}
