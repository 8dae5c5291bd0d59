"""GitHub webhook receiver: signed ``push``, ``pull_request`` and ``ping`` events start delivery runs.

``POST /delivery/webhooks/github`` on the Airflow api-server (a plugin app, see
:mod:`delivery.web.app`). Configure the GitHub webhook with content type
``application/json``, a secret, and the events *Pushes* and *Pull requests*.

**Secret.** The HMAC secret is the password of the Airflow connection named by
``platform.connections.github_webhook_secret`` (``github_webhook`` by default), or,
when that connection does not exist, the Variable of the same name; both can come
from a secrets backend. It is cached for :data:`SECRET_TTL` seconds per api-server
worker and never logged.

**Answers.**

=====  ==================================================================================
code   when
=====  ==================================================================================
200    ``triggered`` (runs created), ``duplicate`` (a redelivery: every run already
       exists), ``ignored`` (nothing to build: deleted ref, unknown repository, no
       matching branch/tag/path, unhandled pull request action) or ``pong`` (ping)
202    an event type this receiver does not handle (the reason is in the body)
400    content type other than ``application/json``, malformed JSON, missing
       ``X-GitHub-Event`` / ``X-GitHub-Delivery``
401    ``X-Hub-Signature-256`` missing or wrong
413    body larger than ``DELIVERY_WEBHOOK_MAX_BYTES`` (default 5 MiB), checked on
       ``Content-Length`` and while streaming
422    stale or undated delivery (older than ``DELIVERY_WEBHOOK_MAX_AGE``, default 1h)
503    the secret is not configured, or a run could not be created (GitHub shows the
       delivery as failed; redelivering it is safe, see below)
=====  ==================================================================================

**Replays.** The dedup key is ``sha256(body) + X-GitHub-Delivery``; the run id is
``git__<event>__<first 16 hex of sha256(key)>`` in every DAG the event routes to.
A redelivery (or a retry, or 20 concurrent copies) names the same runs, and the
database's unique constraint on ``(dag_id, run_id)`` lets exactly one of them be
created; the others answer ``duplicate``. ``X-GitHub-Delivery`` is not covered by
the signature, so a captured body replayed under a new delivery id is stopped by
the age window instead.

**Age.** A push is dated by ``repository.pushed_at`` (the time of the push; the
commit's ``head_commit.timestamp`` only when ``pushed_at`` is absent, since a tag
or a branch can be pushed long after its commit was written); a pull request by
``pull_request.updated_at``. Pings are not dated.

**Changed files** (monorepos). From the push's ``commits[].added/modified/removed``.
When that list is missing, empty or possibly truncated (GitHub sends at most
:data:`PUSH_COMMITS_LIMIT` commits), ``git diff --name-only before after`` is run
when the catalog's repository URL is a local repository; otherwise every service
whose branch filter matches gets a run (a build too many rather than one missed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from delivery.catalog.fields import parse_duration
from delivery.gitevents.routing import ZERO_SHA, GitEvent, Routing, Target, route, run_id_for, services_of
from delivery.gitops import Git, GitOpsError
from delivery.gitops.git import check_sha

log = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_AGE = timedelta(hours=1)
SECRET_TTL = 60.0
SECRET_MISS_TTL = 10.0
CATALOG_TTL = 30.0
PUSH_COMMITS_LIMIT = 20
HANDLED_PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
TRIGGERING_USER = "github-webhook"
DEFAULT_SECRET_ID = "github_webhook"


# -- settings -----------------------------------------------------------------------


def max_body_bytes() -> int:
    """``DELIVERY_WEBHOOK_MAX_BYTES`` (bytes), default 5 MiB."""
    raw = os.environ.get("DELIVERY_WEBHOOK_MAX_BYTES", "").strip()
    try:
        value = int(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        log.warning("DELIVERY_WEBHOOK_MAX_BYTES=%r is not a number of bytes; using the default", raw)
        return DEFAULT_MAX_BYTES
    return value if value > 0 else DEFAULT_MAX_BYTES


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


class TtlCache:
    """One value, loaded by ``loader`` and kept ``ttl`` seconds (``miss_ttl`` when ``None``)."""

    def __init__(self, *, loader: Callable[[], Any], ttl: float, miss_ttl: float | None = None) -> None:
        self._loader = loader
        self._ttl = ttl
        self._miss_ttl = ttl if miss_ttl is None else miss_ttl
        self._lock = threading.Lock()
        self._value: Any = None
        self._expires = 0.0

    def get(self) -> Any:
        with self._lock:
            now = time.monotonic()
            if now >= self._expires:
                self._value = self._loader()
                self._expires = now + (self._ttl if self._value is not None else self._miss_ttl)
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._expires = 0.0


def _load_catalog() -> Any:
    from delivery.catalog import load_catalog

    try:
        catalog, issues = load_catalog(strict=False)
    except Exception:
        log.exception("webhook: the service catalog cannot be loaded")
        return None
    if issues:
        log.warning("webhook: %d catalog issue(s); the valid services are still routed", len(issues))
    return catalog


CATALOG = TtlCache(loader=_load_catalog, ttl=CATALOG_TTL, miss_ttl=5.0)


def secret_id() -> str:
    catalog = CATALOG.get()
    return catalog.platform.connections.github_webhook_secret if catalog is not None else DEFAULT_SECRET_ID


def _load_secret() -> bytes | None:
    """The connection's password, else the Variable of the same name; ``None`` when neither exists."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable

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


