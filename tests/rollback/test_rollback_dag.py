"""Manual rollback DAG against a real Airflow, a real GitOps bare repo and a real container."""

from __future__ import annotations

import pytest

from delivery.profiles.local.containers import current_release
from tests.rollback.conftest import RollbackEnv

pytestmark = [pytest.mark.e2e, pytest.mark.duration(130)]

WEB = "rollback_rb_web"
DB = "rollback_rb_db"


def test_explicit_target_that_failed_verification_is_refused(rollback_env: RollbackEnv) -> None:
    env = rollback_env
    env.deploy("rb-web", env.good_tag, verified=True)
    env.deploy("rb-web", "f" * 40, verified=False)  # failed its production verification
    env.deploy("rb-web", "b" * 40, verified=None)  # current, never verified
    head = env.log("rb-web")[0]["sha"]

    run_id = env.airflow.trigger(WEB, conf={"reason": "try the failed one", "target_version": "f" * 40})
    # meanwhile, on another service: a version that is not in the history at all
    missing = env.airflow.trigger(DB, conf={"reason": "no such version", "target_version": "0123456789ab"})
    assert env.airflow.wait_run(WEB, run_id, timeout=120) == "failed"
    states = env.airflow.task_states(WEB, run_id)
    assert states["identify"] == "failed", states
    assert states["revert"] in ("upstream_failed", "skipped"), states
    assert states["notify"] == "success" and states["outcome"] == "failed", states
    assert env.log("rb-web")[0]["sha"] == head, "nothing may be reverted"

    assert env.airflow.wait_run(DB, missing, timeout=120) == "failed"
    assert env.airflow.task_states(DB, missing)["identify"] == "failed"
    assert [c["subject"] for c in env.log("rb-db")] == ["seed"]


def test_manual_rollback_restores_the_last_verified_release(rollback_env: RollbackEnv) -> None:
    env = rollback_env
    history = env.log("rb-web")
    if not history or history[0].get("Delivery-Image-Tag") != "b" * 40:
        env.deploy("rb-web", env.good_tag, verified=True)
        env.deploy("rb-web", "f" * 40, verified=False)
        env.deploy("rb-web", "b" * 40, verified=None)
    stable = next(c for c in env.log("rb-web") if c.get("Delivery-Image-Tag") == env.good_tag)
    dag = env.airflow.api("GET", f"/dags/{WEB}")
    assert dag["is_paused"] is False, "rollback DAGs are created unpaused"

    reason = "release b breaks the reader: checkout answers 500"
    run_id = env.airflow.trigger(WEB, conf={"reason": reason})
    state = env.airflow.wait_run(WEB, run_id, timeout=180)
    states = env.airflow.task_states(WEB, run_id)
    assert state == "success", states
    assert states["restore_database"] == "skipped" and states["aborted"] == "skipped", states
    for task in ("identify", "revert", "sync", "health_check", "record", "notify", "outcome"):
        assert states[task] == "success", (task, states)

    head = env.log("rb-web")[0]
    assert head["Delivery-Action"] == "rollback"
    assert head["Delivery-Image-Tag"] == env.good_tag  # not the failed f...f
    assert head["Delivery-Reason"] == reason
    assert head["Delivery-Rollback-To"] == stable["sha"]
    assert head["Delivery-Run-Id"] == run_id
    assert env.values("rb-web")["image"] == {"repository": env.image_repository, "tag": env.good_tag}
    tags = env.tags()
    assert f"delivery/rb-web/production/verified/{head['sha'][:12]}" in tags  # restored release recorded
    undone = env.log("rb-web")[1]
    assert f"delivery/rb-web/production/failed/{undone['sha'][:12]}" in tags  # the undone release

    running = current_release(service="rb-web", environment="production")
    assert running is not None and running.healthy, running
    assert running.image == f"{env.image_repository}:{env.good_tag}"


