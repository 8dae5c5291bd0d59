"""Questions about a remote repository: its refs (``ls-remote``), and, through a cached mirror,
which commit a ref or tag names, ancestry and authors.

Every answer names **commits**: an annotated tag is peeled to the commit it
tags (``^{}``). A GitHub push of an annotated tag carries the *tag object's*
sha in ``after``, and a checkout that compares ``HEAD`` with that sha would
never match.

The mirror is a bare repository per URL under the temporary directory
(``delivery-mirrors/<hash of the URL>``), holding the remote's branches and
tags; it is fetched (under a lock) before each question, so answers are never
older than the call.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from delivery.gitops.errors import UnknownCommitError
from delivery.gitops.git import Git, check_sha
from delivery.gitops.locks import file_lock

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

__all__ = ["RemoteRef", "commit_authors", "is_ancestor", "ls_remote", "mirror", "resolve_commit"]

PEELED = "^{}"
LS_REMOTE_TIMEOUT_S = 60.0
FETCH_TIMEOUT_S = 300.0
MIRROR_LOCK_TIMEOUT_S = 600.0


def mirror_root() -> Path:
    return Path(tempfile.gettempdir()) / "delivery-mirrors"


@dataclass(frozen=True)
class RemoteRef:
    """One ref of a remote: ``object`` is what it points at, ``commit`` that object peeled to a commit
    (the same sha, except for an annotated tag, whose ``object`` is the tag object)."""

    name: str
    object: str
    commit: str

    @property
    def annotated(self) -> bool:
        return self.object != self.commit


def ls_remote(
    url: str,
    patterns: Sequence[str] = (),
    *,
    heads: bool = False,
    tags: bool = False,
    timeout_s: float = LS_REMOTE_TIMEOUT_S,
    runner: Git | None = None,
) -> dict[str, RemoteRef]:
    """``git ls-remote`` -> {ref name: :class:`RemoteRef`}, annotated tags peeled to their commit.

    ``patterns`` are ls-remote's (the tail of a ref name: ``refs/heads/main``,
    ``v1.2.3``); ``heads``/``tags`` limit the answer to branches/tags. ``runner``
    (default: a plain one) carries credentials, or the clone where ``url`` is a
    remote's name. Raises :class:`~delivery.gitops.errors.GitOpsRemoteError`
    naming the (redacted) URL.
    """
    runner = runner or Git(repo=url)
    options = [*(["--heads"] if heads else []), *(["--tags"] if tags else [])]
    # A pattern only lists the peeled line of an annotated tag when asked for by name.
    wanted = [p for pattern in patterns for p in (pattern, pattern + PEELED) if not pattern.endswith(PEELED)]
    out = runner.output(
        "ls-remote", *options, "--", url, *wanted, action="git ls-remote", timeout_s=timeout_s, remote=True
    )
    objects: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name.endswith(PEELED):
            peeled[name.removesuffix(PEELED)] = sha
        elif name:
            objects[name] = sha
    return {
        name: RemoteRef(name=name, object=sha, commit=peeled.get(name, sha)) for name, sha in objects.items()
    }


def mirror(url: str, *, root: Path | None = None, timeout_s: float = FETCH_TIMEOUT_S) -> Git:
    """A runner on the up-to-date bare mirror of ``url`` (its branches and tags), made on first use."""
    folder = (root or mirror_root()) / hashlib.sha256(url.encode()).hexdigest()[:16]
    lock = folder.with_name(f".{folder.name}.lock")
    with file_lock(lock, timeout_s=MIRROR_LOCK_TIMEOUT_S, what=f"mirror {folder} of {url}"):
        if not (folder / "HEAD").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            Git(repo=url).run("init", "-q", "--bare", "--", str(folder), action="create the mirror")
        runner = Git(git_dir=folder, repo=url, timeout_s=timeout_s)
        runner.run(
            "fetch",
            "-q",
            "--prune",
            "--force",
            "--no-write-fetch-head",
            "--",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
            action="git fetch",
            remote=True,
        )
    return runner


def _commit_of(runner: Git, rev: str) -> str | None:
    proc = runner.run(
        "rev-parse",
        "-q",
        "--verify",
        "--end-of-options",
        f"{rev}^{{commit}}",
        action="git rev-parse",
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def resolve_commit(url: str, rev: str, *, root: Path | None = None) -> str:
    """The commit ``rev`` (a sha, a tag object's sha, a branch or tag name) names in ``url``."""
    runner = mirror(url, root=root)
    commit = _commit_of(runner, rev)
    if commit is None:
        raise UnknownCommitError(f"{rev!r} is not a commit (nor a tag of one) of {runner.display}")
    return commit


def _known(runner: Git, sha: str, *, what: str) -> str:
    commit = _commit_of(runner, check_sha(sha, what=what))
    if commit is None:
        raise UnknownCommitError(f"{what} {sha} is not a commit of {runner.display}")
    return commit


def _ancestor(runner: Git, older: str, newer: str) -> bool:
    proc = runner.run(
        "merge-base", "--is-ancestor", "--end-of-options", older, newer, action="git merge-base", check=False
    )
    if proc.returncode not in (0, 1):
        raise runner.error("git merge-base", proc)
    return proc.returncode == 0


def is_ancestor(repo_url: str, older_sha: str, newer_sha: str, *, root: Path | None = None) -> bool:
    """Whether ``older_sha`` is ``newer_sha`` or one of its ancestors in ``repo_url``.

    Tag objects are peeled to their commit; a sha that is not in the repository
    is an :class:`~delivery.gitops.errors.UnknownCommitError`.
    """
    runner = mirror(repo_url, root=root)
    older = _known(runner, older_sha, what="older sha")
    newer = _known(runner, newer_sha, what="newer sha")
    return _ancestor(runner, older, newer)


def commit_authors(
    repo_url: str, base: str | None, head: str, *, root: Path | None = None
) -> list[tuple[str, str]]:
    """The distinct ``(name, email)`` authors of the commits in ``base..head``, newest first.

    When ``base`` is None, unknown to the repository or not an ancestor of
    ``head`` (history was rewritten), the range is not meaningful: the answer
    is the author of ``head``'s own commit.
    """
    runner = mirror(repo_url, root=root)
    head_commit = _known(runner, head, what="head sha")
    base_commit = _commit_of(runner, check_sha(base, what="base sha")) if base else None
    if base_commit is not None and _ancestor(runner, base_commit, head_commit):
        limit, revs = [], f"{base_commit}..{head_commit}"
    else:
        if base:
            logger.info("%s is not an ancestor of %s: only the head commit's author", base, head_commit)
        limit, revs = ["--max-count=1"], head_commit
    out = runner.output(
        "log", "--format=%an%x00%ae", *limit, "--end-of-options", revs, "--", action="git log"
    )
    authors: dict[tuple[str, str], None] = {}
    for line in out.splitlines():
        name, _, email = line.partition("\x00")
        authors.setdefault((name, email), None)
    return list(authors)
