"""The platform scripts: status answers, and a second registry starts and stops cleanly."""

from __future__ import annotations

import os
import subprocess

import pytest
import requests

from delivery.devenv.platform import SCRIPTS_DIR
from tests.helpers import free_port

pytestmark = pytest.mark.e2e  # the Docker engine and a second registry


def _script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS_DIR / name), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_engine_and_registry_status(local_platform: None) -> None:
    assert _script("docker-engine.sh", "status").returncode == 0
    assert _script("registry.sh", "status").returncode == 0
    assert _script("docker-engine.sh", "bogus").returncode == 2


def test_base_images_are_idempotent(local_platform: None) -> None:
    proc = _script("base-images.sh")
    assert proc.returncode == 0, proc.stderr
    assert "visiobook/python-base:bookworm exists; skipping" in proc.stderr
    assert "visiobook/busybox:latest exists; skipping" in proc.stderr


def test_registry_on_another_port_starts_and_stops(local_platform: None) -> None:
    port = str(free_port())
    started = _script("registry.sh", "start", REGISTRY_PORT=port)
    try:
        assert started.returncode == 0, started.stderr
        assert requests.get(f"http://127.0.0.1:{port}/v2/", timeout=5).status_code == 200
    finally:
        stopped = _script("registry.sh", "stop", REGISTRY_PORT=port)
    assert stopped.returncode == 0, stopped.stderr
    assert _script("registry.sh", "status", REGISTRY_PORT=port).returncode == 1
