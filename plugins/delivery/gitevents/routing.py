"""Route a Git event to the delivery runs it starts: pure functions, no I/O.

The catalog maps a repository to its services (``repo.full_name``, or the
clone URL), and each service filters the event with its ``repo`` settings:

* a **tag** push starts ``pipeline: full`` for the services whose ``tags`` globs
  match the tag (path filters do not apply: a tag names a release, not a diff);
* a **branch** push starts ``full`` on the service's ``release_branch`` and ``ci``
  on any other branch matching its ``branches`` globs; when the changed files are
  known, only services with a changed file under their ``paths`` get a run
  (a monorepo); when they are not known (``changed_files=None``) every matching
  service runs;
* a **pull request** whose *base* branch matches starts ``ci`` (validate, build and
  test) on ``refs/pull/<n>/head`` at the head sha; an untrusted one (a fork, or an
  author who is not owner, member or collaborator: see
  :func:`delivery.web.github_events.untrusted_reason`) starts the same run with
  ``trusted: false`` and the reason in ``untrusted_reason``: the pipeline then waits
  for an approver before running its code, and gives it no secrets;
* a **poll** (the polling fallback) is routed like a branch push;
* a deleted branch or tag starts nothing.

Every decision not to run names its reason, so the webhook response and the
logs explain themselves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from delivery.catalog.models import Service

ZERO_SHA = "0" * 40

EventKind = Literal["push", "tag", "pull_request", "poll"]

# The conf keys of a run started by a Git event: the keys of the manual trigger form.
CONF_KEYS = (
    "ref",
    "sha",
    "pipeline",
    "repository",
    "before",
    "author",
    "pr_number",
    "compare_url",
    "event",
    "reason",
    "trusted",
    "untrusted_reason",
)


@dataclass(frozen=True, kw_only=True)
class GitEvent:
    """One Git event, normalised from a webhook payload or a poll."""

    kind: EventKind
    repository: str
    """``owner/name`` when known, else the clone URL."""
    ref: str
    """``refs/heads/<branch>``, ``refs/tags/<tag>`` or ``refs/pull/<n>/head``."""
    sha: str
    before: str = ""
    author: str = ""
    repo_urls: tuple[str, ...] = ()
    """Every URL of the repository the payload names (clone, ssh, html...)."""
    pr_number: int | None = None
    base_branch: str | None = None
    """The branch a pull request targets."""
    compare_url: str = ""
    deleted: bool = False
    changed_files: frozenset[str] | None = None
    """Files added, modified or removed; ``None`` when unknown."""
    untrusted_reason: str | None = None
    """Why the event's code must not run unapproved or with secrets; ``None`` when it is trusted."""

    @property
    def trusted(self) -> bool:
        return self.untrusted_reason is None

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def tag(self) -> str | None:
        return self.ref.removeprefix("refs/tags/") if self.ref.startswith("refs/tags/") else None


@dataclass(frozen=True, kw_only=True)
class Target:
    """One run to start."""

    service: str
    dag_id: str
    pipeline: Literal["full", "ci"]
    conf: dict[str, Any]


@dataclass(kw_only=True)
class Routing:
    targets: list[Target] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def normalize_repo_url(url: str) -> str:
    """A comparable form of a git URL: ``host/owner/name`` in lower case, or a local path.

    ``https://github.com/O/N.git``, ``git@github.com:O/N.git``, ``ssh://git@github.com/O/N``
    and ``git://github.com/O/N.git`` all give ``github.com/o/n``.
    """
    value = url.strip().rstrip("/")
    value = value.removesuffix(".git")
    match = re.match(r"^[a-z][a-z0-9+.-]*://(?:[^@/]+@)?([^/:]+)(?::\d+)?/(.*)$", value, re.IGNORECASE)
    if match:
        return f"{match.group(1)}/{match.group(2)}".lower()
    match = re.match(r"^[\w.-]+@([\w.-]+):(.*)$", value)
    if match:
        return f"{match.group(1)}/{match.group(2)}".lower()
    return value


