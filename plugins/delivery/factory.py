"""Build Airflow DAGs from the plan: one registry entry per step kind.

The registry maps a :class:`~delivery.plan.StepKind` to a builder. Builders
for container stages, sync and health checks depend on the active profile;
the graph does not. Nothing here touches the network, the metadata database
or Variables: DAG files stay cheap to parse.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup

from delivery.catalog import Catalog, Profile, Service
from delivery.catalog.toolchains import ResolvedStage, resolve_stages
from delivery.plan import GROUPS, Plan, Step, StepKind, build_plan
from delivery.profiles import active_profile

log = logging.getLogger(__name__)

DOC = """\
### {name} delivery pipeline

{description}

* **Profile:** `{profile}` ({profile_doc})
* **Toolchain:** {toolchain}; **kind:** {kind}; **GPU:** {gpu}
* **Approvers:** {approvers} (timeout {approval_timeout}; Reject on timeout)
* **Repository:** {repo}

Trigger it with a git ref or sha (the form below), from a Git event, or rerun
a failed stage by clearing it. A `pipeline` of `ci` stops after build and
test, as pull requests do.
"""

PROFILE_DOC = {
    Profile.KUBERNETES: "every stage is a pod, deploys go through GitOps and Argo CD",
    Profile.LOCAL: "stages run as shell commands in a per-run checkout, deploys go to the local Docker engine",
}


def run_task(step_callable: str, **kwargs: Any) -> Any:
    """Entry point of every Python step: imports :mod:`delivery.tasks` only when the task runs.

    ``step_callable`` names the function; the rest is the task context plus its op_kwargs
    (a name other than ``task``, which would shadow the context's own ``task``).
    """
    module = importlib.import_module("delivery.tasks")
    return getattr(module, step_callable)(**kwargs)


def pipeline_params(service: Service, *, pipeline: str = "full") -> dict[str, Param]:
    """The trigger form. Git events send the same keys as ``conf``."""
    return {
        "ref": Param(
            service.repo.release_branch,
            type="string",
            title="Git ref",
            description="Branch, tag (refs/tags/v1.2.3) or full sha to deliver.",
        ),
        "sha": Param("", type="string", title="Commit sha", description="Optional: pins the exact commit."),
        "pipeline": Param(
            pipeline,
            type="string",
            enum=["full", "ci"],
            title="Pipeline",
            description="full: through production. ci: validate, build and test only (pull requests).",
        ),
        "migration": Param(
            service.migrations,
            type="boolean",
            title="Carries a DB migration",
            description="A rollback of this release then waits for a DB restore.",
        ),
        "reason": Param(
            "", type="string", title="Reason", description="Why this run was started (kept in the run)."
        ),
        "repository": Param("", type="string", title="Repository (Git events)"),
        "before": Param("", type="string", title="Previous sha (Git events)"),
        "author": Param("", type="string", title="Author or pusher (Git events)"),
        "pr_number": Param(None, type=["null", "integer"], title="Pull request number (Git events)"),
        "compare_url": Param("", type="string", title="Compare URL (Git events)"),
        "event": Param(
            "manual", type="string", title="Event", description="manual, push, tag, pull_request, poll"
        ),
    }


class DagFactory:
    """Turns one catalog into DAGs for the active profile."""

    def __init__(self, *, catalog: Catalog) -> None:
        self.catalog = catalog
        self.platform = catalog.platform
        self.profile = active_profile(self.platform)
        self._builders: dict[StepKind, Callable[[Step, Service, dict[StepKind | str, Any]], Any]] = {
            StepKind.CHECKOUT: self._checkout,
            StepKind.STAGE: self._stage,
            StepKind.QUALITY_GATE: self._quality_gate,
            StepKind.RELEASE_GATE: self._release_gate,
            StepKind.GPU_GATE: self._python("gpu_gate"),
            StepKind.GITOPS_COMMIT: self._python("gitops_commit", environment=True),
            StepKind.SYNC: self._sync,
            StepKind.HEALTH_CHECK: self._health_check,
            StepKind.GPU_HEALTH: self._gpu_health,
            StepKind.APPROVAL: self._approval,
            StepKind.VERIFY: self._verify,
            StepKind.REVIEW: self._review,
            StepKind.RECORD: self._python("record_verification"),
            StepKind.ROLLBACK_PLAN: self._python("rollback_plan"),
            StepKind.MIGRATION_GATE: self._migration_gate,
            StepKind.ROLLBACK_REVERT: self._python("rollback_revert"),
            StepKind.NOTIFY: self._python("notify_summary"),
            StepKind.OUTCOME: self._outcome,
        }

    # -- DAGs ---------------------------------------------------------------------

    def build_all(self) -> dict[str, DAG]:
        dags: dict[str, DAG] = {}
        for name, service in sorted(self.catalog.services.items()):
            try:
                dag = self.build(service)
            except Exception:
                log.exception(
                    "Could not build the DAG of service %r (%s)", name, self.catalog.sources.get(name)
                )
                continue
            dags[dag.dag_id] = dag
            if service.schedule:
                try:
                    nightly = self.build(service, dag_id=service.nightly_dag_id, schedule=service.schedule)
                except Exception:
                    log.exception("Could not build the nightly DAG of service %r", name)
                    continue
                dags[nightly.dag_id] = nightly
        from delivery.rollback_dag import build_rollback_dags

        dags.update(build_rollback_dags(catalog=self.catalog, profile=self.profile))
        return dags

    def build(self, service: Service, *, dag_id: str | None = None, schedule: str | None = None) -> DAG:
        plan = build_plan(service)
        stages = resolve_stages(service, self.platform)
        doc = DOC.format(
            name=service.name,
            description=service.description,
            profile=self.profile.value,
            profile_doc=PROFILE_DOC[self.profile],
            toolchain=service.toolchain.value,
            kind=service.kind.value,
            gpu="required" if service.gpu and service.gpu.required else ("optional" if service.gpu else "no"),
            approvers=", ".join(service.approvers),
            approval_timeout=service.approval_timeout,
            repo=service.repo.url,
        )
        default_args: dict[str, Any] = {
            "owner": service.team or "platform",
            "retries": 0,
            "retry_delay": timedelta(seconds=30),
            "on_failure_callback": [self._failure_notifier()],
        }
        with DAG(
            dag_id=dag_id or service.dag_id,
            description=f"Delivery pipeline of {service.name}",
            schedule=schedule,
            start_date=datetime(2026, 1, 1),
            catchup=False,
            max_active_runs=3,
            tags=[
                "delivery",
                f"profile:{self.profile.value}",
                f"service:{service.name}",
                service.kind.value,
                *(["nightly"] if schedule else []),
            ],
            params=pipeline_params(service, pipeline="ci" if schedule else "full"),
            doc_md=doc,
            default_args=default_args,
            render_template_as_native_obj=False,
        ) as dag:
            self._populate(plan, service, stages)
        return dag

    def _populate(self, plan: Plan, service: Service, stages: dict[Any, ResolvedStage]) -> None:
        groups = {name: TaskGroup(group_id=name) for name in GROUPS}
        tasks: dict[str, Any] = {}
        for step in plan.steps:
            with groups[step.group]:
                task = self._builders[step.kind](step, service, {"stages": stages})
            event = failure_event(step)
            if event is not None and task.on_failure_callback is not None:
                from delivery.alerts import PipelineEventNotifier

                callbacks = task.on_failure_callback
                callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
                task.on_failure_callback = [
                    *callbacks,
                    PipelineEventNotifier(event=event, service_name=service.name),
                ]
            tasks[step.task_id] = task
            for upstream in step.upstream:
                tasks[upstream] >> task

    # -- builders -----------------------------------------------------------------

    def _failure_notifier(self) -> Any:
        from delivery.notifications import slack_failure_notifier

        return slack_failure_notifier(slack_conn_id=self.platform.connections.slack)

    def _python(self, name: str, *, environment: bool = False) -> Callable[..., Any]:
        def build(step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
            from airflow.providers.standard.operators.python import PythonOperator

            op_kwargs: dict[str, Any] = {"step_callable": name, "service_name": service.name}
            if environment:
                op_kwargs["environment"] = step.environment
            return PythonOperator(
                task_id=step.name,
                python_callable=run_task,
                op_kwargs=op_kwargs,
                trigger_rule=step.trigger_rule.value,
            )

        return build

    def _checkout(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from airflow.providers.standard.operators.python import PythonOperator

        return PythonOperator(
            task_id=step.name,
            python_callable=run_task,
            op_kwargs={"step_callable": "resolve_source", "service_name": service.name},
        )

    def _stage(self, step: Step, service: Service, extra: dict[StepKind | str, Any]) -> Any:
        assert step.stage is not None
        stage: ResolvedStage = extra["stages"][step.stage]
        common = {
            "task_id": step.name,
            "execution_timeout": stage.timeout,
            "retries": stage.retries,
            "trigger_rule": step.trigger_rule.value,
        }
        if self.profile is Profile.KUBERNETES:
            from delivery.runners.kubernetes import pod_operator

            return pod_operator(service=service, platform=self.platform, stage=stage, **common)
        from delivery.runners.local import local_stage_operator

        return local_stage_operator(service=service, platform=self.platform, stage=stage, **common)

    def _quality_gate(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from delivery.operators.sonarqube import SonarQualityGateOperator

        assert service.sonar_project_key is not None
        return SonarQualityGateOperator(
            task_id=step.name,
            project_key=service.sonar_project_key,
            sonarqube_conn_id=self.platform.connections.sonarqube,
            branch="{{ ti.xcom_pull(task_ids='validate.checkout')['branch'] }}",
        )

    def _release_gate(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from airflow.providers.standard.operators.python import ShortCircuitOperator

        return ShortCircuitOperator(
            task_id=step.name,
            python_callable=run_task,
            op_kwargs={"step_callable": "release_gate"},
            ignore_downstream_trigger_rules=False,
        )

    def _env(self, service: Service, step: Step) -> Any:
        return getattr(service.environments, env_name(step))

    def _sync(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        env = self._env(service, step)
        commit_task = "rollback.revert" if step.group == "rollback" else f"{step.group}.gitops_commit"
        revision = "{{ ti.xcom_pull(task_ids='" + commit_task + "')['revision'] }}"
        if self.profile is Profile.KUBERNETES:
            from delivery.operators.argocd import ArgoCDSyncOperator

            return ArgoCDSyncOperator(
                task_id=step.name,
                app_name=env.argocd_app,
                revision=revision,
                argocd_conn_id=self.platform.connections.argocd,
                project=env.argocd_project,
                app_namespace=env.argocd_app_namespace,
                gitops_repo_url=self.platform.gitops.repo_url,
                timeout=env.health_timeout,
                deferrable=True,
            )
        from delivery.runners.local import docker_sync_operator

        return docker_sync_operator(
            task_id=step.name, service=service, environment=env_name(step), commit_task=commit_task
        )

    def _health_check(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from delivery.operators.health import HealthCheckSensor

        env = self._env(service, step)
        url = env.url.rstrip("/") + env.health_path
        if self.profile is Profile.LOCAL and env.local_port:
            url = f"http://127.0.0.1:{env.local_port}{env.health_path}"
        return HealthCheckSensor(
            task_id=step.name,
            url=url,
            timeout=env.health_timeout.total_seconds(),
            poke_interval=5 if self.profile is Profile.LOCAL else 15,
        )

    def _gpu_health(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from delivery.operators.gpu_health import GpuServiceHealthOperator

        assert service.gpu is not None
        env = self._env(service, step)
        url = env.url
        if self.profile is Profile.LOCAL and env.local_port:
            url = f"http://127.0.0.1:{env.local_port}"
        return GpuServiceHealthOperator(
            task_id=step.name,
            url=url,
            require_gpu=service.gpu.required and not service.gpu.allow_cpu_fallback,
            on_missing_gpu=service.gpu.on_missing_gpu,
            latency_budget_ms=service.gpu.inference_latency_budget_ms,
            samples=20,
        )

    def _approval(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from airflow.providers.standard.operators.hitl import ApprovalOperator

        return ApprovalOperator(
            task_id=step.name,
            subject=f"Deploy {service.name} to production?",
            body=(
                f"Commit `{{{{ ti.xcom_pull(task_ids='validate.checkout')['sha'] }}}}` of {service.name} "
                "passed staging and its integration tests.\n\n"
                f"Approvers: {', '.join(service.approvers)}. Without an answer within "
                f"{service.approval_timeout} the release is rejected."
            ),
            assigned_users=[{"id": user, "name": user} for user in service.approvers],
            response_timeout=service.approval_timeout,
            defaults=["Reject"],
            notifiers=[self._approval_notifier(service)],
        )

    def _approval_notifier(self, service: Service) -> Any:
        from delivery.alerts import PipelineEvent, PipelineEventNotifier

        return PipelineEventNotifier(event=PipelineEvent.APPROVAL_REQUESTED, service_name=service.name)

    def _migration_gate(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from airflow.providers.standard.operators.hitl import HITLOperator

        return HITLOperator(
            task_id=step.name,
            subject=f"{service.name}: restore the database backup before the rollback",
            body=(
                "The release being rolled back carries a database migration. Restore the database "
                "backup taken before it, then choose Continue. Abort stops the rollback."
            ),
            options=["Continue", "Abort"],
            defaults=["Abort"],
            assigned_users=[{"id": user, "name": user} for user in service.approvers],
            response_timeout=service.approval_timeout,
        )

    def _verify(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        env = self._env(service, step)
        if env.verify is None or not env.verify.checks:
            from delivery.operators.health import HealthCheckSensor

            return HealthCheckSensor(
                task_id=step.name,
                url=env.url.rstrip("/") + env.health_path
                if self.profile is Profile.KUBERNETES or not env.local_port
                else f"http://127.0.0.1:{env.local_port}{env.health_path}",
                timeout=env.health_timeout.total_seconds(),
                poke_interval=5,
            )
        from delivery.operators.verify import VerifyReleaseOperator

        return VerifyReleaseOperator(
            task_id=step.name,
            verify=env.verify.model_dump(mode="json"),
            service=service.name,
            environment="production",
            namespace=env.namespace,
            prometheus_conn_id=self.platform.connections.prometheus,
        )

    def _review(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from delivery.operators.review import HoldReviewOperator

        return HoldReviewOperator(
            task_id=step.name,
            verify_task_id="verify_production.verify",
            subject=f"{service.name}: production verification was inconclusive",
            body=(
                "Prometheus gave no verdict on the new release (see verify_production.verify). "
                "Keep the release, or roll back to the previous stable version. "
                "Without an answer the release is rolled back."
            ),
            assigned_users=[{"id": user, "name": user} for user in service.approvers],
            response_timeout=service.approval_timeout,
        )

    def _outcome(self, step: Step, service: Service, _: dict[StepKind | str, Any]) -> Any:
        from airflow.providers.standard.operators.python import PythonOperator

        return PythonOperator(
            task_id=step.name,
            python_callable=run_task,
            op_kwargs={"step_callable": "outcome"},
            trigger_rule=step.trigger_rule.value,
            on_failure_callback=None,
        )


def failure_event(step: Step) -> str | None:
    """The severity-routed event (seed flow 5) a failure of this step raises, if any."""
    if step.group in ("deploy_production",):
        return "production_deploy_failed"
    if step.task_id == "verify_production.verify":
        return "production_verification_failed"
    if step.group in ("deploy_staging", "integration"):
        return "staging_failed"
    if step.group == "rollback":
        return "rollback_failed"
    return None


def env_name(step: Step) -> str:
    if step.environment not in ("staging", "production"):
        raise ValueError(f"step {step.task_id!r} needs an environment, got {step.environment!r}")
    return step.environment


def build_dags(catalog: Catalog) -> dict[str, DAG]:
    return DagFactory(catalog=catalog).build_all()
