"""The production gate, tried the way users could walk around it, on the real local stack.

Real Airflow (api-server, scheduler, dag-processor, triggerer), Docker engine, registry and git.
The service carries DB migrations (a rollback needs a human's Continue) and has a break-glass
approver (``oncall``). The tests run in order: each release builds on the previous one.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import APPROVAL, LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.duration(530)]

COMMIT = "deploy_production.gitops_commit"
GATE = "rollback.migration_gate"


@pytest.fixture(scope="module")
def gate(shared_stacks: dict[str, LocalStack]) -> LocalStack:
    """Its service carries DB migrations and a break-glass approver (tests/e2e/conftest.py)."""
    return shared_stacks["gate"]


def _trailers(stack: LocalStack) -> str:
    return stack.gitops_trailers(stack.gitops_log("production")[0])


def _state(stack: LocalStack, run_id: str) -> dict[str, Any]:
    return stack.airflow.task_states(stack.dag_id, run_id)


def test_an_approved_release_reaches_production(gate: LocalStack) -> None:
    sha = gate.commit("release 3.0.0", {"VERSION": "3.0.0\n"})
    run_id = gate.to_approval(sha)
    gate.airflow.respond(gate.dag_id, run_id, APPROVAL, option="Approve", user="alice")
    assert gate.airflow.wait_run(gate.dag_id, run_id, timeout=400) == "success", _state(gate, run_id)
    assert gate.serving("production")["commit"] == sha
    assert "Delivery-Approver: alice" in _trailers(gate)
    gate.good_sha = sha  # type: ignore[attr-defined]


def test_marking_the_approval_success_by_hand_does_not_deploy(gate: LocalStack) -> None:
    before = gate.gitops_log("production")
    sha = gate.commit("release 3.1.0", {"VERSION": "3.1.0\n"})
    run_id = gate.to_approval(sha)
    # mallory (role user, not an approver) cannot answer, but may set task states.
    gate.airflow.respond(gate.dag_id, run_id, APPROVAL, option="Approve", user="mallory", expect=(403,))
    gate.airflow.api(
        "PATCH",
        f"/dags/{gate.dag_id}/dagRuns/{run_id}/taskInstances/{APPROVAL}",
        json={"new_state": "success"},
        user="mallory",
    )
    assert gate.airflow.wait_run(gate.dag_id, run_id, timeout=300) == "failed"
    states = _state(gate, run_id)
    assert states[APPROVAL] == "success" and states[COMMIT] == "failed", states
    assert gate.gitops_log("production") == before, "nothing may be committed for production"
    assert gate.serving("production")["commit"] == gate.good_sha  # type: ignore[attr-defined]
    refused = [t for t in gate.slack_texts() if "production deploy refused" in t]
    assert refused and "mallory" in refused[-1] and "P2" in refused[-1], gate.slack_texts()


def test_an_approver_cannot_approve_their_own_commit(gate: LocalStack) -> None:
    before = gate.gitops_log("production")
    sha = gate.commit("release 3.2.0 by alice", {"VERSION": "3.2.0\n"}, author="alice <alice@visiobook.io>")
    run_id = gate.to_approval(sha)
    gate.airflow.respond(gate.dag_id, run_id, APPROVAL, option="Approve", user="alice")
    assert gate.airflow.wait_run(gate.dag_id, run_id, timeout=300) == "failed"
    assert _state(gate, run_id)[COMMIT] == "failed"
    assert gate.gitops_log("production") == before
    refused = [t for t in gate.slack_texts() if "production deploy refused" in t]
    assert "four eyes" in refused[-1] and "alice authored" in refused[-1], refused[-1]


def test_break_glass_deploys_pages_and_is_recorded(gate: LocalStack) -> None:
    sha = gate.commit("hotfix 3.2.1 by alice", {"VERSION": "3.2.1\n"}, author="alice <alice@visiobook.io>")
    run_id = gate.to_approval(sha)
    detail = gate.airflow.hitl(gate.dag_id, run_id, APPROVAL)
    assert detail["options"] == ["Approve", "Reject", "Break glass"]
    reason = "checkout outage: {{ 7 * 7 }} hotfix"  # foreign text stays data
    gate.airflow.respond(
        gate.dag_id, run_id, APPROVAL, option="Break glass", user="oncall", params_input={"reason": reason}
    )
    assert gate.airflow.wait_run(gate.dag_id, run_id, timeout=400) == "success", _state(gate, run_id)
    assert gate.serving("production")["commit"] == sha
    trailers = _trailers(gate)
    assert "Delivery-Break-Glass: true" in trailers
    assert "Delivery-Approver: oncall" in trailers
    assert f"Delivery-Reason: {reason}" in trailers
    paged = [t for t in gate.slack_texts() if "BREAK GLASS" in t]
    assert paged and "P1" in paged[-1] and "oncall" in paged[-1] and reason in paged[-1], gate.slack_texts()
    gate.good_sha = sha  # type: ignore[attr-defined]


def _broken_release_waiting_at_the_gate(gate: LocalStack, version: str) -> str:
    sha = gate.commit(
        f"release {version} (breaks in production)", {"VERSION": f"{version}\n", "BROKEN_IN": "production\n"}
    )
    run_id = gate.to_approval(sha)
    gate.airflow.respond(gate.dag_id, run_id, APPROVAL, option="Approve", user="bob")
    gate.airflow.wait_task(gate.dag_id, run_id, GATE, states=("awaiting_input",), timeout=400)
    return run_id


def test_abort_at_the_migration_gate_reverts_nothing_and_escalates(gate: LocalStack) -> None:
    run_id = _broken_release_waiting_at_the_gate(gate, "3.3.0")
    failed_release = gate.gitops_log("production")[0]
    detail = gate.airflow.hitl(gate.dag_id, run_id, GATE)
    assert detail["options"] == ["Continue", "Abort"] and "database migration" in detail["body"]
    gate.airflow.respond(gate.dag_id, run_id, GATE, option="Abort", user="bob")
    assert gate.airflow.wait_run(gate.dag_id, run_id, timeout=300) == "failed"
    states = _state(gate, run_id)
    assert states["rollback.aborted"] == "success", states
    assert states["rollback.revert"] == "skipped" and states["rollback.sync"] == "skipped", states
    assert gate.gitops_log("production")[0] == failed_release, "nothing may be reverted"
    assert "Delivery-Action: rollback" not in _trailers(gate)
    escalated = [t for t in gate.slack_texts() if "rollback aborted" in t]
    assert escalated and "P1" in escalated[-1] and "manual intervention" in escalated[-1]


def test_a_timeout_at_the_migration_gate_reverts_nothing(gate: LocalStack) -> None:
    # Production still runs the broken 3.3.0 (aborted above): the next release builds on it.
    run_id = _broken_release_waiting_at_the_gate(gate, "3.4.0")
    failed_release = gate.gitops_log("production")[0]
    assert gate.airflow.wait_run(gate.dag_id, run_id, timeout=300) == "failed"  # nobody answers in 40s
    states = _state(gate, run_id)
    assert states["rollback.aborted"] == "success" and states["rollback.revert"] == "skipped", states
    assert gate.airflow.hitl(gate.dag_id, run_id, GATE)["responded_by_user"] is None
    assert gate.gitops_log("production")[0] == failed_release


def test_an_untrusted_pull_request_waits_for_an_approver(gate: LocalStack) -> None:
    sha = gate.commit("outside contribution", {"CONTRIBUTED": "1\n"})
    conf = {
        "ref": "refs/pull/7/head",
        "sha": sha,
        "pipeline": "ci",
        "event": "pull_request",
        "trusted": False,
        "untrusted_reason": "the head repository is a fork (mallory/visiobook)",
    }
    run_id = gate.airflow.trigger(gate.dag_id, conf=conf)
    gate.airflow.wait_task(gate.dag_id, run_id, "validate.trust", states=("awaiting_input",), timeout=200)
    states = _state(gate, run_id)
    assert states.get("validate.lint") in (None, "none", "scheduled"), states  # nothing of its code ran
    detail = gate.airflow.hitl(gate.dag_id, run_id, "validate.trust")
    assert "fork" in detail["body"] and "no secrets" in detail["body"]
    gate.airflow.respond(gate.dag_id, run_id, "validate.trust", option="Reject", user="alice")
    gate.airflow.wait_run(gate.dag_id, run_id, timeout=200)
    states = _state(gate, run_id)
    assert states["validate.lint"] == "skipped" and states["build_and_test.build"] == "skipped", states
