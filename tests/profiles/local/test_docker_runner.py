"""The docker runner: a stage runs in its image on the real Docker engine, over the run's checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from delivery.catalog import Stage, load_catalog
from delivery.catalog.toolchains import resolve_stages
from delivery.paths import PROJECT_ROOT
from delivery.profiles.local.docker import StageDockerOperator, docker_stage_operator
from delivery.profiles.local.workspaces import run_folder

RUN_ID = "manual__2026-01-01T00:00:00+00:00"


def _git(*args: str, cwd: Path) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def catalog_and_repo(tmp_path: Path):  # type: ignore[no-untyped-def]
    repo = tmp_path / "svc"
    repo.mkdir()
    (repo / "greeting.txt").write_text("bonjour\n")
    _git("init", "-q", "--initial-branch=main", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "init", cwd=repo)
    sha = _git("rev-parse", "HEAD", cwd=repo)
    catalog = tmp_path / "catalog"
    (catalog / "services").mkdir(parents=True)
    platform = yaml.safe_load((PROJECT_ROOT / "include/catalog-local/platform.yaml").read_text())
    platform["platform"]["local"]["runner"] = "docker"
    platform["platform"]["local"]["workspace_root"] = str(tmp_path / "workspaces")
    (catalog / "platform.yaml").write_text(yaml.safe_dump(platform))
    service = yaml.safe_load(
        (PROJECT_ROOT / "include/catalog-local/services/visiobook-inference.yaml").read_text()
    )
    service["repo"]["url"] = str(repo)
    image = "visiobook/python-base:bookworm"
    service["stages"] = {
        "unit_tests": {
            "image": image,
            "command": 'cat greeting.txt; echo "$DELIVERY_SERVICE $DELIVERY_SHA" > built.txt',
        },
        "gpu_inference": {"image": image, "command": 'echo "device=$DELIVERY_GPU_DEVICE"'},
    }
    (catalog / "services" / "visiobook-inference.yaml").write_text(yaml.safe_dump(service))
    cat, _ = load_catalog(catalog)
    return cat, sha, tmp_path / "workspaces" / "visiobook-inference" / run_folder(RUN_ID)


def test_stage_runs_in_its_image_over_the_checkout(local_platform, catalog_and_repo) -> None:  # type: ignore[no-untyped-def]
    cat, sha, workspace = catalog_and_repo
    svc = cat.service("visiobook-inference")
    stage = resolve_stages(svc, cat.platform)[Stage.UNIT_TESTS]
    op = docker_stage_operator(service=svc, platform=cat.platform, stage=stage, task_id="unit_tests")
    assert isinstance(op, StageDockerOperator)
    assert op.image == "visiobook/python-base:bookworm" and op.network_mode == "host"
    op.environment["DELIVERY_SHA"] = sha  # what Airflow renders from validate.checkout
    op.environment["DELIVERY_RUN_ID"] = RUN_ID  # and from the run id
    op.execute(context={})  # type: ignore[arg-type]
    assert op.host_workspace == str(workspace)
    # The command ran in the container, in the checkout of that commit, and wrote into it.
    assert (workspace / "built.txt").read_text().split() == ["visiobook-inference", sha]
    assert _git("rev-parse", "HEAD", cwd=workspace) == sha


def test_gpu_stage_requests_gpus_and_never_passes_silently_without_one(catalog_and_repo) -> None:  # type: ignore[no-untyped-def]
    from airflow.exceptions import AirflowSkipException

    cat, _sha, _workspace = catalog_and_repo
    svc = cat.service("visiobook-inference")
    stage = resolve_stages(svc, cat.platform)[Stage.GPU_INFERENCE]
    op = docker_stage_operator(service=svc, platform=cat.platform, stage=stage, task_id="gpu")
    assert op.device_requests is not None
    assert op.device_requests[0]["Count"] == 1 and op.device_requests[0]["Capabilities"] == [["gpu"]]
    assert op.shm_size is not None and op.shm_size > 0
    from delivery.profiles.local.shell import has_gpu

    if has_gpu()[0]:
        pytest.skip("this machine has a GPU: the no-GPU policy cannot be observed")
    op.gpu_policy = "skip"
    with pytest.raises(AirflowSkipException, match="skipped: no GPU"):
        op.execute(context={})  # type: ignore[arg-type]
    op.gpu_policy = "fail"
    with pytest.raises(RuntimeError, match="requires a GPU"):
        op.execute(context={})  # type: ignore[arg-type]
