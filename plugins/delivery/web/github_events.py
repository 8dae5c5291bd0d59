"""GitHub webhook payloads, read: pure functions from a payload to a :class:`GitEvent` (no Airflow).

**Dates.** A push is dated by ``repository.pushed_at`` (the time of the push; the
commit's ``head_commit.timestamp`` only when ``pushed_at`` is absent, since a tag
or a branch can be pushed long after its commit was written); a pull request by
``pull_request.updated_at``. Pings are not dated.

**Changed files** (monorepos). From the push's ``commits[].added/modified/removed``.
When that list is missing, empty or possibly truncated (GitHub sends at most
:data:`PUSH_COMMITS_LIMIT` commits), ``git diff --name-only before after`` is run
when the catalog's repository URL is a local repository; otherwise every service
whose branch filter matches gets a run (a build too many rather than one missed).

**Untrusted pull requests.** A pull request runs the service's own build and test
commands on code its author chose. :func:`untrusted_reason` says when that code
must not run with the service's secrets before an approver has looked at it: the
head repository is not the base repository (a fork, or a fork since deleted), or
the author is not ``OWNER``, ``MEMBER`` or ``COLLABORATOR`` of the base repository
(``pull_request.author_association``: ``CONTRIBUTOR``, ``FIRST_TIME_CONTRIBUTOR``,
``FIRST_TIMER``, ``NONE``, ``MANNEQUIN``, or missing). Pushes and tags are made by
people with write access to the repository and are trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from delivery.gitevents.routing import ZERO_SHA, GitEvent
from delivery.gitops import Git, GitOpsError
from delivery.gitops.git import check_sha
from delivery.paths import git_url

log = logging.getLogger(__name__)

PUSH_COMMITS_LIMIT = 20
TRUSTED_ASSOCIATIONS = ("OWNER", "MEMBER", "COLLABORATOR")
"""``author_association`` values whose pull requests run CI without an approval."""
REASON_MAX_CHARS = 300


def parse_timestamp(value: object) -> datetime | None:
    """GitHub dates: ISO 8601 strings, or epoch seconds (``repository.pushed_at`` of a push)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def event_timestamp(event: str, payload: Mapping[str, Any]) -> datetime | None:
    """When the event happened, by the field documented in the module docstring."""
    if event == "push":
        moment = parse_timestamp(dig(payload, "repository", "pushed_at"))
        return moment or parse_timestamp(dig(payload, "head_commit", "timestamp"))
    if event == "pull_request":
        return parse_timestamp(dig(payload, "pull_request", "updated_at"))
    return None


def dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...``, or ``None`` as soon as a level is missing or not an object."""
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def repo_fields(payload: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(``owner/name`` or the first URL, every URL of the payload's ``repository``)."""
    repo = payload.get("repository") or {}
    urls = tuple(str(repo[k]) for k in ("clone_url", "ssh_url", "git_url", "html_url", "url") if repo.get(k))
    name = str(repo.get("full_name") or (urls[0] if urls else ""))
    return name, urls


def changed_files_from_commits(payload: Mapping[str, Any]) -> frozenset[str] | None:
    """Files touched by a push, or ``None`` when the commit list is missing, empty or maybe truncated."""
    commits = payload.get("commits")
    if not isinstance(commits, list) or not commits or len(commits) >= PUSH_COMMITS_LIMIT:
        return None
    files: set[str] = set()
    for commit in commits:
        if not isinstance(commit, dict):
            return None
        for key in ("added", "modified", "removed"):
            files.update(str(f) for f in commit.get(key) or [])
    return frozenset(files)


def push_event(payload: Mapping[str, Any]) -> GitEvent:
    ref = str(payload.get("ref") or "")
    repository, urls = repo_fields(payload)
    pusher = payload.get("pusher") or {}
    sender = payload.get("sender") or {}
    return GitEvent(
        kind="tag" if ref.startswith("refs/tags/") else "push",
        repository=repository,
        repo_urls=urls,
        ref=ref,
        sha=str(payload.get("after") or ""),
        before=str(payload.get("before") or ""),
        author=str(pusher.get("name") or sender.get("login") or ""),
        compare_url=str(payload.get("compare") or ""),
        deleted=bool(payload.get("deleted")),
        changed_files=changed_files_from_commits(payload),
    )


