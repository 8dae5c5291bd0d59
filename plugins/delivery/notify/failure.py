"""Slack notifications of pipeline events, through the Slack provider's notifier.

A notification must never change a pipeline's result: :class:`SafeNotifier`
wraps any ``BaseNotifier``, retries it with backoff, logs a failure with the
reason, and never raises.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

FAILURE_TEXT = (
    ":red_circle: *{{ dag.dag_id }}* task `{{ ti.task_id }}` failed "
    "(try {{ ti.try_number }}) in run `{{ run_id }}`.\n"
    "{% if exception %}Error: {{ exception | string | truncate(300) }}\n{% endif %}"
    "Log: {{ ti.log_url }}"
)


class SafeNotifier(BaseNotifier):
    """Delivers through ``inner`` with retries; logs and swallows every error.

    ``inner`` may be given as ``build``, a function that makes it when it is first needed: a
    notifier built at DAG parse time then imports its provider (the Slack SDK pulls in aiohttp)
    only in a process that sends something, not in every parse of every task process.
    """

    template_fields = ()

    def __init__(
        self,
        *,
        inner: BaseNotifier | None = None,
        build: Callable[[], BaseNotifier] | None = None,
        attempts: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        super().__init__()
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts!r}")
        if (inner is None) == (build is None):
            raise ValueError("give either inner or build")
        self._inner = inner
        self._build = build
        self.attempts = attempts
        self.backoff_s = backoff_s

    @property
    def inner(self) -> BaseNotifier:
        if self._inner is None:
            assert self._build is not None
            self._inner = self._build()
        return self._inner

    def notify(self, context: Context) -> None:
        self.deliver(context)

    def deliver(self, context: Context | dict[str, Any]) -> bool:
        """Send; True if delivered, False (logged and recorded) if every attempt failed."""
        name = type(self.inner).__name__
        for attempt in range(1, self.attempts + 1):
            try:
                self.inner(context)
                return True
            except Exception as exc:
                if "isn't defined" in str(exc):  # AirflowNotFoundException: retrying cannot help
                    log.warning("Notification through %s skipped: %s", name, exc)
                    _record_failure(context, f"{name}: {exc}")
                    return False
                if attempt == self.attempts:
                    log.error(
                        "Notification through %s failed after %d attempts; the pipeline's result is unchanged: %s",
                        name,
                        attempt,
                        exc,
                    )
                    _record_failure(context, f"{name}: {exc}")
                    return False
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "Notification through %s failed (attempt %d), retrying in %.1fs: %s",
                    name,
                    attempt,
                    delay,
                    exc,
                )
                time.sleep(delay)
        return False


def _record_failure(context: Context | dict[str, Any], message: str) -> None:
    """Keep the failure visible on the task (XCom) without raising."""
    ti = context.get("ti")
    try:
        if ti is not None:
            ti.xcom_push(key="notification_error", value=message[:500])
    except Exception:  # the task may already be finished; logging above is enough
        log.debug("could not record the notification failure", exc_info=True)


def _slack_webhook(slack_conn_id: str, text: str) -> BaseNotifier:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier  # slack_sdk, aiohttp

    return SlackWebhookNotifier(slack_webhook_conn_id=slack_conn_id, text=text)


def slack_failure_notifier(*, slack_conn_id: str) -> SafeNotifier:
    """The ``on_failure_callback`` of every task: DAG, task, run and a log link (Slack loaded on failure)."""
    return SafeNotifier(build=functools.partial(_slack_webhook, slack_conn_id, FAILURE_TEXT))


def send_slack(*, slack_conn_id: str, text: str, context: Context | dict[str, Any]) -> bool:
    """Post ``text`` now (not templated). Returns False, after logging, if it could not be delivered."""
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    notifier = SafeNotifier(inner=SlackWebhookNotifier(slack_webhook_conn_id=slack_conn_id, text=text))
    return notifier.deliver(context)
