"""The whole pipeline on one machine, driven through Airflow's REST API as a user's tools would.

Real Airflow (api-server, scheduler, dag-processor, triggerer), a real Docker
engine, a real registry and real git repositories. The tests run in order and
share one service: each release builds on the previous one, as in life.
"""

from __future__ import annotations

import time

import pytest
import requests

from delivery.devenv.airflow_server import AirflowError

pytestmark = [pytest.mark.e2e, pytest.mark.duration(450)]

APPROVAL = "approval.approve_production"


def _serving(port: int) -> dict:  # type: ignore[type-arg]
    resp = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
    return {"code": resp.status_code, **resp.json()}


def _registry_tags(stack, repository: str) -> list[str]:  # type: ignore[no-untyped-def]
    resp = requests.get(f"http://{stack.registry}/v2/{repository}/tags/list", timeout=5)
    return sorted(resp.json().get("tags") or []) if resp.ok else []


def _deliver_to_approval(stack, sha: str) -> str:  # type: ignore[no-untyped-def]
    run_id = stack.airflow.trigger(stack.dag_id, conf={"ref": "main", "sha": sha})
    stack.airflow.wait_task(stack.dag_id, run_id, APPROVAL, states=("awaiting_input",), timeout=420)
    time.sleep(3)  # people answer in seconds, not milliseconds: let the task finish parking itself
    return run_id


