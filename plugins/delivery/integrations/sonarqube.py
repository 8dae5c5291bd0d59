"""SonarQube quality gate over its REST API (seed flow 2: "Quality gate result")."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import requests
from airflow.sdk import BaseOperator
from airflow.sdk.bases.hook import BaseHook

if TYPE_CHECKING:
    from airflow.sdk import Context


class QualityGateFailed(RuntimeError):
    pass


class SonarQualityGateOperator(BaseOperator):
    """Waits for the project's analysis to be processed, then fails unless the gate is OK.

    Uses ``GET /api/ce/component`` (background tasks) and
    ``GET /api/qualitygates/project_status``. The connection's host is the
    SonarQube URL and its password the token (sent as a Bearer token).
    """

    template_fields = ("project_key", "branch", "pull_request")

    def __init__(
        self,
        *,
        project_key: str,
        sonarqube_conn_id: str = "sonarqube_default",
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

    def _session(self) -> tuple[requests.Session, str]:
        conn = BaseHook.get_connection(self.sonarqube_conn_id)
        host = conn.host or ""
        base = host if "://" in host else f"{conn.schema or 'https'}://{host}"
        if conn.port:
            base = f"{base.rstrip('/')}:{conn.port}"
        session = requests.Session()
        if conn.password:
            session.headers["Authorization"] = f"Bearer {conn.password}"
        return session, base.rstrip("/")

    def execute(self, context: Context) -> dict[str, Any]:
        session, base = self._session()
        params = {"projectKey": self.project_key}
        if self.pull_request:
            params["pullRequest"] = self.pull_request
        elif self.branch:
            params["branch"] = self.branch
        deadline = time.monotonic() + self.wait_timeout_s
        while True:
            ce = self._get(session, f"{base}/api/ce/component", {"component": self.project_key})
            pending = ce.get("queue") or []
            current = ce.get("current") or {}
            if not pending:
                if current.get("status") in ("FAILED", "CANCELED"):
                    raise QualityGateFailed(
                        f"SonarQube analysis of {self.project_key} ended {current['status']}: "
                        f"{current.get('errorMessage', 'no message')}"
                    )
                break
            if time.monotonic() > deadline:
                raise QualityGateFailed(
                    f"SonarQube analysis of {self.project_key} still queued after {self.wait_timeout_s:.0f}s"
                )
            time.sleep(self.poll_interval_s)
        status = self._get(session, f"{base}/api/qualitygates/project_status", params)["projectStatus"]
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

    def _get(self, session: requests.Session, url: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            resp = session.get(url, params=params, timeout=30)
        except requests.RequestException as exc:
            raise QualityGateFailed(f"SonarQube at {url} is unreachable: {exc}") from exc
        if resp.status_code in (401, 403):
            raise QualityGateFailed(
                f"SonarQube refused the token of connection {self.sonarqube_conn_id!r} ({resp.status_code}); check it"
            )
        if resp.status_code != 200:
            raise QualityGateFailed(f"SonarQube {url} answered {resp.status_code}: {resp.text[:300]}")
        data: dict[str, Any] = resp.json()
        return data
