"""GitHub webhook receiver: signed ``push``, ``pull_request`` and ``ping`` events start delivery runs.

``POST /delivery/webhooks/github`` on the Airflow api-server (a plugin app, see
:mod:`delivery.web.app`). Configure the GitHub webhook with content type
``application/json``, a secret, and the events *Pushes* and *Pull requests*.

**Secret.** The HMAC secret is the password of the Airflow connection named by
``platform.connections.github_webhook_secret`` (``github_webhook`` by default), or,
when that connection does not exist, the Variable of the same name; both can come
from a secrets backend. It is cached for :data:`SECRET_TTL` seconds per api-server
worker (:mod:`delivery.web.cache`) and never logged.

**Order of the checks** (:mod:`delivery.web.inbound`): the signature header must be
present and a secret configured before a byte of the body is read; then the size
cap, the content type, the body (streamed, capped), the signature over it, and
only then the JSON.

**Answers.**

=====  ==================================================================================
code   when
=====  ==================================================================================
200    ``triggered`` (runs recorded; created right after the answer), ``duplicate``
       (a redelivery: every run already exists or is recorded), ``ignored``
       (nothing to build: deleted ref, unknown repository, no matching
       branch/tag/path, unhandled pull request action) or ``pong`` (ping)
202    an event type this receiver does not handle (the reason is in the body)
400    content type other than ``application/json``, malformed JSON, missing
       ``X-GitHub-Event`` / ``X-GitHub-Delivery``
401    ``X-Hub-Signature-256`` missing or wrong
413    body larger than ``DELIVERY_WEBHOOK_MAX_BYTES`` (default 5 MiB), checked on
       ``Content-Length`` and while streaming
422    stale or undated delivery (older than ``DELIVERY_WEBHOOK_MAX_AGE``, default 1h)
503    the secret is not configured, a run's DAG is not deployed, or the delivery could
       not be recorded (GitHub shows the delivery as failed; redelivering it is safe)
=====  ==================================================================================

**Recorded, then created.** A new delivery is answered once its runs are durably
recorded in the metadata database; the runs are created right after the answer,
by the request's background task, or by the sweeper of any api-server worker if
that worker died first (:mod:`delivery.web.inbox`). Creating a run (the run and
one row per task) is most of a delivery's cost; the answer does not wait for it.

**Replays.** The dedup key is ``sha256(body) + X-GitHub-Delivery``; the run id is
``git__<event>__<first 16 hex of sha256(key)>`` in every DAG the event routes to.
A redelivery (or a retry, or 20 concurrent copies) names the same runs: the
inbox's primary key records each once, and the database's unique constraint on
``(dag_id, run_id)`` lets exactly one creation win (:mod:`delivery.web.runs`);
the others answer ``duplicate``. A redelivery of a delivery whose runs are still
only recorded creates them.
``X-GitHub-Delivery`` is not covered by the signature, so a captured body replayed
under a new delivery id is stopped by the age window instead.

**Untrusted pull requests.** A pull request from a fork, or whose author is not
``OWNER``, ``MEMBER`` or ``COLLABORATOR`` of the repository
(:func:`delivery.web.github_events.untrusted_reason`), starts the same ``ci`` run
as any other, with ``conf.trusted = false`` and ``conf.untrusted_reason`` saying
why; the answer carries ``untrusted_reason`` too. The pipeline runs nothing of
that code until one of the service's approvers accepts it, and gives its stages no
secrets. Every other event starts runs with ``trusted = true``.

Dates, changed files (monorepos) and the trust rules are described in
:mod:`delivery.web.github_events`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.exceptions import AirflowNotFoundException
from airflow.models.connection import Connection
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from delivery.catalog.fields import parse_duration
from delivery.gitevents.routing import GitEvent, Routing, Target, route, run_id_for, services_of
from delivery.web import inbox
from delivery.web.cache import CATALOG, TtlValue
from delivery.web.github_events import (
    event_timestamp,
    local_changed_files,
    pull_request_event,
    push_event,
    repo_fields,
)
from delivery.web.inbound import Refused, max_body_bytes, parse_json_object, read_body, reply

log = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

DEFAULT_MAX_AGE = timedelta(hours=1)
SECRET_TTL = 60.0
SECRET_MISS_TTL = 10.0
HANDLED_PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
TRIGGERING_USER = "github-webhook"
DEFAULT_SECRET_ID = "github_webhook"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def max_age() -> timedelta:
    """``DELIVERY_WEBHOOK_MAX_AGE`` (``3600``, ``90m``, ``1h``...), default 1 hour."""
    raw = os.environ.get("DELIVERY_WEBHOOK_MAX_AGE", "").strip()
    if not raw:
        return DEFAULT_MAX_AGE
    try:
        return parse_duration(int(raw) if raw.isdigit() else raw)
    except ValueError:
        log.warning("DELIVERY_WEBHOOK_MAX_AGE=%r is not a duration; using the default", raw)
        return DEFAULT_MAX_AGE


# -- signature and secret -------------------------------------------------------------


def sign(*, secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(*, secret: bytes, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``X-Hub-Signature-256`` (``sha256=<hex>``) over the raw body."""
    if not header or not header.startswith("sha256="):
        return False
    expected = sign(secret=secret, body=body)
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def secret_id() -> str:
    catalog = CATALOG.get()
    return catalog.platform.connections.github_webhook_secret if catalog is not None else DEFAULT_SECRET_ID


