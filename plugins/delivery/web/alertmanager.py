"""Alertmanager webhook receiver: automatic rollback from monitoring (seed flow 6).

``POST /delivery/alertmanager/webhook`` (this router is mounted under
``/delivery`` by the plugin) receives Alertmanager's webhook body, version 4,
and starts the ``rollback_<service>`` DAG of each alert that asks for it.

Authentication: ``Authorization: Bearer <token>``, compared in constant time
with the password of the Airflow connection named by the catalog's
``platform.connections.alertmanager_webhook`` (read at most once a minute).
Anything else is answered 401. The token is never logged.

Which alerts start a rollback, and why the others do not (each ignored alert
is listed in the response with its reason):

* the notification and the alert are ``firing`` (``resolved`` never starts one);
* the alert has a ``service`` label naming a catalog service;
* the alert carries ``rollback="auto"``. The label is *required*, not just
  honoured when present: a rollback changes production, so only alert rules
  that opted in can trigger one, even if a route sends other alerts here;
* its ``environment`` label, when set, is ``production`` or ``staging``
  (default ``production``);
* no other rollback of that service is queued or running, and no earlier
  alert of the same notification already started one for that service.

Idempotency: the run id is derived from (service, fingerprint, startsAt), so
the repeat notifications Alertmanager sends every ``repeat_interval`` and
concurrent deliveries of the same notification map to the same run; the
unique constraint on (dag_id, run_id) of the metadata database is the atomic
guard. A new occurrence of the same alert (it resolved, then fired again) has
a new ``startsAt`` and may start a new rollback.

The DAG is triggered with Airflow's own :func:`airflow.api.common.trigger_dag.trigger_dag`
inside the api-server process (no subprocess, no HTTP round trip).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Header, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

router = APIRouter(prefix="/alertmanager", tags=["alertmanager"])

TOKEN_CACHE_SECONDS = 60.0
MISSING_TOKEN_CACHE_SECONDS = 5.0
ENVIRONMENTS = ("production", "staging")
TRIGGERING_USER = "alertmanager"
ACTIVE_STATES = ("queued", "running")


# -- payload (tolerant: unknown fields are kept and ignored) -----------------------------


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = "firing"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""  # Alertmanager field names
    endsAt: str = ""
    generatorURL: str = ""
    fingerprint: str = ""


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str = "4"
    status: str = "firing"
    receiver: str = ""
    groupKey: str = ""
    alerts: list[Alert] = Field(default_factory=list)


# -- authentication ---------------------------------------------------------------------


class _TokenCache:
    """The expected token, read from the Airflow connection at most once per TTL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: str | None = None
        self._expires = 0.0

    def clear(self) -> None:
        with self._lock:
            self._value, self._expires = None, 0.0

    def get(self) -> str | None:
        now = time.monotonic()
        with self._lock:
            if now < self._expires:
                return self._value
        value = _read_token()
        ttl = TOKEN_CACHE_SECONDS if value else MISSING_TOKEN_CACHE_SECONDS
        with self._lock:
            self._value, self._expires = value, now + ttl
        return value


def _conn_id() -> str:
    from delivery.runtime import catalog

    return catalog().platform.connections.alertmanager_webhook


def _read_token() -> str | None:
    from airflow.models.connection import Connection

    conn_id = _conn_id()
    try:
        conn = Connection.get_connection_from_secrets(conn_id)
    except Exception as exc:  # not defined, or the secrets backend failed
        log.error("Alertmanager webhook: connection %r unavailable (%s)", conn_id, type(exc).__name__)
        return None
    password = conn.password or ""
    if not password:
        log.error("Alertmanager webhook: connection %r has no password (the bearer token)", conn_id)
        return None
    return str(password)


TOKENS = _TokenCache()


def authenticate(authorization: str | None) -> None:
    """401 unless ``authorization`` is ``Bearer <the connection's password>``."""
    scheme, _, presented = (authorization or "").partition(" ")
    expected = TOKENS.get()
    ok = bool(
        expected
        and scheme.lower() == "bearer"
        and hmac.compare_digest(presented.strip().encode(), expected.encode())
    )
    if not ok:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="invalid or missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


# -- decisions (pure) -------------------------------------------------------------------


def _normalized_start(value: str) -> str:
    """startsAt as UTC ISO-8601, so formatting differences never change the run id."""
    text = value.strip()
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        # Go may send 9 fractional digits; Python accepts at most 6.
        head, dot, rest = text.partition(".")
        if not dot:
            return text
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        try:
            moment = datetime.fromisoformat(f"{head}.{digits[:6]}{zone}".replace("Z", "+00:00"))
        except ValueError:
            return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def fingerprint_of(alert: Alert) -> str:
    if alert.fingerprint:
        return alert.fingerprint
    canonical = "\n".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def rollback_run_id(*, service: str, fingerprint: str, starts_at: str) -> str:
    """Deterministic run id of the rollback started by one alert occurrence."""
    digest = hashlib.sha256(f"{service}\n{fingerprint}\n{_normalized_start(starts_at)}".encode()).hexdigest()
    safe = "".join(ch for ch in fingerprint if ch.isalnum())[:32] or "nofp"
    return f"alert__{safe}__{digest[:16]}"


