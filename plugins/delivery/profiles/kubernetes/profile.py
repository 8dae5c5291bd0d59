"""The ``kubernetes`` profile: every stage is a pod, releases go through GitOps and Argo CD."""

from __future__ import annotations

import functools
from typing import Any

from delivery.catalog.models import EnvironmentSpec, Platform, Profile, Service
from delivery.catalog.toolchains import ResolvedStage
from delivery.profiles.base import Sync
from delivery.steps.release import guard_sync


class KubernetesProfile:
    kind = Profile.KUBERNETES
    description = "every stage is a pod, deploys go through GitOps and Argo CD"
    poke_interval = 15.0

    def registry(self, platform: Platform) -> str:
        return platform.registry

    def stage_task(
        self, *, service: Service, platform: Platform, stage: ResolvedStage, **operator_kwargs: Any
    ) -> Any:
        from delivery.profiles.kubernetes.pods import pod_operator  # noqa: PLC0415 kubernetes client: this profile only

        return pod_operator(service=service, platform=platform, stage=stage, **operator_kwargs)

    def sync_task(self, sync: Sync) -> Any:
        from delivery.integrations.argocd.operator import ArgoCDSyncOperator  # noqa: PLC0415 Argo CD client: this profile only

        if sync.environment is None:  # the rollback DAG: the environment is chosen when it runs
            plan = "ti.xcom_pull(task_ids='" + str(sync.plan_task) + "')"
            app = "{{ " + plan + "['argocd_app'] }}"
            project = "{{ " + plan + "['argocd_project'] or '' }}"
            app_namespace = "{{ " + plan + "['argocd_app_namespace'] or '' }}"
        else:
            env = getattr(sync.service.environments, sync.environment)
            app, project, app_namespace = env.argocd_app, env.argocd_project, env.argocd_app_namespace
        return ArgoCDSyncOperator(
            task_id=sync.task_id,
            app_name=app,
            revision="{{ ti.xcom_pull(task_ids='" + sync.commit_task + "')['revision'] }}",
            argocd_conn_id=sync.platform.connections.argocd,
            project=project,
            app_namespace=app_namespace,
            gitops_repo_url=sync.platform.gitops.repo_url,
            timeout=sync.timeout,
            deferrable=True,
            pre_execute=functools.partial(
                guard_sync,
                service_name=sync.service.name,
                environment=sync.environment,
                commit_task=sync.commit_task,
                plan_task=sync.plan_task,
            ),
        )

    def service_url(self, env: EnvironmentSpec) -> str:
        return env.url

    def finish_run(self, *, service: Service, platform: Platform, run_id: str, succeeded: bool) -> None:
        """Nothing to do: each stage's pod is gone, the workspace claim is managed by the cluster."""
