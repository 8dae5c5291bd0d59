"""Task groups and the task ids that other steps read (XCom, states), defined once.

The plan (:mod:`delivery.pipeline.plan`) builds its steps from these names;
run-time steps, messages and tests refer to them instead of repeating strings.
"""

from __future__ import annotations

# Task groups of the delivery pipeline, in seed order.
VALIDATE = "validate"
BUILD_AND_TEST = "build_and_test"
IMAGE = "image"
GPU_TESTS = "gpu_tests"
DEPLOY_STAGING = "deploy_staging"
INTEGRATION = "integration"
APPROVAL = "approval"
DEPLOY_PRODUCTION = "deploy_production"
VERIFY_PRODUCTION = "verify_production"
ROLLBACK = "rollback"
NOTIFY = "notify"

GROUPS = (
    VALIDATE,
    BUILD_AND_TEST,
    IMAGE,
    GPU_TESTS,
    DEPLOY_STAGING,
    INTEGRATION,
    APPROVAL,
    DEPLOY_PRODUCTION,
    VERIFY_PRODUCTION,
    ROLLBACK,
    NOTIFY,
)


def task_id(group: str, name: str) -> str:
    """The Airflow task id of ``name`` in ``group``, as a TaskGroup prefixes it."""
    return f"{group}.{name}" if group else name


CHECKOUT = task_id(VALIDATE, "checkout")
TRUST = task_id(VALIDATE, "trust")
RELEASE_GATE = task_id(BUILD_AND_TEST, "release_gate")
IMAGE_BUILD = task_id(IMAGE, "build")
GPU_BENCHMARK = task_id(GPU_TESTS, "benchmark")
APPROVE_PRODUCTION = task_id(APPROVAL, "approve_production")
PRODUCTION_COMMIT = task_id(DEPLOY_PRODUCTION, "gitops_commit")
PRODUCTION_SYNC = task_id(DEPLOY_PRODUCTION, "sync")
VERIFY = task_id(VERIFY_PRODUCTION, "verify")
REVIEW = task_id(VERIFY_PRODUCTION, "review")
RECORD = task_id(VERIFY_PRODUCTION, "record")
ROLLBACK_PLAN = task_id(ROLLBACK, "plan")
ROLLBACK_GATE = task_id(ROLLBACK, "migration_gate")
ROLLBACK_ABORTED = task_id(ROLLBACK, "aborted")
ROLLBACK_REVERT = task_id(ROLLBACK, "revert")
ROLLBACK_SYNC = task_id(ROLLBACK, "sync")
ROLLBACK_HEALTH = task_id(ROLLBACK, "health_check")
SUMMARY = task_id(NOTIFY, "summary")
OUTCOME = task_id(NOTIFY, "outcome")


def commit_task(group: str) -> str:
    """The GitOps commit task whose revision a sync of ``group`` applies."""
    return ROLLBACK_REVERT if group == ROLLBACK else task_id(group, "gitops_commit")


# The manual rollback DAG (``rollback_<service>``): top-level tasks, no groups.
RB_IDENTIFY = "identify"
RB_CHECK_MIGRATION = "check_migration"
RB_RESTORE_DATABASE = "restore_database"
RB_ABORTED = "aborted"
RB_REVERT = "revert"
RB_SYNC = "sync"
RB_HEALTH_CHECK = "health_check"
RB_RECORD = "record"
RB_NOTIFY = "notify"
RB_OUTCOME = "outcome"
