"""Fixtures: real bare git repositories seeded with Helm values files."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from delivery.gitops import GitOpsRepo
from tests.gitops._support import Remote, seed_remote

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return seed_remote(tmp_path)


@pytest.fixture
def make_repo(tmp_path: Path, remote: Remote) -> Callable[..., GitOpsRepo]:
    """Build a GitOpsRepo on the seeded remote with its own workdir (``name``)."""

    def factory(name: str = "worker-1", **kwargs: object) -> GitOpsRepo:
        options: dict[str, object] = {"url": remote.url, "backoff_base_s": 0.01, "backoff_max_s": 0.1}
        options.update(kwargs)
        return GitOpsRepo(workdir=tmp_path / "work" / name, **options)  # type: ignore[arg-type]

    return factory
