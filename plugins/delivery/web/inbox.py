"""Signed deliveries, recorded durably before they are answered; their runs created right after.

Creating a run is most of what a new delivery costs (the run and one row per
task, see BENCHMARKS.md), so the GitHub receiver does not wait for it:

1. :func:`accept`, in the request: for each run the delivery starts, one
   transaction checks that the run does not exist yet and that its DAG is
   deployed, and inserts ``(dag_id, run_id, conf)`` into the table
   ``delivery_webhook_inbox`` of the metadata database. The commit is the
   durable record; the receiver answers after it.
2. :func:`deliver`, right after the answer (a background task of the same
   request): creates each recorded run (:func:`delivery.web.runs.create_run`)
   and deletes its record. A failure keeps the record, with its attempts and
   last error.
3. :func:`sweep`, every :data:`SWEEP_INTERVAL` seconds in each api-server worker
   (:func:`start_sweeper`), and for a delivery's own records when GitHub
   redelivers it: creates the runs of records older than :data:`SWEEP_AFTER`
   seconds, so a worker that died between the answer and the run loses nothing.
   A record still failing after :data:`GIVE_UP_AFTER` seconds is logged as an
   error and dropped (redelivering the delivery from GitHub records it again).

Nothing is created twice: the run id is deterministic and the metadata
database's unique ``(dag_id, run_id)`` lets one creation win, whoever (the
request's task, a sweep in another worker, a redelivery) tries it; the inbox's
own primary key ``(dag_id, run_id)`` makes recording the same delivery twice a
duplicate.

The table belongs to this plugin: it is created on first use (``CREATE TABLE``
if missing, in the same database as Airflow's tables) and normally holds only
the runs of the last few hundred milliseconds.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from airflow import settings
from airflow.exceptions import DagNotFound
from airflow.utils.session import create_session
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DatabaseError, IntegrityError

from delivery.web.runs import create_run, with_lock_retries

log = logging.getLogger(__name__)

TABLE = Table(
    "delivery_webhook_inbox",
    MetaData(),
    Column("dag_id", String(250), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("conf", Text, nullable=False),
    Column("triggering_user", String(128), nullable=False),
    Column("received", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
)

SWEEP_AFTER = 5.0
GIVE_UP_AFTER = 3600.0
SWEEP_BATCH = 50
DEFAULT_SWEEP_INTERVAL = 10.0


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """What :func:`accept` did with one run of a delivery."""

    dag_id: str
    run_id: str
    status: str
    """``recorded`` (new), ``pending`` (recorded earlier, not created yet), ``exists`` or ``error``."""
    error: str = ""


@functools.cache
def ensure_table() -> None:
    """``CREATE TABLE delivery_webhook_inbox`` when missing (once per process)."""
    engine = settings.engine
    if engine is None:
        raise RuntimeError("Airflow's metadata database is not configured in this process")
    try:
        TABLE.create(engine, checkfirst=True)
    except DatabaseError:  # another worker created it between the check and the CREATE
        if not inspect(engine).has_table(TABLE.name):
            raise


def _accept_one(session: Any, *, dag_id: str, run_id: str, conf: dict[str, Any], user: str) -> str:
    """``exists``, ``recorded`` (committed by the caller), or IntegrityError when recorded already.

    The run is looked for again *after* the insert: a record disappears only once its
    run is committed, so a record inserted after another copy's record was created and
    deleted sees that run, and is rolled back.
    """
    from airflow.models import DagModel, DagRun  # noqa: PLC0415 Airflow's ORM: api-server only (the plugin loads everywhere)

    run = select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
    if session.scalar(run):  # a redelivery: read only
        return "exists"
    if not session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == dag_id, ~DagModel.is_stale)):
        raise DagNotFound(f"DAG {dag_id} is not deployed")
    row = {"dag_id": dag_id, "run_id": run_id, "conf": json.dumps(conf), "triggering_user": user}
    session.execute(insert(TABLE).values(**row, received=time.time(), attempts=0))
    if session.scalar(run):
        session.rollback()
        return "exists"
    return "recorded"


def accept(*, targets: list[tuple[str, dict[str, Any]]], run_id: str, user: str) -> list[Accepted]:
    """Record the runs ``[(dag_id, conf)]`` of one delivery, each in its own committed transaction."""

    def record(dag_id: str, conf: dict[str, Any]) -> str:
        with create_session() as session:
            return _accept_one(session, dag_id=dag_id, run_id=run_id, conf=conf, user=user)

    ensure_table()
    results = []
    for dag_id, conf in targets:
        try:
            status = with_lock_retries(functools.partial(record, dag_id, conf))
        except IntegrityError:  # a concurrent copy of this delivery recorded it first
            status = "pending"
        except Exception as exc:
            log.error("webhook: cannot record run %s of %s: %s", run_id, dag_id, type(exc).__name__)
            results.append(Accepted(dag_id=dag_id, run_id=run_id, status="error", error=_describe(exc)))
            continue
        results.append(Accepted(dag_id=dag_id, run_id=run_id, status=status))
    return results


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _execute(statement: Any) -> None:
    with create_session() as session:
        session.execute(statement)


def _create_recorded(row: Any) -> None:
    """Create the run of one record and delete the record; on failure count the attempt."""
    key = (TABLE.c.dag_id == row.dag_id) & (TABLE.c.run_id == row.run_id)
    try:
        created = create_run(
            dag_id=row.dag_id, run_id=row.run_id, conf=json.loads(row.conf), user=row.triggering_user
        )
    except Exception as exc:
        log.error("webhook: run %s of %s not created yet: %s", row.run_id, row.dag_id, _describe(exc))
        failed = update(TABLE).where(key).values(attempts=TABLE.c.attempts + 1, last_error=_describe(exc))
        with_lock_retries(functools.partial(_execute, failed))
        return
    with_lock_retries(functools.partial(_execute, delete(TABLE).where(key)))
    if created:
        log.info("webhook: created run %s of %s", row.run_id, row.dag_id)


def deliver(keys: list[tuple[str, str]]) -> None:
    """Create the recorded runs ``[(dag_id, run_id)]`` (those still recorded)."""
    if not keys:
        return
    wanted = or_(*((TABLE.c.dag_id == dag_id) & (TABLE.c.run_id == run_id) for dag_id, run_id in keys))
    with create_session() as session:
        rows = session.execute(select(TABLE).where(wanted)).all()
    for row in rows:
        _create_recorded(row)


def sweep(*, older_than: float = SWEEP_AFTER, now: float | None = None) -> int:
    """Create the runs of records older than ``older_than`` seconds; drop hopeless ones. How many were tried."""
    ensure_table()
    moment = time.time() if now is None else now
    with create_session() as session:
        rows = session.execute(
            select(TABLE)
            .where(TABLE.c.received <= moment - older_than)
            .order_by(TABLE.c.received)
            .limit(SWEEP_BATCH)
        ).all()
    for row in rows:
        if row.received <= moment - GIVE_UP_AFTER:
            log.error(
                "webhook: giving up run %s of %s after %d attempt(s) (%s); redeliver the delivery to retry",
                row.run_id,
                row.dag_id,
                row.attempts,
                row.last_error,
            )
            hopeless = delete(TABLE).where((TABLE.c.dag_id == row.dag_id) & (TABLE.c.run_id == row.run_id))
            with_lock_retries(functools.partial(_execute, hopeless))
            continue
        _create_recorded(row)
    return len(rows)


def sweep_interval() -> float:
    """``DELIVERY_WEBHOOK_SWEEP_INTERVAL`` seconds (default 10; 0 turns the sweeper off)."""
    raw = os.environ.get("DELIVERY_WEBHOOK_SWEEP_INTERVAL", "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_SWEEP_INTERVAL
    except ValueError:
        log.warning("DELIVERY_WEBHOOK_SWEEP_INTERVAL=%r is not a number of seconds; using the default", raw)
        return DEFAULT_SWEEP_INTERVAL


_sweeper_lock = threading.Lock()
_sweepers: list[threading.Thread] = []


def _sweep_forever(interval: float) -> None:
    while True:
        time.sleep(interval * random.uniform(0.8, 1.2))  # workers out of step
        try:
            sweep()
        except Exception:
            log.exception("webhook: the inbox sweep failed; trying again in %.0f s", interval)


def start_sweeper() -> None:
    """Start this process's sweeper thread, once (the first delivery of each api-server worker does)."""
    interval = sweep_interval()
    if interval <= 0 or _sweepers:
        return
    with _sweeper_lock:
        if not _sweepers:
            thread = threading.Thread(
                target=_sweep_forever, args=(interval,), name="delivery-inbox-sweeper", daemon=True
            )
            thread.start()
            _sweepers.append(thread)
