"""Source steps: resolve the run's ref to one commit, and the pull-request release gate.

Every sha this module hands on names a **commit**: annotated tags are peeled
(``^{}``), whether the tag comes as a ref to look up or as the sha of an event
(a GitHub push of an annotated tag carries the tag object's sha in ``after``).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from delivery.gitops import GitCommandError, GitOpsError, RemoteRef, ls_remote
from delivery.gitops.remote import mirror, resolve_commit
from delivery.image_tags import image_tags
from delivery.paths import git_url
from delivery.reporting import metrics
from delivery.runtime import PipelineError, service

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def head_at(*, url: str, branch: str, moment: datetime) -> str:
    """The commit that was the head of ``branch`` at ``moment`` (committer date, first parents)."""
    try:
        runner = mirror(url)
        sha = runner.output(
            "rev-list",
            "-1",
            "--first-parent",
            f"--before={moment.isoformat()}",
            "--end-of-options",
            f"refs/heads/{branch}",
            "--",
            action="git rev-list",
        )
    except GitCommandError as exc:
        raise PipelineError(f"cannot find the head of branch {branch!r} of {url}: {exc}") from exc
    if not sha:
        raise PipelineError(f"branch {branch!r} of {url} had no commit before {moment.isoformat()}")
    return sha


def _remote_refs(url: str, service_name: str, ref: str, candidates: list[str]) -> dict[str, RemoteRef]:
    try:
        return ls_remote(url, candidates)
    except GitCommandError as exc:
        raise PipelineError(f"service {service_name!r}: cannot resolve ref {ref!r}: {exc}") from exc


def _commit_of_event(*, url: str, service_name: str, ref: str, sha: str) -> str:
    """The commit an event's ``sha`` names: a push of an annotated tag gives the *tag object's* sha.

    The tag as the remote has it now answers when it still is that object; a
    tag moved since is peeled in the mirror, where the sha must be known.
    """
    found = _remote_refs(url, service_name, ref, [ref]).get(ref)
    if found is not None and sha in (found.object, found.commit):
        if found.commit != sha:
            log.info("%s is the annotated tag object of %s: building its commit %s", sha, ref, found.commit)
        return found.commit
    try:
        commit = resolve_commit(url, sha)
    except GitOpsError as exc:
        raise PipelineError(f"service {service_name!r}: sha {sha} of {ref} is not a commit: {exc}") from exc
    if commit != sha:
        log.info("%s is a tag object: building the commit it tags, %s", sha, commit)
    return commit


def _lookup(*, url: str, service_name: str, ref: str) -> tuple[str, str | None, str | None]:
    """(commit, branch, tag) a ref names on the remote; annotated tags peeled to their commit."""
    candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    refs = _remote_refs(url, service_name, ref, candidates)
    for cand in candidates:
        if cand in refs:
            if cand.startswith("refs/heads/"):
                return refs[cand].commit, cand.removeprefix("refs/heads/"), None
            if cand.startswith("refs/tags/"):
                return refs[cand].commit, None, cand.removeprefix("refs/tags/")
            return refs[cand].commit, None, None
    raise PipelineError(
        f"service {service_name!r}: ref {ref!r} was not found in {url}; "
        "give an existing branch, tag or a full 40-character sha"
    )


def resolve_source(*, service_name: str, params: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Resolve the run's git ref (or sha) to one commit, so that every stage builds the same code.

    Scheduled and backfill runs (the nightly variant) build the commit that was the
    head of the branch at the end of their data interval.
    """
    svc = service(service_name)
    metrics.open_run(metrics.Run.of(svc.name, context), approval_timeout=svc.approval_timeout)
    url = git_url(svc.repo.url)
    ref = (params.get("ref") or "").strip() or svc.repo.release_branch
    sha = (params.get("sha") or "").strip().lower()
    dag_run = context.get("dag_run")
    run_type = str(
        getattr(getattr(dag_run, "run_type", None), "value", getattr(dag_run, "run_type", "")) or ""
    )
    interval_end = context.get("data_interval_end")
    if not sha and run_type in ("scheduled", "backfill") and interval_end is not None:
        branch_name = ref.removeprefix("refs/heads/")
        sha = head_at(url=url, branch=branch_name, moment=interval_end)
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
        sha, branch, tag = _lookup(url=url, service_name=service_name, ref=ref)
    elif not SHA_RE.match(sha):
        raise PipelineError(f"service {service_name!r}: sha {sha!r} is not a full 40-character commit sha")
    elif tag is not None:
        sha = _commit_of_event(url=url, service_name=service_name, ref=ref, sha=sha)
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
