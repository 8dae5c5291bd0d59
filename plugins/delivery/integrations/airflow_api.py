"""Airflow's own REST API, read by the pipeline where the Task SDK cannot reach.

A task can only read its own human-in-the-loop record through the Task SDK,
and nothing else about other task instances. Three guarantees need more, read
from the public REST API with a read-only account:

* the production deploy checks the recorded answer of this run's approval
  (``hitlDetails``: who answered what), which users cannot forge (a HITL answer
  is accepted once, and only from an assigned user), unlike XCom, which any user
  with edit rights can write;
* a refused deploy names who changed a task's state by hand (the audit log,
  ``eventLogs``, event ``patch_task_instance``);
* a human gate whose first try was failed by the scheduler right after it was
  answered resumes with the recorded answer (:mod:`delivery.pipeline.gates`).

The connection (``platform.connections.airflow_api``, an HTTP connection) holds
the API server's URL as host (``http://127.0.0.1:8080``) and a login and password;
a token comes from ``POST /auth/token`` (the simple and FAB auth managers).
``HttpHook`` is not used because that token exchange is not one of its auth
types; requests with a tenacity retry does the same in a few lines.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any
from urllib.parse import quote

import requests
from airflow.sdk.bases.hook import BaseHook
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)

SET_BY_HAND = ("patch_task_instance", "patch_task_group_instances")
"""Audit events of a task state set by hand (UI "Mark as ..." or REST)."""
STATE_CHANGE_EVENTS = (*SET_BY_HAND, "post_clear_task_instances")


class AirflowApiError(RuntimeError):
    """The REST API could not be read; the message says what to configure."""


_retry = retry(
    retry=retry_if_exception_type((requests.ConnectionError, requests.Timeout)),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.5, max=4),
    reraise=True,
)


class AirflowApiHook(BaseHook):
    conn_name_attr = "airflow_api_conn_id"
    default_conn_name = "airflow_api"
    conn_type = "http"
    hook_name = "Airflow REST API"

    def __init__(self, *, airflow_api_conn_id: str = default_conn_name, timeout: float = 10.0) -> None:
        super().__init__()
        self.airflow_api_conn_id = airflow_api_conn_id
        self.timeout = timeout

    @cached_property
    def _settings(self) -> tuple[str, str, str]:
        try:
            conn = self.get_connection(self.airflow_api_conn_id)
        except Exception as exc:  # AirflowNotFoundException and friends
            raise AirflowApiError(
                f"Airflow connection {self.airflow_api_conn_id!r} is not defined: give it the API server URL "
                "as host and a read-only account's login and password"
            ) from exc
        host = (conn.host or "").rstrip("/")
        if not host:
            raise AirflowApiError(
                f"Airflow connection {self.airflow_api_conn_id!r} has no host (the API server URL)"
            )
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
        return host, conn.login or "", conn.password or ""

    @cached_property
    def session(self) -> requests.Session:
        base, login, password = self._settings
        session = requests.Session()
        resp = _retry(session.post)(
            f"{base}/auth/token", json={"username": login, "password": password}, timeout=self.timeout
        )
        if resp.status_code not in (200, 201):
            raise AirflowApiError(
                f"login of {login!r} to {base} failed ({resp.status_code}); check the connection "
                f"{self.airflow_api_conn_id!r}"
            )
        session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        return session

    def _get(self, path: str, **params: Any) -> dict[str, Any] | None:
        base = self._settings[0]
        resp = _retry(self.session.get)(f"{base}/api/v2{path}", params=params, timeout=self.timeout)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise AirflowApiError(f"GET /api/v2{path} answered {resp.status_code}: {resp.text[:200]}")
        data: dict[str, Any] = resp.json()
        return data

    @staticmethod
    def _ti_path(dag_id: str, run_id: str, task_id: str) -> str:
        return f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/{quote(task_id, safe='')}"

    def hitl_detail(
        self, *, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> dict[str, Any] | None:
        """The human-in-the-loop record of a task instance (None when it never asked)."""
        return self._get(f"{self._ti_path(dag_id, run_id, task_id)}/{map_index}/hitlDetails")

    def task_instance(self, *, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        return self._get(self._ti_path(dag_id, run_id, task_id))

    def events(
        self,
        *,
        dag_id: str,
        run_id: str,
        task_id: str | None = None,
        events: tuple[str, ...],
        try_number: int | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Audit log entries (newest first) of a run, optionally of one task (and one of its tries)."""
        params: dict[str, Any] = {
            "dag_id": dag_id,
            "run_id": run_id,
            "included_events": list(events),
            "order_by": "-when",
            "limit": limit,
        }
        if task_id:
            params["task_id"] = task_id
        if try_number is not None:
            params["try_number"] = try_number
        data = self._get("/eventLogs", **params) or {}
        return list(data.get("event_logs") or [])

    def state_changes(self, *, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Who set or cleared the state of a task by hand (UI or REST), newest first."""
        return self.events(dag_id=dag_id, run_id=run_id, task_id=task_id, events=STATE_CHANGE_EVENTS)

    def pool(self, name: str) -> dict[str, Any] | None:
        return self._get(f"/pools/{quote(name, safe='')}")


def describe_state_changes(changes: list[dict[str, Any]]) -> str:
    """One line naming who changed a task's state by hand, as the audit log recorded it."""
    if not changes:
        return "no state change by hand was recorded (the bulk task-instance endpoint is not audited)"
    parts = []
    for entry in changes[:3]:
        extra = str(entry.get("extra") or "")
        parts.append(
            f"{entry.get('owner') or '?'} ({entry.get('event')}, {entry.get('when')}, {extra[:120]})"
        )
    return "state changed by " + "; ".join(parts)
