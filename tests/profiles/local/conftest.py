"""Fixtures for the local platform tests: a REAL Docker engine and registry, and a one-service catalog.

The engine, the registry and the base images are started through
``scripts/local/*.sh`` when they are not already there; if that fails, the tests
fail with the script's message (they are never skipped). The modules that use them
are marked ``e2e``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from delivery.catalog import Catalog, load_catalog
from delivery.devenv.demo import assemble_service
from delivery.paths import PROJECT_ROOT
from delivery.profiles.local.images import ImageRef, build_and_push
from delivery.profiles.local.workspaces import run_folder
from tests.helpers import ROOT, git

if TYPE_CHECKING:
    from collections.abc import Iterator

    import docker

REPO_ROOT = ROOT
SERVICES = REPO_ROOT / "include" / "services"
RUN_ID = "manual__2026-01-01T00:00:00+00:00"


@pytest.fixture(scope="session")
def docker_client(local_platform: None) -> Iterator[docker.DockerClient]:
    import docker as docker_sdk

    client = docker_sdk.from_env(timeout=600)
    yield client
    client.close()


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def web_sha() -> str:
    return secrets.token_hex(20)


@pytest.fixture(scope="session")
def web_repository(run_id: str) -> str:
    return f"test/visiobook-demo-web-{run_id}"


@pytest.fixture(scope="session")
def web_image(
    docker_client: docker.DockerClient,
    registry: str,
    web_repository: str,
    web_sha: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ImageRef]:
    """The demo web service, built from its real Dockerfile and pushed once per session."""
    ref = build_and_push(
        # The tree its repo holds: its own folder plus the tooling the demo services share.
        context_dir=assemble_service(
            "visiobook-demo-web", tmp_path_factory.mktemp("src") / "visiobook-demo-web"
        ),
        dockerfile="Dockerfile",
        repository=web_repository,
        registry=registry,
        source_sha=web_sha,
        branch="feature/Local-Tests",
        tags_extra=("v1.4.0",),
        build_args={"BASE_IMAGE": "visiobook/python-base:bookworm"},
        labels={"org.opencontainers.image.title": "visiobook-demo-web"},
        source_url="https://example.invalid/visiobook/visiobook-demo-web.git",
        client=docker_client,
    )
    yield ref
    for image in docker_client.images.list(name=f"{registry}/{web_repository}"):
        docker_client.images.remove(image.id, force=True)


@pytest.fixture
def catalog_and_repo(tmp_path: Path) -> tuple[Catalog, str, Path]:
    """A catalog whose inference service runs its stages with the docker runner, from a one-commit
    repo: (catalog, the commit, the run's workspace folder)."""
    repo = tmp_path / "svc"
    repo.mkdir()
    (repo / "greeting.txt").write_text("bonjour\n")
    git("init", "-q", "--initial-branch=main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "init", cwd=repo)
    sha = git("rev-parse", "HEAD", cwd=repo)
    catalog = tmp_path / "catalog"
    (catalog / "services").mkdir(parents=True)
    platform = yaml.safe_load((PROJECT_ROOT / "include/catalog-local/platform.yaml").read_text())
    platform["platform"]["local"]["runner"] = "docker"
    platform["platform"]["local"]["workspace_root"] = str(tmp_path / "workspaces")
    (catalog / "platform.yaml").write_text(yaml.safe_dump(platform))
    service: dict[str, Any] = yaml.safe_load(
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
