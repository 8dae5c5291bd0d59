"""SonarQube quality gate over its Web API (seed flow 2: "Quality gate result").

:class:`SonarQubeHook` is the HTTP provider's ``HttpHook`` with the project's reading of a
connection (:mod:`delivery.integrations.http`): ``host`` (and ``schema``, ``port``) give the
SonarQube URL, ``password`` is a user token sent as ``Authorization: Bearer <token>``. Every call
is retried on a connection error, a timeout or a 5xx answer (SonarQube answers 503 while it starts
or is under maintenance). :class:`SonarQualityGateOperator` waits for the project's analysis to be
processed (``GET /api/ce/component``), then reads the gate
(``GET /api/qualitygates/project_status``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tenacity
from airflow.sdk import BaseOperator

from delivery.integrations.http import TRANSIENT_ERRORS, ConnectionHttpHook, transient_retry

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["QualityGateFailed", "SonarQualityGateOperator", "SonarQubeHook"]

REQUEST_TIMEOUT_S = 30.0


class QualityGateFailed(RuntimeError):
    pass


class SonarQubeHook(ConnectionHttpHook):
    """GET calls to the SonarQube Web API, JSON answers (module doc)."""

    conn_name_attr = "sonarqube_conn_id"
    default_conn_name = "sonarqube_default"
    conn_type = "http"
    hook_name = "SonarQube"

    def __init__(self, *, sonarqube_conn_id: str = default_conn_name) -> None:
        super().__init__(method="GET", http_conn_id=sonarqube_conn_id)
        self.sonarqube_conn_id = sonarqube_conn_id

    def get_json(self, endpoint: str, params: dict[str, str]) -> dict[str, Any]:
        """The JSON answer of ``GET endpoint?params``; :class:`QualityGateFailed` says what to fix."""
        where = f"SonarQube {endpoint}"
        try:
            response = self.run_with_advanced_retry(
                transient_retry(),
                endpoint=endpoint,
                data=params,
                extra_options={"check_response": False, "timeout": REQUEST_TIMEOUT_S},
            )
        except TRANSIENT_ERRORS as exc:
            raise QualityGateFailed(f"{where} is unreachable at {self.base_url}: {exc}") from exc
        if response.status_code in (401, 403):
            raise QualityGateFailed(
                f"SonarQube refused the token of connection {self.sonarqube_conn_id!r} "
                f"({response.status_code}); check it"
            )
        if response.status_code != 200:
            raise QualityGateFailed(f"{where} answered {response.status_code}: {response.text[:300]}")
        data: dict[str, Any] = response.json()
        return data


class SonarQualityGateOperator(BaseOperator):
    """Waits for the project's analysis to be processed, then fails unless the gate is OK.

    :param project_key: the SonarQube project. Templated, like ``branch`` and ``pull_request``.
    :param sonarqube_conn_id: the connection (see :class:`SonarQubeHook`).
    :param wait_timeout_s: how long the analysis may stay queued.
    :param poll_interval_s: seconds between two looks at the queue.
    """

    template_fields = ("project_key", "branch", "pull_request")

    def __init__(
        self,
        *,
        project_key: str,
        sonarqube_conn_id: str = SonarQubeHook.default_conn_name,
        branch: str | None = None,
        pull_request: str | None = None,
        wait_timeout_s: float = 600,
        poll_interval_s: float = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not project_key:
            raise ValueError("project_key must not be empty")
        self.project_key = project_key
        self.sonarqube_conn_id = sonarqube_conn_id
        self.branch = branch
        self.pull_request = pull_request
        self.wait_timeout_s = wait_timeout_s
        self.poll_interval_s = poll_interval_s

    def execute(self, context: Context) -> dict[str, Any]:
        hook = SonarQubeHook(sonarqube_conn_id=self.sonarqube_conn_id)
        self._wait_for_analysis(hook)
        params = {"projectKey": self.project_key}
        if self.pull_request:
            params["pullRequest"] = self.pull_request
        elif self.branch:
            params["branch"] = self.branch
        status = hook.get_json("/api/qualitygates/project_status", params)["projectStatus"]
        if status.get("status") != "OK":
            failing = [
                f"{c.get('metricKey')}={c.get('actualValue')} ({c.get('comparator')} {c.get('errorThreshold')})"
                for c in status.get("conditions", [])
                if c.get("status") == "ERROR"
            ]
            raise QualityGateFailed(
                f"Quality gate of {self.project_key} is {status.get('status')}: "
                + ("; ".join(failing) or "no details")
            )
        self.log.info("Quality gate of %s passed", self.project_key)
        return {"project_key": self.project_key, "status": "OK", "conditions": status.get("conditions", [])}

    def _wait_for_analysis(self, hook: SonarQubeHook) -> None:
        """Poll the project's background tasks until none is queued; a failed analysis fails the gate."""
        waiting = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.wait_timeout_s),
            wait=tenacity.wait_fixed(self.poll_interval_s),
            retry=tenacity.retry_if_result(lambda answer: bool(answer.get("queue"))),
        )
        try:
            answer = waiting(hook.get_json, "/api/ce/component", {"component": self.project_key})
        except tenacity.RetryError:
            raise QualityGateFailed(
                f"SonarQube analysis of {self.project_key} still queued after {self.wait_timeout_s:.0f}s"
            ) from None
        current = answer.get("current") or {}
        if current.get("status") in ("FAILED", "CANCELED"):
            raise QualityGateFailed(
                f"SonarQube analysis of {self.project_key} ended {current['status']}: "
                f"{current.get('errorMessage', 'no message')}"
            )
