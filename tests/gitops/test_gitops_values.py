"""Unit tests of the values-file editor (no git involved)."""

from __future__ import annotations

import pytest
import yaml

from delivery.gitops import ValuesFileError, read_image, set_image
from tests.gitops._support import API_PROD_TEXT


def test_set_image_edits_only_the_tag_line() -> None:
    edited = set_image(API_PROD_TEXT, tag="1.2.3")
    before, after = API_PROD_TEXT.splitlines(), edited.splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [('  tag: "1.0.0"', '  tag: "1.2.3"')]
    assert read_image(edited) == ("1.2.3", "registry.example.com/visiobook/api")


def test_set_image_keeps_inline_comment_and_sets_repository() -> None:
    edited = set_image(API_PROD_TEXT, tag="2.0.0", repository="registry.example.com/visiobook/api-v2")
    assert '  repository: "registry.example.com/visiobook/api-v2"  # pushed by CI\n' in edited
    assert "# the tag is managed by the delivery pipeline" in edited
    assert read_image(edited) == ("2.0.0", "registry.example.com/visiobook/api-v2")


def test_set_image_is_a_no_op_when_already_set() -> None:
    assert set_image(API_PROD_TEXT, tag="1.0.0") is API_PROD_TEXT
    assert (
        set_image(API_PROD_TEXT, tag="1.0.0", repository="registry.example.com/visiobook/api")
        is API_PROD_TEXT
    )


def test_numeric_looking_tags_stay_strings() -> None:
    text = "image:\n  tag: 1.10\n"
    edited = set_image(text, tag="1.10")
    assert edited == 'image:\n  tag: "1.10"\n'
    assert yaml.safe_load(edited)["image"]["tag"] == "1.10"


def test_missing_tag_key_is_inserted_in_the_image_block() -> None:
    text = "image:\n    repository: r\nother: 1\n"
    edited = set_image(text, tag="v1")
    assert yaml.safe_load(edited) == {"image": {"repository": "r", "tag": "v1"}, "other": 1}
    assert edited.startswith('image:\n    tag: "v1"\n    repository: r\n')


def test_missing_image_block_is_appended() -> None:
    text = "# comment\nreplicaCount: 2"
    edited = set_image(text, tag="v1")
    assert edited.startswith("# comment\nreplicaCount: 2\n")
    assert yaml.safe_load(edited) == {"replicaCount": 2, "image": {"tag": "v1"}}


def test_flow_style_image_falls_back_to_re_emitting() -> None:
    text = "a: 1\nimage: {repository: r, tag: old}\nz: 2\n"
    edited = set_image(text, tag="new")
    assert yaml.safe_load(edited) == {"a": 1, "image": {"repository": "r", "tag": "new"}, "z": 2}
    assert list(yaml.safe_load(edited)) == ["a", "image", "z"]


def test_nested_tag_keys_elsewhere_are_not_touched() -> None:
    text = "sidecar:\n  image:\n    tag: keep\nimage:\n  tag: old\n"
    edited = set_image(text, tag="new")
    assert yaml.safe_load(edited) == {"sidecar": {"image": {"tag": "keep"}}, "image": {"tag": "new"}}


@pytest.mark.parametrize("text", ["image: repo:tag\n", "- a\n- b\n", "image: [\n"])
def test_unusable_documents_raise(text: str) -> None:
    with pytest.raises(ValuesFileError, match=r"values\.yaml"):
        set_image(text, tag="v1", where="values.yaml")