def _load_secret() -> bytes | None:
    """The connection's password, else the Variable of the same name; ``None`` when neither exists."""
    from airflow.models.variable import Variable  # noqa: PLC0415 Airflow's ORM: api-server only (the plugin loads everywhere)

    name = secret_id()
    value: str | None = None
    try:
        value = Connection.get_connection_from_secrets(name).password
    except AirflowNotFoundException:
        value = None
    if not value:
        value = Variable.get(name, default_var=None)
    if not value:
        log.error("webhook: no secret in connection or variable %r; refusing every delivery", name)
        return None
    return str(value).encode()


SECRET: TtlValue[bytes | None] = TtlValue(loader=_load_secret, ttl=SECRET_TTL, miss_ttl=SECRET_MISS_TTL)


# -- triggering -----------------------------------------------------------------------


@dataclass(kw_only=True)
class Outcome:
    created: list[dict[str, str]] = field(default_factory=list)
    """Runs recorded by this delivery: created right after the answer."""
    duplicates: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    to_create: list[tuple[str, str]] = field(default_factory=list)
    """(dag_id, run_id) recorded and not created yet: this request's background task creates them."""


def start_runs(targets: list[Target], *, run_id: str) -> Outcome:
    """Record the delivery's runs durably (:mod:`delivery.web.inbox`); say which are new."""
    outcome = Outcome()
    accepted = inbox.accept(
        targets=[(t.dag_id, t.conf) for t in targets], run_id=run_id, user=TRIGGERING_USER
    )
    for item in accepted:
        ident = {"dag_id": item.dag_id, "run_id": item.run_id}
        if item.status == "error":
            outcome.errors.append(f"{item.dag_id}: {item.error}")
            continue
        (outcome.created if item.status == "recorded" else outcome.duplicates).append(ident)
        if item.status in ("recorded", "pending"):
            outcome.to_create.append((item.dag_id, item.run_id))
    return outcome


# -- handling an authenticated delivery -------------------------------------------------


def _route_with_files(event: GitEvent, services: list[Any]) -> Routing:
    mine = services_of(services, event)
    filtered = any(s.repo.paths != ["**"] for s in mine)
    if filtered and event.changed_files is None and event.kind == "push" and mine and not event.deleted:
        files = local_changed_files(url=mine[0].repo.url, before=event.before, after=event.sha)
        if files is not None:
            event = dataclasses.replace(event, changed_files=files)
    return route(event, services)


def _check_age(event_name: str, payload: dict[str, Any]) -> None:
    moment = event_timestamp(event_name, payload)
    if moment is None:
        raise Refused(422, "refused", f"the {event_name} payload carries no usable timestamp")
    age = datetime.now(tz=UTC) - moment
    window = max_age()
    if age > window:
        raise Refused(
            422,
            "refused",
            f"stale delivery: the event is {int(age.total_seconds())}s old, the window is "
            f"{int(window.total_seconds())}s (DELIVERY_WEBHOOK_MAX_AGE)",
        )


