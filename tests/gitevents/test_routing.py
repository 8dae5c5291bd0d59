"""Routing of Git events to services, with the shapes of real GitHub payloads (no I/O)."""

from __future__ import annotations

import pytest

from delivery.catalog import Service, load_catalog
from delivery.catalog.models import RepoSpec
from delivery.gitevents.routing import CONF_KEYS, GitEvent, normalize_repo_url, route, run_id_for
from delivery.web.github_events import (
    PUSH_COMMITS_LIMIT,
    changed_files_from_commits,
    pull_request_event,
    push_event,
)
from tests.web.support import ROOT, payload


@pytest.fixture(scope="module")
def services() -> list[Service]:
    catalog, issues = load_catalog(ROOT / "include" / "catalog-local")
    assert not issues
    return list(catalog.services.values())


@pytest.fixture(scope="module")
def monorepo(services: list[Service]) -> list[Service]:
    """Two services in one repository, each owning a folder."""
    base = next(s for s in services if s.name == "visiobook-demo-web")
    spec = {"url": "https://github.com/visiobook/mono.git", "full_name": "visiobook/mono"}
    return [
        base.model_copy(update={"name": "mono-web", "repo": RepoSpec(**spec, paths=["web/*", "shared/*"])}),
        base.model_copy(update={"name": "mono-api", "repo": RepoSpec(**spec, paths=["api/*", "shared/*"])}),
    ]


def test_push_to_the_release_branch_runs_the_full_pipeline(services: list[Service]) -> None:
    result = route(push_event(payload("push-main")), services)
    assert [(t.dag_id, t.pipeline) for t in result.targets] == [("deliver_visiobook_demo_web", "full")]
    conf = result.targets[0].conf
    assert set(conf) == set(CONF_KEYS)
    assert conf == {
        "ref": "refs/heads/main",
        "sha": "9f3e2d1c0b4a59687766554433221100ffeeddcc",
        "pipeline": "full",
        "repository": "visiobook/visiobook-demo-web",
        "before": "5d1c2a7e9f0b3c4d6e8f1a2b3c4d5e6f7a8b9c0d",
        "author": "alice",
        "pr_number": None,
        "compare_url": "https://github.com/visiobook/visiobook-demo-web/compare/5d1c2a7e9f0b...9f3e2d1c0b4a",
        "event": "push",
        "reason": conf["reason"],
        "trusted": True,
        "untrusted_reason": "",
    }
    assert "alice" in conf["reason"]


def test_push_to_another_matching_branch_runs_ci(services: list[Service]) -> None:
    event = push_event(payload("push-main", ref="refs/heads/feature/pagination"))
    result = route(event, services)
    assert [(t.service, t.pipeline) for t in result.targets] == [("visiobook-demo-web", "ci")]


def test_push_to_an_unwatched_branch_starts_nothing_and_says_why(services: list[Service]) -> None:
    result = route(push_event(payload("push-main", ref="refs/heads/experiment")), services)
    assert not result.targets
    assert "branch 'experiment' matches none of ['main', 'feature/*']" in result.skipped[0]


def test_release_tag_runs_full_and_other_tags_nothing(services: list[Service]) -> None:
    result = route(push_event(payload("push-tag")), services)
    assert [(t.pipeline, t.conf["event"], t.conf["ref"]) for t in result.targets] == [
        ("full", "tag", "refs/tags/v1.4.0")
    ]
    other = route(push_event(payload("push-tag", ref="refs/tags/nightly-3")), services)
    assert not other.targets and "tag 'nightly-3'" in other.skipped[0]


def test_deleted_tag_or_branch_starts_nothing(services: list[Service]) -> None:
    result = route(push_event(payload("push-tag-deleted")), services)
    assert not result.targets and result.skipped == ["tag 'v1.3.9' was deleted: nothing to build"]
    branch = payload("push-tag-deleted", ref="refs/heads/feature/old")
    assert route(push_event(branch), services).skipped == [
        "branch 'feature/old' was deleted: nothing to build"
    ]


def test_pull_request_runs_ci_on_the_pull_ref(services: list[Service]) -> None:
    result = route(pull_request_event(payload("pull-request-opened")), services)
    assert len(result.targets) == 1
    conf = result.targets[0].conf
    assert conf["pipeline"] == "ci" and conf["event"] == "pull_request"
    assert conf["ref"] == "refs/pull/7/head" and conf["pr_number"] == 7 and conf["author"] == "bob"
    assert conf["sha"] == "e1d2c3b4a5968778695a4b3c2d1e0f1a2b3c4d5e"
    assert conf["trusted"] is True and conf["untrusted_reason"] == ""  # a member's branch of the repository


