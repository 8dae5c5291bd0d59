"""GitOps repository operations shared by every deploy target.

A deploy is a commit in the GitOps repository: the service's Helm values file
for one environment (``values_path`` from the service catalog, e.g.
``services/visiobook-api/values-production.yaml``) gets a new ``image.tag``
(and optionally ``image.repository``).  Argo CD syncs the resulting commit; the
local docker target reads the same file at the same revision.  Everything a
pipeline needs to know about releases is therefore read back from git.

Design decisions
----------------

* **git CLI only.**  Every operation shells out to ``git`` with an explicit,
  minimal environment: no system or global config (``GIT_CONFIG_NOSYSTEM``,
  ``GIT_CONFIG_GLOBAL=/dev/null``), ``GIT_TERMINAL_PROMPT=0``, ``LC_ALL=C`` and
  a fixed author/committer identity.  HTTPS credentials are handed to git by
  an inline credential helper that reads them from the child's environment,
  so they never appear in a URL, an argument list, a log line or an error
  message (anything that looks like a secret is redacted from git's stderr).

* **Release metadata lives in commit trailers** (``Delivery-Service``,
  ``Delivery-Environment``, ``Delivery-Action``, ``Delivery-Image-Tag``,
  ``Delivery-Source-Sha``, ``Delivery-Run-Id``, ``Delivery-Approver``,
  ``Delivery-Migration``, ``Delivery-Reason``...).  ``git log`` on the values
  file is the release history of one service in one environment; commits
  without trailers (hand edits) still appear, as ``external`` releases whose
  tag is read from the file itself.

* **Concurrent deployers never lose an update.**  A push rejected because the
  remote moved (non-fast-forward, or a ref lock held by a concurrent push) is
  retried: fetch, re-apply the edit on top of the new remote head (the
  conflict-free form of "rebase": two deploys of the same service touch the
  same line, so replaying the *edit* rather than the *patch* is what keeps
  the last writer's intent) and push again, with bounded, jittered
  exponential backoff.  A deploy whose tag is already in the file makes no
  commit, so retries and re-runs are idempotent.

* **Verification status is recorded with annotated tags**, never by
  rewriting history: ``delivery/<service>/<environment>/<verified|failed>/
  <gitops-sha-12>`` pointing at the release commit, its message holding the
  summary.  Tags rather than git notes because each tag is an independent
  ref: two workers recording outcomes for different releases never contend
  on one ref (``refs/notes/*`` is a single ref that needs fetch/merge/retry
  on every concurrent write), tags are fetched with a plain refspec and are
  visible in every git UI, and Argo CD ignores them.  If a release carries
  both outcomes (re-verified after a flaky run), the most recent tag wins,
  and ``failed`` wins a tie.  A release with no tag is *unverified*, which
  is never considered stable.

* **Rollback restores the image** (``image.tag`` and, when the stable release
  recorded one, ``image.repository``) by default, keeping configuration
  changes committed since then; ``restore="file"`` instead writes the stable
  release's whole values file back.  Either way it is a new commit with
  ``Delivery-Action: rollback`` and a mandatory ``Delivery-Reason``.

* **One clone per workdir, guarded by an ``fcntl`` lock** (a sibling
  ``.<workdir name>.lock`` file, outside the clone so ``git clean`` keeps
  it) so two tasks on one worker never share a working tree mid-operation;
  separate workdirs race through the remote as above.

* **Values files are edited in place**, line by line, so comments, ordering
  and formatting survive; the edit is verified by re-parsing the result.
  When the file's layout is too exotic for that (flow-style ``image``,
  block scalars...), it is re-emitted with PyYAML (``sort_keys=False``),
  which keeps data and key order but drops comments (a warning is logged).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import errno
import fcntl
import json
import logging
import os
import random
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import yaml

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    # (file text, branch head) -> (new text, extra trailers, commit subject)
    _Edit = Callable[[str, str], tuple[str, dict[str, str], str]]

logger = logging.getLogger(__name__)

__all__ = [
    "DeployResult",
    "GitCommandError",
    "GitOpsError",
    "GitOpsLockTimeoutError",
    "GitOpsRemoteError",
    "GitOpsRepo",
    "InvalidRequestError",
    "NoStableReleaseError",
    "PushConflictError",
    "Release",
    "ReleaseAction",
    "ReleaseMetadata",
    "ReleaseNotFoundError",
    "ValuesFileError",
    "ValuesFileNotFoundError",
    "Verification",
    "VerificationStatus",
    "read_image",
    "set_image",
]

REMOTE = "origin"
TAG_ROOT = "delivery"

# Trailer keys (commit messages) -------------------------------------------
T_SERVICE = "Delivery-Service"
T_ENVIRONMENT = "Delivery-Environment"
T_ACTION = "Delivery-Action"
T_IMAGE_TAG = "Delivery-Image-Tag"
T_IMAGE_REPOSITORY = "Delivery-Image-Repository"
T_SOURCE_SHA = "Delivery-Source-Sha"
T_RUN_ID = "Delivery-Run-Id"
T_APPROVER = "Delivery-Approver"
T_MIGRATION = "Delivery-Migration"
T_REASON = "Delivery-Reason"
T_BREAK_GLASS = "Delivery-Break-Glass"
T_ROLLBACK_FROM = "Delivery-Rollback-From"
T_ROLLBACK_TO = "Delivery-Rollback-To"
T_VERIFICATION = "Delivery-Verification"
T_REVISION = "Delivery-Revision"
T_RECORDED_AT = "Delivery-Recorded-At"

# Environment variables passed through to git (network, ssh, certificates).
_PASSTHROUGH_ENV = (
    "PATH",
    "HOME",
    "TMPDIR",
    "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
_USERNAME_ENV = "DELIVERY_GITOPS_USERNAME"
_PASSWORD_ENV = "DELIVERY_GITOPS_PASSWORD"
_CREDENTIAL_HELPER = (
    f'!f() {{ test "$1" = get || exit 0; '
    f'echo "username=${_USERNAME_ENV}"; echo "password=${_PASSWORD_ENV}"; }}; f'
)

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
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# Exceptions ------------------------------------------------------------------


class GitOpsError(Exception):
    """Base class of every error raised by this module."""


class InvalidRequestError(GitOpsError, ValueError):
    """The caller asked for something malformed (bad path, name, missing reason)."""


class GitCommandError(GitOpsError):
    """A git command failed; the message names the repository, file and git's stderr."""

    def __init__(
        self,
        *,
        action: str,
        repo: str,
        returncode: int,
        stderr: str,
        path: str | None = None,
    ) -> None:
        self.action = action
        self.repo = repo
        self.returncode = returncode
        self.stderr = stderr
        self.path = path
        where = f" for {path}" if path else ""
        detail = stderr.strip() or "(no output)"
        super().__init__(f"{action} failed in GitOps repo {repo}{where} (git exit {returncode}): {detail}")