def _same_repository(head: Any, base: Any) -> bool:
    if not isinstance(head, Mapping) or not isinstance(base, Mapping):
        return False
    if isinstance(head.get("id"), int) and isinstance(base.get("id"), int):
        return bool(head["id"] == base["id"])  # ids survive renames and transfers
    head_name, base_name = str(head.get("full_name") or ""), str(base.get("full_name") or "")
    return bool(head_name) and head_name.lower() == base_name.lower()


def untrusted_reason(payload: Mapping[str, Any]) -> str | None:
    """Why a pull request's code must wait for an approver and run without secrets; ``None``: trusted.

    See the module docstring for the rules. Anything missing counts against the pull
    request (fail closed). Payloads other than pull requests are trusted.
    """
    if "pull_request" not in payload:
        return None
    pr = payload.get("pull_request")
    if not isinstance(pr, Mapping):
        return "the pull_request payload is not an object"
    reasons: list[str] = []
    head_repo, base_repo = dig(pr, "head", "repo"), dig(pr, "base", "repo")
    base_name = str(dig(base_repo, "full_name") or "the base repository")
    if head_repo is None:
        reasons.append("its head repository no longer exists (a deleted fork)")
    elif not _same_repository(head_repo, base_repo):
        reasons.append(
            f"it comes from the fork {str(dig(head_repo, 'full_name') or '?')!r}, not {base_name!r}"
        )
    association = str(pr.get("author_association") or "")
    if association not in TRUSTED_ASSOCIATIONS:
        author = str(dig(pr, "user", "login") or "?")
        reasons.append(
            f"its author {author!r} is {association or 'of unknown association'} to {base_name!r}, "
            f"not {', '.join(TRUSTED_ASSOCIATIONS[:-1])} or {TRUSTED_ASSOCIATIONS[-1]}"
        )
    if not reasons:
        return None
    number = payload.get("number", pr.get("number"))
    return f"pull request #{number}: {'; '.join(reasons)}"[:REASON_MAX_CHARS]


def pull_request_event(payload: Mapping[str, Any]) -> GitEvent:
    pr = payload.get("pull_request") or {}
    number = payload.get("number", pr.get("number"))
    repository, urls = repo_fields(payload)
    head = pr.get("head") or {}
    base = pr.get("base") or {}
    html = str(pr.get("html_url") or "")
    return GitEvent(
        kind="pull_request",
        repository=repository,
        repo_urls=urls,
        ref=f"refs/pull/{number}/head",
        sha=str(head.get("sha") or ""),
        before=str(payload.get("before") or base.get("sha") or ""),
        author=str((pr.get("user") or {}).get("login") or ""),
        pr_number=int(number) if isinstance(number, int) else None,
        base_branch=str(base.get("ref") or ""),
        compare_url=f"{html}/files" if html else "",
        untrusted_reason=untrusted_reason(payload),
    )


def local_changed_files(*, url: str, before: str, after: str, timeout: float = 5.0) -> frozenset[str] | None:
    """``git diff --name-only before after`` in a local repository; ``None`` when not possible.

    ``before`` and ``after`` come from the payload: anything but two full shas is not looked up.
    """
    resolved = git_url(url)
    if "://" in resolved or not before or before == ZERO_SHA or not Path(resolved).is_dir():
        return None
    try:
        old, new = check_sha(before), check_sha(after)
        out = Git(git_dir=Path(resolved), timeout_s=timeout).output(
            "diff", "--name-only", "--end-of-options", old, new, "--", action="git diff"
        )
    except GitOpsError as exc:
        log.info("changed files of %s..%s unknown: %s", before, after, exc)
        return None
    return frozenset(line for line in out.splitlines() if line)