def test_an_untrusted_pull_request_starts_the_same_ci_run_marked_untrusted(services: list[Service]) -> None:
    result = route(pull_request_event(payload("pull-request-first-time-contributor")), services)
    (target,) = result.targets
    conf = target.conf
    assert (target.pipeline, conf["ref"], conf["pr_number"]) == ("ci", "refs/pull/13/head", 13)
    assert conf["sha"] == "f1f2f3f4f5f6f7f8f9fafbfcfdfeff0001020304"
    assert conf["trusted"] is False
    assert conf["untrusted_reason"].startswith("pull request #13: it comes from the fork")
    assert set(conf) == set(CONF_KEYS)


def test_pushes_tags_and_polls_are_trusted(services: list[Service]) -> None:
    for event in (
        push_event(payload("push-main")),
        push_event(payload("push-tag")),
        GitEvent(kind="poll", repository="visiobook/visiobook-demo-web", ref="refs/heads/main", sha="c" * 40),
    ):
        (target,) = route(event, services).targets
        assert target.conf["trusted"] is True and target.conf["untrusted_reason"] == ""


def test_pull_request_into_an_unwatched_base_starts_nothing(services: list[Service]) -> None:
    data = payload("pull-request-opened")
    data["pull_request"]["base"]["ref"] = "legacy"
    assert not route(pull_request_event(data), services).targets


def test_unknown_repository_starts_nothing(services: list[Service]) -> None:
    data = payload("push-main")
    data["repository"] = {**data["repository"], "full_name": "someone/else", "clone_url": "https://x/y.git"}
    for key in ("ssh_url", "git_url", "html_url", "url"):
        data["repository"].pop(key)
    result = route(push_event(data), services)
    assert not result.targets and "someone/else" in result.skipped[0]


def test_repository_matches_by_url_when_full_name_is_absent(services: list[Service]) -> None:
    base = services[0]
    by_url = base.model_copy(update={"repo": RepoSpec(url="git@github.com:Visiobook/Thing.git")})
    event = GitEvent(
        kind="push",
        repository="other/name",
        repo_urls=("https://github.com/visiobook/thing.git",),
        ref="refs/heads/main",
        sha="a" * 40,
    )
    assert [t.service for t in route(event, [by_url]).targets] == [base.name]


def test_monorepo_runs_only_the_services_whose_paths_changed(monorepo: list[Service]) -> None:
    def push(files: list[str] | None) -> list[str]:
        event = GitEvent(
            kind="push",
            repository="visiobook/mono",
            ref="refs/heads/main",
            sha="b" * 40,
            changed_files=None if files is None else frozenset(files),
        )
        return [t.service for t in route(event, monorepo).targets]

    assert push(["web/app.py"]) == ["mono-web"]
    assert push(["api/Main.java"]) == ["mono-api"]
    assert push(["shared/schema.sql"]) == ["mono-api", "mono-web"]
    assert push(["docs/README.md"]) == []
    assert push(None) == ["mono-api", "mono-web"]  # unknown files: every matching service


def test_changed_files_come_from_the_commits_unless_truncated() -> None:
    data = payload("push-main")
    assert changed_files_from_commits(data) == {"app.py", "tests/test_app.py"}
    data["commits"] = data["commits"] * (PUSH_COMMITS_LIMIT // 2)
    assert changed_files_from_commits(data) is None  # maybe truncated: unknown
    assert changed_files_from_commits({"commits": []}) is None
    assert changed_files_from_commits({}) is None


def test_url_normalisation() -> None:
    same = {
        normalize_repo_url(u)
        for u in (
            "https://github.com/Visiobook/API.git",
            "git@github.com:visiobook/api.git",
            "ssh://git@github.com/visiobook/api",
            "git://github.com/visiobook/api.git/",
        )
    }
    assert same == {"github.com/visiobook/api"}


def test_run_ids_are_deterministic_and_valid() -> None:
    first = run_id_for(event="push", key="abc" + "delivery-1")
    assert first == run_id_for(event="push", key="abc" + "delivery-1")
    assert first != run_id_for(event="push", key="abc" + "delivery-2")
    assert first.startswith("git__push__") and len(first) == len("git__push__") + 16
