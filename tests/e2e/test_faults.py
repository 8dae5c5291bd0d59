"""Fault injection on the real local stack: fast humans, concurrent runs, a slow release, annotated tags.

Real Airflow (api-server, scheduler, dag-processor, triggerer on PostgreSQL), Docker engine,
registry and git. Each test asserts what a user would see: run states, what production serves,
the GitOps history, the notifications received. Crashes (the stack, a task) are in
``test_crashes.py``, on a stack of their own.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import requests

from tests.e2e.conftest import APPROVAL, LocalStack
from tests.helpers import git

pytestmark = [pytest.mark.e2e, pytest.mark.duration(460)]

PROD_COMMIT = "deploy_production.gitops_commit"


@pytest.fixture(scope="module")
def faults(shared_stacks: dict[str, LocalStack]) -> LocalStack:
    return shared_stacks["faults"]


def _answer_as_soon_as_asked(stack: LocalStack, run_id: str, *, user: str, option: str) -> float:
    """Answer the instant the approval's record exists (an API client, a chat button); seconds waited."""
    path = f"/dags/{stack.dag_id}/dagRuns/{run_id}/taskInstances/{APPROVAL}/-1/hitlDetails"
    headers = {"Authorization": f"Bearer {stack.airflow.token(user)}"}
    url = f"{stack.airflow.base_url}/api/v2{path}"
    # The approval comes after staging's health check and tests: ask 50 times a second only from
    # then on, not through the whole build (thousands of requests to a shared api-server).
    stack.airflow.wait_task(
        stack.dag_id, run_id, "deploy_staging.health_check", states=("running", "success"), timeout=600
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            asked_yet = requests.get(url, headers=headers, timeout=30).status_code == 200
        except requests.Timeout:  # a busy api-server: ask again
            continue
        if asked_yet:
            asked = time.monotonic()
            resp = requests.patch(
                url, headers=headers, json={"chosen_options": [option], "params_input": {}}, timeout=60
            )
            assert resp.status_code == 200, resp.text
            return time.monotonic() - asked
        time.sleep(0.02)
    raise AssertionError(
        f"the approval of {run_id} never appeared: {stack.airflow.task_states(stack.dag_id, run_id)}"
    )


def test_an_answer_given_the_instant_the_approval_appears_is_honoured(faults: LocalStack) -> None:
    sha = faults.commit("release 4.0.0", {"VERSION": "4.0.0\n"})
    before = faults.gitops_log("production")
    # The race hit 8 of 10 such answers before the fix: try it twice, a rejection then an approval.
    for option, deploys in (("Reject", 0), ("Approve", 1)):
        run_id = faults.airflow.trigger(faults.dag_id, conf={"ref": "main", "sha": sha})
        _answer_as_soon_as_asked(faults, run_id, user="alice", option=option)
        state = faults.airflow.wait_run(faults.dag_id, run_id, timeout=500)
        states = faults.airflow.task_states(faults.dag_id, run_id)
        if deploys:
            assert state == "success", states
        else:
            assert states["deploy_production.gitops_commit"] == "skipped", states
        detail = faults.airflow.hitl(faults.dag_id, run_id, APPROVAL)
        assert detail["responded_by_user"]["id"] == "alice" and detail["chosen_options"] == [option], detail
        assert len(faults.gitops_log("production")) - len(before) == deploys, option
    assert faults.serving("production")["commit"] == sha
    faults.good_sha = sha  # type: ignore[attr-defined]


def test_two_runs_of_one_service_never_move_production_backwards(faults: LocalStack) -> None:
    older = faults.commit("release 4.1.0", {"VERSION": "4.1.0\n"})
    newer = faults.commit("release 4.2.0", {"VERSION": "4.2.0\n"})
    run_old = faults.airflow.trigger(faults.dag_id, conf={"ref": "main", "sha": older})
    run_new = faults.airflow.trigger(faults.dag_id, conf={"ref": "main", "sha": newer})
    faults.airflow.wait_task(faults.dag_id, run_new, APPROVAL, states=("awaiting_input",), timeout=900)
    time.sleep(3)
    faults.airflow.respond(faults.dag_id, run_new, APPROVAL, option="Approve", user="bob")
    assert faults.airflow.wait_run(faults.dag_id, run_new, timeout=500) == "success"
    # The older commit's run: if it got as far as its approval, approve it late.
    with contextlib.suppress(Exception):
        faults.airflow.wait_task(faults.dag_id, run_old, APPROVAL, states=("awaiting_input",), timeout=300)
        time.sleep(3)
        faults.airflow.respond(faults.dag_id, run_old, APPROVAL, option="Approve", user="bob")
    assert faults.airflow.wait_run(faults.dag_id, run_old, timeout=500) == "failed"
    assert faults.serving("production")["commit"] == newer
    sources = [faults.gitops_trailers(rev) for rev in faults.gitops_log("production")]
    assert f"Delivery-Source-Sha: {newer}" in sources[0]
    assert not any(f"Delivery-Source-Sha: {older}" in t for t in sources), (
        "the older commit never reached production"
    )
    states = faults.airflow.task_states(faults.dag_id, run_old)
    failed = [t for t, s in states.items() if s == "failed" and t != "notify.outcome"]
    # Refused where it would have gone backwards: its commit (not a descendant of what runs) or its
    # sync (another run's release is current); which one depends on how the two runs interleaved.
    assert any(t.endswith((".gitops_commit", ".sync")) for t in failed), states
    faults.good_sha = newer  # type: ignore[attr-defined]


def test_a_slow_release_fails_its_verification_and_is_rolled_back(faults: LocalStack) -> None:
    good = faults.good_sha  # type: ignore[attr-defined]
    sha = faults.commit(
        "release 4.4.0 (slow in production)", {"VERSION": "4.4.0\n", "SLOW_IN": "production\n"}
    )
    run_id = faults.to_approval(sha)
    faults.airflow.respond(faults.dag_id, run_id, APPROVAL, option="Approve", user="alice")
    assert faults.airflow.wait_run(faults.dag_id, run_id, timeout=600) == "failed"
    states = faults.airflow.task_states(faults.dag_id, run_id)
    assert states["deploy_production.health_check"] == "success", states  # up, answering /health
    assert states["verify_production.verify"] == "failed", states  # but too slow for its users
    assert states["rollback.health_check"] == "success", states
    assert faults.serving("production")["commit"] == good
    verdict = faults.airflow.api(
        "GET", f"/dags/{faults.dag_id}/dagRuns/{run_id}/taskInstances/verify_production.verify/logs/1"
    )
    assert "latency_p95" in str(verdict)
    faults.commit("fast again", {"SLOW_IN": None})


def test_an_annotated_tag_deploys_the_tagged_commit(faults: LocalStack) -> None:
    sha = faults.commit("release 5.0.0", {"VERSION": "5.0.0\n"})
    git("tag", "-a", "v5.0.0", "-m", "release 5.0.0", cwd=faults.work)
    git("push", "-q", "origin", "v5.0.0", cwd=faults.work)
    tag_object = git("rev-parse", "v5.0.0", cwd=faults.work)
    assert tag_object != sha  # a push of an annotated tag carries this sha in `after`
    conf = {"ref": "refs/tags/v5.0.0", "sha": tag_object, "event": "tag"}
    run_id = faults.to_approval(tag_object, conf=conf)
    faults.airflow.respond(faults.dag_id, run_id, APPROVAL, option="Approve", user="alice")
    assert faults.airflow.wait_run(faults.dag_id, run_id, timeout=500) == "success"
    assert faults.serving("production")["commit"] == sha
    tags = requests.get(f"http://{faults.registry}/v2/e2e/{faults.service}/tags/list", timeout=5).json()[
        "tags"
    ]
    assert {sha, "5.0.0", "5.0"} <= set(tags)
