"""Starts of the local platform take turns on one lock file, and a lock nobody releases is named, not waited on for ever."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from delivery.devenv import platform


def test_a_held_lock_is_named_after_the_wait_and_nothing_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    monkeypatch.setattr(platform, "run_platform_script", lambda name, *a, **k: started.append(name))
    monkeypatch.setattr(platform, "LOCK_WAIT_S", 0.3)
    monkeypatch.setenv("DELIVERY_STATE_DIR", str(tmp_path))
    with (tmp_path / "platform.lock").open("w") as holder:  # a daemon that inherited the lock, say
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(platform.PlatformError, match=rf"{tmp_path}/platform\.lock stayed locked for 0s"):
            platform.ensure_local_platform()
    assert started == []


def test_once_released_the_next_start_runs_the_scripts_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    monkeypatch.setattr(platform, "run_platform_script", lambda name, *a, **k: started.append(name))
    monkeypatch.setenv("DELIVERY_STATE_DIR", str(tmp_path))
    with (tmp_path / "platform.lock").open("w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
    platform.ensure_local_platform()
    platform.ensure_local_platform(base_images=False)
    assert started == ["docker-engine.sh", "registry.sh", "base-images.sh", "docker-engine.sh", "registry.sh"]
