"""The GitOps repository: deploys, rollbacks, release history and verification records.

A deploy is a commit in the GitOps repository: the service's Helm values file
for one environment (``values_path`` from the service catalog, e.g.
``services/visiobook-api/values-production.yaml``) gets a new ``image.tag``
(and optionally ``image.repository``).  Argo CD syncs the resulting commit; the
local docker target reads the same file at the same revision.  Everything a
pipeline needs to know about releases is therefore read back from git
(:mod:`delivery.gitops.history`).

* **git CLI only**, through the project's runner (:mod:`delivery.gitops.git`):
  minimal environment, credentials through a credential helper, redacted
  errors, and a fixed author/committer identity.

* **Concurrent deployers never lose an update.**  A push rejected because the
  remote moved (non-fast-forward, or a ref lock held by a concurrent push) is
  retried: fetch, re-apply the edit on top of the new remote head (the
  conflict-free form of "rebase": two deploys of the same service touch the
  same line, so replaying the *edit* rather than the *patch* is what keeps
  the last writer's intent) and push again, with bounded, jittered
  exponential backoff.  A deploy whose tag is already in the file makes no
  commit, so retries and re-runs are idempotent.

* **Rollback restores the image** (``image.tag`` and, when the stable release
  recorded one, ``image.repository``) by default, keeping configuration
  changes committed since then; ``restore="file"`` instead writes the stable
  release's whole values file back.  Either way it is a new commit with
  ``Delivery-Action: rollback`` and a mandatory ``Delivery-Reason``.

* **One clone per workdir, guarded by an ``fcntl`` lock** (a sibling
  ``.<workdir name>.lock`` file, outside the clone so ``git clean`` keeps
  it) so two tasks on one worker never share a working tree mid-operation;
  separate workdirs race through the remote as above.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from delivery.gitops.errors import (
    GitCommandError,
    GitOpsError,
    InvalidRequestError,
    NoStableReleaseError,
    PushConflictError,
    ReleaseMovedError,
    ReleaseNotFoundError,
    ValuesFileNotFoundError,
)
from delivery.gitops.git import DEFAULT_TIMEOUT_S, Git, GitIdentity
from delivery.gitops.history import (
    LOG_FORMAT,
    T_ROLLBACK_FROM,
    T_ROLLBACK_TO,
    TAG_FORMAT,
    TAG_ROOT,
    DeployResult,
    Release,
    ReleaseAction,
    ReleaseMetadata,
    Verification,
    VerificationStatus,
    parse_history,
    parse_verifications,
    previous_stable,
    release_message,
    tag_name,
    verification_message,
)
from delivery.gitops.locks import file_lock
from delivery.gitops.remote import ls_remote
from delivery.gitops.values import read_image, set_image

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator, Mapping

    # (file text, branch head) -> (new text, extra trailers, commit subject)
    _Edit = Callable[[str, str], tuple[str, dict[str, str], str]]

logger = logging.getLogger(__name__)

__all__ = ["GitOpsRepo"]

REMOTE = "origin"

# Push rejections that mean "the remote moved, fetch and try again".
_RETRYABLE_PUSH = (
    "fetch first",
    "non-fast-forward",
    "stale info",
    "failed to update ref",
    "cannot lock ref",
    "failed to lock",
    "incorrect old value",
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_name(kind: str, value: str) -> str:
    if not _SAFE_NAME.match(value):
        raise InvalidRequestError(f"invalid {kind} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


def _check_values_path(values_path: str) -> str:
    path = PurePosixPath(values_path)
    if not values_path or path.is_absolute() or ".." in path.parts or "\\" in values_path:
        raise InvalidRequestError(f"invalid values_path {values_path!r}: must be relative to the repo root")
    return path.as_posix()


@dataclass(frozen=True, kw_only=True)
class _Change:
    """One deploy or rollback being committed: what to write and how to report it."""

    action: ReleaseAction
    environment: str
    service: str
    path: str
    image_tag: str
    image_repository: str | None
    metadata: ReleaseMetadata
    edit: _Edit

    def result(
        self, *, revision: str, changed: bool, head: str, previous: str | None, attempt: int
    ) -> DeployResult:
        return DeployResult(
            revision=revision,
            changed=changed,
            action=self.action,
            service=self.service,
            environment=self.environment,
            values_path=self.path,
            image_tag=self.image_tag,
            previous_image_tag=previous,
            previous_revision=head,
            attempts=attempt,
        )


class GitOpsRepo:
    """A working clone of the GitOps repository, owned by this worker.

    Nothing touches the network or the disk until the first operation; every
    operation then fetches, so a long-lived instance never acts on stale
    state.  Instances are cheap; create one per task.
    """

    def __init__(
        self,
        *,
        url: str,
        workdir: Path,
        branch: str = "main",
        author_name: str = "Visiobook Delivery",
        author_email: str = "delivery@visiobook.invalid",
        username: str | None = None,
        password: str | None = None,
        max_push_attempts: int = 8,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 2.0,
        lock_timeout_s: float = 300.0,
        command_timeout_s: float = DEFAULT_TIMEOUT_S,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        if not url:
            raise InvalidRequestError("GitOps repo url is empty")
        if max_push_attempts < 1:
            raise InvalidRequestError("max_push_attempts must be >= 1")
        self._url = url
        self._workdir = Path(workdir)
        self._branch = branch
        self._max_push_attempts = max_push_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._lock_timeout_s = lock_timeout_s
        self._runner = Git(
            cwd=self._workdir,
            repo=url,
            label="GitOps repo",
            username=username,
            password=password,
            identity=GitIdentity(author_name, author_email),
            timeout_s=command_timeout_s,
            extra_env=extra_env,
        )
        self._sleep = time.sleep

    def __repr__(self) -> str:
        return (
            f"GitOpsRepo(url={self.display_url!r}, workdir={str(self._workdir)!r}, branch={self._branch!r})"
        )

    @property
    def display_url(self) -> str:
        return self._runner.display

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def branch(self) -> str:
        return self._branch

    # -- public operations ------------------------------------------------------

    def sync(self) -> str:
        """Clone or fetch, reset the working tree to the remote branch; return its head."""
        with self._locked():
            return self._sync()

    def head(self) -> str:
        """The remote branch head (after a fetch)."""
        with self._locked():
            self._fetch()
            return self._rev_parse(self._remote_ref)

    def read_values(self, *, values_path: str, revision: str | None = None) -> str:
        """Content of a values file at ``revision`` (default: the remote branch head)."""
        path = _check_values_path(values_path)
        with self._locked():
            self._fetch()
            return self._show(revision or self._remote_ref, path)

    def deploy(
        self,
        *,
        environment: str,
        service: str,
        values_path: str,
        image_tag: str,
        image_repository: str | None = None,
        metadata: ReleaseMetadata,
    ) -> DeployResult:
        """Set ``image.tag`` in the environment's values file, commit and push.

        Idempotent: when the file already holds ``image_tag`` (and
        ``image_repository``) no commit is made and ``changed`` is False.
        """
        _check_name("environment", environment)
        _check_name("service", service)
        path = _check_values_path(values_path)
        if not image_tag or image_tag != image_tag.strip() or "\n" in image_tag:
            raise InvalidRequestError(f"invalid image tag {image_tag!r}")

        def edit(text: str, _head: str) -> tuple[str, dict[str, str], str]:
            new = set_image(text, tag=image_tag, repository=image_repository, where=self._where(path))
            subject = f"deploy({service}/{environment}): {image_tag}"
            return new, {}, subject

        return self._commit_change(
            _Change(
                action=ReleaseAction.DEPLOY,
                environment=environment,
                service=service,
                path=path,
                image_tag=image_tag,
                image_repository=image_repository,
                metadata=metadata,
                edit=edit,
            )
        )

    def history(
        self,
        *,
        environment: str,
        service: str,
        values_path: str,
        max_count: int = 200,
        refresh: bool = True,
    ) -> list[Release]:
        """Releases of ``service`` in ``environment``, newest first."""
        _check_name("environment", environment)
        _check_name("service", service)
        path = _check_values_path(values_path)
        with self._locked():
            if refresh:
                self._fetch()
            return self._history(environment=environment, service=service, path=path, max_count=max_count)

    def get_release(self, *, environment: str, service: str, values_path: str, revision: str) -> Release:
        """The release at ``revision`` (full or abbreviated sha)."""
        for release in self.history(environment=environment, service=service, values_path=values_path):
            if release.revision.startswith(revision.lower()):
                return release
        raise ReleaseNotFoundError(
            f"revision {revision} is not a release of {self._where(values_path)} "
            f"in GitOps repo {self.display_url}"
        )

    def current(self, *, environment: str, service: str, values_path: str) -> Release | None:
        releases = self.history(
            environment=environment, service=service, values_path=values_path, max_count=1
        )
        return releases[0] if releases else None

    def mark_verified(self, *, release: Release, ok: bool, summary: str) -> Verification:
        """Record that ``release`` passed (``ok``) or failed production verification.

        Pushes an annotated tag on the release commit; idempotent when the
        same outcome is already the effective one.
        """
        outcome = "verified" if ok else "failed"
        status = VerificationStatus.PASSED if ok else VerificationStatus.FAILED
        tag = tag_name(release.service, release.environment, outcome, release.revision)
        summary_text = summary.strip() or f"verification {status.value}"
        message = verification_message(
            release=release, status=status, summary=summary_text, now=datetime.now(UTC)
        )
        with self._locked():
            self._fetch()
            if not self._is_ancestor(release.revision, self._remote_ref):
                raise ReleaseNotFoundError(
                    f"revision {release.short_revision} of {self._where(release.values_path)} is not on "
                    f"branch {self._branch} of GitOps repo {self.display_url}"
                )
            existing = self._verifications(release.service, release.environment).get(release.revision)
            if existing is not None and existing.tag == tag:
                logger.info("Release %s already marked %s (%s)", release.short_revision, outcome, tag)
                return existing
            self._push_tag(tag, release, message)
            recorded = self._verifications(release.service, release.environment).get(release.revision)
        logger.info(
            "Marked GitOps release %s of %s/%s as %s",
            release.short_revision,
            release.service,
            release.environment,
            outcome,
        )
        return recorded or Verification(status=status, summary=summary_text, tag=tag)

    def previous_stable(
        self,
        *,
        environment: str,
        service: str,
        values_path: str,
        before: str | None = None,
    ) -> Release | None:
        """The newest release older than the current one (or ``before``) that passed verification.

        Releases that failed or were never verified are skipped, and so are
        releases running the same image tag as the reference release (rolling
        back to it would change nothing).
        """
        releases = self.history(environment=environment, service=service, values_path=values_path)
        return previous_stable(releases, before=before)

    def rollback(
        self,
        *,
        environment: str,
        service: str,
        values_path: str,
        to: Release | str | None = None,
        metadata: ReleaseMetadata,
        restore: Literal["image", "file"] = "image",
        undoing: str | None = None,
    ) -> DeployResult:
        """Restore a stable release with a ``Delivery-Action: rollback`` commit.

        ``to`` is a :class:`Release`, an image tag, or None for
        :meth:`previous_stable`.  ``restore="image"`` (default) sets the stable
        release's ``image.tag``/``image.repository`` and keeps later
        configuration changes; ``restore="file"`` writes the stable release's
        whole values file back (needs a :class:`Release`).

        ``undoing`` is the image tag the rollback was planned to undo. It is compared with
        the file at the remote head the commit is made on (a compare-and-swap: a push that
        loses a race is retried on the new head and compared again), so a release that landed
        after the plan is never undone by it: :class:`ReleaseMovedError`, nothing committed.
        """
        _check_name("environment", environment)
        _check_name("service", service)
        path = _check_values_path(values_path)
        if not (metadata.reason and metadata.reason.strip()):
            raise InvalidRequestError(f"rollback of {service}/{environment} needs metadata.reason")
        target_tag, target_repository, target_revision = self._rollback_target(
            environment=environment, service=service, path=path, to=to, restore=restore
        )

        def edit(text: str, head: str) -> tuple[str, dict[str, str], str]:
            if restore == "file" and target_revision is not None:
                new = self._show(target_revision, path)
                read_image(new, where=self._where(path))  # validate
            else:
                new = set_image(text, tag=target_tag, repository=target_repository, where=self._where(path))
            current_tag, _ = read_image(text, where=self._where(path))
            if undoing is not None and current_tag != undoing:
                raise ReleaseMovedError(
                    f"{self._where(path)} runs {current_tag} at {head[:12]}, not {undoing} that this "
                    f"rollback was planned to undo: a newer release landed since; nothing was reverted"
                )
            extra = {T_ROLLBACK_FROM: head}
            if target_revision:
                extra[T_ROLLBACK_TO] = target_revision
            subject = f"rollback({service}/{environment}): {current_tag} -> {target_tag}"
            return new, extra, subject

        return self._commit_change(
            _Change(
                action=ReleaseAction.ROLLBACK,
                environment=environment,
                service=service,
                path=path,
                image_tag=target_tag,
                image_repository=target_repository,
                metadata=metadata,
                edit=edit,
            )
        )

    def _rollback_target(
        self, *, environment: str, service: str, path: str, to: Release | str | None, restore: str
    ) -> tuple[str, str | None, str | None]:
        """(image tag, image repository, release revision) a rollback restores."""
        if to is None:
            to = self.previous_stable(environment=environment, service=service, values_path=path)
            if to is None:
                raise NoStableReleaseError(
                    f"no earlier release of {path} in GitOps repo {self.display_url} passed verification"
                )
        if not isinstance(to, Release):
            if restore == "file":
                raise InvalidRequestError("restore='file' needs a Release, not an image tag")
            return to, None, None
        if (to.service, to.environment, to.values_path) != (service, environment, path):
            raise InvalidRequestError(
                f"release {to.short_revision} is {to.service}/{to.environment} ({to.values_path}), "
                f"not {service}/{environment} ({path})"
            )
        if to.image_tag is None:
            raise InvalidRequestError(f"release {to.short_revision} of {path} has no image tag")
        return to.image_tag, to.image_repository, to.revision

    # -- commit / push loop ----------------------------------------------------

    def _commit_change(self, change: _Change) -> DeployResult:
        with self._locked():
            for attempt in range(1, self._max_push_attempts + 1):
                result = self._attempt(change, attempt)
                if result is not None:
                    return result
                if attempt < self._max_push_attempts:
                    self._backoff(change, attempt)
        raise PushConflictError(
            f"push of {self._where(change.path)} to GitOps repo {self.display_url} was rejected "
            f"{self._max_push_attempts} times because branch {self._branch} kept moving"
        )

    def _attempt(self, change: _Change, attempt: int) -> DeployResult | None:
        """One edit-commit-push on the fresh remote head; None when the push must be retried."""
        where, path = self._where(change.path), change.path
        head = self._sync()
        file = self._workdir / path
        if not file.is_file():
            raise ValuesFileNotFoundError(
                f"{where} not found in GitOps repo {self.display_url} at {self._branch}@{head[:12]}"
            )
        text = file.read_text(encoding="utf-8")
        previous, _ = read_image(text, where=where)
        new, extra, subject = change.edit(text, head)
        if new == text:
            logger.info("%s already at %s at %s; nothing to commit", where, change.image_tag, head[:12])
            return change.result(revision=head, changed=False, head=head, previous=previous, attempt=attempt)
        file.write_text(new, encoding="utf-8")
        message = release_message(
            subject=subject,
            action=change.action,
            environment=change.environment,
            service=change.service,
            image_tag=change.image_tag,
            image_repository=change.image_repository,
            metadata=change.metadata,
            extra=extra,
        )
        self._git("add", "--", path, action="git add", path=path)
        self._git("commit", "-q", "--no-verify", "-F", "-", action="git commit", path=path, stdin=message)
        commit = self._rev_parse("HEAD")
        refspec = f"HEAD:refs/heads/{self._branch}"
        proc = self._git(
            "push", "--porcelain", "--", REMOTE, refspec, action="git push", path=path, check=False
        )
        if proc.returncode == 0:
            logger.info(
                "Pushed %s of %s: %s -> %s as %s (attempt %d)",
                change.action.value,
                where,
                previous,
                change.image_tag,
                commit[:12],
                attempt,
            )
            return change.result(revision=commit, changed=True, head=head, previous=previous, attempt=attempt)
        self._fetch_quietly()
        if self._is_ancestor(commit, self._remote_ref):
            logger.warning("Push of %s reported a failure but the commit is on the remote", commit[:12])
            return change.result(revision=commit, changed=True, head=head, previous=previous, attempt=attempt)
        output = f"{proc.stdout}\n{proc.stderr}"
        if not any(marker in output for marker in _RETRYABLE_PUSH):
            raise self._runner.error("git push", proc, path=path)
        return None

    def _backoff(self, change: _Change, attempt: int) -> None:
        delay = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter, not cryptography
        logger.info(
            "Push of %s rejected (remote moved); retrying in %.2fs (attempt %d/%d)",
            self._where(change.path),
            delay,
            attempt,
            self._max_push_attempts,
        )
        self._sleep(delay)

    # -- history ------------------------------------------------------------------

    def _history(self, *, environment: str, service: str, path: str, max_count: int) -> list[Release]:
        if not self._ref_exists(self._remote_ref):
            return []
        proc = self._git(
            "log",
            f"--max-count={max_count}",
            f"--format={LOG_FORMAT}",
            "--end-of-options",
            self._remote_ref,
            "--",
            path,
            action="git log",
            path=path,
        )

        def read_image_at(sha: str) -> tuple[str | None, str | None]:
            try:
                return read_image(self._show(sha, path), where=self._where(path))
            except GitOpsError:
                return None, None

        return parse_history(
            proc.stdout,
            service=service,
            environment=environment,
            path=path,
            verifications=self._verifications(service, environment),
            read_image_at=read_image_at,
        )

    def _verifications(self, service: str, environment: str) -> dict[str, Verification]:
        prefix = f"refs/tags/{TAG_ROOT}/{service}/{environment}"
        proc = self._git(
            "for-each-ref", f"--format={TAG_FORMAT}", "--", prefix, action="read verification tags"
        )
        return parse_verifications(proc.stdout)

    def _push_tag(self, tag: str, release: Release, message: str) -> None:
        """Create the annotated ``tag`` on the release commit and push it (replacing an older one)."""
        replace = self._ref_exists(f"refs/tags/{tag}")
        force = ["-f"] if replace else []
        self._git(
            "tag",
            "-a",
            "-F",
            "-",
            *force,
            "--",
            tag,
            release.revision,
            action=f"create tag {tag}",
            stdin=message,
        )
        refspec = f"{'+' if replace else ''}refs/tags/{tag}:refs/tags/{tag}"
        proc = self._git("push", "--porcelain", "--", REMOTE, refspec, action=f"push tag {tag}", check=False)
        if proc.returncode != 0:
            self._git("tag", "-d", "--", tag, action=f"delete tag {tag}", check=False)
            if self._remote_tag_target(tag) != release.revision:
                raise self._runner.error(f"push tag {tag}", proc, path=release.values_path)
        self._fetch()

    # -- git plumbing ------------------------------------------------------------

    @property
    def _remote_ref(self) -> str:
        return f"refs/remotes/{REMOTE}/{self._branch}"

    def _where(self, path: str) -> str:
        return f"values file {path}"

    def _ensure_clone(self) -> None:
        if (self._workdir / ".git").is_dir():
            self._git("remote", "set-url", "--", REMOTE, self._url, action="set remote url")
            return
        self._workdir.mkdir(parents=True, exist_ok=True)
        if any(self._workdir.iterdir()):
            raise GitOpsError(f"workdir {self._workdir} exists, is not empty and is not a git clone")
        self._git("init", "-q", "-b", self._branch, action="git init")
        self._git("remote", "add", "--", REMOTE, self._url, action="add remote")

    def _fetch(self) -> None:
        self._ensure_clone()
        self._git(
            "fetch",
            "-q",
            "--prune",
            "--no-tags",
            "--force",
            "--",
            REMOTE,
            f"+refs/heads/{self._branch}:{self._remote_ref}",
            f"+refs/tags/{TAG_ROOT}/*:refs/tags/{TAG_ROOT}/*",
            action=f"git fetch of branch {self._branch}",
            remote=True,
        )

    def _fetch_quietly(self) -> None:
        with contextlib.suppress(GitCommandError):
            self._fetch()

    def _sync(self) -> str:
        self._fetch()
        self._git("checkout", "-q", "-f", "-B", self._branch, self._remote_ref, "--", action="git checkout")
        self._git("clean", "-q", "-f", "-d", "-x", action="git clean")
        return self._rev_parse("HEAD")

    def _show(self, revision: str, path: str) -> str:
        proc = self._git(
            "show", "--end-of-options", f"{revision}:{path}", action="git show", path=path, check=False
        )
        if proc.returncode != 0:
            raise ValuesFileNotFoundError(
                f"{self._where(path)} not found in GitOps repo {self.display_url} at {revision[:12]}: "
                f"{self._runner.redact(proc.stderr.strip())}"
            )
        return proc.stdout

    def _rev_parse(self, ref: str) -> str:
        proc = self._git(
            "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}", action=f"resolve {ref}"
        )
        return proc.stdout.strip()

    def _ref_exists(self, ref: str) -> bool:
        proc = self._git(
            "rev-parse", "--verify", "-q", "--end-of-options", ref, action=f"resolve {ref}", check=False
        )
        return proc.returncode == 0

    def _is_ancestor(self, commit: str, ref: str) -> bool:
        proc = self._git(
            "merge-base",
            "--is-ancestor",
            "--end-of-options",
            commit,
            ref,
            action="git merge-base",
            check=False,
        )
        return proc.returncode == 0

    def _remote_tag_target(self, tag: str) -> str | None:
        try:
            refs = ls_remote(REMOTE, [f"refs/tags/{tag}"], runner=self._runner)
        except GitCommandError:
            return None
        found = refs.get(f"refs/tags/{tag}")
        return found.commit if found else None

    def _git(
        self,
        *args: str,
        action: str,
        path: str | None = None,
        check: bool = True,
        stdin: str | None = None,
        remote: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return self._runner.run(*args, action=action, path=path, check=check, stdin=stdin, remote=remote)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self._workdir.with_name(f".{self._workdir.name}.lock")
        what = f"workdir {self._workdir} of GitOps repo {self.display_url}"
        with file_lock(lock_path, timeout_s=self._lock_timeout_s, what=what):
            yield