def repo_matches(service: Service, *, repository: str, repo_urls: Iterable[str] = ()) -> bool:
    """Whether ``service`` is built from the repository named by an event."""
    spec = service.repo
    if spec.full_name and repository and spec.full_name.lower() == repository.lower():
        return True
    own = normalize_repo_url(spec.url)
    candidates = {normalize_repo_url(u) for u in (repository, *repo_urls) if u}
    return own in candidates


def services_of(services: Iterable[Service], event: GitEvent) -> list[Service]:
    return [s for s in services if repo_matches(s, repository=event.repository, repo_urls=event.repo_urls)]


def _branch_matches(service: Service, branch: str) -> bool:
    return branch == service.repo.release_branch or service.repo.matches_branch(branch)


def _paths_match(service: Service, files: frozenset[str]) -> bool:
    return any(service.repo.matches_path(f) for f in files)


def run_id_for(*, event: str, key: str) -> str:
    """A deterministic run id: the same delivery (or poll result) always names the same run."""
    return f"git__{event}__{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def build_conf(event: GitEvent, *, pipeline: str) -> dict[str, Any]:
    """The run's conf: the keys of the manual trigger form (see ``delivery.pipeline.factory.pipeline_params``)."""
    what = {
        "push": f"push to {event.branch}",
        "tag": f"tag {event.tag}",
        "pull_request": f"pull request #{event.pr_number}",
        "poll": f"new head of {event.branch} (poll)",
    }[event.kind]
    by = f" by {event.author}" if event.author else ""
    return {
        "ref": event.ref,
        "sha": event.sha,
        "pipeline": pipeline,
        "repository": event.repository,
        "before": event.before,
        "author": event.author,
        "pr_number": event.pr_number,
        "compare_url": event.compare_url,
        "event": event.kind,
        "reason": f"{what}{by} ({event.sha[:12]})",
        "trusted": event.trusted,
        "untrusted_reason": event.untrusted_reason or "",
    }


def route(event: GitEvent, services: Iterable[Service]) -> Routing:
    """The runs ``event`` starts among ``services``, and the reasons for those it does not."""
    result = Routing()
    mine = sorted(services_of(services, event), key=lambda s: s.name)
    if not mine:
        result.skipped.append(f"no service in the catalog is built from repository {event.repository!r}")
        return result
    if event.deleted:
        what = f"tag {event.tag!r}" if event.tag is not None else f"branch {event.branch!r}"
        result.skipped.append(f"{what} was deleted: nothing to build")
        return result
    if not event.sha or event.sha == ZERO_SHA:
        result.skipped.append("the event names no commit")
        return result
    for service in mine:
        pipeline = _decide(event, service, result.skipped)
        if pipeline is not None:
            result.targets.append(
                Target(
                    service=service.name,
                    dag_id=service.dag_id,
                    pipeline=pipeline,
                    conf=build_conf(event, pipeline=pipeline),
                )
            )
    return result


def _decide(event: GitEvent, service: Service, skipped: list[str]) -> Literal["full", "ci"] | None:
    name = service.name
    if event.kind == "tag":
        tag = event.tag or ""
        if service.repo.matches_tag(tag):
            return "full"
        skipped.append(f"{name}: tag {tag!r} matches none of {service.repo.tags}")
        return None
    if event.kind == "pull_request":
        base = event.base_branch or ""
        if not _branch_matches(service, base):
            skipped.append(
                f"{name}: pull request base branch {base!r} matches none of {service.repo.branches}"
            )
            return None
        if event.changed_files is not None and not _paths_match(service, event.changed_files):
            skipped.append(f"{name}: no changed file under {service.repo.paths}")
            return None
        return "ci"
    # push or poll of a branch
    branch = event.branch
    if branch is None:
        skipped.append(f"{name}: ref {event.ref!r} is neither a branch nor a tag")
        return None
    if not _branch_matches(service, branch):
        skipped.append(f"{name}: branch {branch!r} matches none of {service.repo.branches}")
        return None
    if event.changed_files is not None and not _paths_match(service, event.changed_files):
        skipped.append(f"{name}: no changed file under {service.repo.paths}")
        return None
    return "full" if branch == service.repo.release_branch else "ci"
