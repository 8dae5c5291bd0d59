"""Release history: what a commit on a values file says about a release, and its verification tags.

* **Release metadata lives in commit trailers** (``Delivery-Service``,
  ``Delivery-Environment``, ``Delivery-Action``, ``Delivery-Image-Tag``,
  ``Delivery-Source-Sha``, ``Delivery-Run-Id``, ``Delivery-Approver``,
  ``Delivery-Migration``, ``Delivery-Reason``...).  ``git log`` on the values
  file is the release history of one service in one environment; commits
  without trailers (hand edits) still appear, as ``external`` releases whose
  tag is read from the file itself.

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

This module parses and formats; :class:`delivery.gitops.repository.GitOpsRepo`
runs the git commands.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from delivery.gitops.errors import ReleaseNotFoundError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "DeployResult",
    "Release",
    "ReleaseAction",
    "ReleaseMetadata",
    "Verification",
    "VerificationStatus",
]

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

# ``git log --format`` of a values file and ``git for-each-ref --format`` of its verification tags.
LOG_FORMAT = "%H%x00%cI%x00%s%x00%(trailers:only=true,unfold=true)%x1e"
TAG_FORMAT = (
    "%(refname:strip=2)%00%(objecttype)%00%(*objectname)%00%(creatordate:iso-strict)%00%(contents)%1e"
)


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


# Formatting ---------------------------------------------------------------------


def one_line(value: str) -> str:
    return " ".join(value.split())


def tag_name(service: str, environment: str, outcome: str, revision: str) -> str:
    """The verification tag of a release: ``delivery/<service>/<env>/<outcome>/<sha-12>``."""
    return f"{TAG_ROOT}/{service}/{environment}/{outcome}/{revision[:12]}"


def verification_message(*, release: Release, status: VerificationStatus, summary: str, now: datetime) -> str:
    """The message of a verification tag: the summary, then the trailers."""
    return (
        f"{summary}\n\n"
        f"{T_VERIFICATION}: {status.value}\n"
        f"{T_SERVICE}: {release.service}\n"
        f"{T_ENVIRONMENT}: {release.environment}\n"
        f"{T_REVISION}: {release.revision}\n"
        f"{T_IMAGE_TAG}: {one_line(release.image_tag or '-')}\n"
        f"{T_RECORDED_AT}: {now.isoformat()}\n"
    )


def release_message(
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
    """The commit message of a deploy or rollback: one subject line, then the delivery trailers."""
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
    body = "\n".join(f"{key}: {one_line(value) or '-'}" for key, value in trailers)
    return f"{one_line(subject)}\n\n{body}\n"


# Parsing ------------------------------------------------------------------------


def parse_trailers(block: str) -> dict[str, str]:
    trailers: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            trailers[key.strip()] = value.strip()
    return trailers


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.strip())


def _records(output: str, fields: int, *, strip: Callable[[str], str]) -> list[list[str]]:
    records = []
    for raw in output.split("\x1e"):
        record = strip(raw)
        if record:
            records.append([*record.split("\x00"), *([""] * fields)][:fields])
    return records


def parse_history(
    output: str,
    *,
    service: str,
    environment: str,
    path: str,
    verifications: Mapping[str, Verification],
    read_image_at: Callable[[str], tuple[str | None, str | None]],
) -> list[Release]:
    """The releases in ``git log --format=LOG_FORMAT`` output, newest first.

    ``read_image_at(sha)`` reads the image of a commit without trailers (a hand edit).
    """
    releases: list[Release] = []
    for sha, committed, subject, trailer_block in _records(output, 4, strip=lambda r: r.strip("\n")):
        trailers = parse_trailers(trailer_block)
        if (
            trailers.get(T_SERVICE, service) != service
            or trailers.get(T_ENVIRONMENT, environment) != environment
        ):
            continue
        try:
            action = ReleaseAction(trailers.get(T_ACTION, ReleaseAction.EXTERNAL.value))
        except ValueError:
            action = ReleaseAction.EXTERNAL
        tag, repository = trailers.get(T_IMAGE_TAG), trailers.get(T_IMAGE_REPOSITORY)
        if tag is None:
            tag, repository = read_image_at(sha)
        approver = trailers.get(T_APPROVER)
        releases.append(
            Release(
                revision=sha,
                service=service,
                environment=environment,
                values_path=path,
                image_tag=tag,
                image_repository=repository,
                action=action,
                timestamp=parse_time(committed),
                subject=subject,
                source_sha=trailers.get(T_SOURCE_SHA),
                run_id=trailers.get(T_RUN_ID),
                approver=None if approver in (None, "none") else approver,
                migration=trailers.get(T_MIGRATION, "false").lower() == "true",
                reason=trailers.get(T_REASON),
                verification=verifications.get(sha, UNVERIFIED),
            )
        )
    return releases


def _tag_outcome(name: str) -> tuple[VerificationStatus, int] | None:
    outcome = name.rsplit("/", 2)[-2] if name.count("/") >= 2 else ""
    if outcome == "verified":
        return VerificationStatus.PASSED, 0
    if outcome == "failed":
        return VerificationStatus.FAILED, 1
    return None


def parse_verifications(output: str) -> dict[str, Verification]:
    """{release sha: effective verification} from ``git for-each-ref --format=TAG_FORMAT`` output.

    The most recent record wins; ``failed`` wins a tie. Lightweight tags carry no record.
    """
    best: dict[str, tuple[datetime, int, Verification]] = {}
    for name, objtype, target, created, contents in _records(output, 5, strip=lambda r: r.lstrip("\n")):
        outcome = _tag_outcome(name)
        if objtype != "tag" or not target or outcome is None:
            continue
        status, rank = outcome
        summary, _, trailer_block = contents.rpartition("\n\n")
        if not summary:
            summary, trailer_block = contents, ""
        trailers = parse_trailers(trailer_block)
        try:
            when = parse_time(trailers[T_RECORDED_AT])
        except (KeyError, ValueError):
            when = parse_time(created)
        record = Verification(status=status, summary=summary.strip() or None, recorded_at=when, tag=name)
        previous = best.get(target)
        if previous is None or (when, rank) > (previous[0], previous[1]):
            best[target] = (when, rank, record)
    return {sha: item[2] for sha, item in best.items()}


def previous_stable(releases: Sequence[Release], *, before: str | None) -> Release | None:
    """The newest release older than ``before`` (default: the newest) that passed verification
    and runs another image tag."""
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
