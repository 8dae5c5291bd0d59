"""run_release / current_release / stop_release against the REAL engine."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import requests

from delivery.profiles.local.containers import ReleaseHealthError, current_release, run_release, stop_release
from tests.helpers import free_port
from tests.profiles.local.conftest import SERVICES

if TYPE_CHECKING:
    from collections.abc import Iterator

    import docker

    from delivery.profiles.local.images import ImageRef

pytestmark = pytest.mark.e2e  # the Docker engine, the registry, containers


@pytest.fixture
def service_name(run_id: str) -> Iterator[str]:
    import docker as docker_sdk

    name = f"demo-web-{run_id}"
    yield name
    client = docker_sdk.from_env()
    for environment in ("staging", "production"):
        stop_release(service=name, environment=environment, remove=True, stop_timeout=2, client=client)
    client.close()


def test_release_serves_its_version_then_a_broken_release_fails_health(
    web_image: ImageRef, docker_client: docker.DockerClient, service_name: str, web_sha: str
) -> None:
    version = (SERVICES / "visiobook-demo-web" / "VERSION").read_text().strip()
    port = free_port()
    info = run_release(
        service=service_name,
        environment="staging",
        image=web_image.reference,
        port=port,
        env={"LOG_LEVEL": "WARNING"},
        timeout=30,
        client=docker_client,
    )
    assert info.healthy and info.status == "running"
    assert info.name == f"visiobook-{service_name}-staging"
    assert info.health is not None
    assert (info.health["version"], info.health["commit"]) == (version, web_sha)
    assert info.revision == web_sha and info.port == port
    page = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert page.status_code == 200 and f"version {version}" in page.text
    assert "http_requests_total" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    current = current_release(service=service_name, environment="staging", client=docker_client)
    assert current is not None and current.id == info.id and current.healthy

    # The same image with DEMO_FAIL_HEALTH=1 is a deliberately broken release.
    started = time.monotonic()
    with pytest.raises(ReleaseHealthError) as err:
        run_release(
            service=service_name,
            environment="staging",
            image=web_image.reference,
            port=port,
            env={"DEMO_FAIL_HEALTH": "1"},
            timeout=4,
            poll_interval=0.25,
            stop_timeout=2,
            client=docker_client,
        )
    elapsed = time.monotonic() - started
    assert elapsed < 4 + 15
    failed = err.value.info
    assert not failed.healthy and failed.status == "exited"
    assert failed.health_status_code == 503
    assert failed.id != info.id
    assert "did not become healthy" in str(err.value)
    assert f"visiobook-{service_name}-staging" in str(err.value)
    # Only one container per (service, environment): the old one is gone, the failed one kept stopped.
    prefix = f"visiobook-{service_name}"
    names = [c.name for c in docker_client.containers.list(all=True) if c.name.startswith(prefix)]
    assert names == [f"visiobook-{service_name}-staging"]
    after = current_release(service=service_name, environment="staging", client=docker_client)
    assert after is not None and after.status == "exited" and not after.healthy

    assert stop_release(service=service_name, environment="staging", remove=True, client=docker_client)
    assert current_release(service=service_name, environment="staging", client=docker_client) is None
    assert not stop_release(service=service_name, environment="staging", client=docker_client)
