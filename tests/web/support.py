"""Helpers of the webhook tests: fixture payloads made fresh, signed requests, a test catalog."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from delivery.web.github import sign
from tests.helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "github"
SECRET = "s3cret-for-tests-only"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@visiobook.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@visiobook.invalid",
    "GIT_TERMINAL_PROMPT": "0",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": tempfile.gettempdir(),
}


def payload(name: str, *, fresh: bool = True, **changes: Any) -> dict[str, Any]:
    """A fixture payload; ``fresh`` dates it now. ``changes`` replace top-level keys."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    data = copy.deepcopy(data)
    if fresh:
        now = datetime.now(tz=UTC)
        if "pull_request" in data:
            data["pull_request"]["updated_at"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        elif "pusher" in data:
            data["repository"]["pushed_at"] = int(now.timestamp())
    data.update(changes)
    return data


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def headers(
    body: bytes, *, event: str, delivery: str | None = None, secret: str | None = SECRET
) -> dict[str, str]:
    result = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "User-Agent": "GitHub-Hookshot/test",
    }
    if secret is not None:
        result["X-Hub-Signature-256"] = sign(secret=secret.encode(), body=body)
    return result


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def make_repo(tmp: Path, name: str, *, files: dict[str, str] | None = None) -> tuple[Path, Path]:
    """A bare repo and a working clone with one commit on ``main``."""
    bare = tmp / "repos" / f"{name}.git"
    work = tmp / "src" / name
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    git("clone", "--quiet", str(bare), str(work))
    git("checkout", "--quiet", "-B", "main", cwd=work)
    for rel, text in (files or {"README.md": f"{name}\n"}).items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "initial", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return bare, work


def commit(work: Path, *, path: str = "CHANGES.md", text: str | None = None, branch: str = "main") -> str:
    target = work / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text or f"change {time.time_ns()}\n")
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", f"change {path}", cwd=work)
    git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def make_catalog(tmp: Path, *, repos: dict[str, Path]) -> Path:
    """include/catalog-local copied to ``tmp/catalog``, each service's repo URL pointing at ``repos``."""
    import yaml

    dest = tmp / "catalog"
    shutil.copytree(ROOT / "include" / "catalog-local", dest)
    for path in sorted((dest / "services").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        name = data["name"]
        if name in repos:
            data["repo"]["url"] = str(repos[name])
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest
