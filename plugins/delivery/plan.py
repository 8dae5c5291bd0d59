"""Pipeline plan: a pure function from a catalog service to a graph of steps.

No Airflow objects here. The plan says *what* runs and in which order; the
factory (:mod:`delivery.factory`) decides *how*, for the active profile. The
edges follow the seed's flows:

* flow 2: lint → quality scan → quality gate → security (dependency audit, SAST,
  ZAP baseline for web apps) → build → unit → integration (test DB) → coverage;
  Helm validation runs beside lint;
* flow 1/2: image build → image scan → push with tags;
* flow 4: GPU inference tests → performance and memory benchmark → budget gate;
* flow 1/3: staging deploy (GitOps commit → sync → health) → integration tests
  against staging → human approval → production deploy → verification;
* flow 3/6: rollback when production deploy or verification fails, then notify.

A ``release_gate`` after build and test stops pull-request pipelines (``ci``)
before anything is pushed or deployed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from delivery.catalog.models import Service, Stage
from delivery.catalog.toolchains import applicable_stages


class StepKind(StrEnum):
    CHECKOUT = "checkout"  # resolve the run's ref to one commit
    STAGE = "stage"  # a container stage from the catalog (runner-specific)
    QUALITY_GATE = "quality_gate"  # SonarQube quality gate over REST
    RELEASE_GATE = "release_gate"  # full pipeline or CI only
    GPU_GATE = "gpu_gate"  # GPU benchmark result vs budgets
    GITOPS_COMMIT = "gitops_commit"  # set the image tag in the env's values
    SYNC = "sync"  # apply the desired state (Argo CD or docker target)
    HEALTH_CHECK = "health_check"
    GPU_HEALTH = "gpu_health"  # GPU available, model loaded, inference latency within budget
    APPROVAL = "approval"  # HITL approval
    VERIFY = "verify"  # PromQL analysis of production
    REVIEW = "review"  # a human decides when the verification was inconclusive
    RECORD = "record"  # mark the verified release stable in the GitOps history
    ROLLBACK_PLAN = "rollback_plan"  # identify the previous stable release
    MIGRATION_GATE = "migration_gate"  # HITL: restore the DB backup before rollback
    ROLLBACK_REVERT = "rollback_revert"
    NOTIFY = "notify"
    OUTCOME = "outcome"


class TriggerRule(StrEnum):
    ALL_SUCCESS = "all_success"
    ONE_FAILED = "one_failed"
    ALL_DONE = "all_done"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"


# Task groups, in seed order.
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

_STAGE_TASK = {
    Stage.IMAGE_BUILD: (IMAGE, "build"),
    Stage.IMAGE_SCAN: (IMAGE, "scan"),
    Stage.IMAGE_PUSH: (IMAGE, "push"),
    Stage.GPU_INFERENCE: (GPU_TESTS, "inference"),
    Stage.GPU_BENCHMARK: (GPU_TESTS, "benchmark"),
    Stage.STAGING_TESTS: (INTEGRATION, "staging_tests"),
}
_VALIDATE_STAGES = {
    Stage.LINT,
    Stage.QUALITY_SCAN,
    Stage.DEPENDENCY_AUDIT,
    Stage.SAST,
    Stage.DAST,
    Stage.HELM_VALIDATE,
}


def stage_task(stage: Stage) -> tuple[str, str]:
    """(group, task) of a container stage."""
    if stage in _STAGE_TASK:
        return _STAGE_TASK[stage]
    return (VALIDATE if stage in _VALIDATE_STAGES else BUILD_AND_TEST), stage.value


@dataclass(frozen=True)
class Step:
    group: str
    name: str
    kind: StepKind
    upstream: tuple[str, ...] = ()
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    stage: Stage | None = None
    environment: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        """The Airflow task id: ``group.name``, as a TaskGroup prefixes it."""
        return f"{self.group}.{self.name}"


@dataclass(frozen=True)
class Plan:
    service: str
    steps: tuple[Step, ...]

    def step(self, task_id: str) -> Step:
        for step in self.steps:
            if step.task_id == task_id:
                return step
        raise KeyError(f"plan of {self.service!r} has no step {task_id!r}")

    @property
    def task_ids(self) -> list[str]:
        return [s.task_id for s in self.steps]

    def edges(self) -> set[tuple[str, str]]:
        return {(up, s.task_id) for s in self.steps for up in s.upstream}


class _Builder:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def add(self, step: Step) -> str:
        if any(s.task_id == step.task_id for s in self.steps):
            raise ValueError(f"duplicate step {step.task_id!r}")
        missing = [u for u in step.upstream if u not in {s.task_id for s in self.steps}]
        if missing:
            raise ValueError(f"step {step.task_id!r} depends on unknown steps {missing}")
        self.steps.append(step)
        return step.task_id

    def stage(self, stage: Stage, upstream: list[str], stages: list[Stage]) -> list[str]:
        if stage not in stages:
            return upstream
        group, name = stage_task(stage)
        return [self.add(Step(group, name, StepKind.STAGE, tuple(upstream), stage=stage))]


def _deploy(b: _Builder, group: str, environment: str, upstream: list[str], *, gpu: bool) -> list[str]:
    commit = b.add(
        Step(group, "gitops_commit", StepKind.GITOPS_COMMIT, tuple(upstream), environment=environment)
    )
    sync = b.add(Step(group, "sync", StepKind.SYNC, (commit,), environment=environment))
    health = b.add(Step(group, "health_check", StepKind.HEALTH_CHECK, (sync,), environment=environment))
    if gpu:  # flow 4: GPU availability, model loading, inference endpoint, before monitoring starts
        return [b.add(Step(group, "gpu_health", StepKind.GPU_HEALTH, (health,), environment=environment))]
    return [health]


def build_plan(service: Service) -> Plan:
    """The step graph of one service's delivery pipeline."""
    stages = applicable_stages(service)
    b = _Builder()

    # Flow 2, validation: lint and Helm validation start the run.
    checkout = [b.add(Step(VALIDATE, "checkout", StepKind.CHECKOUT))]
    lint = b.stage(Stage.LINT, checkout, stages)
    helm = b.stage(Stage.HELM_VALIDATE, checkout, stages)
    gate_upstream = b.stage(Stage.QUALITY_SCAN, lint, stages)
    if Stage.QUALITY_SCAN in stages:
        gate_upstream = [b.add(Step(VALIDATE, "quality_gate", StepKind.QUALITY_GATE, tuple(gate_upstream)))]
    security: list[str] = []
    for stage in (Stage.DEPENDENCY_AUDIT, Stage.SAST, Stage.DAST):
        if stage in stages:
            security += b.stage(stage, gate_upstream, stages)
    validated = (security or gate_upstream) + helm

    # Flow 2, build and test.
    tested = validated
    for stage in (Stage.BUILD, Stage.UNIT_TESTS, Stage.INTEGRATION_TESTS, Stage.COVERAGE):
        tested = b.stage(stage, tested, stages)

    # Pull requests stop here: no image, no deploy, no approval.
    release = [b.add(Step(BUILD_AND_TEST, "release_gate", StepKind.RELEASE_GATE, tuple(tested)))]

    # Image: build, scan, push with tags.
    image = release
    for stage in (Stage.IMAGE_BUILD, Stage.IMAGE_SCAN, Stage.IMAGE_PUSH):
        image = b.stage(stage, image, stages)

    # Flow 4, GPU tests on GPU nodes.
    ready = image
    if service.needs_gpu:
        ready = b.stage(Stage.GPU_INFERENCE, ready, stages)
        ready = b.stage(Stage.GPU_BENCHMARK, ready, stages)
        if Stage.GPU_BENCHMARK in stages:
            ready = [b.add(Step(GPU_TESTS, "budget_gate", StepKind.GPU_GATE, tuple(ready)))]

    # Flows 1 and 3: staging, integration tests against staging, approval, production.
    staged = _deploy(b, DEPLOY_STAGING, "staging", ready, gpu=service.needs_gpu)
    integrated = b.stage(Stage.STAGING_TESTS, staged, stages)
    approved = [b.add(Step(APPROVAL, "approve_production", StepKind.APPROVAL, tuple(integrated)))]
    production = _deploy(b, DEPLOY_PRODUCTION, "production", approved, gpu=service.needs_gpu)
    deploy_ids = [s.task_id for s in b.steps if s.group == DEPLOY_PRODUCTION]
    verify = b.add(
        Step(VERIFY_PRODUCTION, "verify", StepKind.VERIFY, tuple(production), environment="production")
    )

    review = b.add(Step(VERIFY_PRODUCTION, "review", StepKind.REVIEW, (verify,), environment="production"))
    recorded = b.add(Step(VERIFY_PRODUCTION, "record", StepKind.RECORD, (review,), environment="production"))

    # Flow 6: rollback when the production deploy or its verification fails.
    plan_rb = b.add(
        Step(
            ROLLBACK,
            "plan",
            StepKind.ROLLBACK_PLAN,
            (*deploy_ids, verify, review),
            trigger_rule=TriggerRule.ONE_FAILED,
            environment="production",
        )
    )
    rb_upstream = [plan_rb]
    if service.migrations:
        rb_upstream = [
            b.add(
                Step(
                    ROLLBACK, "migration_gate", StepKind.MIGRATION_GATE, (plan_rb,), environment="production"
                )
            )
        ]
    revert = b.add(
        Step(ROLLBACK, "revert", StepKind.ROLLBACK_REVERT, tuple(rb_upstream), environment="production")
    )
    rb_sync = b.add(Step(ROLLBACK, "sync", StepKind.SYNC, (revert,), environment="production"))
    rb_health = b.add(
        Step(ROLLBACK, "health_check", StepKind.HEALTH_CHECK, (rb_sync,), environment="production")
    )

    # Notify, whatever happened; then give the run its true outcome.
    everything = tuple(s.task_id for s in b.steps)
    summary = b.add(
        Step(NOTIFY, "summary", StepKind.NOTIFY, (recorded, rb_health), trigger_rule=TriggerRule.ALL_DONE)
    )
    b.add(
        Step(
            NOTIFY,
            "outcome",
            StepKind.OUTCOME,
            (summary,),
            trigger_rule=TriggerRule.ALL_DONE,
            params={"watch": everything},
        )
    )
    return Plan(service=service.name, steps=tuple(b.steps))
