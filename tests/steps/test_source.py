"""The checkout step resolves refs and event shas to the commit to build, on real repositories."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from delivery.runtime import PipelineError
from delivery.steps.source import resolve_source
from tests import helpers
from tests.web.support import commit, git, make_catalog, make_repo

if TYPE_CHECKING:
    from pathlib import Path

SERVICE = "visiobook-demo-web"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A catalog whose demo web service builds from a bare repo in ``tmp_path``; its working clone."""
    bare, work = make_repo(tmp_path, SERVICE)
    monkeypatch.setenv("DELIVERY_CATALOG_DIR", str(make_catalog(tmp_path, repos={SERVICE: bare})))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the source mirrors go under tmp_path
    return work


def _annotated_tag(work: Path, name: str) -> str:
    git("tag", "-a", "-m", f"release {name}", name, cwd=work)
    git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=work)
    return git("rev-parse", f"refs/tags/{name}", cwd=work)


def test_push_of_an_annotated_tag_builds_the_tagged_commit(work: Path) -> None:
    tagged = commit(work)
    tag_object = _annotated_tag(work, "v1.2.3")
    assert tag_object != tagged  # what GitHub sends in "after" for this push

    src = resolve_source(
        service_name=SERVICE, params={"ref": "refs/tags/v1.2.3", "sha": tag_object, "event": "push"}
    )

    assert src["sha"] == tagged
    assert (src["tag"], src["branch"], src["ref"]) == ("v1.2.3", "", "refs/tags/v1.2.3")
    assert src["image_tags"] == [tagged, "1.2.3", "1.2"]


def test_a_tag_moved_since_the_event_still_builds_the_event_commit(work: Path) -> None:
    first = commit(work)
    old_object = _annotated_tag(work, "v2.0.0")
    commit(work)
    git("tag", "-a", "-f", "-m", "moved", "v2.0.0", cwd=work)
    git("push", "--quiet", "--force", "origin", "refs/tags/v2.0.0", cwd=work)
    git("tag", "-a", "-m", "keeps the old object reachable", "v2.0.0-old", old_object, cwd=work)
    git("push", "--quiet", "origin", "refs/tags/v2.0.0-old", cwd=work)

    src = resolve_source(service_name=SERVICE, params={"ref": "refs/tags/v2.0.0", "sha": old_object})

    assert src["sha"] == first


def test_an_event_sha_the_repository_does_not_have_is_refused(work: Path) -> None:
    commit(work)
    _annotated_tag(work, "v3.0.0")
    with pytest.raises(PipelineError, match=f"sha {'b' * 40} of refs/tags/v3.0.0 is not a commit"):
        resolve_source(service_name=SERVICE, params={"ref": "refs/tags/v3.0.0", "sha": "b" * 40})


def test_a_tag_name_resolves_to_its_commit(work: Path) -> None:
    tagged = commit(work)
    _annotated_tag(work, "v1.4.0")
    commit(work)  # main moves on

    src = resolve_source(service_name=SERVICE, params={"ref": "v1.4.0"})

    assert (src["sha"], src["tag"], src["branch"]) == (tagged, "v1.4.0", "")


def test_a_branch_resolves_to_its_head_and_tags_the_image_with_it(work: Path) -> None:
    head = commit(work, branch="feature/ABC-12_x")

    src = resolve_source(service_name=SERVICE, params={"ref": "feature/ABC-12_x"})

    assert (src["sha"], src["branch"]) == (head, "feature/ABC-12_x")
    assert src["image_tags"] == [head, "feature-ABC-12_x"]


def test_an_unknown_ref_names_the_ref_and_the_repository(work: Path) -> None:
    with pytest.raises(PipelineError, match=r"ref 'nope' was not found in .*visiobook-demo-web\.git"):
        resolve_source(service_name=SERVICE, params={"ref": "nope"})


def test_a_nightly_run_builds_the_branch_head_at_the_end_of_its_interval(work: Path) -> None:
    before = commit(work)
    interval_end = datetime.now(UTC) + timedelta(seconds=1)
    later_date = (interval_end + timedelta(hours=1)).isoformat()
    dated = {"GIT_COMMITTER_DATE": later_date, "GIT_AUTHOR_DATE": later_date}
    helpers.git("commit", "--quiet", "--allow-empty", "-m", "after the interval", cwd=work, env=dated)
    later = git("rev-parse", "HEAD", cwd=work)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=work)

    src = resolve_source(
        service_name=SERVICE,
        params={"ref": "main"},
        dag_run=SimpleNamespace(run_type="scheduled"),
        data_interval_end=interval_end,
    )

    assert src["sha"] == before != later
    assert src["branch"] == "main"
