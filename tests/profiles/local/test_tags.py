"""Pure unit tests: tag names, retry delays, references (no engine needed)."""

from __future__ import annotations

import pytest

from delivery.profiles.local.containers import container_name
from delivery.profiles.local.images import ImageRef, RetryPolicy, _registry_base, image_tags, sanitize_tag


@pytest.mark.parametrize(
    ("raw", "tag"),
    [
        ("main", "main"),
        ("refs/heads/feature/ABC-12_x", "feature-ABC-12_x"),
        ("release/1.4", "release-1.4"),
        ("--weird//name..", "weird-name"),
        ("a" * 200, "a" * 128),
    ],
)
def test_sanitize_tag(raw: str, tag: str) -> None:
    assert sanitize_tag(raw) == tag


def test_sanitize_tag_rejects_empty() -> None:
    with pytest.raises(ValueError, match="Docker tag"):
        sanitize_tag("///")


def test_image_tags_order_and_dedup() -> None:
    sha = "a" * 40
    assert image_tags(source_sha=sha, branch="feature/x", tags_extra=("v1.2.3", "v1.2.3")) == (
        sha,
        "feature-x",
        "v1.2.3",
    )
    assert image_tags(source_sha=sha, branch=None) == (sha,)


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
