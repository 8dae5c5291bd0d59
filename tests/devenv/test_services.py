"""The demo services' own CI steps (lint, unit + integration tests, coverage) pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SERVICES = ROOT / "include" / "services"

SERVICE_DIRS = ["visiobook-demo-web", "visiobook-inference"]


def _run(args: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOG_LEVEL": "WARNING", "PYTHON": sys.executable}
    env.pop("DEMO_FAIL_HEALTH", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("service", SERVICE_DIRS)
def test_unittest_suite(service: str) -> None:
    proc = _run([sys.executable, "-m", "unittest"], str(SERVICES / service))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stderr


@pytest.mark.parametrize("service", SERVICE_DIRS)
def test_ci_lint_and_coverage(service: str) -> None:
    for step in ("lint", "coverage"):
        proc = _run(["bash", "ci.sh", step], str(SERVICES / service))
        assert proc.returncode == 0, f"ci.sh {step}:\n{proc.stdout}{proc.stderr}"
    assert "coverage:" in proc.stdout


@pytest.mark.parametrize("service", SERVICE_DIRS)
def test_service_layout(service: str) -> None:
    root = SERVICES / service
    for rel in (
        "Dockerfile",
        "VERSION",
        "helm/Chart.yaml",
        "helm/values.yaml",
        "helm/templates/deployment.yaml",
        "helm/templates/service.yaml",
        "deploy/values-staging.yaml",
        "deploy/values-production.yaml",
    ):
        assert (root / rel).is_file(), rel
    dockerfile = (root / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=visiobook/python-base:bookworm" in dockerfile
    assert "FROM ${BASE_IMAGE}" in dockerfile


def test_inference_chart_requests_a_gpu() -> None:
    import yaml

    values = yaml.safe_load((SERVICES / "visiobook-inference" / "helm" / "values.yaml").read_text())
    assert values["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert values["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert values["nodeSelector"]
    assert set(values["image"]) >= {"repository", "tag"}
