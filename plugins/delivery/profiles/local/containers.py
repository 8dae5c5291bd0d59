"""The ``docker`` deploy target's runtime half: run a release as a container.

One container per (service, environment), named ``visiobook-<service>-<environment>``,
on the host network (the local engine has no bridge), bound to 127.0.0.1 on
the given port. A new release stops and removes the previous container, starts
the new one and waits for HTTP health. A release that fails its health check
is stopped (kept, so its logs can be read) and :class:`ReleaseHealthError` is
raised; restoring the previous release is the pipeline's rollback, which runs
the previous image through this same function.

The container gets ``HOST=127.0.0.1``, ``PORT``, ``APP_ENVIRONMENT`` and
``APP_COMMIT`` (the image's ``org.opencontainers.image.revision`` label), plus
``env``; labels ``io.visiobook.*`` record service, environment, image, revision
and port, so :func:`current_release` can answer from the engine alone.

This module imports the docker SDK: :mod:`delivery.profiles.local.steps` imports it
only when a step runs, never while a DAG file is parsed.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import docker
import requests

from delivery.profiles.local.images import REVISION_LABEL

if TYPE_CHECKING:
    from collections.abc import Mapping


log = logging.getLogger(__name__)

LABEL_PREFIX = "io.visiobook"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ReleaseError(RuntimeError):
    """A release could not be started."""


class ReleaseHealthError(ReleaseError):
    """The release started but did not become healthy in time; it was stopped."""

    def __init__(self, message: str, *, info: ContainerInfo, logs: str = "") -> None:
        super().__init__(message)
        self.info = info
        self.logs = logs


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    id: str
    service: str
    environment: str
    image: str
    revision: str
    port: int
    status: str
    healthy: bool
    health: Mapping[str, Any] | None = None
    health_status_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def container_name(service: str, environment: str) -> str:
    for kind, value in (("service", service), ("environment", environment)):
        if not _NAME.match(value):
            raise ValueError(f"invalid {kind} name {value!r} (lowercase letters, digits and '-')")
    return f"visiobook-{service}-{environment}"


def _client(client: docker.DockerClient | None) -> docker.DockerClient:
    if client is not None:
        return client
    return docker.from_env(timeout=120)


def _get_container(client: docker.DockerClient, name: str) -> Any:
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def _ensure_image(client: docker.DockerClient, image: str) -> Any:
    try:
        return client.images.get(image)
    except docker.errors.ImageNotFound:
        pass
    log.info("pulling %s", image)
    try:
        return client.images.pull(image)
    except docker.errors.APIError as err:
        raise ReleaseError(f"image {image} is not local and could not be pulled: {err}") from err


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _probe(url: str, timeout: float) -> tuple[int | None, Mapping[str, Any] | None, str]:
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as err:
        return None, None, f"{type(err).__name__}"
    try:
        body = resp.json()
    except ValueError:
        body = None
    data = body if isinstance(body, dict) else {"body": resp.text[:500]}
    return resp.status_code, data, f"HTTP {resp.status_code}"


def _info(
    container: Any, *, healthy: bool, health: Mapping[str, Any] | None, code: int | None
) -> ContainerInfo:
    labels = container.labels or {}
    return ContainerInfo(
        name=container.name,
        id=container.id,
        service=labels.get(f"{LABEL_PREFIX}.service", ""),
        environment=labels.get(f"{LABEL_PREFIX}.environment", ""),
        image=labels.get(f"{LABEL_PREFIX}.image", ""),
        revision=labels.get(f"{LABEL_PREFIX}.revision", ""),
        port=int(labels.get(f"{LABEL_PREFIX}.port", "0") or 0),
        status=container.status,
        healthy=healthy,
        health=health,
        health_status_code=code,
    )


def _remove_previous(client: docker.DockerClient, name: str, stop_timeout: int) -> None:
    previous = _get_container(client, name)
    if previous is None:
        return
    log.info(
        "stopping the previous release %s (%s)", name, (previous.labels or {}).get(f"{LABEL_PREFIX}.image")
    )
    if previous.status in ("running", "restarting", "paused"):
        previous.stop(timeout=stop_timeout)
    previous.remove(force=True)


def _start(
    client: docker.DockerClient,
    *,
    name: str,
    image: str,
    labels: Mapping[str, str],
    environment: Mapping[str, str],
    user: str | None,
) -> Any:
    try:
        return client.containers.run(
            image,
            name=name,
            detach=True,
            network_mode="host",
            environment=dict(environment),
            labels=dict(labels),
            user=user,
        )
    except docker.errors.APIError as err:
        raise ReleaseError(f"could not start {name} from {image}: {err}") from err


def _wait_healthy(
    container: Any, url: str, *, timeout: float, poll_interval: float
) -> tuple[bool, int | None, Mapping[str, Any] | None, str]:
    """(healthy, last status code, last health body, last problem) once 200, exited or timed out."""
    deadline = time.monotonic() + timeout
    code: int | None = None
    body: Mapping[str, Any] | None = None
    problem = "no answer yet"
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            return (
                False,
                code,
                body,
                f"container exited with code {container.attrs.get('State', {}).get('ExitCode')}",
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, code, body, problem
        code, body, problem = _probe(url, timeout=max(0.2, min(2.0, remaining)))
        if code == 200:
            return True, code, body, problem
        time.sleep(min(poll_interval, max(deadline - time.monotonic(), 0)))


def run_release(
    *,
    service: str,
    environment: str,
    image: str,
    port: int,
    env: Mapping[str, str] | None = None,
    health_path: str = "/health",
    timeout: float = 60.0,
    poll_interval: float = 0.5,
    user: str | None = "65534:65534",
    stop_timeout: int = 10,
    client: docker.DockerClient | None = None,
) -> ContainerInfo:
    """Replace the (service, environment) container with ``image`` and wait until healthy.

    Returns the running container's :class:`ContainerInfo` with the health JSON.
    Raises :class:`ReleaseHealthError` (the new container stopped, its logs
    attached) when health does not answer 200 within ``timeout`` seconds or the
    container exits, and :class:`ReleaseError` when it cannot start at all.
    """
    name = container_name(service, environment)
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    docker_client = _client(client)
    revision = (_ensure_image(docker_client, image).labels or {}).get(REVISION_LABEL, "unknown")
    _remove_previous(docker_client, name, stop_timeout)
    if _port_in_use(port):
        raise ReleaseError(
            f"port {port} on 127.0.0.1 is already in use by another process; cannot start {name}"
        )
    log.info("starting %s from %s (revision %s) on 127.0.0.1:%d", name, image, revision, port)
    container = _start(
        docker_client,
        name=name,
        image=image,
        user=user,
        environment={
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "APP_ENVIRONMENT": environment,
            "APP_COMMIT": revision,
            **(env or {}),
        },
        labels={
            f"{LABEL_PREFIX}.service": service,
            f"{LABEL_PREFIX}.environment": environment,
            f"{LABEL_PREFIX}.image": image,
            f"{LABEL_PREFIX}.revision": revision,
            f"{LABEL_PREFIX}.port": str(port),
            f"{LABEL_PREFIX}.managed-by": "delivery",
        },
    )
    url = f"http://127.0.0.1:{port}{health_path}"
    healthy, code, body, problem = _wait_healthy(container, url, timeout=timeout, poll_interval=poll_interval)
    if healthy:
        log.info("%s is healthy: %s", name, body)
        return _info(container, healthy=True, health=body, code=code)
    logs = container.logs(tail=50).decode(errors="replace")
    if container.status == "running":
        container.stop(timeout=stop_timeout)
    container.reload()
    log.error("%s failed its health check at %s: %s; logs:\n%s", name, url, problem, logs)
    raise ReleaseHealthError(
        f"release {name} ({image}) did not become healthy at {url} within {timeout:.0f}s: {problem}"
        + (f" {dict(body)}" if body else ""),
        info=_info(container, healthy=False, health=body, code=code),
        logs=logs,
    )


def current_release(
    *,
    service: str,
    environment: str,
    probe: bool = True,
    health_path: str = "/health",
    client: docker.DockerClient | None = None,
) -> ContainerInfo | None:
    """The container of (service, environment), or None; ``probe`` checks its health now."""
    container = _get_container(_client(client), container_name(service, environment))
    if container is None:
        return None
    info = _info(container, healthy=False, health=None, code=None)
    if probe and container.status == "running" and info.port:
        code, body, _ = _probe(f"{info.url}{health_path}", timeout=2.0)
        info = _info(container, healthy=code == 200, health=body, code=code)
    return info


def stop_release(
    *,
    service: str,
    environment: str,
    remove: bool = False,
    stop_timeout: int = 10,
    client: docker.DockerClient | None = None,
) -> bool:
    """Stop (and with ``remove``, delete) the container; False when there was none."""
    name = container_name(service, environment)
    container = _get_container(_client(client), name)
    if container is None:
        return False
    if container.status in ("running", "restarting", "paused"):
        log.info("stopping %s", name)
        container.stop(timeout=stop_timeout)
    if remove:
        container.remove(force=True)
    return True