def _try_number(stack, run_id: str, task_id: str) -> int:  # type: ignore[no-untyped-def]
    ti = stack.airflow.api("GET", f"/dags/{stack.dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    return int(ti["try_number"])


def test_happy_path_commit_to_production(stack) -> None:  # type: ignore[no-untyped-def]
    sha = stack.commit("release 2.0.0", {"VERSION": "2.0.0\n"})
    run_id = _deliver_to_approval(stack, sha)

    # Validate, build and test ran for real; the image is in the registry with its tags.
    states = stack.airflow.task_states(stack.dag_id, run_id)
    for task in (
        "validate.lint",
        "validate.sast",
        "build_and_test.integration_tests",
        "build_and_test.coverage",
        "image.push",
    ):
        assert states[task] == "success", (task, states[task])
    assert {sha, "main"} <= set(_registry_tags(stack, f"e2e/{stack.service}"))
    # Staging serves the new commit and passed its integration tests.
    staging = _serving(stack.port("staging"))
    assert (staging["code"], staging["commit"], staging["version"]) == (200, sha, "2.0.0")
    assert states["integration.staging_tests"] == "success"

    # The approval names its approvers; someone else is refused.
    detail = stack.airflow.hitl(stack.dag_id, run_id, APPROVAL)
    # The service's approvers, and its break-glass approver (who may only answer "Break glass").
    assert [u["id"] for u in detail["assigned_users"]] == ["alice", "bob", "oncall"]
    with pytest.raises(AirflowError, match="403"):
        stack.airflow.respond(stack.dag_id, run_id, APPROVAL, option="Approve", user="mallory")
    assert stack.airflow.hitl(stack.dag_id, run_id, APPROVAL)["response_received"] is False

    stack.airflow.respond(stack.dag_id, run_id, APPROVAL, option="Approve", user="alice")
    assert stack.airflow.wait_run(stack.dag_id, run_id, timeout=300) == "success"

    production = _serving(stack.port("production"))
    assert (production["code"], production["commit"], production["version"]) == (200, sha, "2.0.0")
    # The approver's identity is recorded: in the HITL answer and in the GitOps commit.
    assert stack.airflow.hitl(stack.dag_id, run_id, APPROVAL)["responded_by_user"]["id"] == "alice"
    head = stack.gitops_log("production")[0]
    trailers = stack.gitops_trailers(head)
    assert "Delivery-Approver: alice" in trailers and f"Delivery-Source-Sha: {sha}" in trailers
    # The success is announced once.
    texts = [m["text"] for m in stack.slack.delivered()]
    assert len([t for t in texts if run_id in t and "deployed to production" in t]) == 1, texts
    stack.good_sha = sha


def test_broken_release_is_rolled_back(stack) -> None:  # type: ignore[no-untyped-def]
    good = stack.good_sha
    sha = stack.commit(
        "release 2.1.0 (breaks in production)", {"VERSION": "2.1.0\n", "BROKEN_IN": "production\n"}
    )
    run_id = _deliver_to_approval(stack, sha)
    stack.airflow.respond(stack.dag_id, run_id, APPROVAL, option="Approve", user="bob")
    assert stack.airflow.wait_run(stack.dag_id, run_id, timeout=400) == "failed"

    states = stack.airflow.task_states(stack.dag_id, run_id)
    assert states["deploy_production.sync"] == "failed"
    assert states["rollback.plan"] == "success" and states["rollback.health_check"] == "success"
    # Production serves the previous stable version again.
    production = _serving(stack.port("production"))
    assert (production["code"], production["commit"]) == (200, good)
    # The rollback is a GitOps commit with its reason; the failed release is marked failed.
    head = stack.gitops_log("production")[0]
    assert "Delivery-Action: rollback" in stack.gitops_trailers(head)
    # Slack heard about the failure and about the rollback.
    texts = [m["text"] for m in stack.slack.messages()]
    assert any("task `deploy_production.sync` failed" in t and run_id in t for t in texts)
    assert any("rolled back to the previous stable version" in t for t in texts)


def test_rejected_approval_leaves_production_untouched(stack) -> None:  # type: ignore[no-untyped-def]
    before = stack.gitops_log("production")
    # This release also ships a staging test that fails once when armed (see the rerun test).
    script = f'if [ -f "{stack.flaky_marker}" ]; then rm "{stack.flaky_marker}"; echo "flaky test failed"; exit 1; fi\n'
    sha = stack.commit("release 2.2.0", {"VERSION": "2.2.0\n", "BROKEN_IN": None, "staging-tests.sh": script})
    stack.release_sha = sha
    run_id = _deliver_to_approval(stack, sha)
    stack.airflow.respond(stack.dag_id, run_id, APPROVAL, option="Reject", user="alice")
    stack.airflow.wait_run(stack.dag_id, run_id, timeout=200)
    states = stack.airflow.task_states(stack.dag_id, run_id)
    assert states["deploy_production.gitops_commit"] == "skipped"
    assert stack.gitops_log("production") == before
    assert _serving(stack.port("production"))["commit"] == stack.good_sha
    summary = stack.airflow.api(
        "GET", f"/dags/{stack.dag_id}/dagRuns/{run_id}/taskInstances/notify.summary/xcomEntries/return_value"
    )["value"]
    assert "rejected" in str(summary)
    assert stack.airflow.hitl(stack.dag_id, run_id, APPROVAL)["chosen_options"] == ["Reject"]


def test_timed_out_approval_is_a_rejection(stack) -> None:  # type: ignore[no-untyped-def]
    before = stack.gitops_log("production")
    run_id = _deliver_to_approval(stack, stack.release_sha)  # the same commit again: its image is reused
    stack.airflow.wait_run(stack.dag_id, run_id, timeout=200)  # nobody answers within 40s
    detail = stack.airflow.hitl(stack.dag_id, run_id, APPROVAL)
    assert detail["chosen_options"] == ["Reject"] and detail["responded_by_user"] is None
    assert stack.airflow.task_states(stack.dag_id, run_id)["deploy_production.gitops_commit"] == "skipped"
    assert stack.gitops_log("production") == before


def test_rerun_of_a_flaky_stage_completes_the_run_without_rebuilding(stack) -> None:  # type: ignore[no-untyped-def]
    sha = stack.release_sha
    stack.flaky_marker.touch()  # the staging test of this release now fails once
    run_id = stack.airflow.trigger(stack.dag_id, conf={"ref": "main", "sha": sha})
    stack.airflow.wait_task(
        stack.dag_id, run_id, "integration.staging_tests", states=("failed",), timeout=420
    )
    stack.airflow.wait_run(stack.dag_id, run_id, timeout=200)
    staging_commits = stack.gitops_log("staging")
    tags_before = _registry_tags(stack, f"e2e/{stack.service}")

    stack.airflow.api(
        "POST",
        f"/dags/{stack.dag_id}/clearTaskInstances",
        json={
            "dry_run": False,
            "task_ids": ["integration.staging_tests"],
            "dag_run_id": run_id,
            "include_downstream": True,
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    stack.airflow.wait_task(stack.dag_id, run_id, APPROVAL, states=("awaiting_input",), timeout=300)
    time.sleep(3)
    stack.airflow.respond(stack.dag_id, run_id, APPROVAL, option="Approve", user="alice")
    assert stack.airflow.wait_run(stack.dag_id, run_id, timeout=300) == "success"

    assert _try_number(stack, run_id, "integration.staging_tests") == 2
    for task in ("image.build", "image.push", "deploy_staging.gitops_commit", "deploy_staging.sync"):
        assert _try_number(stack, run_id, task) == 1, task  # nothing rebuilt, re-pushed or redeployed
    assert stack.gitops_log("staging") == staging_commits
    assert _registry_tags(stack, f"e2e/{stack.service}") == tags_before
    assert _serving(stack.port("production"))["commit"] == sha


def test_backfill_builds_the_branch_head_of_each_interval(stack) -> None:  # type: ignore[no-untyped-def]
    days = {}
    for day in (1, 2, 3):
        date = f"2026-01-0{day}T12:00:00+00:00"
        days[day] = stack.commit(f"nightly change {day}", {"NIGHTLY": f"{day}\n"}, date=date)
    nightly = "nightly_" + stack.service.replace("-", "_")
    stack.airflow.wait_dag(nightly)
    stack.airflow.unpause(nightly)  # the scheduler runs no task of a paused DAG, backfills included
    stack.airflow.api(
        "POST",
        "/backfills",
        json={
            "dag_id": nightly,
            "from_date": "2026-01-02T00:00:00Z",
            "to_date": "2026-01-04T23:00:00Z",
            "run_backwards": False,
            "dag_run_conf": {},
            "reprocess_behavior": "none",
            "max_active_runs": 3,
        },
    )
    deadline = time.monotonic() + 240
    runs: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        runs = [
            r
            for r in stack.airflow.api("GET", f"/dags/{nightly}/dagRuns")["dag_runs"]
            if r["run_type"] == "backfill"
        ]
        done = [
            r
            for r in runs
            if stack.airflow.task_states(nightly, r["dag_run_id"]).get("validate.checkout") == "success"
        ]
        if len(runs) == 3 and len(done) == 3:
            break
        time.sleep(3)
    assert len(runs) == 3
    built = {}
    for run in runs:
        source = stack.airflow.api(
            "GET",
            f"/dags/{nightly}/dagRuns/{run['dag_run_id']}/taskInstances/validate.checkout/xcomEntries/return_value",
        )["value"]
        built[run["data_interval_end"][:10]] = source["sha"]
    # Airflow 3 cron schedules trigger at 03:00 (the interval ends at the trigger time):
    # the head of main then was the previous day's commit.
    assert built == {"2026-01-02": days[1], "2026-01-03": days[2], "2026-01-04": days[3]}
    # What follows the checkout is the pipeline the runs above checked, stage by stage: pause the
    # nightly DAG (the scheduler then runs no more of its tasks, the backfill's included), rather
    # than let three more builds run on a stack that other modules share.
    assert stack.airflow.api("PATCH", f"/dags/{nightly}", json={"is_paused": True})["is_paused"] is True
