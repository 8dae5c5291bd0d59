"""docker-compose.yaml is a valid Compose file describing the Celery stack."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

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
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    } <= services
    worker = config["services"]["airflow-worker"]
    assert worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    volumes = " ".join(str(v) for v in worker["volumes"])
    for folder in ("dags", "plugins", "include"):
        assert f"/opt/airflow/{folder}" in volumes
    assert config["services"]["airflow-apiserver"]["build"]["dockerfile"] == "images/airflow/Dockerfile"
    assert (ROOT / "images/airflow/Dockerfile").read_text().count("requirements.txt") >= 2
