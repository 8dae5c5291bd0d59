"""Build Airflow DAGs from plans: one builder per step kind, the profile decides the rest.

Every DAG of a service comes from a plan (:mod:`delivery.pipeline.plan`): the
delivery pipeline, its nightly variant and the ``rollback_<service>`` DAG. The
builders ask the active profile (:mod:`delivery.profiles`) for what differs
between profiles (stages, syncs, URLs, registry); they never test which profile
they have. Nothing here touches the network, the metadata database or
Variables: DAG files stay cheap to parse. Operators that only some services use
(the SonarQube gate, the Prometheus verification, the GPU health check) are
imported by their builders, so a DAG without them, parsed again by every task
process of its runs, does not import their HTTP clients.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator, ShortCircuitOperator
from airflow.sdk import DAG, BaseOperator, TaskGroup

from delivery.catalog import Catalog, Service
from delivery.catalog.models import EnvironmentSpec
from delivery.catalog.toolchains import ResolvedStage, resolve_stages
from delivery.integrations.health import HealthCheckSensor
from delivery.notify import PipelineEvent, PipelineEventNotifier, TaskFailureNotifier
from delivery.pipeline import task_ids as ids
from delivery.pipeline.contract import TEMPLATE_FILTERS
from delivery.pipeline.gates import ProductionApproval, RollbackGate, TrustGate
from delivery.pipeline.params import PIPELINE_DOC, ROLLBACK_DOC, pipeline_params, rollback_params
from delivery.pipeline.plan import (
    Plan,
    Step,
    StepKind,
    build_plan,
    build_rollback_plan,
    deploy_pool,
    deploy_section,
)
from delivery.profiles import DeliveryProfile, active_profile, health_url
from delivery.profiles.base import Sync
from delivery.reporting.notifiers import ApprovalPendingNotifier
from delivery.steps import gpu, outcome, release, rollback, source
from delivery.verification.review import HoldReviewOperator

log = logging.getLogger(__name__)

Builder = Callable[[Step, Service], BaseOperator]


class DagFactory:
    """Turns one catalog into DAGs for the active profile."""

    def __init__(self, *, catalog: Catalog, profile: DeliveryProfile | None = None) -> None:
        self.catalog = catalog
        self.platform = catalog.platform
        self.profile = profile or active_profile(self.platform)
        self._stages: dict[str, dict[Any, ResolvedStage]] = {}
        self._builders: dict[StepKind, Builder] = {
            StepKind.CHECKOUT: self._python(source.resolve_source),
            StepKind.TRUST_GATE: self._trust_gate,
            StepKind.STAGE: self._stage,
            StepKind.QUALITY_GATE: self._quality_gate,
            StepKind.RELEASE_GATE: self._release_gate,
            StepKind.GPU_GATE: self._python(gpu.gpu_gate),
            StepKind.GITOPS_COMMIT: self._gitops_commit,
            StepKind.SYNC: self._sync,
            StepKind.HEALTH_CHECK: self._health_check,
            StepKind.GPU_HEALTH: self._gpu_health,
            StepKind.APPROVAL: self._approval,
            StepKind.VERIFY: self._verify,
            StepKind.REVIEW: self._review,
            StepKind.RECORD: self._python(release.record_verification),
            StepKind.ROLLBACK_PLAN: self._rollback_plan,
            StepKind.MIGRATION_GATE: self._rollback_gate,
            StepKind.ROLLBACK_ABORTED: self._python(rollback.rollback_aborted, "gate_task"),
            StepKind.ROLLBACK_REVERT: self._rollback_revert,
            StepKind.ROLLBACK_RECORD: self._rollback_record,
            StepKind.NOTIFY: self._python(outcome.notify_summary, "mode"),
            StepKind.OUTCOME: self._outcome,
        }

    # -- DAGs ---------------------------------------------------------------------

    def _builds(self, service: Service) -> dict[str, Callable[[], DAG]]:
        """dag id -> how to build it, for every DAG of ``service``."""
        builds: dict[str, Callable[[], DAG]] = {
            service.dag_id: functools.partial(self.build, service),
            service.rollback_dag_id: functools.partial(self.build_rollback, service),
        }
        if service.schedule:
            builds[service.nightly_dag_id] = functools.partial(
                self.build, service, dag_id=service.nightly_dag_id, schedule=service.schedule
            )
        return builds

    def build_all(self, *, dag_id: str | None = None) -> dict[str, DAG]:
        """Every DAG of every service; a service whose DAGs cannot be built is logged and skipped.

        ``dag_id`` (a worker parsing the DAG of the task it runs): only that DAG, when a service has it.
        """
        builds = {name: self._builds(service) for name, service in sorted(self.catalog.services.items())}
        if dag_id is not None and any(dag_id in by_id for by_id in builds.values()):
            builds = {name: {dag_id: by_id[dag_id]} for name, by_id in builds.items() if dag_id in by_id}
        dags: dict[str, DAG] = {}
        for name, by_id in builds.items():
            try:
                built = [build() for build in by_id.values()]
            except Exception:
                log.exception(
                    "Could not build the DAGs of service %r (%s)", name, self.catalog.sources.get(name)
                )
                continue
            dags.update((dag.dag_id, dag) for dag in built)
        return dags

    def build(self, service: Service, *, dag_id: str | None = None, schedule: str | None = None) -> DAG:
        """The delivery pipeline of ``service`` (or its nightly variant, with ``schedule``)."""
        gpu_doc = (
            "required" if service.gpu and service.gpu.required else ("optional" if service.gpu else "no")
        )
        doc = PIPELINE_DOC.format(
            name=service.name,
            description=service.description,
            profile=self.profile.kind.value,
            profile_doc=self.profile.description,
            toolchain=service.toolchain.value,
            kind=service.kind.value,
            gpu=gpu_doc,
            approvers=", ".join(service.approvers),
            approval_timeout=service.approval_timeout,
            repo=service.repo.url,
        )
        dag = self._dag(
            service,
            dag_id=dag_id or service.dag_id,
            description=f"Delivery pipeline of {service.name}",
            schedule=schedule,
            tags=[service.kind.value, *(["nightly"] if schedule else [])],
            params=pipeline_params(service, pipeline="ci" if schedule else "full"),
            doc_md=doc,
            max_active_runs=3,
        )
        with dag:
            self._populate(build_plan(service), service)
        return dag

    def build_rollback(self, service: Service) -> DAG:
        """``rollback_<service>``: the rollback plan, started by hand or by Alertmanager."""
        doc = ROLLBACK_DOC.format(
            name=service.name,
            approvers=", ".join(service.approvers),
            approval_timeout=service.approval_timeout,
            profile=self.profile.kind.value,
            profile_doc=self.profile.description,
        )
        dag = self._dag(
            service,
            dag_id=service.rollback_dag_id,
            description=f"Roll back {service.name} to an earlier release (GitOps)",
            schedule=None,
            tags=["rollback"],
            params=rollback_params(service),
            doc_md=doc,
            max_active_runs=1,  # two rollbacks of one service must not interleave
            # Only manual or Alertmanager runs: unpaused, so an automatic rollback never waits for a click.
            is_paused_upon_creation=False,
        )
        with dag:
            self._populate(build_rollback_plan(service), service)
        return dag

    def _dag(self, service: Service, *, tags: list[str], **kwargs: Any) -> DAG:
        default_args: dict[str, Any] = {
            "owner": service.team or "platform",
            # Retries for infrastructure failures (a killed worker or process, a lost heartbeat, a
            # restart that adopts or resets orphaned tasks);
            # the steps' own failures (PipelineError, a failing command) are final.
            "retries": 2,
            "retry_delay": timedelta(seconds=15),
            # Every task's failure is a `task_failed` event (a severity event for some steps, below).
            "on_failure_callback": [TaskFailureNotifier(service_name=service.name)],
        }
        return DAG(
            start_date=datetime(2026, 1, 1),
            catchup=False,
            tags=["delivery", f"profile:{self.profile.kind.value}", f"service:{service.name}", *tags],
            default_args=default_args,
            render_template_as_native_obj=False,
            user_defined_filters=TEMPLATE_FILTERS,
            **kwargs,
        )

    def _populate(self, plan: Plan, service: Service) -> None:
        groups: dict[str, TaskGroup] = {}
        tasks: dict[str, BaseOperator] = {}
        for step in plan.steps:
            if step.group and step.group not in groups:
                groups[step.group] = TaskGroup(group_id=step.group)
            if step.group:
                with groups[step.group]:
                    task = self._builders[step.kind](step, service)
            else:
                task = self._builders[step.kind](step, service)
            _add_failure_event(task, step, service)
            gpu_stage = step.stage is not None and self._resolved(service)[step.stage].gpu
            task.queue = self.platform.queues.gpu if gpu_stage else self.platform.queues.default
            section = deploy_section(step)
            if section is not None:  # one deploy section at a time per service and environment
                task.pool = deploy_pool(service.name, section)
            tasks[step.task_id] = task
            for upstream in step.upstream:
                tasks[upstream] >> task

    # -- builders -----------------------------------------------------------------

    def _python(self, fn: Callable[..., Any], *param_keys: str) -> Builder:
        """A Python step: ``fn(service_name=..., <step params named in param_keys>, **context)``."""

        def build(step: Step, service: Service) -> BaseOperator:
            op_kwargs = {"service_name": service.name, **{k: step.params[k] for k in param_keys}}
            return PythonOperator(
                task_id=step.name,
                python_callable=fn,
                op_kwargs=op_kwargs,
                trigger_rule=step.trigger_rule.value,
            )

        return build

    def _resolved(self, service: Service) -> dict[Any, ResolvedStage]:
        if service.name not in self._stages:
            self._stages[service.name] = resolve_stages(service, self.platform)
        return self._stages[service.name]

    def _stage(self, step: Step, service: Service) -> BaseOperator:
        assert step.stage is not None
        stage = self._resolved(service)[step.stage]
        return self.profile.stage_task(
            service=service,
            platform=self.platform,
            stage=stage,
            task_id=step.name,
            execution_timeout=stage.timeout,
            retries=stage.retries,
            trigger_rule=step.trigger_rule.value,
        )

    def _quality_gate(self, step: Step, service: Service) -> BaseOperator:
        from delivery.integrations.sonarqube import SonarQualityGateOperator  # noqa: PLC0415 aiohttp: quality gates only

        assert service.sonar_project_key is not None
        return SonarQualityGateOperator(
            task_id=step.name,
            project_key=service.sonar_project_key,
            sonarqube_conn_id=self.platform.connections.sonarqube,
            branch="{{ ti.xcom_pull(task_ids='" + ids.CHECKOUT + "')['branch'] }}",
        )

    def _trust_gate(self, step: Step, service: Service) -> BaseOperator:
        return TrustGate(
            task_id=step.name,
            api_conn_id=self.platform.connections.airflow_api,
            subject=f"{service.name}: run the CI of an untrusted pull request?",
            body="(filled in when the run comes from an untrusted pull request)",
            assigned_users=_users(service.approvers),
            response_timeout=service.approval_timeout,
        )

    def _release_gate(self, step: Step, service: Service) -> BaseOperator:
        return ShortCircuitOperator(
            task_id=step.name, python_callable=source.release_gate, ignore_downstream_trigger_rules=False
        )

    def _env(self, service: Service, step: Step) -> EnvironmentSpec:
        if step.environment is None:
            raise ValueError(f"step {step.task_id!r} needs an environment")
        env: EnvironmentSpec = getattr(service.environments, step.environment)
        return env

    def _gitops_commit(self, step: Step, service: Service) -> BaseOperator:
        return PythonOperator(
            task_id=step.name,
            python_callable=release.gitops_commit,
            op_kwargs={
                "service_name": service.name,
                "environment": step.environment,
                "image_repository": f"{self.profile.registry(self.platform)}/{service.image.repository}",
            },
            trigger_rule=step.trigger_rule.value,
        )

    def _sync(self, step: Step, service: Service) -> BaseOperator:
        environments = (service.environments.production, service.environments.staging)
        timeout = (
            self._env(service, step).health_timeout
            if step.environment
            else max(e.health_timeout for e in environments)
        )
        sync = Sync(
            task_id=step.name,
            service=service,
            platform=self.platform,
            environment=step.environment,
            commit_task=step.params.get("commit_task") or ids.commit_task(step.group),
            plan_task=step.params.get("plan_task"),
            timeout=timeout,
        )
        return self.profile.sync_task(sync)

    def _health_check(self, step: Step, service: Service) -> BaseOperator:
        if step.environment is None:  # the rollback DAG: the environment is chosen when it runs
            url = "{{ ti.xcom_pull(task_ids='" + step.params["plan_task"] + "')['health_url'] }}"
            environments = (service.environments.production, service.environments.staging)
            timeout = max(e.health_timeout for e in environments)
        else:
            env = self._env(service, step)
            url, timeout = health_url(self.profile, env), env.health_timeout
        return HealthCheckSensor(
            task_id=step.name,
            url=url,
            timeout=timeout.total_seconds(),
            poke_interval=self.profile.poke_interval,
        )

    def _gpu_health(self, step: Step, service: Service) -> BaseOperator:
        from delivery.gpu.health import GpuServiceHealthOperator  # noqa: PLC0415 the GPU harness: GPU services only

        assert service.gpu is not None
        return GpuServiceHealthOperator(
            task_id=step.name,
            url=self.profile.service_url(self._env(service, step)),
            require_gpu=service.gpu.required and not service.gpu.allow_cpu_fallback,
            on_missing_gpu=service.gpu.on_missing_gpu,
            latency_budget_ms=service.gpu.inference_latency_budget_ms,
            samples=20,
        )

    def _approval(self, step: Step, service: Service) -> BaseOperator:
        rules = [f"Approvers: {', '.join(service.approvers)}."]
        if service.four_eyes:
            rules.append("Four eyes: the author of a commit being released cannot approve it.")
        if service.break_glass_approvers:
            rules.append(
                f"In an emergency, {', '.join(service.break_glass_approvers)} may choose **Break glass** with a "
                "reason: it pages the on-call and is recorded in the GitOps commit."
            )
        rules.append(f"Without an answer within {service.approval_timeout} the release is rejected.")
        answered = ApprovalPendingNotifier(service_name=service.name, pending=False)
        approval = ProductionApproval(
            task_id=step.name,
            api_conn_id=self.platform.connections.airflow_api,
            break_glass=bool(service.break_glass_approvers),
            subject=f"Deploy {service.name} to production?",
            body=(
                "Commit `{{ ti.xcom_pull(task_ids='" + ids.CHECKOUT + "')['sha'] }}` of "
                f"{service.name} passed staging and its integration tests.\n\n" + "\n\n".join(rules)
            ),
            assigned_users=_users([*service.approvers, *service.break_glass_approvers]),
            response_timeout=service.approval_timeout,
            notifiers=[
                PipelineEventNotifier(event=PipelineEvent.APPROVAL_REQUESTED, service_name=service.name),
                ApprovalPendingNotifier(service_name=service.name, pending=True),
            ],
            on_success_callback=answered,
        )
        approval.on_failure_callback = [*_callbacks(approval.on_failure_callback), answered]
        return approval

    def _verify(self, step: Step, service: Service) -> BaseOperator:
        env = self._env(service, step)
        own_release = functools.partial(release.guard_own_release, service_name=service.name)
        if env.verify is None or not env.verify.checks:
            return HealthCheckSensor(
                task_id=step.name,
                url=health_url(self.profile, env),
                timeout=env.health_timeout.total_seconds(),
                poke_interval=5,
                pre_execute=own_release,
            )
        from delivery.verification.operator import VerifyReleaseOperator  # noqa: PLC0415 aiohttp: PromQL checks only

        return VerifyReleaseOperator(
            task_id=step.name,
            verify=env.verify,
            service=service.name,
            environment="production",
            namespace=env.namespace,
            prometheus_conn_id=self.platform.connections.prometheus,
            pre_execute=own_release,
        )

    def _review(self, step: Step, service: Service) -> BaseOperator:
        return HoldReviewOperator(
            task_id=step.name,
            verify_task_id=ids.VERIFY,
            api_conn_id=self.platform.connections.airflow_api,
            subject=f"{service.name}: production verification was inconclusive",
            body=(
                f"Prometheus gave no verdict on the new release (see {ids.VERIFY}). "
                "Keep the release, or roll back to the previous stable version. "
                "Without an answer the release is rolled back."
            ),
            assigned_users=_users(service.approvers),
            response_timeout=service.approval_timeout,
        )

    def _rollback_plan(self, step: Step, service: Service) -> BaseOperator:
        urls = {
            name: health_url(self.profile, getattr(service.environments, name))
            for name in ("production", "staging")
        }
        return PythonOperator(
            task_id=step.name,
            python_callable=rollback.plan_rollback,
            op_kwargs={"service_name": service.name, "mode": step.params["mode"], "health_urls": urls},
            trigger_rule=step.trigger_rule.value,
        )

    def _rollback_gate(self, step: Step, service: Service) -> BaseOperator:
        return RollbackGate(
            task_id=step.name,
            plan_task=step.params["plan_task"],
            continue_task=step.params["continue_task"],
            abort_task=step.params["abort_task"],
            api_conn_id=self.platform.connections.airflow_api,
            subject=f"{service.name}: confirm the rollback before anything is reverted",
            body="(filled in when the rollback needs a confirmation)",
            assigned_users=_users(service.approvers),
            response_timeout=service.approval_timeout,
        )

    def _rollback_revert(self, step: Step, service: Service) -> BaseOperator:
        return PythonOperator(
            task_id=step.name,
            python_callable=rollback.rollback_revert,
            op_kwargs={
                "service_name": service.name,
                "plan_task": step.params["plan_task"],
                "gate_task": step.params["gate_task"],
            },
            trigger_rule="none_failed_min_one_success",  # the gate chose it, or was skipped: nothing to confirm
        )

    def _rollback_record(self, step: Step, service: Service) -> BaseOperator:
        return PythonOperator(
            task_id=step.name,
            python_callable=rollback.rollback_record,
            op_kwargs={
                "service_name": service.name,
                "plan_task": step.params["plan_task"],
                "revert_task": ids.RB_REVERT,
            },
        )

    def _outcome(self, step: Step, service: Service) -> BaseOperator:
        return PythonOperator(
            task_id=step.name,
            python_callable=outcome.outcome,
            op_kwargs={"mode": step.params["mode"], "service_name": service.name},
            trigger_rule=step.trigger_rule.value,
            on_failure_callback=None,
        )


def _users(names: list[str]) -> list[dict[str, str]]:
    return [{"id": user, "name": user} for user in names]


def failure_event(step: Step) -> PipelineEvent | None:
    """The severity-routed event (seed flow 5) a failure of this step raises, if any."""
    if step.group == ids.DEPLOY_PRODUCTION:
        return PipelineEvent.PRODUCTION_DEPLOY_FAILED
    if step.task_id == ids.VERIFY:
        return PipelineEvent.PRODUCTION_VERIFICATION_FAILED
    if step.group in (ids.DEPLOY_STAGING, ids.INTEGRATION):
        return PipelineEvent.STAGING_FAILED
    if step.group == ids.ROLLBACK:
        return PipelineEvent.ROLLBACK_FAILED
    return None


def _callbacks(existing: Any) -> list[Any]:
    """A task's callback attribute (one callable, a list or ``None``) as a list."""
    if existing is None:
        return []
    return list(existing) if isinstance(existing, list | tuple) else [existing]


def _add_failure_event(task: BaseOperator, step: Step, service: Service) -> None:
    """A step with a severity event reports its failure as that event, instead of ``task_failed``.

    One failure, one event: the ``task_failed`` notifier is replaced, not joined.
    """
    event = failure_event(step)
    if event is None or not task.on_failure_callback:
        return
    kept = [cb for cb in _callbacks(task.on_failure_callback) if not isinstance(cb, TaskFailureNotifier)]
    task.on_failure_callback = [*kept, TaskFailureNotifier(service_name=service.name, event=event)]


def build_dags(catalog: Catalog, *, dag_id: str | None = None) -> dict[str, DAG]:
    """Every DAG of the catalog; with ``dag_id`` (Airflow's parsing context on a worker) only that one."""
    return DagFactory(catalog=catalog).build_all(dag_id=dag_id)
