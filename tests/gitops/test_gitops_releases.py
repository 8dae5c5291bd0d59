"""Release history, verification records, previous stable release and rollback."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

from delivery.gitops import (
    GitOpsRepo,
    InvalidRequestError,
    NoStableReleaseError,
    Release,
    ReleaseAction,
    ReleaseMovedError,
    ReleaseNotFoundError,
    VerificationStatus,
    read_image,
)
from tests.gitops._support import API_PROD, API_PROD_TEXT, API_STAGING, Remote, before_first_push, meta

if TYPE_CHECKING:
    from collections.abc import Callable

    RepoFactory = Callable[..., GitOpsRepo]

API: dict[str, Any] = {"environment": "production", "service": "visiobook-api", "values_path": API_PROD}


def _deploy(repo: GitOpsRepo, tag: str, **metadata: object) -> str:
    return repo.deploy(**API, image_tag=tag, metadata=meta(f"run-{tag}", **metadata)).revision


def _release(repo: GitOpsRepo, revision: str) -> Release:
    return repo.get_release(**API, revision=revision)


def test_history_is_newest_first_with_all_fields(remote: Remote, make_repo: RepoFactory) -> None:
    repo = make_repo()
    seed = remote.head()
    r1 = _deploy(repo, "1.1.0", migration=True, approver="alice", source_sha="1" * 40)
    make_repo("staging").deploy(
        environment="staging",
        service="visiobook-api",
        values_path=API_STAGING,
        image_tag="x",
        metadata=meta(),
    )
    r2 = _deploy(repo, "1.2.0", approver=None, source_sha="2" * 40)

    history = make_repo("reader").history(**API)

    assert [r.revision for r in history] == [r2, r1, seed]
    newest, older, first = history
    assert (newest.image_tag, newest.source_sha, newest.run_id, newest.approver, newest.migration) == (
        "1.2.0",
        "2" * 40,
        "run-1.2.0",
        None,
        False,
    )
    assert (older.image_tag, older.source_sha, older.run_id, older.approver, older.migration) == (
        "1.1.0",
        "1" * 40,
        "run-1.1.0",
        "alice",
        True,
    )
    assert newest.action is older.action is ReleaseAction.DEPLOY
    assert newest.timestamp >= older.timestamp >= first.timestamp
    assert newest.timestamp.tzinfo is not None
    assert newest.image_repository is None
    assert all(r.verification.status is VerificationStatus.UNVERIFIED for r in history)
    # The hand-made seed commit is an "external" release read from the file itself.
    assert first.action is ReleaseAction.EXTERNAL
    assert (first.image_tag, first.image_repository) == ("1.0.0", "registry.example.com/visiobook/api")
    assert first.run_id is None
    assert newest.as_dict()["verification"]["status"] == "unverified"
    assert make_repo("reader").current(**API) == newest
    assert _release(repo, r1[:10]) == older


def test_get_release_unknown_revision(make_repo: RepoFactory) -> None:
    with pytest.raises(ReleaseNotFoundError, match=API_PROD):
        make_repo().get_release(**API, revision="deadbeef")


def test_mark_verified_and_previous_stable(remote: Remote, make_repo: RepoFactory) -> None:
    repo = make_repo()
    r1 = _deploy(repo, "1.1.0")
    r2 = _deploy(repo, "1.2.0")
    r3 = _deploy(repo, "1.3.0")
    r4 = _deploy(repo, "1.4.0")
    head_before = remote.head()

    ok = repo.mark_verified(release=_release(repo, r1), ok=True, summary="smoke + SLO checks green")
    assert ok.status is VerificationStatus.PASSED
    assert ok.tag == f"delivery/visiobook-api/production/verified/{r1[:12]}"
    # r2 stays unverified; r3 failed verification; r4 is current.
    bad = make_repo("other-worker").mark_verified(release=_release(repo, r3), ok=False, summary="5xx > 2%")
    assert bad.status is VerificationStatus.FAILED

    # Verification never rewrites history: only tags were added.
    assert remote.head() == head_before
    tags = remote.git("ls-remote", "--tags", remote.url).split()
    assert f"refs/tags/delivery/visiobook-api/production/failed/{r3[:12]}" in tags

    history = make_repo("reader").history(**API)
    status = {r.revision: r.verification.status for r in history}
    assert status[r1] is VerificationStatus.PASSED
    assert status[r2] is VerificationStatus.UNVERIFIED
    assert status[r3] is VerificationStatus.FAILED
    assert status[r4] is VerificationStatus.UNVERIFIED
    assert next(r for r in history if r.revision == r1).verification.summary == "smoke + SLO checks green"

    reader = make_repo("reader")
    assert reader.previous_stable(**API).revision == r1  # type: ignore[union-attr]
    assert reader.previous_stable(**API, before=r3).revision == r1  # type: ignore[union-attr]
    assert reader.previous_stable(**API, before=r1) is None
    with pytest.raises(ReleaseNotFoundError):
        reader.previous_stable(**API, before="0" * 40)

    # Re-verification: the latest record wins, and marking twice is idempotent.
    again = repo.mark_verified(release=_release(repo, r2), ok=False, summary="flaky")
    assert repo.mark_verified(release=_release(repo, r2), ok=False, summary="flaky") == again
    repo.mark_verified(release=_release(repo, r2), ok=True, summary="passed on re-run")
    assert _release(reader, r2).verification.status is VerificationStatus.PASSED
    assert reader.previous_stable(**API).revision == r2  # type: ignore[union-attr]
    repo.mark_verified(release=_release(repo, r2), ok=False, summary="regression found later")
    assert _release(reader, r2).verification.status is VerificationStatus.FAILED
    assert reader.previous_stable(**API).revision == r1  # type: ignore[union-attr]


def test_mark_verified_refuses_a_revision_not_on_the_branch(make_repo: RepoFactory) -> None:
    repo = make_repo()
    release = _release(repo, _deploy(repo, "1.1.0"))
    foreign = dataclasses.replace(release, revision="f" * 40)
    with pytest.raises(ReleaseNotFoundError, match=API_PROD):
        repo.mark_verified(release=foreign, ok=True, summary="ok")


def test_previous_stable_skips_releases_of_the_current_tag(make_repo: RepoFactory) -> None:
    repo = make_repo()
    r1 = _deploy(repo, "1.1.0")
    r2 = _deploy(repo, "1.2.0")
    repo.mark_verified(release=_release(repo, r1), ok=True, summary="ok")
    repo.mark_verified(release=_release(repo, r2), ok=True, summary="ok")
    repo.deploy(**API, image_tag="1.2.0", image_repository="registry.internal/api", metadata=meta())
    # Current release runs 1.2.0 again: the stable 1.2.0 release is no rollback target.
    assert repo.previous_stable(**API).revision == r1  # type: ignore[union-attr]


def test_rollback_restores_previous_stable_and_records_reason(remote: Remote, make_repo: RepoFactory) -> None:
    repo = make_repo()
    r1 = _deploy(repo, "1.1.0")
    repo.mark_verified(release=_release(repo, r1), ok=True, summary="ok")
    r2 = _deploy(repo, "1.2.0", migration=True)
    repo.mark_verified(release=_release(repo, r2), ok=False, summary="error budget burned")

    result = make_repo("responder").rollback(
        **API, metadata=meta("rollback-run", reason="error rate 7% after 1.2.0", approver="bob")
    )

    assert result.changed and result.action is ReleaseAction.ROLLBACK
    assert (result.image_tag, result.previous_image_tag, result.previous_revision) == ("1.1.0", "1.2.0", r2)
    assert result.revision == remote.head()
    trailers = remote.trailers(result.revision)
    assert trailers["Delivery-Action"] == "rollback"
    assert trailers["Delivery-Reason"] == "error rate 7% after 1.2.0"
    assert trailers["Delivery-Rollback-To"] == r1
    assert trailers["Delivery-Rollback-From"] == r2
    assert trailers["Delivery-Approver"] == "bob"
    assert remote.show(API_PROD) == API_PROD_TEXT.replace('tag: "1.0.0"', 'tag: "1.1.0"')
    newest = make_repo("reader").current(**API)
    assert newest is not None
    assert (newest.action, newest.reason, newest.image_tag) == (
        ReleaseAction.ROLLBACK,
        "error rate 7% after 1.2.0",
        "1.1.0",
    )

    # Rolling back again is a no-op.
    again = repo.rollback(**API, to=_release(repo, r1), metadata=meta(reason="retry"))
    assert again.changed is False and again.revision == result.revision


def test_rollback_to_an_image_tag(remote: Remote, make_repo: RepoFactory) -> None:
    repo = make_repo()
    _deploy(repo, "1.1.0")
    result = repo.rollback(**API, to="1.0.0", metadata=meta(reason="manual rollback"))
    assert result.changed
    assert read_image(remote.show(API_PROD))[0] == "1.0.0"
    assert "Delivery-Rollback-To" not in remote.trailers(result.revision)


def test_rollback_image_mode_keeps_later_config_and_file_mode_restores_it(
    remote: Remote, make_repo: RepoFactory
) -> None:
    repo = make_repo()
    r1 = _deploy(repo, "1.1.0")
    repo.mark_verified(release=_release(repo, r1), ok=True, summary="ok")
    # A release that also changed configuration.
    repo.sync()
    values = repo.workdir / API_PROD
    values.write_text(values.read_text().replace("replicaCount: 3", "replicaCount: 5"), encoding="utf-8")
    from tests.gitops._support import git

    git("commit", "-q", "-am", "scale api to 5", cwd=repo.workdir)
    git("push", "-q", "origin", "HEAD:main", cwd=repo.workdir)
    _deploy(repo, "1.2.0")

    image_only = repo.rollback(**API, metadata=meta(reason="bad 1.2.0"))
    assert "replicaCount: 5" in remote.show(API_PROD)
    assert read_image(remote.show(API_PROD))[0] == "1.1.0"

    _deploy(repo, "1.2.1")
    whole = repo.rollback(**API, to=_release(repo, r1), metadata=meta(reason="bad 1.2.1"), restore="file")
    assert whole.changed and image_only.changed
    assert remote.show(API_PROD) == remote.show(API_PROD, r1)


def test_rollback_guards(make_repo: RepoFactory) -> None:
    repo = make_repo()
    r1 = _deploy(repo, "1.1.0")
    with pytest.raises(InvalidRequestError, match="reason"):
        repo.rollback(**API, to="1.0.0", metadata=meta())
    with pytest.raises(NoStableReleaseError, match=API_PROD):
        repo.rollback(**API, metadata=meta(reason="no stable release yet"))
    with pytest.raises(InvalidRequestError, match="Release"):
        repo.rollback(**API, to="1.0.0", metadata=meta(reason="r"), restore="file")
    staging = make_repo().deploy(
        environment="staging",
        service="visiobook-api",
        values_path=API_STAGING,
        image_tag="s1",
        metadata=meta(),
    )
    other = make_repo().get_release(
        environment="staging", service="visiobook-api", values_path=API_STAGING, revision=staging.revision
    )
    with pytest.raises(InvalidRequestError, match="staging"):
        repo.rollback(**API, to=other, metadata=meta(reason="wrong env"))
    assert repo.current(**API).revision == r1  # type: ignore[union-attr]


def test_a_rollback_never_undoes_a_release_that_landed_after_its_plan(
    remote: Remote, make_repo: RepoFactory
) -> None:
    repo = make_repo()
    r1 = _deploy(repo, "1.1.0")
    repo.mark_verified(release=_release(repo, r1), ok=True, summary="ok")
    _deploy(repo, "1.2.0")  # the release the rollback is planned to undo
    stable = _release(repo, r1)

    # Another run releases 1.3.0 before the rollback commits.
    r3 = _deploy(make_repo("another-run"), "1.3.0")
    with pytest.raises(ReleaseMovedError, match=r"runs 1\.3\.0 .*not 1\.2\.0"):
        repo.rollback(**API, to=stable, metadata=meta(reason="1.2.0 is slow"), undoing="1.2.0")
    assert remote.head() == r3 and read_image(remote.show(API_PROD))[0] == "1.3.0"

    # The same race at push time: the push is rejected, the new head is compared again.
    repo.rollback(**API, to="1.2.0", metadata=meta(reason="back to 1.2.0"), undoing="1.3.0")
    raced = before_first_push(repo, lambda: _deploy(make_repo("another-run"), "1.4.0"))
    with pytest.raises(ReleaseMovedError, match=r"runs 1\.4\.0"):
        repo.rollback(**API, to=stable, metadata=meta(reason="1.2.0 is slow"), undoing="1.2.0")
    assert remote.head() == raced[0] and read_image(remote.show(API_PROD))[0] == "1.4.0"

    # Undoing what is current still works.
    done = repo.rollback(**API, to=stable, metadata=meta(reason="1.4.0 is slow"), undoing="1.4.0")
    assert done.changed and read_image(remote.show(API_PROD))[0] == "1.1.0"
