"""Alertmanager webhook receiver: automatic rollback from monitoring (seed flow 6).

``POST /delivery/alertmanager/webhook`` (this router is mounted under
``/delivery`` by the plugin) receives Alertmanager's webhook body, version 4,
and starts the ``rollback_<service>`` DAG of each alert that asks for it.

Authentication: ``Authorization: Bearer <token>``, compared in constant time
with the password of the Airflow connection named by the catalog's
``platform.connections.alertmanager_webhook`` (cached a minute by
:mod:`delivery.web.cache`). The token is checked from the headers alone,
before a byte of the body is read: an unauthenticated sender is answered 401
whatever it sends, and its body is never read nor parsed. Then, as for the
GitHub receiver (:mod:`delivery.web.inbound`): 413 above
``DELIVERY_WEBHOOK_MAX_BYTES`` (by ``Content-Length``, then while streaming),
400 for a content type other than ``application/json`` or a body that is not a
JSON object, 422 for a JSON object that is not a webhook notification. A
connection without a password answers 503 (Alertmanager retries 5xx answers).
The token is never logged.

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

The run is created inside the api-server process (no subprocess, no HTTP
round trip) by :func:`delivery.web.runs.create_run`, as the GitHub receiver's are.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from airflow.exceptions import DagNotFound
from airflow.models.connection import Connection
from airflow.utils.session import create_session
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from delivery.web import runs
from delivery.web.cache import CATALOG, TtlValue
from delivery.web.inbound import Refused, check_bearer, max_body_bytes, parse_json_object, read_body, reply

log = logging.getLogger(__name__)

router = APIRouter(prefix="/alertmanager", tags=["alertmanager"])

TOKEN_CACHE_SECONDS = 60.0
MISSING_TOKEN_CACHE_SECONDS = 5.0
ENVIRONMENTS = ("production", "staging")
TRIGGERING_USER = "alertmanager"
ACTIVE_STATES = ("queued", "running")
DEFAULT_CONN_ID = "alertmanager_webhook"


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


def _conn_id() -> str:
    catalog = CATALOG.get()
    return catalog.platform.connections.alertmanager_webhook if catalog is not None else DEFAULT_CONN_ID


def _read_token() -> str | None:
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


TOKEN: TtlValue[str | None] = TtlValue(
    loader=_read_token, ttl=TOKEN_CACHE_SECONDS, miss_ttl=MISSING_TOKEN_CACHE_SECONDS
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
    from airflow.models.dagrun import DagRun  # noqa: PLC0415 Airflow's ORM: api-server only (the plugin loads everywhere)

    with create_session() as session:
        return session.scalar(
            select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.state.in_(ACTIVE_STATES)).limit(1)
        )


def rollback_conf(alert: Alert, fingerprint: str) -> dict[str, Any]:
    """The rollback run's conf: the keys of the rollback DAG's trigger form."""
    return {
        "reason": rollback_reason(alert),
        "environment": alert.labels.get("environment") or "production",
        "target_version": "",
        "fingerprint": fingerprint,
        "alert": dict(alert.labels),
        "starts_at": _normalized_start(alert.startsAt),
    }


def _start_one(alert: Alert, service: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the run started, None) or (None, why no run was started) for one accepted alert."""
    fp = fingerprint_of(alert)
    dag_id = service.rollback_dag_id
    run_id = rollback_run_id(service=service.name, fingerprint=fp, starts_at=alert.startsAt)
    active = _active_run(dag_id)
    if active == run_id:
        return None, f"duplicate: rollback run {run_id} already exists"
    if active is not None:
        return None, f"a rollback of {service.name} is already in progress (run {active})"
    conf = rollback_conf(alert, fp)
    try:
        created = runs.create_run(
            dag_id=dag_id, run_id=run_id, conf=conf, user=TRIGGERING_USER, note=conf["reason"]
        )
    except DagNotFound:
        return None, f"DAG {dag_id} is not deployed"
    if not created:
        return None, f"duplicate: rollback run {run_id} already exists"
    log.warning(
        "Alertmanager: started %s run %s for %s (alert %s, fingerprint %s)",
        dag_id,
        run_id,
        service.name,
        alert.labels.get("alertname"),
        fp,
    )
    started = {"fingerprint": fp, "service": service.name, "dag_id": dag_id, "run_id": run_id}
    return {**started, "environment": conf["environment"]}, None


def handle_notification(body: WebhookBody) -> JSONResponse:
    """Start the rollback DAG of every eligible firing alert; say why the others were ignored.

    Everything after authentication (blocking: runs in a worker thread).
    """
    catalog = CATALOG.get()
    if catalog is None:
        return reply(503, "error", "the service catalog cannot be loaded")
    accepted, ignored = triage(body, services=set(catalog.services))
    triggered: list[dict[str, Any]] = []
    for alert, service_name in accepted:
        started, why_not = _start_one(alert, catalog.service(service_name))
        if started is not None:
            triggered.append(started)
        else:
            ignored.append({"fingerprint": fingerprint_of(alert), "reason": str(why_not)})
    for item in ignored:
        log.info("Alertmanager: ignored alert %s: %s", item["fingerprint"], item["reason"])
    return JSONResponse({"triggered": triggered, "ignored": ignored})


def _notification(payload: dict[str, Any]) -> WebhookBody:
    try:
        return WebhookBody.model_validate(payload)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_input=False)[:5]
        )
        raise Refused(422, "error", f"not an Alertmanager webhook notification: {where}") from None


@router.post("/webhook", summary="Alertmanager webhook (version 4): automatic rollbacks")
async def alertmanager_webhook(request: Request) -> JSONResponse:
    """Authenticate from the headers, then read (capped), parse and act on the notification."""
    try:
        expected = await run_in_threadpool(TOKEN.get)
        check_bearer(request.headers.get("authorization"), expected, what="Alertmanager webhook")
        body = _notification(parse_json_object(await read_body(request, limit=max_body_bytes())))
    except Refused as refusal:
        return refusal.response()
    return await run_in_threadpool(handle_notification, body)
