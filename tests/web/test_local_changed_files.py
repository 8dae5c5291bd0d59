"""The webhook's changed-files lookup in a local repository, through the git runner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from delivery.web.github import local_changed_files
from tests.web.support import commit, git, make_repo

if TYPE_CHECKING:
    from pathlib import Path


def test_changed_files_between_two_pushes(tmp_path: Path) -> None:
    bare, work = make_repo(tmp_path, "monorepo")
    before = git("rev-parse", "HEAD", cwd=work)
    commit(work, path="services/api/app.py")
    after = commit(work, path="docs/README.md")
    files = local_changed_files(url=str(bare), before=before, after=after)
    assert files == frozenset({"services/api/app.py", "docs/README.md"})


def test_payload_values_are_never_read_as_git_options(tmp_path: Path) -> None:
    bare, work = make_repo(tmp_path, "monorepo")
    before = git("rev-parse", "HEAD", cwd=work)
    written = tmp_path / "written-by-git"
    assert local_changed_files(url=str(bare), before=before, after=f"--output={written}") is None
    assert not written.exists()


def test_unknown_commits_and_remote_urls_give_no_answer(tmp_path: Path) -> None:
    bare, work = make_repo(tmp_path, "monorepo")
    before = git("rev-parse", "HEAD", cwd=work)
    assert local_changed_files(url=str(bare), before=before, after="f" * 40) is None
    assert local_changed_files(url="https://github.com/visiobook/x.git", before=before, after=before) is None
