"""Pipeline plan: a pure function from a catalog service to a graph of steps.

No Airflow objects here. The plan says *what* runs and in which order; the
factory (:mod:`delivery.pipeline.factory`) decides *how*, for the active profile. The
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
from delivery.pipeline import task_ids as ids
from delivery.pipeline.task_ids import (
    APPROVAL,
    BUILD_AND_TEST,
    DEPLOY_PRODUCTION,
    DEPLOY_STAGING,
    GPU_TESTS,
    IMAGE,
    INTEGRATION,
    NOTIFY,
    ROLLBACK,
    VALIDATE,
    VERIFY_PRODUCTION,
)


class StepKind(StrEnum):
    CHECKOUT = "checkout"  # resolve the run's ref to one commit
    TRUST_GATE = "trust_gate"  # HITL: an approver lets an untrusted pull request's code run
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
    ROLLBACK_PLAN = "rollback_plan"  # identify the release to undo and the one to restore
    MIGRATION_GATE = "migration_gate"  # HITL branch: the DB backup is restored (Continue) or Abort
    ROLLBACK_ABORTED = "rollback_aborted"  # Abort or timeout at the gate: nothing reverted, escalate
    ROLLBACK_REVERT = "rollback_revert"  # write the restored release to the GitOps repo
    ROLLBACK_RECORD = "rollback_record"  # the restored release is healthy: mark it verified
    NOTIFY = "notify"
    OUTCOME = "outcome"


class TriggerRule(StrEnum):
    ALL_SUCCESS = "all_success"
    ONE_FAILED = "one_failed"
    ALL_DONE = "all_done"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"


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
        """The Airflow task id: ``group.name``, as a TaskGroup prefixes it (``name`` without a group)."""
        return ids.task_id(self.group, self.name)


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


def _validate(b: _Builder, stages: list[Stage]) -> list[str]:
    """Flow 2, validation: lint and Helm validation start the run, then quality and security."""
    checkout = b.add(Step(VALIDATE, "checkout", StepKind.CHECKOUT))
    trusted = [b.add(Step(VALIDATE, "trust", StepKind.TRUST_GATE, (checkout,)))]
    lint = b.stage(Stage.LINT, trusted, stages)
    helm = b.stage(Stage.HELM_VALIDATE, trusted, stages)
    gate_upstream = b.stage(Stage.QUALITY_SCAN, lint, stages)
    if Stage.QUALITY_SCAN in stages:
        gate_upstream = [b.add(Step(VALIDATE, "quality_gate", StepKind.QUALITY_GATE, tuple(gate_upstream)))]
    security: list[str] = []
    for stage in (Stage.DEPENDENCY_AUDIT, Stage.SAST, Stage.DAST):
        security += b.stage(stage, gate_upstream, stages) if stage in stages else []
    return (security or gate_upstream) + helm


def _build_image_gpu(b: _Builder, service: Service, stages: list[Stage], validated: list[str]) -> list[str]:
    """Flow 2 build and test; the release gate (pull requests stop there); image; flow 4 GPU tests."""
    tested = validated
    for stage in (Stage.BUILD, Stage.UNIT_TESTS, Stage.INTEGRATION_TESTS, Stage.COVERAGE):
        tested = b.stage(stage, tested, stages)
    image = [b.add(Step(BUILD_AND_TEST, "release_gate", StepKind.RELEASE_GATE, tuple(tested)))]
    for stage in (Stage.IMAGE_BUILD, Stage.IMAGE_SCAN, Stage.IMAGE_PUSH):
        image = b.stage(stage, image, stages)
    ready = image
    if service.needs_gpu:
        ready = b.stage(Stage.GPU_INFERENCE, ready, stages)
        ready = b.stage(Stage.GPU_BENCHMARK, ready, stages)
        if Stage.GPU_BENCHMARK in stages:
            ready = [b.add(Step(GPU_TESTS, "budget_gate", StepKind.GPU_GATE, tuple(ready)))]
    return ready


def _rollback_section(
    b: _Builder, *, group: str, names: dict[StepKind, str], plan: Step, environment: str | None
) -> tuple[str, str]:
    """Seed flow 6, shared by the pipeline and the rollback DAG: plan → gate → revert → sync → health.

    The gate asks for a restored DB backup only when the undone releases carry a migration; its
    Abort (also the default on timeout) branches to ``aborted``, which reverts nothing and escalates.
    Returns the ids of (health check, aborted).
    """
    planned = b.add(plan)
    gate = ids.task_id(group, names[StepKind.MIGRATION_GATE])
    revert = ids.task_id(group, names[StepKind.ROLLBACK_REVERT])
    aborted = ids.task_id(group, names[StepKind.ROLLBACK_ABORTED])
    b.add(
        Step(
            group,
            names[StepKind.MIGRATION_GATE],
            StepKind.MIGRATION_GATE,
            (planned,),
            environment=environment,
            params={"plan_task": planned, "continue_task": revert, "abort_task": aborted},
        )
    )
    b.add(
        Step(
            group,
            names[StepKind.ROLLBACK_ABORTED],
            StepKind.ROLLBACK_ABORTED,
            (gate,),
            environment=environment,
            params={"plan_task": planned, "gate_task": gate},
        )
    )
    b.add(
        Step(
            group,
            names[StepKind.ROLLBACK_REVERT],
            StepKind.ROLLBACK_REVERT,
            (planned, gate),  # runs after the plan when the gate is skipped (nothing to confirm)
            environment=environment,
            params={"plan_task": planned, "gate_task": gate},
        )
    )
    sync = b.add(
        Step(
            group,
            names[StepKind.SYNC],
            StepKind.SYNC,
            (revert,),
            environment=environment,
            params={"commit_task": revert, "plan_task": planned},
        )
    )
    health = b.add(
        Step(
            group,
            names[StepKind.HEALTH_CHECK],
            StepKind.HEALTH_CHECK,
            (sync,),
            environment=environment,
            params={"plan_task": planned},
        )
    )
    return health, aborted


_PIPELINE_ROLLBACK = {
    StepKind.MIGRATION_GATE: "migration_gate",
    StepKind.ROLLBACK_ABORTED: "aborted",
    StepKind.ROLLBACK_REVERT: "revert",
    StepKind.SYNC: "sync",
    StepKind.HEALTH_CHECK: "health_check",
}
_MANUAL_ROLLBACK = {
    StepKind.MIGRATION_GATE: ids.RB_RESTORE_DATABASE,
    StepKind.ROLLBACK_ABORTED: ids.RB_ABORTED,
    StepKind.ROLLBACK_REVERT: ids.RB_REVERT,
    StepKind.SYNC: ids.RB_SYNC,
    StepKind.HEALTH_CHECK: ids.RB_HEALTH_CHECK,
}


def build_plan(service: Service) -> Plan:
    """The step graph of one service's delivery pipeline."""
    stages = applicable_stages(service)
    b = _Builder()
    ready = _build_image_gpu(b, service, stages, _validate(b, stages))

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
    plan = Step(
        ROLLBACK,
        "plan",
        StepKind.ROLLBACK_PLAN,
        (*deploy_ids, verify, review),
        trigger_rule=TriggerRule.ONE_FAILED,
        environment="production",
        params={"mode": "pipeline"},
    )
    rolled_back, aborted = _rollback_section(
        b, group=ROLLBACK, names=_PIPELINE_ROLLBACK, plan=plan, environment="production"
    )

    # Notify, whatever happened; then give the run its true outcome.
    everything = tuple(s.task_id for s in b.steps)
    summary = b.add(
        Step(
            NOTIFY,
            "summary",
            StepKind.NOTIFY,
            (recorded, rolled_back, aborted),
            trigger_rule=TriggerRule.ALL_DONE,
            params={"mode": "pipeline"},
        )
    )
    b.add(
        Step(
            NOTIFY,
            "outcome",
            StepKind.OUTCOME,
            (summary,),
            trigger_rule=TriggerRule.ALL_DONE,
            params={"mode": "pipeline", "watch": everything},
        )
    )
    return Plan(service=service.name, steps=tuple(b.steps))


