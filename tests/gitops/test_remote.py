"""ls-remote, ancestry and authors against real repositories (bare remotes made in a temp dir)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from delivery.gitops import (
    GitOpsRemoteError,
    InvalidRequestError,
    UnknownCommitError,
    commit_authors,
    is_ancestor,
    ls_remote,
)
from delivery.gitops.remote import resolve_commit
from tests.gitops._support import git

if TYPE_CHECKING:
    from pathlib import Path

ALICE = ("Alice", "alice@visiobook.invalid")
BOB = ("Bob", "bob@visiobook.invalid")
CAROL = ("Carol", "carol@visiobook.invalid")


@dataclass
class Source:
    """A bare remote and a working clone, with the shas of its commits by name."""

    bare: Path
    work: Path
    shas: dict[str, str]

    @property
    def url(self) -> str:
        return str(self.bare)

    def commit(self, name: str, author: tuple[str, str], *, branch: str = "main") -> str:
        (self.work / f"{name}.txt").write_text(f"{name}\n")
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", name, f"--author={author[0]} <{author[1]}>", cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        self.shas[name] = git("rev-parse", "HEAD", cwd=self.work).strip()
        return self.shas[name]

    def annotated_tag(self, name: str, target: str) -> str:
        git("tag", "-a", "-m", f"release {name}", name, target, cwd=self.work)
        git("push", "-q", "origin", f"refs/tags/{name}", cwd=self.work)
        return git("rev-parse", f"refs/tags/{name}", cwd=self.work).strip()


@pytest.fixture
def source(tmp_path: Path) -> Source:
    """main: c1 (Alice) - c2 (Bob) - c3 (Alice) - c4 (Carol); feature: c1 - f1 (Bob)."""
    bare, work = tmp_path / "app.git", tmp_path / "work"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("init", "-q", "-b", "main", str(work))
    git("remote", "add", "origin", str(bare), cwd=work)
    repo = Source(bare=bare, work=work, shas={})
    repo.commit("c1", ALICE)
    git("checkout", "-q", "-b", "feature", cwd=work)
    repo.commit("f1", BOB, branch="feature")
    git("checkout", "-q", "main", cwd=work)
    for name, author in (("c2", BOB), ("c3", ALICE), ("c4", CAROL)):
        repo.commit(name, author)
    return repo


@pytest.fixture
def mirrors(tmp_path: Path) -> Path:
    return tmp_path / "mirrors"


def test_ls_remote_peels_annotated_tags_to_their_commit(source: Source) -> None:
    tag_object = source.annotated_tag("v1.2.3", source.shas["c2"])
    git("tag", "light", source.shas["c1"], cwd=source.work)
    git("push", "-q", "origin", "refs/tags/light", cwd=source.work)

    refs = ls_remote(source.url, ["refs/tags/v1.2.3", "light", "refs/heads/main"])

    assert tag_object != source.shas["c2"]
    annotated = refs["refs/tags/v1.2.3"]
    assert (annotated.object, annotated.commit, annotated.annotated) == (tag_object, source.shas["c2"], True)
    assert refs["refs/tags/light"].commit == refs["refs/tags/light"].object == source.shas["c1"]
    assert refs["refs/heads/main"].commit == source.shas["c4"]
    assert set(refs) == {"refs/tags/v1.2.3", "refs/tags/light", "refs/heads/main"}
    # Listing every tag peels too.
    assert ls_remote(source.url, tags=True)["refs/tags/v1.2.3"].commit == source.shas["c2"]


def test_ls_remote_heads_lists_branches_only(source: Source) -> None:
    source.annotated_tag("v1.0.0", source.shas["c1"])
    refs = ls_remote(source.url, heads=True)
    assert {name: ref.commit for name, ref in refs.items()} == {
        "refs/heads/main": source.shas["c4"],
        "refs/heads/feature": source.shas["f1"],
    }


def test_ls_remote_of_a_missing_repository_names_it(tmp_path: Path) -> None:
    with pytest.raises(GitOpsRemoteError, match=r"git ls-remote failed in repository .*missing\.git"):
        ls_remote(str(tmp_path / "missing.git"))


def test_is_ancestor(source: Source, mirrors: Path) -> None:
    shas = source.shas
    assert is_ancestor(source.url, shas["c1"], shas["c4"], root=mirrors)
    assert is_ancestor(source.url, shas["c4"], shas["c4"], root=mirrors)
    assert not is_ancestor(source.url, shas["c4"], shas["c1"], root=mirrors)
    assert not is_ancestor(source.url, shas["f1"], shas["c4"], root=mirrors)
    # A tag object stands for its commit.
    tag_object = source.annotated_tag("v2.0.0", shas["c3"])
    assert is_ancestor(source.url, shas["c2"], tag_object, root=mirrors)
    assert not is_ancestor(source.url, tag_object, shas["c2"], root=mirrors)


def test_is_ancestor_sees_commits_pushed_after_the_mirror_was_made(source: Source, mirrors: Path) -> None:
    assert is_ancestor(source.url, source.shas["c1"], source.shas["c4"], root=mirrors)
    newer = source.commit("c5", BOB)
    assert is_ancestor(source.url, source.shas["c4"], newer, root=mirrors)


def test_is_ancestor_refuses_unknown_and_malformed_shas(source: Source, mirrors: Path) -> None:
    with pytest.raises(UnknownCommitError, match=f"newer sha {'e' * 40} is not a commit of {source.url}"):
        is_ancestor(source.url, source.shas["c1"], "e" * 40, root=mirrors)
    with pytest.raises(InvalidRequestError, match="older sha '--all'"):
        is_ancestor(source.url, "--all", source.shas["c1"], root=mirrors)


def test_commit_authors_of_a_range_newest_first_without_repeats(source: Source, mirrors: Path) -> None:
    shas = source.shas
    assert commit_authors(source.url, shas["c1"], shas["c4"], root=mirrors) == [CAROL, ALICE, BOB]
    assert commit_authors(source.url, shas["c2"], shas["c3"], root=mirrors) == [ALICE]
    assert commit_authors(source.url, shas["c4"], shas["c4"], root=mirrors) == []


def test_commit_authors_without_a_usable_base_is_the_head_commit_author(
    source: Source, mirrors: Path
) -> None:
    shas = source.shas
    assert commit_authors(source.url, None, shas["c4"], root=mirrors) == [CAROL]
    # Not an ancestor (another branch, or history rewritten): only the head's own commit.
    assert commit_authors(source.url, shas["f1"], shas["c4"], root=mirrors) == [CAROL]
    assert commit_authors(source.url, "d" * 40, shas["c3"], root=mirrors) == [ALICE]


def test_resolve_commit_peels_a_tag_object(source: Source, mirrors: Path) -> None:
    tag_object = source.annotated_tag("v3.0.0", source.shas["c4"])
    assert resolve_commit(source.url, tag_object, root=mirrors) == source.shas["c4"]
    assert resolve_commit(source.url, "v3.0.0", root=mirrors) == source.shas["c4"]
    with pytest.raises(UnknownCommitError, match="'nope' is not a commit"):
        resolve_commit(source.url, "nope", root=mirrors)
