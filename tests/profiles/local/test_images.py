"""build_and_push against the REAL engine and registry."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from unittest import mock

import pytest
import requests

from delivery.profiles.local.images import (
    REVISION_LABEL,
    ImagePushError,
    RegistryClient,
    RegistryUnavailableError,
    RetryPolicy,
    build_and_push,
    push_tag,
)
from tests.helpers import free_port
from tests.profiles.local.conftest import SERVICES

if TYPE_CHECKING:
    import docker

    from delivery.profiles.local.images import ImageRef

pytestmark = pytest.mark.e2e  # the Docker engine and the registry


def _tags(registry: str, repository: str) -> list[str]:
    resp = requests.get(f"http://{registry}/v2/{repository}/tags/list", timeout=10)
    resp.raise_for_status()
    return sorted(resp.json()["tags"])


def test_build_and_push_tags_visible_in_registry(web_image: ImageRef, registry: str, web_sha: str) -> None:
    assert web_image.built and web_image.pushed
    assert web_image.tags == (web_sha, "feature-Local-Tests", "v1.4.0")
    assert _tags(registry, web_image.repository) == sorted(web_image.tags)
    assert web_image.digest and web_image.digest.startswith("sha256:")
    assert web_image.reference == f"{registry}/{web_image.repository}:{web_sha}"


def test_labels_on_the_image(web_image: ImageRef, docker_client: docker.DockerClient, web_sha: str) -> None:
    labels = docker_client.images.get(web_image.reference).labels
    assert labels[REVISION_LABEL] == web_sha
    assert labels["org.opencontainers.image.source"].endswith("visiobook-demo-web.git")
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert labels["org.opencontainers.image.version"] == "1.4.0"
    assert labels["org.opencontainers.image.ref.name"] == "feature/Local-Tests"


def test_same_commit_again_is_a_no_op(
    web_image: ImageRef, docker_client: docker.DockerClient, registry: str, web_sha: str
) -> None:
    reg = RegistryClient(registry)
    with (
        mock.patch.object(docker_client.api, "build", side_effect=AssertionError("rebuilt")) as build,
        mock.patch.object(docker_client.api, "push", side_effect=AssertionError("pushed")) as push,
    ):
        started = time.monotonic()
        again = build_and_push(
            context_dir=SERVICES / "visiobook-demo-web",
            dockerfile="Dockerfile",
            repository=web_image.repository,
            registry=registry,
            source_sha=web_sha,
            branch="feature/Local-Tests",
            tags_extra=("v1.4.0",),
            build_args={"BASE_IMAGE": "visiobook/python-base:bookworm"},
            labels={},
            client=docker_client,
            registry_client=reg,
        )
        elapsed = time.monotonic() - started
    assert build.call_count == 0 and push.call_count == 0
    assert (again.built, again.pushed, again.reused) == (False, False, True)
    assert again.digest == web_image.digest
    assert again.retagged == ()
    assert reg.calls == 3  # sha manifest + two tag checks, nothing else
    assert elapsed < 5


def test_new_tag_on_a_pushed_commit_is_added_without_rebuild(
    web_image: ImageRef, docker_client: docker.DockerClient, registry: str, web_sha: str
) -> None:
    with mock.patch.object(docker_client.api, "build", side_effect=AssertionError("rebuilt")):
        ref = build_and_push(
            context_dir=SERVICES / "visiobook-demo-web",
            dockerfile="Dockerfile",
            repository=web_image.repository,
            registry=registry,
            source_sha=web_sha,
            branch="feature/Local-Tests",
            tags_extra=("v1.4.1",),
            build_args={},
            labels={},
            client=docker_client,
        )
    assert ref.retagged == ("v1.4.1",)
    assert "v1.4.1" in _tags(registry, web_image.repository)
    assert RegistryClient(registry).manifest_digest(web_image.repository, "v1.4.1") == web_image.digest


def test_registry_down_is_retried_then_fails_clearly(
    docker_client: docker.DockerClient, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    caplog.set_level(logging.WARNING, logger="delivery.profiles.local.images")
    with pytest.raises(RegistryUnavailableError) as err:
        build_and_push(
            context_dir=SERVICES / "visiobook-demo-web",
            dockerfile="Dockerfile",
            repository="test/unreachable",
            registry=dead,
            source_sha="b" * 40,
            branch="main",
            build_args={},
            labels={},
            retry=RetryPolicy(attempts=3, initial_delay=0.05, max_delay=0.1),
            client=docker_client,
        )
    assert err.value.attempts == 3
    assert dead in str(err.value) and "test/unreachable" in str(err.value)
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


def test_push_errors_are_retried_with_backoff_then_name_registry_and_image(
    docker_client: docker.DockerClient, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    name = f"{dead}/test/busybox"
    docker_client.api.tag("visiobook/busybox:latest", name, tag="t1")
    caplog.set_level(logging.WARNING, logger="delivery.profiles.local.images")
    sleeps: list[float] = []
    try:
        with (
            mock.patch("delivery.profiles.local.images.time.sleep", side_effect=sleeps.append),
            pytest.raises(ImagePushError) as err,
        ):
            push_tag(
                docker_client,
                name=name,
                tag="t1",
                registry=dead,
                retry=RetryPolicy(attempts=4, initial_delay=0.5, max_delay=1.0),
            )
    finally:
        docker_client.images.remove(f"{name}:t1")
    assert err.value.attempts == 4
    assert sleeps == [0.5, 1.0, 1.0]
    message = str(err.value)
    assert f"registry {dead}" in message and f"{name}:t1" in message
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 3
