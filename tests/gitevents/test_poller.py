"""The polling fallback against real local git repositories (no Airflow): detect, persist, restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from delivery.catalog import Catalog, load_catalog
from delivery.gitevents.poller import (
    FileStateStore,
    detect,
    ls_remote_heads,
    poll_run_id,
    watched_repos,
)
from tests.web.support import commit, git, make_catalog, make_repo


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Catalog, Path]:
    bare, work = make_repo(tmp_path, "visiobook-demo-web")
    inference, _ = make_repo(tmp_path, "visiobook-inference")
    root = make_catalog(tmp_path, repos={"visiobook-demo-web": bare, "visiobook-inference": inference})
    catalog, issues = load_catalog(root)
    assert not issues
    return catalog, work


def poll_once(catalog: Catalog, store: FileStateStore, name: str) -> list[dict[str, object]]:
    """What one run of the poller DAG does: watch, (trigger), record."""
    repo = next(r for r in watched_repos(catalog) if name in r.services)
    services = [catalog.services[n] for n in repo.services]
    found = detect(
        repo=repo, services=services, heads=ls_remote_heads(repo.url), known=store.load().get(repo.key)
    )
    if found.changed:
        store.save(repo_key=repo.key, heads=found.heads)
    return found.runs


def test_one_run_per_new_head_and_nothing_after_a_restart(
    setup: tuple[Catalog, Path], tmp_path: Path
) -> None:
    catalog, work = setup
    store = FileStateStore(path=tmp_path / "state.json")
    assert poll_once(catalog, store, "visiobook-demo-web") == []  # baseline
    assert poll_once(catalog, store, "visiobook-demo-web") == []  # nothing new
    before = git("rev-parse", "HEAD", cwd=work)
    sha = commit(work)
    runs = poll_once(catalog, store, "visiobook-demo-web")
    assert len(runs) == 1
    (run,) = runs
    assert run["trigger_dag_id"] == "deliver_visiobook_demo_web"
    assert run["conf"]["sha"] == sha and run["conf"]["before"] == before  # type: ignore[index]
    assert run["conf"]["event"] == "poll" and run["conf"]["pipeline"] == "full"  # type: ignore[index]
    assert run["conf"]["repository"] == "visiobook/visiobook-demo-web"  # type: ignore[index]
    # A restart: a new store instance reading the persisted state.
    assert poll_once(catalog, FileStateStore(path=tmp_path / "state.json"), "visiobook-demo-web") == []


def test_watched_branches_only_and_ci_off_the_release_branch(
    setup: tuple[Catalog, Path], tmp_path: Path
) -> None:
    catalog, work = setup
    store = FileStateStore(path=tmp_path / "state.json")
    poll_once(catalog, store, "visiobook-demo-web")
    commit(work, branch="experiment")  # not watched by the demo web service
    assert poll_once(catalog, store, "visiobook-demo-web") == []
    sha = commit(work, branch="feature/poll")
    (run,) = poll_once(catalog, store, "visiobook-demo-web")
    assert run["conf"]["pipeline"] == "ci" and run["conf"]["ref"] == "refs/heads/feature/poll"  # type: ignore[index]
    assert run["trigger_run_id"] == poll_run_id(
        repo_key=next(r.key for r in watched_repos(catalog) if r.dag_id == "git_poll_visiobook_demo_web"),
        branch="feature/poll",
        sha=sha,
    )


def test_one_dag_per_repository(setup: tuple[Catalog, Path]) -> None:
    catalog, _ = setup
    assert [r.dag_id for r in watched_repos(catalog)] == [
        "git_poll_visiobook_demo_web",
        "git_poll_visiobook_inference",
    ]
