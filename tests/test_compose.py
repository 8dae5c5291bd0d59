"""docker-compose.yaml is a valid Compose file describing the Celery stack, the same one the native command runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from delivery.devenv.settings import (
    COMMON_ENV_FILE,
    COMPONENTS,
    DEFAULT_QUEUE,
    FAILURE_DETECTION,
    GPU_QUEUE,
    common_settings,
    parse_env_file,
)

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> list[str]:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return ["docker", "compose"]
    path = shutil.which("docker-compose")
    assert path, (
        "install Docker Compose (Debian: apt-get install docker-compose) to validate docker-compose.yaml"
    )
    return [path]


def test_compose_file_validates() -> None:
    proc = subprocess.run(
        [*_compose(), "-f", str(ROOT / "docker-compose.yaml"), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = set(config["services"])
    assert {
        "postgres",
        "redis",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler-1",
        "airflow-scheduler-2",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker-1",
        "airflow-worker-2",
        "airflow-worker-gpu",
    } <= services
    worker = config["services"]["airflow-worker-1"]
    assert worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    volumes = " ".join(str(v) for v in worker["volumes"])
    for folder in ("dags", "plugins", "include"):
        assert f"/opt/airflow/{folder}" in volumes
    assert config["services"]["airflow-apiserver"]["build"]["dockerfile"] == "images/airflow/Dockerfile"
    assert (ROOT / "images/airflow/Dockerfile").read_text().count("requirements.txt") >= 2


def _airflow_services(config: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {name: svc for name, svc in config["services"].items() if name.startswith("airflow-")}


def test_compose_and_native_command_describe_one_topology() -> None:
    """Same components running the same commands; settings from one env file in both."""
    proc = subprocess.run(
        [*_compose(), "-f", str(ROOT / "docker-compose.yaml"), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    services = _airflow_services(yaml.safe_load(proc.stdout))
    services.pop("airflow-init")
    commands = {name: tuple(str(svc["command"]).split()) for name, svc in services.items()}
    assert commands == {c.name: c.command for c in COMPONENTS}
    schedulers = [c for c in COMPONENTS if c.kind == "scheduler"]
    workers = {c.name: c.queues for c in COMPONENTS if c.kind == "celery-worker"}
    assert len(schedulers) == 2
    assert sorted(workers.values()) == [(DEFAULT_QUEUE,), (DEFAULT_QUEUE,), (GPU_QUEUE,)]

    shared = common_settings()
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for name, svc in services.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert {k: env.get(k) for k in shared} == shared, name
    raw = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    assert raw["x-airflow-common"]["env_file"] == [str(COMMON_ENV_FILE.relative_to(ROOT))]


def test_native_components_get_the_shared_settings(tmp_path: Path) -> None:
    from delivery.devenv.topology import Distributed

    native = Distributed(
        home=tmp_path,
        redis_password="pw",
        database_url="postgresql+psycopg2://airflow:pw@127.0.0.1:5/airflow",
    ).environment()
    assert {k: native[k] for k in common_settings()} == common_settings()
    assert native["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:pw@127.0.0.1:")
    assert (
        native["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg2://airflow:pw@127.0.0.1:5/airflow"
    )
    for key in FAILURE_DETECTION:
        assert int(common_settings()[key]) < 300, key


def test_env_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("# comment\nA=1\nnot a setting\n")
    with pytest.raises(ValueError, match=r"bad.env:3: expected KEY=VALUE"):
        parse_env_file(bad)