SECRET = TtlCache(loader=_load_secret, ttl=SECRET_TTL, miss_ttl=SECRET_MISS_TTL)


# -- payloads -------------------------------------------------------------------------


def parse_timestamp(value: object) -> datetime | None:
    """GitHub dates: ISO 8601 strings, or epoch seconds (``repository.pushed_at`` of a push)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def event_timestamp(event: str, payload: dict[str, Any]) -> datetime | None:
    """When the event happened, by the field documented in the module docstring."""
    if event == "push":
        moment = parse_timestamp(_dig(payload, "repository", "pushed_at"))
        return moment or parse_timestamp(_dig(payload, "head_commit", "timestamp"))
    if event == "pull_request":
        return parse_timestamp(_dig(payload, "pull_request", "updated_at"))
    return None


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _repo_fields(payload: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    repo = payload.get("repository") or {}
    urls = tuple(str(repo[k]) for k in ("clone_url", "ssh_url", "git_url", "html_url", "url") if repo.get(k))
    name = str(repo.get("full_name") or (urls[0] if urls else ""))
    return name, urls


def changed_files_from_commits(payload: dict[str, Any]) -> frozenset[str] | None:
    """Files touched by a push, or ``None`` when the commit list is missing, empty or maybe truncated."""
    commits = payload.get("commits")
    if not isinstance(commits, list) or not commits or len(commits) >= PUSH_COMMITS_LIMIT:
        return None
    files: set[str] = set()
    for commit in commits:
        if not isinstance(commit, dict):
            return None
        for key in ("added", "modified", "removed"):
            files.update(str(f) for f in commit.get(key) or [])
    return frozenset(files)


def push_event(payload: dict[str, Any]) -> GitEvent:
    ref = str(payload.get("ref") or "")
    repository, urls = _repo_fields(payload)
    pusher = payload.get("pusher") or {}
    sender = payload.get("sender") or {}
    return GitEvent(
        kind="tag" if ref.startswith("refs/tags/") else "push",
        repository=repository,
        repo_urls=urls,
        ref=ref,
        sha=str(payload.get("after") or ""),
        before=str(payload.get("before") or ""),
        author=str(pusher.get("name") or sender.get("login") or ""),
        compare_url=str(payload.get("compare") or ""),
        deleted=bool(payload.get("deleted")),
        changed_files=changed_files_from_commits(payload),
    )


def pull_request_event(payload: dict[str, Any]) -> GitEvent:
    pr = payload.get("pull_request") or {}
    number = payload.get("number", pr.get("number"))
    repository, urls = _repo_fields(payload)
    head = pr.get("head") or {}
    base = pr.get("base") or {}
    html = str(pr.get("html_url") or "")
    return GitEvent(
        kind="pull_request",
        repository=repository,
        repo_urls=urls,
        ref=f"refs/pull/{number}/head",
        sha=str(head.get("sha") or ""),
        before=str(payload.get("before") or base.get("sha") or ""),
        author=str((pr.get("user") or {}).get("login") or ""),
        pr_number=int(number) if isinstance(number, int) else None,
        base_branch=str(base.get("ref") or ""),
        compare_url=f"{html}/files" if html else "",
    )


def local_changed_files(*, url: str, before: str, after: str, timeout: float = 5.0) -> frozenset[str] | None:
    """``git diff --name-only before after`` in a local repository; ``None`` when not possible.

    ``before`` and ``after`` come from the payload: anything but two full shas is not looked up.
    """
    from delivery.paths import git_url

    resolved = git_url(url)
    if "://" in resolved or not before or before == ZERO_SHA or not Path(resolved).is_dir():
        return None
    try:
        old, new = check_sha(before), check_sha(after)
        out = Git(git_dir=Path(resolved), timeout_s=timeout).output(
            "diff", "--name-only", "--end-of-options", old, new, "--", action="git diff"
        )
    except GitOpsError as exc:
        log.info("changed files of %s..%s unknown: %s", before, after, exc)
        return None
    return frozenset(line for line in out.splitlines() if line)


# -- triggering -----------------------------------------------------------------------


def trigger_run(*, dag_id: str, run_id: str, conf: dict[str, Any], attempts: int = 8) -> bool:
    """Create one queued run; ``False`` when it already exists (the atomic dedup guard).

    Runs in the api-server process, through Airflow's own ``trigger_dag`` and the
    metadata database: a concurrent copy loses on the ``(dag_id, run_id)`` unique
    constraint and gets ``False``. SQLite's "database is locked" is retried.
    """
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagRunAlreadyExists
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError, OperationalError

    with create_session() as session:  # cheap check first: a redelivery needs no DAG deserialisation
        if session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)):
            return False
    for attempt in range(attempts):
        try:
            with create_session() as session:
                trigger_dag(
                    dag_id,
                    triggered_by=DagRunTriggeredByType.REST_API,
                    run_type=DagRunType.MANUAL,
                    triggering_user_name=TRIGGERING_USER,
                    run_id=run_id,
                    conf=conf,
                    session=session,
                )
        except (DagRunAlreadyExists, IntegrityError):
            return False
        except OperationalError as exc:
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
            continue
        return True
    return False  # pragma: no cover - the loop returns or raises


@dataclass(kw_only=True)
class Outcome:
    created: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def start_runs(targets: list[Target], *, run_id: str) -> Outcome:
    outcome = Outcome()
    for target in targets:
        ident = {"dag_id": target.dag_id, "run_id": run_id}
        try:
            created = trigger_run(dag_id=target.dag_id, run_id=run_id, conf=target.conf)
        except Exception as exc:
            log.error("webhook: cannot create run %s of %s: %s", run_id, target.dag_id, type(exc).__name__)
            outcome.errors.append(f"{target.dag_id}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        (outcome.created if created else outcome.duplicates).append(ident)
    return outcome


# -- the route ------------------------------------------------------------------------


def _reply(code: int, status: str, reason: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"status": status}
    if reason is not None:
        body["reason"] = reason
    body.update(extra)
    return JSONResponse(body, status_code=code)


def _route_with_files(event: GitEvent, services: list[Any]) -> Routing:
    mine = services_of(services, event)
    filtered = any(s.repo.paths != ["**"] for s in mine)
    if filtered and event.changed_files is None and event.kind == "push" and mine and not event.deleted:
        files = local_changed_files(url=mine[0].repo.url, before=event.before, after=event.sha)
        if files is not None:
            event = dataclasses.replace(event, changed_files=files)
    return route(event, services)


def handle_event(
    *, event_name: str, delivery: str, body_digest: str, payload: dict[str, Any]
) -> JSONResponse:
    """Everything after authentication (blocking: runs in a worker thread)."""
    moment = event_timestamp(event_name, payload)
    if moment is None:
        return _reply(422, "refused", f"the {event_name} payload carries no usable timestamp")
    age = datetime.now(tz=UTC) - moment
    window = max_age()
    if age > window:
        return _reply(
            422,
            "refused",
            f"stale delivery: the event is {int(age.total_seconds())}s old, the window is "
            f"{int(window.total_seconds())}s (DELIVERY_WEBHOOK_MAX_AGE)",
        )
    if event_name == "pull_request":
        action = str(payload.get("action") or "")
        if action not in HANDLED_PR_ACTIONS:
            return _reply(200, "ignored", f"pull_request action {action!r} starts nothing")
        event = pull_request_event(payload)
    else:
        event = push_event(payload)
    catalog = CATALOG.get()
    if catalog is None:
        return _reply(503, "error", "the service catalog cannot be loaded")
    routing = _route_with_files(event, list(catalog.services.values()))
    if not routing.targets:
        log.info(
            "webhook: %s delivery %s for %s %s starts nothing",
            event_name,
            delivery,
            event.repository,
            event.ref,
        )
        return _reply(200, "ignored", "; ".join(routing.skipped), runs=[], skipped=routing.skipped)
    run_id = run_id_for(event=event.kind, key=f"{body_digest}{delivery}")
    outcome = start_runs(routing.targets, run_id=run_id)
    log.info(
        "webhook: %s delivery %s for %s %s: %d run(s) created, %d duplicate(s), %d error(s)",
        event_name,
        delivery,
        event.repository,
        event.ref,
        len(outcome.created),
        len(outcome.duplicates),
        len(outcome.errors),
    )
    extra: dict[str, Any] = {
        "runs": outcome.created,
        "duplicates": outcome.duplicates,
        "skipped": routing.skipped,
    }
    if outcome.errors:
        return _reply(503, "error", "some runs could not be created", errors=outcome.errors, **extra)
    if not outcome.created:
        return _reply(200, "duplicate", "this delivery was already processed", **extra)
    return _reply(200, "triggered", **extra)


_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


@router.post("/github", summary="GitHub webhook (push, pull_request, ping)")
async def github_webhook(request: Request) -> JSONResponse:
    limit = max_body_bytes()
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            return _reply(400, "error", "invalid Content-Length")
        if int(length) > limit:
            return _reply(413, "error", f"body larger than {limit} bytes (DELIVERY_WEBHOOK_MAX_BYTES)")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _reply(400, "error", "content type must be application/json (set it in the webhook settings)")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            return _reply(413, "error", f"body larger than {limit} bytes (DELIVERY_WEBHOOK_MAX_BYTES)")
    body = bytes(chunks)
    signature = request.headers.get("x-hub-signature-256")
    if not signature:
        return _reply(401, "unauthorized", "missing X-Hub-Signature-256")
    secret = await run_in_threadpool(SECRET.get)
    if secret is None:
        return _reply(503, "error", "the webhook secret is not configured")
    if not verify_signature(secret=secret, body=body, header=signature):
        return _reply(401, "unauthorized", "invalid X-Hub-Signature-256")
    event_name = request.headers.get("x-github-event", "").strip()
    delivery = request.headers.get("x-github-delivery", "").strip()
    if not event_name or not _SAFE_ID.match(delivery):
        return _reply(400, "error", "missing or invalid X-GitHub-Event / X-GitHub-Delivery")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _reply(400, "error", "the body is not valid JSON")
    if not isinstance(payload, dict):
        return _reply(400, "error", "the body is not a JSON object")
    if event_name == "ping":
        repository = _repo_fields(payload)[0]
        return _reply(200, "pong", f"webhook {payload.get('hook_id')} for {repository or 'an organisation'}")
    if event_name not in ("push", "pull_request"):
        return _reply(202, "ignored", f"event {event_name!r} is not handled (push, pull_request, ping are)")
    digest = hashlib.sha256(body).hexdigest()
    return await run_in_threadpool(
        handle_event, event_name=event_name, delivery=delivery, body_digest=digest, payload=payload
    )
