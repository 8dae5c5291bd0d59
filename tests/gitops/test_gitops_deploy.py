"""Deploys against real bare git repositories, including racing deployers."""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING

import pytest
import yaml

from delivery.gitops import DeployResult, GitOpsRepo, ReleaseAction, read_image
from tests.gitops._support import (
    API_PROD,
    API_PROD_TEXT,
    API_STAGING,
    WORKER_PROD,
    Remote,
    before_first_push,
    meta,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    RepoFactory = Callable[..., GitOpsRepo]


def test_deploy_makes_one_commit_with_trailers(remote: Remote, make_repo: RepoFactory) -> None:
    before_head, before_count = remote.head(), remote.count()
    repo = make_repo()

    result = repo.deploy(
        environment="production",
        service="visiobook-api",
        values_path=API_PROD,
        image_tag="1.1.0",
        image_repository=None,
        metadata=meta("scheduled__2025-01-01", source_sha="b" * 40, migration=True),
    )

    assert result.changed is True
    assert result.action is ReleaseAction.DEPLOY
    assert result.revision == remote.head()
    assert result.previous_revision == before_head
    assert result.previous_image_tag == "1.0.0"
    assert result.attempts == 1
    assert remote.count() == before_count + 1
    assert remote.git("rev-parse", f"{result.revision}^").strip() == before_head
    assert remote.trailers(result.revision) == {
        "Delivery-Service": "visiobook-api",
        "Delivery-Environment": "production",
        "Delivery-Action": "deploy",
        "Delivery-Image-Tag": "1.1.0",
        "Delivery-Source-Sha": "b" * 40,
        "Delivery-Run-Id": "scheduled__2025-01-01",
        "Delivery-Approver": "alice",
        "Delivery-Migration": "true",
    }
    assert remote.git("log", "-1", "--format=%s", result.revision).strip() == (
        "deploy(visiobook-api/production): 1.1.0"
    )
    # Only the tag line changed; comments, order and other files are untouched.
    assert remote.show(API_PROD) == API_PROD_TEXT.replace('tag: "1.0.0"', 'tag: "1.1.0"')
    changed_files = remote.git("diff", "--name-only", before_head, result.revision).split()
    assert changed_files == [API_PROD]
    assert remote.git("log", "-1", "--format=%an <%ae>", result.revision).strip() == (
        "Visiobook Delivery <delivery@visiobook.invalid>"
    )


def test_identical_deploy_makes_no_commit(remote: Remote, make_repo: RepoFactory) -> None:
    first = make_repo("a").deploy(
        environment="production",
        service="visiobook-api",
        values_path=API_PROD,
        image_tag="1.1.0",
        metadata=meta(),
    )
    count = remote.count()
    for name in ("a", "b"):  # same clone, and a fresh clone on another worker
        again = make_repo(name).deploy(
            environment="production",
            service="visiobook-api",
            values_path=API_PROD,
            image_tag="1.1.0",
            metadata=meta("run-2"),
        )
        assert again.changed is False
        assert again.revision == first.revision == remote.head()
        assert again.previous_image_tag == "1.1.0"
    assert remote.count() == count


def test_deploy_sets_repository(remote: Remote, make_repo: RepoFactory) -> None:
    result = make_repo().deploy(
        environment="staging",
        service="visiobook-api",
        values_path=API_STAGING,
        image_tag="1.1.0-rc1",
        image_repository="registry.internal/visiobook/api",
        metadata=meta(),
    )
    assert read_image(remote.show(API_STAGING)) == ("1.1.0-rc1", "registry.internal/visiobook/api")
    assert remote.trailers(result.revision)["Delivery-Image-Repository"] == "registry.internal/visiobook/api"
    assert remote.trailers(result.revision)["Delivery-Migration"] == "false"


def test_workdir_is_reset_to_the_remote(remote: Remote, make_repo: RepoFactory) -> None:
    repo = make_repo()
    repo.sync()
    (repo.workdir / API_PROD).write_text("garbage: [", encoding="utf-8")
    (repo.workdir / "stray.txt").write_text("x", encoding="utf-8")
    result = repo.deploy(
        environment="production",
        service="visiobook-api",
        values_path=API_PROD,
        image_tag="1.2.0",
        metadata=meta(),
    )
    assert result.changed
    assert not (repo.workdir / "stray.txt").exists()
    assert remote.show(API_PROD) == API_PROD_TEXT.replace('tag: "1.0.0"', 'tag: "1.2.0"')


def test_rejected_push_is_rebased_and_retried(remote: Remote, make_repo: RepoFactory) -> None:
    """Deterministic race: another deployer pushes between our commit and our push."""
    ours, theirs = make_repo("ours"), make_repo("theirs")
    raced = before_first_push(
        ours,
        lambda: theirs.deploy(
            environment="production",
            service="visiobook-api",
            values_path=API_PROD,
            image_tag="9.9.9",
            metadata=meta("their-run"),
        ),
    )
    result = ours.deploy(
        environment="production",
        service="visiobook-api",
        values_path=API_PROD,
        image_tag="2.0.0",
        metadata=meta("our-run"),
    )

    assert result.attempts == 2
    assert result.previous_image_tag == "9.9.9"
    assert remote.git("rev-parse", f"{result.revision}^").strip() == raced[0].revision
    assert read_image(remote.show(API_PROD))[0] == "2.0.0"


def _race(remote: Remote, make_repo: RepoFactory, jobs: list[tuple[str, str, str]]) -> list[DeployResult]:
    barrier = threading.Barrier(len(jobs))
    results: list[DeployResult | None] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int, workdir: str, path: str, tag: str) -> None:
        service = path.split("/")[1]
        repo = make_repo(workdir, max_push_attempts=30)
        try:
            barrier.wait()
            results[index] = repo.deploy(
                environment="production",
                service=service,
                values_path=path,
                image_tag=tag,
                metadata=meta(f"run-{index}"),
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return [r for r in results if r is not None]


def _check_no_update_lost(remote: Remote, results: list[DeployResult], seed_count: int) -> None:
    assert all(r.changed for r in results)
    assert remote.count() == seed_count + len(results)
    order = remote.git("rev-list", "--reverse", "refs/heads/main").split()
    assert {r.revision for r in results} <= set(order)
    for path in {r.values_path for r in results}:
        pushed = sorted((r for r in results if r.values_path == path), key=lambda r: order.index(r.revision))
        # The file holds the tag of the last successful push, and every push's
        # parent held the tag of the push before it (nothing overwritten blindly).
        assert read_image(remote.show(path))[0] == pushed[-1].image_tag
        for earlier, later in itertools.pairwise(pushed):
            assert later.previous_image_tag == earlier.image_tag
            assert read_image(remote.show(path, earlier.revision))[0] == earlier.image_tag


def test_concurrent_deployers_lose_no_update(remote: Remote, make_repo: RepoFactory) -> None:
    seed_count = remote.count()
    jobs = [
        ("w-api-1", API_PROD, "2.0.1"),
        ("w-api-2", API_PROD, "2.0.2"),
        ("w-api-3", API_PROD, "2.0.3"),
        ("w-worker-1", WORKER_PROD, "1.0.1"),
        ("w-worker-2", WORKER_PROD, "1.0.2"),
        ("w-staging", API_STAGING, "2.1.0"),
    ]
    results = _race(remote, make_repo, jobs)
    assert len(results) == len(jobs)
    assert any(r.attempts > 1 for r in results)  # the race really happened
    _check_no_update_lost(remote, results, seed_count)
    # The rest of every file survived the race.
    assert yaml.safe_load(remote.show(WORKER_PROD))["gpu"] == {"enabled": True}
    assert "# the tag is managed by the delivery pipeline" in remote.show(API_PROD)


def test_concurrent_deployers_sharing_a_workdir(remote: Remote, make_repo: RepoFactory) -> None:
    """Two tasks on one worker with the same clone serialise on the workdir lock."""
    seed_count = remote.count()
    jobs = [("shared", API_PROD, "3.0.1"), ("shared", WORKER_PROD, "3.0.2"), ("shared", API_PROD, "3.0.3")]
    results = _race(remote, make_repo, jobs)
    assert len(results) == len(jobs)
    _check_no_update_lost(remote, results, seed_count)
    assert all(r.attempts == 1 for r in results)


@pytest.mark.parametrize("tag", ["", " 1.0", "a\nb"])
def test_bad_image_tag_is_refused(make_repo: RepoFactory, tag: str) -> None:
    from delivery.gitops import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        make_repo().deploy(
            environment="production",
            service="visiobook-api",
            values_path=API_PROD,
            image_tag=tag,
            metadata=meta(),
        )
