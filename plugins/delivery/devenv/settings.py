"""One description of the distributed deployment, shared by docker-compose.yaml and the native command.

``images/airflow/airflow-common.env`` holds the Airflow settings of every component; the
compose file reads it (``env_file``) and :func:`common_settings` reads it here.
:data:`COMPONENTS` lists the Airflow processes with their compose service names and
commands; ``tests/test_compose.py`` checks that the compose file has the same services
running the same commands.

Workers on a 2-core machine: two workers on the default queue (concurrency 2 each), so
that a worker killed mid-stage leaves another one to run the retry, and one worker on
the ``gpu`` queue only, with concurrency 1, as the issue asks: GPU stages never wait
behind ordinary ones, and one GPU runs one GPU stage at a time. An idle Celery worker
costs memory (about 0.3 GB with its pool) but almost no CPU, and stages mostly wait on
Docker or git, so four default slots keep both cores busy without thrashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from delivery.paths import PROJECT_ROOT

COMMON_ENV_FILE = PROJECT_ROOT / "images" / "airflow" / "airflow-common.env"
DEFAULT_QUEUE = "default"
GPU_QUEUE = "gpu"

FAILURE_DETECTION = (
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
)
# The settings of the env file that also apply to `airflow standalone`: failure detection, the
# Execution API retries, and the plugin loaded once per component.
SHARED_WITH_STANDALONE = (
    *FAILURE_DETECTION,
    "AIRFLOW__WORKERS__EXECUTION_API_RETRIES",
    "AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MAX",
    "AIRFLOW__CORE__LAZY_LOAD_PLUGINS",
)


@dataclass(frozen=True)
class Component:
    """One Airflow process: its compose service name, and the ``airflow`` sub-command it runs."""

    name: str
    command: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "celery-worker" if self.command[:2] == ("celery", "worker") else self.command[0]

    @property
    def queues(self) -> tuple[str, ...]:
        if self.kind != "celery-worker":
            return ()
        return tuple(self.command[self.command.index("--queues") + 1].split(","))


def _worker(name: str, queues: str, concurrency: int) -> Component:
    return Component(name, ("celery", "worker", "--queues", queues, "--concurrency", str(concurrency)))


COMPONENTS: tuple[Component, ...] = (
    Component("airflow-apiserver", ("api-server",)),
    Component("airflow-scheduler-1", ("scheduler",)),
    Component("airflow-scheduler-2", ("scheduler",)),
    Component("airflow-dag-processor", ("dag-processor",)),
    Component("airflow-triggerer", ("triggerer",)),
    _worker("airflow-worker-1", DEFAULT_QUEUE, 2),
    _worker("airflow-worker-2", DEFAULT_QUEUE, 2),
    _worker("airflow-worker-gpu", GPU_QUEUE, 1),
)


def parse_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments are skipped (the Compose env_file format)."""
    settings = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        settings[key.strip()] = value
    return settings


def common_settings() -> dict[str, str]:
    return parse_env_file(COMMON_ENV_FILE)
