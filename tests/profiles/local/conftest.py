"""Fixtures for the local platform tests: a REAL Docker engine and registry.

The engine, the registry and the base images are started through
``scripts/local/*.sh`` when they are not already there; if that fails, the tests
fail with the script's message (they are never skipped).
"""

from __future__ import annotations

import secrets
import socket
from typing import TYPE_CHECKING

import pytest

from delivery.devenv.demo import assemble_service
from delivery.profiles.local.images import ImageRef, build_and_push
from tests.helpers import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator

    import docker

REPO_ROOT = ROOT
SERVICES = REPO_ROOT / "include" / "services"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