class GitOpsRemoteError(GitCommandError):
    """The remote could not be reached, or the branch does not exist there."""


class PushConflictError(GitOpsError):
    """The push kept being rejected because other deployers kept moving the remote."""


class ValuesFileError(GitOpsError):
    """The Helm values file is not a YAML mapping with a usable ``image`` block."""


class ValuesFileNotFoundError(ValuesFileError, FileNotFoundError):
    """The Helm values file does not exist at the branch head (or at a revision)."""


class ReleaseNotFoundError(GitOpsError, LookupError):
    """No release with the requested revision exists in the file's history."""


class NoStableReleaseError(GitOpsError, LookupError):
    """A rollback was asked for but no earlier release passed verification."""


class GitOpsLockTimeoutError(GitOpsError, TimeoutError):
    """Another process held the workdir lock for too long."""


# Data model ------------------------------------------------------------------


class ReleaseAction(enum.StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    EXTERNAL = "external"
    """A commit on the values file without delivery trailers (a hand edit)."""


class VerificationStatus(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    UNVERIFIED = "unverified"


@dataclass(frozen=True, kw_only=True)
class ReleaseMetadata:
    """What a pipeline run knows about the release it is pushing."""

    source_sha: str
    run_id: str
    approver: str | None = None
    migration: bool = False
    reason: str | None = None
    break_glass: bool = False
    """Deployed without the normal approval (``approver`` broke the glass, ``reason`` says why)."""


@dataclass(frozen=True, kw_only=True)
class Verification:
    status: VerificationStatus
    summary: str | None = None
    recorded_at: datetime | None = None
    tag: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "summary": self.summary,
            "recorded_at": self.recorded_at.isoformat() if self.recorded_at else None,
            "tag": self.tag,
        }


UNVERIFIED = Verification(status=VerificationStatus.UNVERIFIED)


@dataclass(frozen=True, kw_only=True)
class Release:
    """One commit on a service's values file for one environment."""

    revision: str
    service: str
    environment: str
    values_path: str
    image_tag: str | None
    image_repository: str | None
    action: ReleaseAction
    timestamp: datetime
    subject: str
    source_sha: str | None = None
    run_id: str | None = None
    approver: str | None = None
    migration: bool = False
    reason: str | None = None
    verification: Verification = UNVERIFIED

    @property
    def short_revision(self) -> str:
        return self.revision[:12]

    @property
    def stable(self) -> bool:
        return self.verification.status is VerificationStatus.PASSED

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for XCom or logs)."""
        data = dataclasses.asdict(self)
        data["action"] = self.action.value
        data["timestamp"] = self.timestamp.isoformat()
        data["verification"] = self.verification.as_dict()
        return data


@dataclass(frozen=True, kw_only=True)
class DeployResult:
    """Outcome of :meth:`GitOpsRepo.deploy` / :meth:`GitOpsRepo.rollback`.

    ``revision`` is the GitOps commit Argo CD (or the local target) must sync
    to: the new commit when ``changed``, otherwise the current branch head.
    """

    revision: str
    changed: bool
    action: ReleaseAction
    service: str
    environment: str
    values_path: str
    image_tag: str
    previous_image_tag: str | None
    previous_revision: str
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["action"] = self.action.value
        return data


# Values file editing ------------------------------------------------------------


def _load_mapping(text: str, *, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValuesFileError(f"{where}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValuesFileError(f"{where}: top level is {type(data).__name__}, expected a mapping")
    return data


def _scalar(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def read_image(text: str, *, where: str = "values file") -> tuple[str | None, str | None]:
    """Return ``(image.tag, image.repository)`` from a values document."""
    data = _load_mapping(text, where=where)
    image = data.get("image")
    if image is None:
        return None, None
    if not isinstance(image, dict):
        raise ValuesFileError(f"{where}: 'image' is {type(image).__name__}, expected a mapping")
    return _scalar(image.get("tag")), _scalar(image.get("repository"))


def set_image(text: str, *, tag: str, repository: str | None = None, where: str = "values file") -> str:
    """Return ``text`` with ``image.tag`` (and ``image.repository``) set.

    The rest of the document is preserved byte for byte when the ``image``
    block is a plain block mapping; otherwise the document is re-emitted.
    Returns ``text`` unchanged when the values are already in place.
    """
    data = _load_mapping(text, where=where)
    image = data.get("image")
    if image is not None and not isinstance(image, dict):
        raise ValuesFileError(f"{where}: 'image' is {type(image).__name__}, expected a mapping")
    updates: dict[str, str] = {"tag": tag}
    if repository is not None:
        updates["repository"] = repository
    current = image or {}
    if all(current.get(k) == v for k, v in updates.items()):
        return text
    expected = copy.deepcopy(data)
    expected_image = expected.setdefault("image", {})
    if expected_image is None:
        expected_image = expected["image"] = {}
    expected_image.update(updates)

    edited = _edit_in_place(text, updates)
    if edited is not None:
        try:
            if yaml.safe_load(edited) == expected:
                return edited
        except yaml.YAMLError:
            pass
    logger.warning("%s: image block not editable in place; re-emitting the file (comments are lost)", where)
    return yaml.safe_dump(expected, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _edit_in_place(text: str, updates: Mapping[str, str]) -> str | None:
    """Line-level edit of a block-style top-level ``image:`` mapping, or None."""
    lines = text.splitlines(keepends=True)
    head = re.compile(r"^image\s*:\s*(#.*)?(\r?\n)?$")
    start = next((i for i, line in enumerate(lines) if head.match(line)), None)
    if start is None:
        if any(re.match(r"^[\"']?image[\"']?\s*:", line) for line in lines):
            return None  # ``image: {...}``, quoted key...: let the caller re-emit
        newline = "\r\n" if text.endswith("\r\n") else "\n"
        prefix = text if not text or text.endswith(("\n", "\r")) else text + newline
        body = "".join(f"  {k}: {json.dumps(v)}{newline}" for k, v in updates.items())
        return f"{prefix}image:{newline}{body}"

    end = start + 1
    while end < len(lines):
        line = lines[end]
        stripped = line.strip()
        if stripped and not line[0].isspace() and not stripped.startswith("#"):
            break
        end += 1
    indent = None
    for line in lines[start + 1 : end]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            indent = line[: len(line) - len(line.lstrip())]
            break
    if not indent or "\t" in indent:
        return None
    eol = "\r\n" if lines[start].endswith("\r\n") else "\n"
    inserts: list[str] = []
    for key, value in updates.items():
        pattern = re.compile(
            rf"^{re.escape(indent)}{re.escape(key)}\s*:\s*(?P<value>[^#\r\n]*?)(?P<comment>\s+#.*?)?(?P<eol>\r?\n)?$"
        )
        for i in range(start + 1, end):
            match = pattern.match(lines[i])
            if match:
                comment = match.group("comment") or ""
                lines[i] = f"{indent}{key}: {json.dumps(value)}{comment}{match.group('eol') or ''}"
                break
        else:
            inserts.append(f"{indent}{key}: {json.dumps(value)}{eol}")
    lines[start + 1 : start + 1] = inserts
    return "".join(lines)


# Helpers ---------------------------------------------------------------------------


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _check_name(kind: str, value: str) -> str:
    if not _SAFE_NAME.match(value):
        raise InvalidRequestError(f"invalid {kind} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


def _check_values_path(values_path: str) -> str:
    path = PurePosixPath(values_path)
    if not values_path or path.is_absolute() or ".." in path.parts or "\\" in values_path:
        raise InvalidRequestError(f"invalid values_path {values_path!r}: must be relative to the repo root")
    return path.as_posix()


def _parse_trailers(block: str) -> dict[str, str]:
    trailers: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            trailers[key.strip()] = value.strip()
    return trailers


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.strip())


# The repository ---------------------------------------------------------------


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
        command_timeout_s: float = 120.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        if not url:
            raise InvalidRequestError("GitOps repo url is empty")
        if max_push_attempts < 1:
            raise InvalidRequestError("max_push_attempts must be >= 1")
        self._url = url
        self._workdir = Path(workdir)
        self._branch = branch
        self._author_name = author_name
        self._author_email = author_email
        self._username = username
        self._password = password
        self._max_push_attempts = max_push_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._lock_timeout_s = lock_timeout_s
        self._command_timeout_s = command_timeout_s
        self._extra_env = dict(extra_env or {})
        self._secrets = [s for s in (password,) if s]
        self._sleep = time.sleep

    def __repr__(self) -> str:
        return (
            f"GitOpsRepo(url={self.display_url!r}, workdir={str(self._workdir)!r}, branch={self._branch!r})"
        )

    @property
    def display_url(self) -> str:
        return self._redact(self._url)

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
            action=ReleaseAction.DEPLOY,
            environment=environment,
            service=service,
            path=path,
            image_tag=image_tag,
            image_repository=image_repository,
            metadata=metadata,
            edit=edit,
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
        tag = self._tag_name(release.service, release.environment, outcome, release.revision)
        summary_text = summary.strip() or f"verification {status.value}"
        message = (
            f"{summary_text}\n\n"
            f"{T_VERIFICATION}: {status.value}\n"
            f"{T_SERVICE}: {release.service}\n"
            f"{T_ENVIRONMENT}: {release.environment}\n"
            f"{T_REVISION}: {release.revision}\n"
            f"{T_IMAGE_TAG}: {_one_line(release.image_tag or '-')}\n"
            f"{T_RECORDED_AT}: {datetime.now(UTC).isoformat()}\n"
        )
        with self._locked():
            self._fetch()
            if not self._is_ancestor(release.revision, self._remote_ref):
                raise ReleaseNotFoundError(
                    f"revision {release.short_revision} of {self._where(release.values_path)} is not on "
                    f"branch {self._branch} of GitOps repo {self.display_url}"
                )
            records = self._verifications(release.service, release.environment)
            existing = records.get(release.revision)
            if existing is not None and existing.tag == tag:
                logger.info("Release %s already marked %s (%s)", release.short_revision, outcome, tag)
                return existing
            replace = self._ref_exists(f"refs/tags/{tag}")
            args = ["tag", "-a", "-F", "-"]
            if replace:
                args.append("-f")
            self._git(*args, tag, release.revision, action=f"create tag {tag}", stdin=message)
            refspec = f"{'+' if replace else ''}refs/tags/{tag}:refs/tags/{tag}"
            proc = self._git("push", "--porcelain", REMOTE, refspec, action=f"push tag {tag}", check=False)
            if proc.returncode != 0:
                self._git("tag", "-d", tag, action=f"delete tag {tag}", check=False)
                if self._remote_tag_target(tag) != release.revision:
                    raise self._error(f"push tag {tag}", proc, path=release.values_path)
            self._fetch()
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
        return _previous_stable(releases, before=before)

    def rollback(
        self,
        *,
        environment: str,
        service: str,
        values_path: str,
        to: Release | str | None = None,
        metadata: ReleaseMetadata,
        restore: Literal["image", "file"] = "image",
    ) -> DeployResult:
        """Restore a stable release with a ``Delivery-Action: rollback`` commit.

        ``to`` is a :class:`Release`, an image tag, or None for
        :meth:`previous_stable`.  ``restore="image"`` (default) sets the stable
        release's ``image.tag``/``image.repository`` and keeps later
        configuration changes; ``restore="file"`` writes the stable release's
        whole values file back (needs a :class:`Release`).
        """
        _check_name("environment", environment)
        _check_name("service", service)
        path = _check_values_path(values_path)
        if not (metadata.reason and metadata.reason.strip()):
            raise InvalidRequestError(f"rollback of {service}/{environment} needs metadata.reason")
        if to is None:
            to = self.previous_stable(environment=environment, service=service, values_path=path)
            if to is None:
                raise NoStableReleaseError(
                    f"no earlier release of {path} in GitOps repo {self.display_url} passed verification"
                )
        if isinstance(to, Release):
            if (to.service, to.environment, to.values_path) != (service, environment, path):
                raise InvalidRequestError(
                    f"release {to.short_revision} is {to.service}/{to.environment} ({to.values_path}), "
                    f"not {service}/{environment} ({path})"
                )
            if to.image_tag is None:
                raise InvalidRequestError(f"release {to.short_revision} of {path} has no image tag")
            target_tag, target_repository, target_revision = to.image_tag, to.image_repository, to.revision
        else:
            if restore == "file":
                raise InvalidRequestError("restore='file' needs a Release, not an image tag")
            target_tag, target_repository, target_revision = to, None, None

        def edit(text: str, head: str) -> tuple[str, dict[str, str], str]:
            if restore == "file" and target_revision is not None:
                new = self._show(target_revision, path)
                read_image(new, where=self._where(path))  # validate
            else:
                new = set_image(text, tag=target_tag, repository=target_repository, where=self._where(path))
            current_tag, _ = read_image(text, where=self._where(path))
            extra = {T_ROLLBACK_FROM: head}
            if target_revision:
                extra[T_ROLLBACK_TO] = target_revision
            subject = f"rollback({service}/{environment}): {current_tag} -> {target_tag}"
            return new, extra, subject

        return self._commit_change(
            action=ReleaseAction.ROLLBACK,
            environment=environment,
            service=service,
            path=path,
            image_tag=target_tag,
            image_repository=target_repository,
            metadata=metadata,
            edit=edit,
        )

    # -- commit / push loop ----------------------------------------------------

    def _commit_change(
        self,
        *,
        action: ReleaseAction,
        environment: str,
        service: str,
        path: str,
        image_tag: str,
        image_repository: str | None,
        metadata: ReleaseMetadata,
        edit: _Edit,
    ) -> DeployResult:
        where = self._where(path)

        def result(
            *, revision: str, changed: bool, head: str, previous: str | None, attempt: int
        ) -> DeployResult:
            return DeployResult(
                revision=revision,
                changed=changed,
                action=action,
                service=service,
                environment=environment,
                values_path=path,
                image_tag=image_tag,
                previous_image_tag=previous,
                previous_revision=head,
                attempts=attempt,
            )

        with self._locked():
            for attempt in range(1, self._max_push_attempts + 1):
                head = self._sync()
                file = self._workdir / path
                if not file.is_file():
                    raise ValuesFileNotFoundError(
                        f"{where} not found in GitOps repo {self.display_url} at {self._branch}@{head[:12]}"
                    )
                text = file.read_text(encoding="utf-8")
                previous, _ = read_image(text, where=where)
                new, extra, subject = edit(text, head)
                if new == text:
                    logger.info("%s already at %s at %s; nothing to commit", where, image_tag, head[:12])
                    return result(revision=head, changed=False, head=head, previous=previous, attempt=attempt)
                file.write_text(new, encoding="utf-8")
                message = self._message(
                    subject=subject,
                    action=action,
                    environment=environment,
                    service=service,
                    image_tag=image_tag,
                    image_repository=image_repository,
                    metadata=metadata,
                    extra=extra,
                )
                self._git("add", "--", path, action="git add", path=path)
                self._git(
                    "commit", "-q", "--no-verify", "-F", "-", action="git commit", path=path, stdin=message
                )
                commit = self._rev_parse("HEAD")
                refspec = f"HEAD:refs/heads/{self._branch}"
                proc = self._git(
                    "push", "--porcelain", REMOTE, refspec, action="git push", path=path, check=False
                )
                if proc.returncode == 0:
                    logger.info(
                        "Pushed %s of %s: %s -> %s as %s (attempt %d)",
                        action.value,
                        where,
                        previous,
                        image_tag,
                        commit[:12],
                        attempt,
                    )
                    return result(
                        revision=commit, changed=True, head=head, previous=previous, attempt=attempt
                    )
                self._fetch_quietly()
                if self._is_ancestor(commit, self._remote_ref):
                    logger.warning(
                        "Push of %s reported a failure but the commit is on the remote", commit[:12]
                    )
                    return result(
                        revision=commit, changed=True, head=head, previous=previous, attempt=attempt
                    )
                output = f"{proc.stdout}\n{proc.stderr}"
                if not any(marker in output for marker in _RETRYABLE_PUSH):
                    raise self._error("git push", proc, path=path)
                if attempt < self._max_push_attempts:
                    delay = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
                    delay *= random.uniform(0.5, 1.0)  # jitter, not cryptography
                    logger.info(
                        "Push of %s rejected (remote moved); retrying in %.2fs (attempt %d/%d)",
                        where,
                        delay,
                        attempt,
                        self._max_push_attempts,
                    )
                    self._sleep(delay)
            raise PushConflictError(
                f"push of {where} to GitOps repo {self.display_url} was rejected "
                f"{self._max_push_attempts} times because branch {self._branch} kept moving"
            )

    def _message(
        self,
        *,
        subject: str,
        action: ReleaseAction,
        environment: str,
        service: str,
        image_tag: str,
        image_repository: str | None,
        metadata: ReleaseMetadata,
        extra: Mapping[str, str],
    ) -> str:
        trailers: list[tuple[str, str]] = [
            (T_SERVICE, service),
            (T_ENVIRONMENT, environment),
            (T_ACTION, action.value),
            (T_IMAGE_TAG, image_tag),
        ]
        if image_repository:
            trailers.append((T_IMAGE_REPOSITORY, image_repository))
        trailers += [
            (T_SOURCE_SHA, metadata.source_sha),
            (T_RUN_ID, metadata.run_id),
            (T_APPROVER, metadata.approver or "none"),
            (T_MIGRATION, "true" if metadata.migration else "false"),
        ]
        if metadata.break_glass:
            trailers.append((T_BREAK_GLASS, "true"))
        if metadata.reason:
            trailers.append((T_REASON, metadata.reason))
        trailers += list(extra.items())
        body = "\n".join(f"{key}: {_one_line(value) or '-'}" for key, value in trailers)
        return f"{_one_line(subject)}\n\n{body}\n"

    # -- history ------------------------------------------------------------------

    def _history(self, *, environment: str, service: str, path: str, max_count: int) -> list[Release]:
        if not self._ref_exists(self._remote_ref):
            return []
        fmt = "%H%x00%cI%x00%s%x00%(trailers:only=true,unfold=true)%x1e"
        proc = self._git(
            "log",
            f"--max-count={max_count}",
            f"--format={fmt}",
            self._remote_ref,
            "--",
            path,
            action="git log",
            path=path,
        )
        verifications = self._verifications(service, environment)
        releases: list[Release] = []
        for raw in proc.stdout.split("\x1e"):
            record = raw.strip("\n")
            if not record:
                continue
            sha, committed, subject, trailer_block = [*record.split("\x00"), "", "", ""][:4]
            trailers = _parse_trailers(trailer_block)
            if (
                trailers.get(T_SERVICE, service) != service
                or trailers.get(T_ENVIRONMENT, environment) != environment
            ):
                continue
            raw_action = trailers.get(T_ACTION, ReleaseAction.EXTERNAL.value)
            try:
                action = ReleaseAction(raw_action)
            except ValueError:
                action = ReleaseAction.EXTERNAL
            tag = trailers.get(T_IMAGE_TAG)
            repository = trailers.get(T_IMAGE_REPOSITORY)
            if tag is None:
                try:
                    tag, repository = read_image(self._show(sha, path), where=self._where(path))
                except GitOpsError:
                    tag, repository = None, None
            releases.append(
                Release(
                    revision=sha,
                    service=service,
                    environment=environment,
                    values_path=path,
                    image_tag=tag,
                    image_repository=repository,
                    action=action,
                    timestamp=_parse_time(committed),
                    subject=subject,
                    source_sha=trailers.get(T_SOURCE_SHA),
                    run_id=trailers.get(T_RUN_ID),
                    approver=None if trailers.get(T_APPROVER) in (None, "none") else trailers.get(T_APPROVER),
                    migration=trailers.get(T_MIGRATION, "false").lower() == "true",
                    reason=trailers.get(T_REASON),
                    verification=verifications.get(sha, UNVERIFIED),
                )
            )
        return releases

    def _verifications(self, service: str, environment: str) -> dict[str, Verification]:
        prefix = f"refs/tags/{TAG_ROOT}/{service}/{environment}"
        fmt = (
            "%(refname:strip=2)%00%(objecttype)%00%(*objectname)%00%(creatordate:iso-strict)%00%(contents)%1e"
        )
        proc = self._git("for-each-ref", f"--format={fmt}", prefix, action="read verification tags")
        best: dict[str, tuple[datetime, int, Verification]] = {}
        for raw in proc.stdout.split("\x1e"):
            record = raw.lstrip("\n")
            if not record:
                continue
            name, objtype, target, created, contents = [*record.split("\x00"), "", "", "", ""][:5]
            if objtype != "tag" or not target:
                continue  # lightweight tags carry no record
            outcome = name.rsplit("/", 2)[-2] if name.count("/") >= 2 else ""
            if outcome == "verified":
                status, rank = VerificationStatus.PASSED, 0
            elif outcome == "failed":
                status, rank = VerificationStatus.FAILED, 1
            else:
                continue
            summary, _, trailer_block = contents.rpartition("\n\n")
            if not summary:
                summary, trailer_block = contents, ""
            trailers = _parse_trailers(trailer_block)
            try:
                when = _parse_time(trailers[T_RECORDED_AT])
            except (KeyError, ValueError):
                when = _parse_time(created)
            summary = summary.strip()
            record_v = Verification(status=status, summary=summary or None, recorded_at=when, tag=name)
            previous = best.get(target)
            if previous is None or (when, rank) > (previous[0], previous[1]):
                best[target] = (when, rank, record_v)
        return {sha: item[2] for sha, item in best.items()}

    @staticmethod
    def _tag_name(service: str, environment: str, outcome: str, revision: str) -> str:
        return f"{TAG_ROOT}/{service}/{environment}/{outcome}/{revision[:12]}"

    # -- git plumbing ------------------------------------------------------------

    @property
    def _remote_ref(self) -> str:
        return f"refs/remotes/{REMOTE}/{self._branch}"

    def _where(self, path: str) -> str:
        return f"values file {path}"

    def _ensure_clone(self) -> None:
        if (self._workdir / ".git").is_dir():
            self._git("remote", "set-url", REMOTE, self._url, action="set remote url")
            return
        self._workdir.mkdir(parents=True, exist_ok=True)
        if any(self._workdir.iterdir()):
            raise GitOpsError(f"workdir {self._workdir} exists, is not empty and is not a git clone")
        self._git("init", "-q", "-b", self._branch, action="git init")
        self._git("remote", "add", REMOTE, self._url, action="add remote")

    def _fetch(self) -> None:
        self._ensure_clone()
        proc = self._git(
            "fetch",
            "-q",
            "--prune",
            "--no-tags",
            "--force",
            REMOTE,
            f"+refs/heads/{self._branch}:{self._remote_ref}",
            f"+refs/tags/{TAG_ROOT}/*:refs/tags/{TAG_ROOT}/*",
            action=f"git fetch of branch {self._branch}",
            check=False,
        )
        if proc.returncode != 0:
            raise self._error(f"git fetch of branch {self._branch}", proc, remote=True)

    def _fetch_quietly(self) -> None:
        with contextlib.suppress(GitCommandError):
            self._fetch()

    def _sync(self) -> str:
        self._fetch()
        self._git("checkout", "-q", "-f", "-B", self._branch, self._remote_ref, action="git checkout")
        self._git("clean", "-q", "-f", "-d", "-x", action="git clean")
        return self._rev_parse("HEAD")

    def _show(self, revision: str, path: str) -> str:
        proc = self._git("show", f"{revision}:{path}", action="git show", path=path, check=False)
        if proc.returncode != 0:
            raise ValuesFileNotFoundError(
                f"{self._where(path)} not found in GitOps repo {self.display_url} at {revision[:12]}: "
                f"{self._redact(proc.stderr.strip())}"
            )
        return proc.stdout

    def _rev_parse(self, ref: str) -> str:
        return self._git("rev-parse", "--verify", f"{ref}^{{commit}}", action=f"resolve {ref}").stdout.strip()

    def _ref_exists(self, ref: str) -> bool:
        proc = self._git("rev-parse", "--verify", "-q", ref, action=f"resolve {ref}", check=False)
        return proc.returncode == 0

    def _is_ancestor(self, commit: str, ref: str) -> bool:
        proc = self._git("merge-base", "--is-ancestor", commit, ref, action="git merge-base", check=False)
        return proc.returncode == 0

    def _remote_tag_target(self, tag: str) -> str | None:
        proc = self._git("ls-remote", REMOTE, f"refs/tags/{tag}^{{}}", action="git ls-remote", check=False)
        line = proc.stdout.strip().splitlines()
        return line[0].split()[0] if proc.returncode == 0 and line else None

    def _env(self) -> dict[str, str]:
        env = {key: os.environ[key] for key in _PASSTHROUGH_ENV if key in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(
            {
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "LC_ALL": "C",
                "LANG": "C",
                "GIT_AUTHOR_NAME": self._author_name,
                "GIT_AUTHOR_EMAIL": self._author_email,
                "GIT_COMMITTER_NAME": self._author_name,
                "GIT_COMMITTER_EMAIL": self._author_email,
            }
        )
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        env.update(self._extra_env)
        if self._password is not None:
            env[_USERNAME_ENV] = self._username or "x-access-token"
            env[_PASSWORD_ENV] = self._password
        return env

    def _git(
        self,
        *args: str,
        action: str,
        path: str | None = None,
        check: bool = True,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        config: list[str] = [
            "-c", "core.autocrlf=false",
            "-c", "commit.gpgSign=false",
            "-c", "tag.gpgSign=false",
            "-c", "core.hooksPath=" + os.devnull,
            "-c", "credential.helper=",
        ]  # fmt: skip
        if self._password is not None:
            config += ["-c", f"credential.helper={_CREDENTIAL_HELPER}"]
        command: Sequence[str] = ["git", *config, *args]
        logger.debug("git %s", self._redact(" ".join(args)))
        try:
            proc = subprocess.run(
                command,
                cwd=self._workdir if self._workdir.is_dir() else None,
                env=self._env(),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self._command_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise GitCommandError(
                action=action,
                repo=self.display_url,
                returncode=-1,
                stderr=f"timed out after {self._command_timeout_s:.0f}s",
                path=path,
            ) from exc
        except OSError as exc:
            raise GitCommandError(
                action=action, repo=self.display_url, returncode=-1, stderr=str(exc), path=path
            ) from exc
        if check and proc.returncode != 0:
            raise self._error(action, proc, path=path)
        return proc

    def _error(
        self,
        action: str,
        proc: subprocess.CompletedProcess[str],
        *,
        path: str | None = None,
        remote: bool = False,
    ) -> GitCommandError:
        output = "\n".join(part.strip() for part in (proc.stderr, proc.stdout) if part and part.strip())
        cls = GitOpsRemoteError if remote else GitCommandError
        return cls(
            action=action,
            repo=self.display_url,
            returncode=proc.returncode,
            stderr=self._redact(output),
            path=path,
        )

    def _redact(self, text: str) -> str:
        text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- locking ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self._workdir.with_name(f".{self._workdir.name}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._lock_timeout_s
        with open(lock_path, "a+b") as handle:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise GitOpsLockTimeoutError(
                            f"workdir {self._workdir} of GitOps repo {self.display_url} stayed locked "
                            f"for {self._lock_timeout_s:.0f}s"
                        ) from exc
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _previous_stable(releases: Sequence[Release], *, before: str | None) -> Release | None:
    if not releases:
        return None
    if before is None:
        index = 0
    else:
        matches = [i for i, r in enumerate(releases) if r.revision.startswith(before.lower())]
        if not matches:
            raise ReleaseNotFoundError(
                f"revision {before} is not in the release history of {releases[0].values_path}"
            )
        index = matches[0]
    reference = releases[index]
    for release in releases[index + 1 :]:
        if release.stable and release.image_tag and release.image_tag != reference.image_tag:
            return release
    return None
