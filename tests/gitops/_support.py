"""Helpers for the GitOps tests: seeded bare repositories and git inspection."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from delivery.gitops import ReleaseMetadata

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from delivery.gitops import GitOpsRepo

T = TypeVar("T")

API_PROD = "services/visiobook-api/values-production.yaml"
API_STAGING = "services/visiobook-api/values-staging.yaml"
WORKER_PROD = "services/visiobook-worker/values-production.yaml"

API_PROD_TEXT = """\
# Visiobook API - production overrides
replicaCount: 3

image:
  repository: registry.example.com/visiobook/api  # pushed by CI
  # the tag is managed by the delivery pipeline
  tag: "1.0.0"
  pullPolicy: IfNotPresent

resources:
  limits:
    cpu: "1"
    memory: 512Mi
"""

API_STAGING_TEXT = """\
replicaCount: 1
image:
  repository: registry.example.com/visiobook/api
  tag: "1.0.0"
"""

WORKER_PROD_TEXT = """\
image:
  repository: registry.example.com/visiobook/worker
  tag: "0.9.0"
gpu:
  enabled: true
"""


def git_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        "GIT_AUTHOR_NAME": "Seed",
        "GIT_AUTHOR_EMAIL": "seed@example.invalid",
        "GIT_COMMITTER_NAME": "Seed",
        "GIT_COMMITTER_EMAIL": "seed@example.invalid",
    }


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@dataclass(frozen=True)
class Remote:
    path: Path

    @property
    def url(self) -> str:
        return str(self.path)

    def git(self, *args: str) -> str:
        return git("--git-dir", str(self.path), *args)

    def head(self) -> str:
        return self.git("rev-parse", "refs/heads/main").strip()

    def count(self) -> int:
        return int(self.git("rev-list", "--count", "refs/heads/main").strip())

    def show(self, path: str, revision: str = "refs/heads/main") -> str:
        return self.git("show", f"{revision}:{path}")

    def trailers(self, revision: str) -> dict[str, str]:
        out = self.git("log", "-1", "--format=%(trailers:only=true,unfold=true)", revision)
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}


def seed_remote(tmp_path: Path) -> Remote:
    bare = tmp_path / "gitops.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git("init", "-q", "-b", "main", str(seed))
    for rel, text in (
        (API_PROD, API_PROD_TEXT),
        (API_STAGING, API_STAGING_TEXT),
        (WORKER_PROD, WORKER_PROD_TEXT),
    ):
        target = seed / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    git("add", "-A", cwd=seed)
    git("commit", "-q", "-m", "seed values", cwd=seed)
    git("push", "-q", str(bare), "main", cwd=seed)
    return Remote(bare)


def meta(run: str = "run-1", **kwargs: object) -> ReleaseMetadata:
    options: dict[str, object] = {"source_sha": "a" * 40, "run_id": run, "approver": "alice"}
    options.update(kwargs)
    return ReleaseMetadata(**options)  # type: ignore[arg-type]


def before_first_push(repo: GitOpsRepo, action: Callable[[], T]) -> list[T]:
    """Run ``action`` (another deployer's push) once, right before ``repo``'s first ``git push``:
    a deterministic race. The list receives what ``action`` returned."""
    real_git = repo._git
    raced: list[T] = []

    def racing_git(*args: str, **kwargs: object) -> object:
        if args[0] == "push" and not raced:
            raced.append(action())
        return real_git(*args, **kwargs)  # type: ignore[arg-type]

    repo._git = racing_git  # type: ignore[method-assign,assignment]
    return raced
