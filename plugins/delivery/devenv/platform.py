"""Start the local platform (Docker engine, registry, base images) from Python.

Thin wrappers over ``scripts/local/*.sh`` so that people, tests and DAG tasks
share one implementation. Script output goes to this module's logger.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from delivery.gitops.errors import GitOpsLockTimeoutError
from delivery.gitops.locks import file_lock

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
SCRIPTS_DIR = REPO_ROOT / "scripts" / "local"
LOCK_WAIT_S = 1800.0
"""How long a start waits for another one (three scripts of at most 15 min each, a debootstrap
over a slow mirror included) before it says which lock file is held."""


class PlatformError(RuntimeError):
    """A platform script failed; the message carries the end of its output."""


def run_platform_script(
    name: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,
) -> str:
    """Run ``scripts/local/<name>`` with ``args``; return its output or raise PlatformError."""
    script = SCRIPTS_DIR / name
    if not script.is_file():
        raise PlatformError(f"no platform script {script}")
    full_env = {**os.environ, **(env or {})}
    log.info("running %s %s", name, " ".join(args))
    try:
        proc = subprocess.run(
            ["bash", str(script), *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise PlatformError(f"{name} {' '.join(args)} did not finish within {timeout:.0f}s") from err
    output = (proc.stdout + proc.stderr).strip()
    for line in output.splitlines():
        log.info("%s: %s", name, line)
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise PlatformError(f"{name} {' '.join(args)} failed with exit code {proc.returncode}:\n{tail}")
    return output


def ensure_local_platform(
    *,
    registry_port: int | None = None,
    base_images: bool = True,
    env: Mapping[str, str] | None = None,
) -> None:
    """Make sure a Docker engine, a registry and (optionally) the base images exist.

    Callers that start together (parallel test workers, two shells) take turns on a lock file in
    the state folder: the first starts what is missing, the others find it running.
    """
    extra = dict(env or {})
    if registry_port is not None:
        extra["REGISTRY_PORT"] = str(registry_port)
    state = Path({**os.environ, **extra}.get("DELIVERY_STATE_DIR") or REPO_ROOT / ".local")
    state.mkdir(parents=True, exist_ok=True)
    path = state / "platform.lock"
    try:
        with file_lock(path, timeout_s=LOCK_WAIT_S, what=str(path)):  # never inherited by the scripts
            run_platform_script("docker-engine.sh", "start", env=extra)
            run_platform_script("registry.sh", "start", env=extra)
            if base_images:
                run_platform_script("base-images.sh", "all", env=extra)
    except GitOpsLockTimeoutError as exc:
        raise PlatformError(
            f"{exc}: another start of the local platform (scripts/test.sh, scripts/run-local.sh, a test) "
            f"holds it, or a process it started kept the lock open; `fuser -v {path}` names it"
        ) from None
