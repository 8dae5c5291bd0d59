"""The providers' notifiers, used with pre-rendered messages.

Messages are built in Python (:mod:`delivery.notify.messages`) and may quote
anything (an error, a commit subject), so these subclasses turn off Jinja
templating: a ``{{`` in an error message is sent as is, never evaluated.

PagerDuty: the provider's ``PagerdutyEventsHook`` always talks to
``https://events.pagerduty.com``. :class:`RegionalPagerdutyEventsHook` keeps
its connection handling and event building (``prepare_event_data``) and
passes the ``pagerduty`` client's supported ``base_url`` setting from the
connection's extra ``events_base_url`` (for example
``https://events.eu.pagerduty.com`` for an EU account). The client only
accepts ``https://`` base URLs.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsHook, prepare_event_data
from airflow.providers.pagerduty.notifications.pagerduty import PagerdutyNotifier
from airflow.providers.slack.notifications.slack import SlackNotifier
from airflow.providers.smtp.notifications.smtp import SmtpNotifier

EVENTS_BASE_URL_EXTRA = "events_base_url"


class RegionalPagerdutyEventsHook(PagerdutyEventsHook):
    """``PagerdutyEventsHook`` that honours the connection extra ``events_base_url``."""

    def __init__(self, *, pagerduty_events_conn_id: str, integration_key: str | None = None) -> None:
        super().__init__(integration_key=integration_key, pagerduty_events_conn_id=pagerduty_events_conn_id)
        extra = self.get_connection(pagerduty_events_conn_id).extra_dejson or {}
        self.events_base_url: str | None = extra.get(EVENTS_BASE_URL_EXTRA) or None

    def send_event(self, summary: str, severity: str, **kwargs: Any) -> str:  # type: ignore[override]
        import pagerduty

        data = prepare_event_data(summary=summary, severity=severity, **kwargs)
        client = pagerduty.EventsApiV2Client(self.integration_key, base_url=self.events_base_url)
        try:
            return str(client.send_event(**data))
        finally:
            client.close()


class PlainPagerdutyNotifier(PagerdutyNotifier):
    template_fields = ()  # type: ignore[assignment]

    @cached_property
    def hook(self) -> PagerdutyEventsHook:
        return RegionalPagerdutyEventsHook(
            pagerduty_events_conn_id=self.pagerduty_events_conn_id or "pagerduty_events_default",
            integration_key=self.integration_key,
        )


class PlainSlackNotifier(SlackNotifier):
    template_fields = ()


class PlainSmtpNotifier(SmtpNotifier):
    template_fields = ()  # type: ignore[assignment]
