"""Source steps: resolve the run's ref to one commit, and the pull-request release gate."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from delivery.paths import git_url
from delivery.reporting import metrics
from delivery.runtime import PipelineError, service

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
SEMVER_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?$")


def docker_tag(value: str) -> str:
    """A branch name as a valid image tag: [A-Za-z0-9_.-], at most 128 chars, no leading '.' or '-'."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", value).lstrip(".-")[:128]
    return tag or "unnamed"


def image_tags(*, sha: str, branch: str | None, tag: str | None) -> list[str]:
    """Tags of a release image: the commit sha, the branch, and the semver of a release tag."""
    tags = [sha]
    if branch:
        tags.append(docker_tag(branch))
    if tag:
        match = SEMVER_RE.match(tag)
        if match:
            major, minor, _patch = match.groups()
            tags += [tag.removeprefix("v"), f"{major}.{minor}"]
        else:
            tags.append(docker_tag(tag))
    return list(dict.fromkeys(tags))


def ls_remote(url: str, patterns: list[str]) -> dict[str, str]:
    """``git ls-remote`` -> {ref: sha}. Works against any git server."""
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
    }
    proc = subprocess.run(
        ["git", "ls-remote", "--", url, *patterns],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise PipelineError(f"git ls-remote {url} failed: {proc.stderr.strip()[:500]}")
    refs = {}
    for line in proc.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref] = sha
    return refs


def head_at(*, url: str, branch: str, moment: datetime) -> str:
    """The commit that was the head of ``branch`` at ``moment`` (committer date, first parents)."""
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
    }
    mirror = Path(tempfile.gettempdir()) / "delivery-mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if (mirror / "HEAD").exists():
        cmd = [
            "git",
            "-C",
            str(mirror),
            "fetch",
            "--quiet",
            "--prune",
            "origin",
            "+refs/heads/*:refs/heads/*",
        ]
    else:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["git", "clone", "--quiet", "--mirror", url, str(mirror)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    if proc.returncode != 0:
        raise PipelineError(f"cannot fetch {url}: {proc.stderr.strip()[:500]}")
    proc = subprocess.run(
        [
            "git",
            "-C",
            str(mirror),
            "rev-list",
            "-1",
            "--first-parent",
            f"--before={moment.isoformat()}",
            f"refs/heads/{branch}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    sha = proc.stdout.strip()
    if proc.returncode != 0 or not sha:
        raise PipelineError(f"branch {branch!r} of {url} had no commit before {moment.isoformat()}")
    return sha


def resolve_source(*, service_name: str, params: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Resolve the run's git ref (or sha) to one commit, so that every stage builds the same code.

    Scheduled and backfill runs (the nightly variant) build the commit that was the
    head of the branch at the end of their data interval.
    """
    svc = service(service_name)
    metrics.open_run(metrics.Run.of(svc.name, context), approval_timeout=svc.approval_timeout)
    ref = (params.get("ref") or "").strip() or svc.repo.release_branch
    sha = (params.get("sha") or "").strip().lower()
    dag_run = context.get("dag_run")
    run_type = str(
        getattr(getattr(dag_run, "run_type", None), "value", getattr(dag_run, "run_type", "")) or ""
    )
    interval_end = context.get("data_interval_end")
    if not sha and run_type in ("scheduled", "backfill") and interval_end is not None:
        branch_name = ref.removeprefix("refs/heads/")
        sha = head_at(url=git_url(svc.repo.url), branch=branch_name, moment=interval_end)
        ref = f"refs/heads/{branch_name}"
        log.info(
            "%s run for the interval ending %s: head of %s was %s", run_type, interval_end, branch_name, sha
        )
    branch: str | None = None
    tag: str | None = None
    if ref.startswith("refs/heads/"):
        branch = ref.removeprefix("refs/heads/")
    elif ref.startswith("refs/tags/"):
        tag = ref.removeprefix("refs/tags/")
    elif SHA_RE.match(ref.lower()):
        sha = sha or ref.lower()
    if not sha:
        candidates = (
            [ref]
            if ref.startswith("refs/")
            else [f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"]
        )
        try:
            refs = ls_remote(git_url(svc.repo.url), candidates)
        except PipelineError as exc:
            raise PipelineError(f"service {service_name!r}: cannot resolve ref {ref!r}: {exc}") from exc
        for cand in candidates:
            if cand in refs:
                sha = refs[cand]
                name = cand.removesuffix("^{}")
                if name.startswith("refs/heads/"):
                    branch = name.removeprefix("refs/heads/")
                elif name.startswith("refs/tags/"):
                    tag = name.removeprefix("refs/tags/")
                break
        if not sha:
            raise PipelineError(
                f"service {service_name!r}: ref {ref!r} was not found in {svc.repo.url}; "
                "give an existing branch, tag or a full 40-character sha"
            )
    elif not SHA_RE.match(sha):
        raise PipelineError(f"service {service_name!r}: sha {sha!r} is not a full 40-character commit sha")
    if branch is None and tag is None and not SHA_RE.match(ref.lower()):
        branch = ref
    result = {
        "repository": params.get("repository") or svc.repo.full_name or svc.repo.url,
        "ref": ref,
        "sha": sha,
        "branch": branch or "",
        "tag": tag or "",
        "image_tags": image_tags(sha=sha, branch=branch, tag=tag),
        "event": params.get("event") or "manual",
    }
    log.info("Building %s at %s (ref %s)", service_name, sha, ref)
    return result


def release_gate(*, params: dict[str, Any], **_: Any) -> bool:
    """Pull-request pipelines ('ci') stop after build and test."""
    pipeline = params.get("pipeline") or "full"
    if pipeline not in ("full", "ci"):
        raise PipelineError(f"param 'pipeline' must be 'full' or 'ci', got {pipeline!r}")
    if pipeline == "ci":
        log.info("pipeline=ci: validate, build and test only; no image, no deploy, no approval")
    return pipeline == "full"
