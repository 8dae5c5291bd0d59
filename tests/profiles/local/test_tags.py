"""Pure unit tests: tag names, retry delays, references (no engine needed)."""

from __future__ import annotations

import pytest

from delivery.image_tags import docker_tag, image_tags, semver_tags
from delivery.profiles.local.containers import container_name
from delivery.profiles.local.images import ImageRef, RetryPolicy, _registry_base

SHA = "a" * 40


@pytest.mark.parametrize(
    ("raw", "tag"),
    [
        ("main", "main"),
        ("refs/heads/feature/ABC-12_x", "feature-ABC-12_x"),
        ("feature//x", "feature-x"),
        ("feature/ x", "feature-x"),
        ("release/1.4", "release-1.4"),
        ("--weird//name..", "weird-name"),
        (".hidden", "hidden"),
        ("-.-dash", "dash"),
        ("_private", "_private"),
        ("a--b", "a--b"),
        ("héllo", "h-llo"),
        ("a" * 200, "a" * 128),
        ("a" * 127 + "/b", "a" * 127),
    ],
)
def test_docker_tag(raw: str, tag: str) -> None:
    assert docker_tag(raw) == tag
    assert len(tag) <= 128


@pytest.mark.parametrize("raw", ["///", "..", "-", "日本"])
def test_docker_tag_rejects_names_with_nothing_taggable(raw: str) -> None:
    with pytest.raises(ValueError, match="cannot make a Docker tag"):
        docker_tag(raw)


@pytest.mark.parametrize(
    ("git_tag", "tags"),
    [
        ("v1.2.3", ["1.2.3", "1.2"]),
        ("1.2.3", ["1.2.3", "1.2"]),
        ("refs/tags/v10.20.30", ["10.20.30", "10.20"]),
        ("v1.2.3-rc.1", ["1.2.3-rc.1"]),
        ("v1.2.3+build.5", ["1.2.3-build.5", "1.2"]),
        ("v1.2", None),
        ("release-2026", None),
        ("v01.2.3", None),
    ],
)
def test_semver_tags(git_tag: str, tags: list[str] | None) -> None:
    assert semver_tags(git_tag) == tags


def test_image_tags_of_a_branch_and_of_a_release_tag() -> None:
    assert image_tags(sha=SHA, branch="feature//x") == [SHA, "feature-x"]
    assert image_tags(sha=SHA, tag="v1.2.3") == [SHA, "1.2.3", "1.2"]
    assert image_tags(sha=SHA, tag="v1.2") == [SHA, "v1.2"]
    assert image_tags(sha=SHA, tag="nightly/2026-01-01") == [SHA, "nightly-2026-01-01"]
    assert image_tags(sha=SHA, branch=None, tag=None) == [SHA]
    # A branch with nothing taggable gets no branch tag; the sha still names the image.
    assert image_tags(sha=SHA, branch="日本") == [SHA]


def test_image_tags_order_and_dedup() -> None:
    assert image_tags(sha=SHA, branch="feature/x", extra=("feature-x", "v1.2.3", "v1.2.3")) == [
        SHA,
        "feature-x",
        "v1.2.3",
    ]


def test_image_tags_rejects_an_extra_tag_that_cannot_be_made_valid() -> None:
    with pytest.raises(ValueError, match="cannot make a Docker tag from '///'"):
        image_tags(sha=SHA, extra=("///",))


def test_retry_policy_is_bounded_exponential() -> None:
    assert list(RetryPolicy(attempts=5, initial_delay=1, max_delay=5, factor=2).delays()) == [1, 2, 4, 5]
    assert list(RetryPolicy(attempts=1).delays()) == []


def test_registry_base_scheme() -> None:
    assert _registry_base("127.0.0.1:5000") == ("127.0.0.1:5000", "http://127.0.0.1:5000")
    assert _registry_base("registry.example.com") == ("registry.example.com", "https://registry.example.com")
    assert _registry_base("http://reg:5000/") == ("reg:5000", "http://reg:5000")


def test_image_ref_references() -> None:
    ref = ImageRef(
        registry="127.0.0.1:5000",
        repository="visiobook/web",
        tag="abc1234",
        tags=("abc1234",),
        digest="sha256:00",
        image_id=None,
        revision="abc1234",
        built=False,
        pushed=False,
    )
    assert ref.reference == "127.0.0.1:5000/visiobook/web:abc1234"
    assert ref.pinned == "127.0.0.1:5000/visiobook/web@sha256:00"
    assert ref.reused


def test_container_name_validation() -> None:
    assert container_name("demo-web", "staging") == "visiobook-demo-web-staging"
    with pytest.raises(ValueError, match="environment"):
        container_name("demo-web", "Prod!")