def handle_event(
    *, event_name: str, delivery: str, body_digest: str, payload: dict[str, Any]
) -> JSONResponse:
    """Everything after authentication (blocking: runs in a worker thread)."""
    try:
        _check_age(event_name, payload)
    except Refused as refusal:
        return refusal.response()
    action = str(payload.get("action") or "")
    if event_name == "pull_request" and action not in HANDLED_PR_ACTIONS:
        return reply(200, "ignored", f"pull_request action {action!r} starts nothing")
    event = pull_request_event(payload) if event_name == "pull_request" else push_event(payload)
    catalog = CATALOG.get()
    if catalog is None:
        return reply(503, "error", "the service catalog cannot be loaded")
    routing = _route_with_files(event, list(catalog.services.values()))
    what = f"{event_name} delivery {delivery} for {event.repository} {event.ref}"
    if not routing.targets:
        log.info("webhook: %s starts nothing", what)
        return reply(200, "ignored", "; ".join(routing.skipped), runs=[], skipped=routing.skipped)
    inbox.start_sweeper()
    outcome = start_runs(routing.targets, run_id=run_id_for(event=event.kind, key=f"{body_digest}{delivery}"))
    log.info(
        "webhook: %s: %d run(s) recorded, %d duplicate(s), %d error(s)%s",
        what,
        len(outcome.created),
        len(outcome.duplicates),
        len(outcome.errors),
        "" if event.trusted else "; untrusted: the runs wait for an approver",
    )
    extra: dict[str, Any] = {
        "runs": outcome.created,
        "duplicates": outcome.duplicates,
        "skipped": routing.skipped,
    }
    if not event.trusted:
        extra["untrusted_reason"] = event.untrusted_reason
    if outcome.errors:
        answer = reply(503, "error", "some runs could not be created", errors=outcome.errors, **extra)
    elif not outcome.created:
        answer = reply(200, "duplicate", "this delivery was already processed", **extra)
    else:
        answer = reply(200, "triggered", **extra)
    if outcome.to_create:  # after the answer is sent
        answer.background = BackgroundTask(inbox.deliver, outcome.to_create)
    return answer


# -- the route ------------------------------------------------------------------------


async def _authenticated_body(request: Request) -> bytes:
    """The body, read only once a signature is presented and a secret is configured, and verified."""
    signature = request.headers.get("x-hub-signature-256")
    if not signature:
        raise Refused(401, "unauthorized", "missing X-Hub-Signature-256")
    secret = await run_in_threadpool(SECRET.get)
    if secret is None:
        raise Refused(503, "error", "the webhook secret is not configured")
    body = await read_body(request, limit=max_body_bytes())
    if not verify_signature(secret=secret, body=body, header=signature):
        raise Refused(401, "unauthorized", "invalid X-Hub-Signature-256")
    return body


@router.post("/github", summary="GitHub webhook (push, pull_request, ping)")
async def github_webhook(request: Request) -> JSONResponse:
    try:
        body = await _authenticated_body(request)
        event_name = request.headers.get("x-github-event", "").strip()
        delivery = request.headers.get("x-github-delivery", "").strip()
        if not event_name or not _SAFE_ID.match(delivery):
            raise Refused(400, "error", "missing or invalid X-GitHub-Event / X-GitHub-Delivery")
        payload = parse_json_object(body)
    except Refused as refusal:
        return refusal.response()
    if event_name == "ping":
        repository = repo_fields(payload)[0]
        return reply(200, "pong", f"webhook {payload.get('hook_id')} for {repository or 'an organisation'}")
    if event_name not in ("push", "pull_request"):
        return reply(202, "ignored", f"event {event_name!r} is not handled (push, pull_request, ping are)")
    digest = hashlib.sha256(body).hexdigest()
    return await run_in_threadpool(
        handle_event, event_name=event_name, delivery=delivery, body_digest=digest, payload=payload
    )
