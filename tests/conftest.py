"""Shared fixtures: an isolated Airflow home per test session, and the Slack stand-in."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SHARED_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Airflow reads its configuration at import time: isolate it before any test imports it. Every
# pytest process gets a home and metadata DB of its own, never inherited: xdist's workers inherit
# the controller's environment, and workers sharing one SQLite DB migrated it at the same time and
# deactivated each other's DAGs (nor may a shell's AIRFLOW_HOME receive the tests' runs). Once per
# process: this module is imported again as ``tests.conftest`` by a test that uses its hooks.
_HOME_OWNER = "DELIVERY_TESTS_AIRFLOW_HOME_PID"
if os.environ.get(_HOME_OWNER) != str(os.getpid()):
    _airflow_home = Path(tempfile.mkdtemp(prefix="delivery-airflow-home-"))
    atexit.register(shutil.rmtree, _airflow_home, ignore_errors=True)
    os.environ[_HOME_OWNER] = str(os.getpid())
    os.environ["AIRFLOW_HOME"] = str(_airflow_home)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_airflow_home}/airflow.db"
    os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(_airflow_home / "logs")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("DELIVERY_CATALOG_STRICT", "1")


def pytest_configure(config: pytest.Config) -> None:
    """One shared folder per test run: made by the process that runs the session, handed to
    each xdist worker in its ``workerinput``."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        os.environ[SHARED_DIR_ENV] = workerinput[SHARED_DIR_ENV]
    else:  # never an inherited one: a test that runs pytest must not stop or remove this run's
        os.environ[SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="delivery-e2e-shared-")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, in the controller: give a worker the run's shared folder."""
    node.workerinput[SHARED_DIR_ENV] = os.environ[SHARED_DIR_ENV]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the run's shared stacks once every test is done: in the controller under xdist."""
    if hasattr(session.config, "workerinput"):  # an xdist worker: others may still use them
        return
    from tests.shared import stop_all

    shared = Path(os.environ[SHARED_DIR_ENV])
    for error in stop_all(shared):
        print(f"\ncould not stop a shared resource of the tests: {error}", file=sys.stderr)
    shutil.rmtree(shared, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first (their ``duration`` mark), each module's tests kept in order.

    The suite's parallel workers take whole files in this order (``--dist loadfile
    --no-loadscope-reorder``): a 7-minute end-to-end module started last would run alone at the
    end while the other workers sit idle.
    """

    def longest_first(item: pytest.Item) -> float:
        mark = item.get_closest_marker("duration")
        return -float(mark.args[0]) if mark else 0.0

    items.sort(key=longest_first)  # stable: same-weight modules and each module's tests keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with a worker given its next file only as its current file's last test starts.

    xdist's own scheduler hands a worker its next file as the second-to-last test of the current
    one starts; behind a long test there (the monitoring module's four minutes of alerts), that
    file waited minutes while other workers sat idle. A worker cannot do with less than one test
    ahead: it runs a test only once it knows the next one (for the fixtures' teardown).
    """
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class OneFileAhead(LoadFileScheduling):
        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return OneFileAhead(config, log)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata database (SQLite) for tests that run tasks in-process, this process's own.

    Migrated once per test run (about 10 CPU-seconds), by the first process that needs it,
    into the run's shared folder; every process then starts from a copy of it.
    """
    from delivery.gitops.locks import file_lock

    shared = Path(os.environ[SHARED_DIR_ENV])
    template = shared / "airflow-migrated.db"
    with file_lock(shared / "airflow-migrated.lock", timeout_s=None, what="the migrated metadata DB"):
        if not template.is_file():
            partial = template.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{partial}"}
            subprocess.run(
                [str(VENV_BIN / "airflow"), "db", "migrate"],
                env=env,
                check=True,
                capture_output=True,
                timeout=300,
            )
            partial.rename(template)
    home = Path(os.environ["AIRFLOW_HOME"])
    database = home / "airflow.db"
    if database.is_file() and database.stat().st_size:  # opened already: never copy over it
        subprocess.run(
            [str(VENV_BIN / "airflow"), "db", "migrate"], check=True, capture_output=True, timeout=300
        )
    else:
        shutil.copyfile(template, database)
    return home


@pytest.fixture(scope="session")
def registry() -> str:
    return f"127.0.0.1:{os.environ.get('REGISTRY_PORT', '5000')}"


@pytest.fixture(scope="session")
def local_platform(registry: str) -> None:
    """A real Docker engine, the image registry and the base images (started when missing, never skipped)."""
    from delivery.devenv.platform import PlatformError, ensure_local_platform

    try:
        ensure_local_platform(registry_port=int(registry.rsplit(":", 1)[1]))
    except PlatformError as err:
        pytest.fail(f"the local platform (Docker engine, registry, base images) could not start:\n{err}")


@pytest.fixture
def slack() -> Iterator[object]:
    from tests.standins.slack_server import SlackStandIn

    standin = SlackStandIn().start()
    try:
        yield standin
    finally:
        standin.stop()