def rollback_reason(alert: Alert) -> str:
    name = alert.labels.get("alertname") or "alert"
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or "no summary"
    return f"automatic rollback: {name} ({' '.join(summary.split())})"[:500]


def triage(body: WebhookBody, *, services: set[str]) -> tuple[list[tuple[Alert, str]], list[dict[str, str]]]:
    """([(alert, service)] to roll back, [ignored {fingerprint, reason}]), pure."""
    accepted: list[tuple[Alert, str]] = []
    ignored: list[dict[str, str]] = []
    for alert in body.alerts:
        fp = fingerprint_of(alert)
        service = alert.labels.get("service", "")
        environment = alert.labels.get("environment") or "production"
        reason = None
        if body.status != "firing" or alert.status != "firing":
            reason = f"alert is {alert.status if alert.status != 'firing' else body.status}, not firing"
        elif not service:
            reason = "alert has no 'service' label"
        elif service not in services:
            reason = f"service {service!r} is not in the catalog"
        elif alert.labels.get("rollback") != "auto":
            reason = 'alert is not labelled rollback="auto"'
        elif environment not in ENVIRONMENTS:
            reason = f"environment {environment!r} is not one of {', '.join(ENVIRONMENTS)}"
        elif any(s == service for _, s in accepted):
            reason = f"another alert of this notification already rolls back {service}"
        if reason:
            ignored.append({"fingerprint": fp, "reason": reason})
        else:
            accepted.append((alert, service))
    return accepted, ignored


# -- triggering -------------------------------------------------------------------------


def _active_run(dag_id: str) -> str | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.state.in_(ACTIVE_STATES)).limit(1)
        )


def start_rollback(*, dag_id: str, run_id: str, conf: dict[str, Any]) -> tuple[bool, str]:
    """(created, detail). False when a run with this id exists already (the DB constraint decides)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagRunAlreadyExists
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy.exc import IntegrityError

    try:
        trigger_dag(
            dag_id,
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name=TRIGGERING_USER,
            run_id=run_id,
            conf=conf,
            note=conf["reason"],
        )
    except DagRunAlreadyExists:
        return False, "duplicate"
    except IntegrityError:  # a concurrent copy of this notification inserted it first
        return False, "duplicate"
    return True, "created"


@router.post("/webhook")
def alertmanager_webhook(
    body: WebhookBody, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    """Start the rollback DAG of every eligible firing alert; say why the others were ignored."""
    authenticate(authorization)
    from airflow.exceptions import DagNotFound

    from delivery.runtime import catalog

    cat = catalog()
    accepted, ignored = triage(body, services=set(cat.services))
    triggered: list[dict[str, Any]] = []
    for alert, service_name in accepted:
        svc = cat.service(service_name)
        fp = fingerprint_of(alert)
        run_id = rollback_run_id(service=svc.name, fingerprint=fp, starts_at=alert.startsAt)
        active = _active_run(svc.rollback_dag_id)
        if active == run_id:
            ignored.append({"fingerprint": fp, "reason": f"duplicate: rollback run {run_id} already exists"})
            continue
        if active is not None:
            ignored.append(
                {
                    "fingerprint": fp,
                    "reason": f"a rollback of {svc.name} is already in progress (run {active})",
                }
            )
            continue
        conf = {
            "reason": rollback_reason(alert),
            "environment": alert.labels.get("environment") or "production",
            "target_version": "",
            "fingerprint": fp,
            "alert": dict(alert.labels),
            "starts_at": _normalized_start(alert.startsAt),
        }
        try:
            created, _ = start_rollback(dag_id=svc.rollback_dag_id, run_id=run_id, conf=conf)
        except DagNotFound:
            ignored.append({"fingerprint": fp, "reason": f"DAG {svc.rollback_dag_id} is not deployed"})
            continue
        if not created:
            ignored.append({"fingerprint": fp, "reason": f"duplicate: rollback run {run_id} already exists"})
            continue
        log.warning(
            "Alertmanager: started %s run %s for %s (alert %s, fingerprint %s)",
            svc.rollback_dag_id,
            run_id,
            svc.name,
            alert.labels.get("alertname"),
            fp,
        )
        triggered.append(
            {
                "fingerprint": fp,
                "service": svc.name,
                "dag_id": svc.rollback_dag_id,
                "run_id": run_id,
                "environment": conf["environment"],
            }
        )
    for item in ignored:
        log.info("Alertmanager: ignored alert %s: %s", item["fingerprint"], item["reason"])
    return {"triggered": triggered, "ignored": ignored}