def build_rollback_plan(service: Service) -> Plan:
    """The ``rollback_<service>`` DAG (seed flow 6): the pipeline's rollback steps, started by hand.

    ``identify`` reads the target from the run's form (or an alert) instead of a failed run;
    the restored release is then recorded as verified once healthy.
    """
    b = _Builder()
    identify = Step("", ids.RB_IDENTIFY, StepKind.ROLLBACK_PLAN, params={"mode": "manual"})
    health, aborted = _rollback_section(b, group="", names=_MANUAL_ROLLBACK, plan=identify, environment=None)
    record = b.add(
        Step("", ids.RB_RECORD, StepKind.ROLLBACK_RECORD, (health,), params={"plan_task": ids.RB_IDENTIFY})
    )
    notify = b.add(
        Step(
            "",
            ids.RB_NOTIFY,
            StepKind.NOTIFY,
            (record, aborted),
            trigger_rule=TriggerRule.ALL_DONE,
            params={"mode": "manual"},
        )
    )
    b.add(
        Step(
            "",
            ids.RB_OUTCOME,
            StepKind.OUTCOME,
            (notify,),
            trigger_rule=TriggerRule.ALL_DONE,
            params={"mode": "manual"},
        )
    )
    return Plan(service=service.name, steps=tuple(b.steps))


_HUMAN = {StepKind.APPROVAL, StepKind.REVIEW, StepKind.MIGRATION_GATE, StepKind.TRUST_GATE}
_SECTIONS = {
    DEPLOY_STAGING: "staging",
    INTEGRATION: "staging",
    DEPLOY_PRODUCTION: "production",
    VERIFY_PRODUCTION: "production",
    ROLLBACK: "production",
}
_MANUAL_ROLLBACK_KINDS = {
    StepKind.ROLLBACK_PLAN,
    StepKind.ROLLBACK_REVERT,
    StepKind.SYNC,
    StepKind.HEALTH_CHECK,
    StepKind.ROLLBACK_RECORD,
}


def deploy_section(step: Step) -> str | None:
    """The environment whose deploy section ``step`` belongs to (one section at a time per service
    and environment), or None. Human gates hold nothing while they wait. The rollback DAG picks its
    environment when it runs, so its steps take production's section, the stricter choice."""
    if step.kind in _HUMAN:
        return None
    if step.group in _SECTIONS:
        return _SECTIONS[step.group]
    if not step.group and step.kind in _MANUAL_ROLLBACK_KINDS:
        return "production"
    return None


def deploy_pool(service: str, environment: str) -> str:
    """The one-slot Airflow pool that serialises the deploy section of ``service`` in ``environment``."""
    return f"deploy-{service}-{environment}"
