"""Shared fixtures: an isolated Airflow home per test session, and the Slack stand-in."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Airflow reads its configuration at import time: isolate it before any test imports it.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="delivery-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME}/airflow.db")
os.environ.setdefault("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(_AIRFLOW_HOME / "logs"))
os.environ.setdefault("DELIVERY_CATALOG_STRICT", "1")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata database (SQLite) for tests that run tasks in-process."""
    env = dict(os.environ)
    subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture
def slack() -> Iterator[object]:
    from tests.standins.slack_server import SlackStandIn

    standin = SlackStandIn().start()
    try:
        yield standin
    finally:
        standin.stop()
