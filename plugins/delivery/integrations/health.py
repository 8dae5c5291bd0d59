"""HTTP health check of a deployed environment, as a rescheduling sensor (no slot held while waiting).

Why not the HTTP provider's ``HttpHook``/``HttpSensor``: the URL is the environment's health URL
from the catalog (for the rollback DAG, templated from the rollback plan's XCom), not an Airflow
connection, and ``HttpHook`` always resolves a connection and prefixes its base URL to the
endpoint. A connection per environment would duplicate the catalog. The sensor's own pokes are its
retries (a failed GET is "not healthy yet"), so it needs no retry policy either.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import requests
from airflow.sdk import PokeReturnValue
from airflow.sdk.bases.sensor import BaseSensorOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class HealthCheckSensor(BaseSensorOperator):
    """Waits until ``url`` answers 200 with a JSON body whose ``status`` is healthy.

    ``expect_version`` (templated), when set, must equal the body's ``commit``
    or ``version``: the health of the *new* release, not the old one. The task's XCom says when
    the service was found healthy (``healthy_at``, ISO 8601, UTC), what the deploy metrics use.
    """

    template_fields = ("url", "expect_version")

    def __init__(
        self, *, url: str, expect_version: str | None = None, request_timeout: float = 5.0, **kwargs: Any
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 10)
        super().__init__(**kwargs)
        if not url.startswith(("http://", "https://", "{{")):
            raise ValueError(f'url "{url}" must start with http:// or https://')
        self.url = url
        self.expect_version = expect_version
        self.request_timeout = request_timeout

    def poke(self, context: Context) -> bool | PokeReturnValue:
        try:
            resp = requests.get(self.url, timeout=self.request_timeout)
        except requests.RequestException as exc:
            self.log.info("%s not reachable yet: %s", self.url, exc)
            return False
        if resp.status_code != 200:
            self.log.info("%s answered %s: %s", self.url, resp.status_code, resp.text[:200])
            return False
        try:
            body = resp.json()
        except ValueError:
            body = {}
        status = str(body.get("status", "ok")).lower()
        if status not in ("ok", "healthy", "up", "pass"):
            self.log.info("%s reports status %r", self.url, status)
            return False
        if self.expect_version and self.expect_version not in (body.get("commit"), body.get("version")):
            self.log.info(
                "%s still serves %s, waiting for %s",
                self.url,
                body.get("commit") or body.get("version"),
                self.expect_version,
            )
            return False
        self.log.info("%s is healthy: %s", self.url, body)
        healthy_at = datetime.now(UTC).isoformat()
        return PokeReturnValue(is_done=True, xcom_value={"url": self.url, "healthy_at": healthy_at})