def test_db_migration_rollback_waits_for_a_restored_backup(rollback_env: RollbackEnv) -> None:
    env = rollback_env
    env.deploy("rb-db", env.good_tag, verified=True)
    env.deploy("rb-db", "c" * 40, verified=False, migration=True)  # Delivery-Migration: true
    before = env.log("rb-db")[0]["sha"]

    reason = "schema v42 corrupts reading positions"
    run_id = env.airflow.trigger(DB, conf={"reason": reason})
    env.airflow.wait_task(DB, run_id, "restore_database", states=("awaiting_input",), timeout=120)
    states = env.airflow.task_states(DB, run_id)
    assert states.get("revert") in (None, "none", "scheduled"), states
    assert env.log("rb-db")[0]["sha"] == before, "nothing may be reverted before the DB is restored"

    hitl = env.airflow.hitl(DB, run_id, "restore_database")
    assert hitl["options"] == ["Continue", "Abort"] and hitl["defaults"] == ["Abort"]
    assert sorted(u["id"] for u in hitl["assigned_users"]) == ["carol", "dave"]
    env.airflow.respond(DB, run_id, "restore_database", option="Continue", user="mallory", expect=(403,))
    assert env.log("rb-db")[0]["sha"] == before
    env.airflow.respond(DB, run_id, "restore_database", option="Continue", user="carol")

    state = env.airflow.wait_run(DB, run_id, timeout=180)
    states = env.airflow.task_states(DB, run_id)
    assert state == "success", states
    assert states["aborted"] == "skipped", states
    head = env.log("rb-db")[0]
    assert head["Delivery-Action"] == "rollback" and head["Delivery-Image-Tag"] == env.good_tag
    assert head["Delivery-Reason"] == reason
    assert head["Delivery-Approver"] == "carol"


def test_a_release_landing_while_the_gate_waits_is_never_undone(rollback_env: RollbackEnv) -> None:
    env = rollback_env
    env.deploy("rb-db", env.good_tag, verified=True)
    env.deploy("rb-db", "c" * 40, verified=False, migration=True)  # the release to undo
    run_id = env.airflow.trigger(DB, conf={"reason": "schema v43 is slow"})
    env.airflow.wait_task(DB, run_id, "restore_database", states=("awaiting_input",), timeout=120)
    newer = env.deploy("rb-db", "e" * 40, verified=None)  # another run's release lands meanwhile
    env.airflow.respond(DB, run_id, "restore_database", option="Continue", user="carol")

    state = env.airflow.wait_run(DB, run_id, timeout=180)
    states = env.airflow.task_states(DB, run_id)
    assert state == "success", states  # nothing to do is not a failure
    for task in ("revert", "sync", "health_check", "record"):
        assert states[task] == "skipped", (task, states)
    assert env.log("rb-db")[0]["sha"] == newer, "the release the rollback never examined stays"
    assert env.values("rb-db")["image"]["tag"] == "e" * 40
    summary = env.airflow.api(
        "GET", f"/dags/{DB}/dagRuns/{run_id}/taskInstances/notify/xcomEntries/return_value"
    )["value"]
    assert "'outcome': 'superseded'" in str(summary) and "nothing was reverted" in str(summary), summary


def test_a_target_that_was_never_verified_needs_an_approvers_continue(rollback_env: RollbackEnv) -> None:
    env = rollback_env
    env.deploy("rb-web", "d" * 40, verified=None)  # whatever the earlier tests left: a change
    env.deploy("rb-web", env.good_tag, verified=True)
    env.deploy("rb-web", "b" * 40, verified=None)
    unverified = env.deploy("rb-web", env.good_tag, verified=None)  # the same image, never verified
    env.deploy("rb-web", "c" * 40, verified=None)  # current
    before = env.log("rb-web")[0]["sha"]

    reason = "roll back to the build we know, verified or not"
    run_id = env.airflow.trigger(WEB, conf={"reason": reason, "target_version": unverified[:12]})
    env.airflow.wait_task(WEB, run_id, "restore_database", states=("awaiting_input",), timeout=180)
    hitl = env.airflow.hitl(WEB, run_id, "restore_database")
    assert "never passed production verification" in hitl["body"] and reason in hitl["body"]
    assert env.log("rb-web")[0]["sha"] == before, "nothing may be reverted before an approver confirms"
    env.airflow.respond(WEB, run_id, "restore_database", option="Continue", user="mallory", expect=(403,))
    env.airflow.respond(WEB, run_id, "restore_database", option="Continue", user="bob")

    assert env.airflow.wait_run(WEB, run_id, timeout=240) == "success", env.airflow.task_states(WEB, run_id)
    head = env.log("rb-web")[0]
    assert head["Delivery-Action"] == "rollback" and head["Delivery-Rollback-To"] == unverified
    assert head["Delivery-Approver"] == "bob" and head["Delivery-Reason"] == reason
