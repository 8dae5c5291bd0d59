"""Commit lineage of a service repository: ancestry and the authors of the commits being released."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from delivery.runtime import PipelineError

_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "LC_ALL": "C",
}


def _git(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**_ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def mirror(url: str) -> Path:
    """A bare mirror of ``url``, fetched now (one per URL per worker)."""
    path = Path(tempfile.gettempdir()) / "delivery-mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if (path / "HEAD").exists():
        proc = _git("-C", str(path), "fetch", "--quiet", "--prune", "origin", "+refs/*:refs/*", timeout=300)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        proc = _git("clone", "--quiet", "--mirror", "--", url, str(path), timeout=300)
    if proc.returncode != 0:
        raise PipelineError(f"cannot fetch {url}: {proc.stderr.strip()[:500]}")
    return path


def is_ancestor(url: str, older: str, newer: str) -> bool:
    """Whether commit ``older`` is ``newer`` or one of its ancestors in the repository at ``url``."""
    repo = mirror(url)
    proc = _git("-C", str(repo), "merge-base", "--is-ancestor", older, newer)
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    raise PipelineError(f"cannot compare {older[:12]} and {newer[:12]} in {url}: {proc.stderr.strip()[:300]}")


def commit_authors(url: str, base: str | None, head: str) -> list[tuple[str, str]]:
    """(name, e-mail) of the authors of the commits in ``base..head``: reachable from ``head``, not from
    what the environment runs (``base``); only ``head`` itself when ``base`` is unknown."""
    repo = mirror(url)
    proc = None
    if base and base != head:
        proc = _git("-C", str(repo), "log", "--format=%an%x00%ae", f"{base}..{head}", "--")
    if proc is None or proc.returncode != 0:
        proc = _git("-C", str(repo), "log", "--format=%an%x00%ae", "-1", head, "--")
    if proc.returncode != 0:
        raise PipelineError(f"cannot list the commits of {head[:12]} in {url}: {proc.stderr.strip()[:300]}")
    authors = [tuple(line.split("\0", 1)) for line in proc.stdout.splitlines() if "\0" in line]
    return list(dict.fromkeys((a[0], a[1]) for a in authors))
