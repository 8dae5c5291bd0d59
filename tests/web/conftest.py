"""The receivers' world without a server: the local catalog, its DAGs in the test metadata DB, real secrets.

The DAGs of ``include/catalog-local``'s demo web service (delivery and rollback)
are built by the factory and written to the session's SQLite metadata database
the way the dag-processor writes them, so the receivers create real runs (the
unique constraint on ``(dag_id, run_id)``, the params' validation of the conf)
and the tests read them back. Secrets come from Airflow connections in the
environment (``AIRFLOW_CONN_*``), as a deployment would give them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ROOT
from tests.web.support import SECRET

CATALOG_DIR = ROOT / "include" / "catalog-local"
DEMO_WEB = "visiobook-demo-web"
ALERT_TOKEN = "alertmanager-token-for-tests-only"


@pytest.fixture(scope="session")
def deployed_dags(airflow_db: object) -> dict[str, str]:
    """{"delivery": dag_id, "rollback": dag_id} of the demo web service, in the metadata DB."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    from delivery.catalog import load_catalog
    from delivery.pipeline.factory import DagFactory

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DELIVERY_PROFILE", "local")
        catalog, _ = load_catalog(CATALOG_DIR)
        factory = DagFactory(catalog=catalog)
        service = catalog.service(DEMO_WEB)
        dags = [factory.build(service), factory.build_rollback(service)]
    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder",
            None,
            [LazyDeserializedDAG.from_dag(d) for d in dags],
            {},
            None,
            set(),
            session=session,
        )
    return {"delivery": dags[0].dag_id, "rollback": dags[1].dag_id}


@pytest.fixture(scope="session")
def token(airflow_db: object) -> str:
    """A JWT signed by Airflow's configured auth manager, as the API server issues it (the UI pages').

    Validation also checks the token is not revoked, in the metadata DB: hence ``airflow_db``.
    """
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = init_auth_manager()
    return manager.generate_jwt(SimpleAuthManagerUser(username="alice", role="viewer"))  # type: ignore[arg-type]


@pytest.fixture
def receiver_env(deployed_dags: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The local catalog and both receivers' secrets as Airflow connections; fresh caches."""
    from delivery.web import alertmanager, github
    from delivery.web.cache import CATALOG

    monkeypatch.setenv("DELIVERY_CATALOG_DIR", str(CATALOG_DIR))
    monkeypatch.setenv("DELIVERY_WEBHOOK_SWEEP_INTERVAL", "0")  # tests call inbox.sweep() themselves
    monkeypatch.setenv(
        "AIRFLOW_CONN_GITHUB_WEBHOOK", json.dumps({"conn_type": "generic", "password": SECRET})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERTMANAGER_WEBHOOK", json.dumps({"conn_type": "http", "password": ALERT_TOKEN})
    )
    caches = (CATALOG, github.SECRET, alertmanager.TOKEN)
    for cache in caches:
        cache.clear()
    yield deployed_dags
    for cache in caches:
        cache.clear()


def stored_runs(dag_id: str, run_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{run_id: {"conf", "state", "run_type", "triggering_user_name", "note"}} as the metadata DB has them."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = select(DagRun).where(DagRun.dag_id == dag_id)
    if run_ids is not None:
        query = query.where(DagRun.run_id.in_(run_ids))
    with create_session() as session:
        return {
            run.run_id: {
                "conf": dict(run.conf or {}),
                "state": str(run.state),
                "run_type": str(run.run_type),
                "triggering_user_name": run.triggering_user_name,
                "note": run.note,
            }
            for run in session.scalars(query)
        }
