"""The demo services, as their seeded repos hold them: own folder + the shared tooling.

Their own CI steps (lint, unit + integration tests, coverage) pass in the assembled tree,
each shared file has one source, and the repos ``demo setup`` seeds stand alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from delivery.devenv import demo
from tests.helpers import ROOT, git

SERVICES = ROOT / "include" / "services"
SHARED = SERVICES / "_shared"

SERVICE_DIRS = ["visiobook-demo-web", "visiobook-inference"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOG_LEVEL": "WARNING", "PYTHON": sys.executable}
    env.pop("DEMO_FAIL_HEALTH", None)
    env.pop("APP_ENVIRONMENT", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(params=SERVICE_DIRS)
def assembled(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return demo.assemble_service(request.param, tmp_path / request.param)


def test_unittest_suite(assembled: Path) -> None:
    proc = _run([sys.executable, "-m", "unittest"], assembled)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stderr
    assert "test_faults" in _run([sys.executable, "-m", "unittest", "-v"], assembled).stderr


def test_ci_lint_and_coverage(assembled: Path) -> None:
    for step in ("lint", "coverage"):
        proc = _run(["bash", "ci.sh", step], assembled)
        assert proc.returncode == 0, f"ci.sh {step}:\n{proc.stdout}{proc.stderr}"
    assert "coverage:" in proc.stdout
    assert "faults.py" in proc.stdout  # the shared modules count towards the service's coverage


@pytest.mark.parametrize("service", SERVICE_DIRS)
def test_service_layout(service: str, tmp_path: Path) -> None:
    root = demo.assemble_service(service, tmp_path / service)
    for rel in (
        "Dockerfile",
        "VERSION",
        "app.py",
        "metrics.py",
        "faults.py",
        "ci.sh",
        "helm/Chart.yaml",
        "helm/values.yaml",
        "helm/templates/deployment.yaml",
        "helm/templates/service.yaml",
        "deploy/values-staging.yaml",
        "deploy/values-production.yaml",
    ):
        assert (root / rel).is_file(), rel
    assert os.access(root / "ci.sh", os.X_OK)
    dockerfile = (root / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=visiobook/python-base:bookworm" in dockerfile
    assert "FROM ${BASE_IMAGE}" in dockerfile


def test_shared_tooling_has_one_source() -> None:
    shared = _files(SHARED)
    assert {"metrics.py", "faults.py", "ci.sh", "tools/lint.py", "tools/coverage.py"} <= shared
    for service in SERVICE_DIRS:
        assert not shared & _files(SERVICES / service), service
    # What stayed in the services differs between them (else it belongs in _shared).
    web, inference = (SERVICES / s for s in SERVICE_DIRS)
    same = [
        rel
        for rel in _files(web) & _files(inference)
        if (web / rel).read_bytes() == (inference / rel).read_bytes()
    ]
    assert same == []


def test_a_file_in_both_places_is_refused(tmp_path: Path) -> None:
    services = tmp_path / "services"
    (services / "_shared").mkdir(parents=True)
    (services / "svc").mkdir()
    for folder in ("_shared", "svc"):
        (services / folder / "metrics.py").write_text(f"# {folder}\n")
    (services / "svc" / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(ValueError, match=r"metrics.py: in both .*svc and .*_shared; keep one copy"):
        demo.assemble_service("svc", tmp_path / "out", services_dir=services)
    with pytest.raises(ValueError, match="'_shared' is not a demo service"):
        demo.assemble_service("_shared", tmp_path / "out", services_dir=services)


def test_seeded_repos_stand_alone(tmp_path: Path) -> None:
    paths = demo.setup(state=tmp_path)
    for service in SERVICE_DIRS:
        bare = tmp_path / "repos" / f"{service}.git"
        tracked = set(git("--git-dir", str(bare), "ls-tree", "-r", "--name-only", "main").splitlines())
        assert _files(SHARED) | _files(SERVICES / service) == tracked, service
        mode = git("--git-dir", str(bare), "ls-tree", "main", "ci.sh").split()[0]
        assert mode == "100755"
        assert (Path(paths[service]) / "faults.py").read_bytes() == (SHARED / "faults.py").read_bytes()


def test_inference_chart_requests_a_gpu() -> None:
    import yaml

    values = yaml.safe_load((SERVICES / "visiobook-inference" / "helm" / "values.yaml").read_text())
    assert values["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert values["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert values["nodeSelector"]
    assert set(values["image"]) >= {"repository", "tag"}
