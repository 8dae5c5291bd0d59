"""Which pull requests are untrusted, on payloads in the shapes GitHub sends (no I/O)."""

from __future__ import annotations

import pytest

from delivery.web.github_events import pull_request_event, untrusted_reason
from tests.web.support import payload


def test_a_members_branch_of_the_repository_is_trusted() -> None:
    data = payload("pull-request-opened")  # bob, MEMBER, head and base: visiobook/visiobook-demo-web
    assert untrusted_reason(data) is None
    assert pull_request_event(data).trusted


@pytest.mark.parametrize("association", ["OWNER", "MEMBER", "COLLABORATOR"])
def test_owners_members_and_collaborators_are_trusted(association: str) -> None:
    data = payload("pull-request-opened")
    data["pull_request"]["author_association"] = association
    assert untrusted_reason(data) is None


def test_a_fork_is_untrusted_even_when_its_author_is_a_member() -> None:
    data = payload("pull-request-fork")  # carol, MEMBER, from carol/visiobook-demo-web
    assert untrusted_reason(data) == (
        "pull request #12: it comes from the fork 'carol/visiobook-demo-web', not 'visiobook/visiobook-demo-web'"
    )
    event = pull_request_event(data)
    assert not event.trusted and event.untrusted_reason == untrusted_reason(data)


def test_a_first_time_contributor_from_a_fork_gives_both_reasons() -> None:
    reason = untrusted_reason(payload("pull-request-first-time-contributor"))
    assert reason == (
        "pull request #13: it comes from the fork 'newcomer42/visiobook-demo-web', not "
        "'visiobook/visiobook-demo-web'; its author 'newcomer42' is FIRST_TIME_CONTRIBUTOR to "
        "'visiobook/visiobook-demo-web', not OWNER, MEMBER or COLLABORATOR"
    )


@pytest.mark.parametrize(
    "association", ["NONE", "FIRST_TIME_CONTRIBUTOR", "FIRST_TIMER", "CONTRIBUTOR", "MANNEQUIN"]
)
def test_an_outside_author_is_untrusted_on_a_branch_of_the_repository(association: str) -> None:
    data = payload("pull-request-opened")
    data["pull_request"]["author_association"] = association
    assert untrusted_reason(data) == (
        f"pull request #7: its author 'bob' is {association} to 'visiobook/visiobook-demo-web', "
        "not OWNER, MEMBER or COLLABORATOR"
    )


def test_missing_or_odd_fields_count_against_the_pull_request() -> None:
    no_association = payload("pull-request-opened")
    del no_association["pull_request"]["author_association"]
    assert "of unknown association" in str(untrusted_reason(no_association))

    deleted_fork = payload("pull-request-fork")
    deleted_fork["pull_request"]["head"]["repo"] = None  # GitHub sends null once the fork is deleted
    assert "no longer exists (a deleted fork)" in str(untrusted_reason(deleted_fork))

    lower_case = payload("pull-request-opened")
    lower_case["pull_request"]["author_association"] = "member"
    assert untrusted_reason(lower_case) is not None

    assert (
        untrusted_reason({"action": "opened", "pull_request": "x"})
        == "the pull_request payload is not an object"
    )


def test_the_repository_is_compared_by_id_then_by_name() -> None:
    renamed = payload("pull-request-opened")  # same repository id: renamed while the PR was open
    renamed["pull_request"]["head"]["repo"]["full_name"] = "visiobook/old-name"
    assert untrusted_reason(renamed) is None

    same_name_other_id = payload("pull-request-opened")
    same_name_other_id["pull_request"]["head"]["repo"]["id"] = 1
    assert "fork" in str(untrusted_reason(same_name_other_id))

    without_ids = payload("pull-request-opened")
    for side in ("head", "base"):
        del without_ids["pull_request"][side]["repo"]["id"]
    assert untrusted_reason(without_ids) is None


def test_pushes_are_trusted_and_reasons_are_bounded() -> None:
    assert untrusted_reason(payload("push-main")) is None
    long_login = payload("pull-request-first-time-contributor")
    long_login["pull_request"]["user"]["login"] = "x" * 1000
    assert len(str(untrusted_reason(long_login))) == 300
