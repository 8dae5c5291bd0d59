"""Airflow's metadata database is PostgreSQL, and never silently something else.

The crashes (``kill -9`` of Airflow with PostgreSQL left running, a machine crash with a stale
PostgreSQL pid file) and the starts that follow them are tested on a stack running real
pipelines, in tests/e2e/test_crashes.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery.devenv.airflow_server import AirflowError, AirflowServer
from tests.helpers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.duration(40)]

DAGS = Path(__file__).parent / "dags"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "airflow"
    try:
        yield path
    finally:
        AirflowServer(home=path).destroy()


def test_no_silent_switch_to_sqlite(home: Path) -> None:
    server = AirflowServer(home=home, port=free_port(), dags_folder=DAGS)
    data = server._cluster().data
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")  # a broken cluster: PostgreSQL cannot start on it

    with pytest.raises(AirflowError, match=r"(?s)PostgreSQL.* cannot start.*see .*log.*--database sqlite"):
        server.start()

    assert not (home / "airflow.db").exists()
    assert not server.components()
    explicit = AirflowServer(home=home, port=server.port, dags_folder=DAGS, database="sqlite")
    explicit.start()
    try:
        assert explicit.database_url() == f"sqlite:///{home.resolve()}/airflow.db"
        assert explicit.api("GET", "/monitor/health")["metadatabase"]["status"] == "healthy"
    finally:
        explicit.stop()
