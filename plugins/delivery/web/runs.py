"""Creating the runs the receivers start: one queued manual run per ``(dag_id, run_id)``, exactly once.

Both receivers name their runs deterministically (a GitHub delivery, an alert
occurrence), so a redelivery, a retry or concurrent copies of one request name
the same run, and the metadata database's unique constraint on
``(dag_id, run_id)`` lets exactly one of them be created: :func:`create_run`
answers ``False`` to the others.

The run is created in the api-server process, the way Airflow's own
``POST /api/v2/dags/{dag_id}/dagRuns`` does it (``DagModel`` checks, the latest
DAG version, ``create_dagrun``, which validates the conf against the DAG's
params), except that the DAG comes from one process-wide DAG bag keyed by DAG
version (``[api] dag_cache_size`` / ``dag_cache_ttl``, as the api-server's own),
so a delivery does not deserialise the whole DAG again (``trigger_dag`` and
``get_latest_version_of_dag`` do, every time). A redelivery is answered by one
indexed ``SELECT`` before any of that.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from airflow._shared.timezones import timezone
from airflow.exceptions import DagNotFound, DagRunAlreadyExists
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

log = logging.getLogger(__name__)

LOCK_RETRIES = 8

T = TypeVar("T")


@functools.cache
def _dag_bag() -> Any:
    from airflow.api_fastapi.common.dagbag import create_dag_bag  # noqa: PLC0415 the api-server's modules: heavy

    return create_dag_bag()


def run_exists(*, dag_id: str, run_id: str) -> bool:
    from airflow.models import DagRun  # noqa: PLC0415 Airflow's ORM: api-server only (the plugin loads everywhere)

    with create_session() as session:
        return (
            session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            is not None
        )


def _create(*, dag_id: str, run_id: str, conf: dict[str, Any], user: str, note: str | None) -> None:
    from airflow.models import DagModel  # noqa: PLC0415 Airflow's ORM: api-server only (the plugin loads everywhere)
    from airflow.models.dag_version import DagVersion  # noqa: PLC0415 Airflow's ORM: api-server only (the plugin loads everywhere)

    with create_session() as session:
        model = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id, ~DagModel.is_stale).limit(1))
        if model is None:
            raise DagNotFound(f"DAG {dag_id} is not deployed")
        if model.allowed_run_types is not None and DagRunType.MANUAL not in model.allowed_run_types:
            raise ValueError(f"DAG {dag_id} does not allow manual runs")
        version = DagVersion.get_latest_version(dag_id, session=session)
        dag = _dag_bag().get_dag(version.id, session=session) if version is not None else None
        if dag is None:
            raise DagNotFound(f"DAG {dag_id} has no serialized version yet")
        dag.create_dagrun(
            run_id=run_id,
            logical_date=None,
            data_interval=None,
            run_after=timezone.utcnow(),
            conf=conf,
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name=user,
            note=note,
            state=DagRunState.QUEUED,
            session=session,
        )


def with_lock_retries(call: Callable[[], T]) -> T:
    """``call()``, called again while SQLite answers "database is locked" (any other error is raised)."""
    for attempt in range(LOCK_RETRIES):
        try:
            return call()
        except OperationalError as exc:
            if "locked" not in str(exc).lower() or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def create_run(*, dag_id: str, run_id: str, conf: dict[str, Any], user: str, note: str | None = None) -> bool:
    """Create one queued run; ``False`` when it exists already (the atomic dedup guard).

    Raises ``DagNotFound`` when the DAG is not deployed. SQLite's "database is locked"
    is retried; any other database error is raised.
    """
    if with_lock_retries(lambda: run_exists(dag_id=dag_id, run_id=run_id)):
        return False
    try:
        with_lock_retries(lambda: _create(dag_id=dag_id, run_id=run_id, conf=conf, user=user, note=note))
    except (DagRunAlreadyExists, IntegrityError):
        return False
    return True
