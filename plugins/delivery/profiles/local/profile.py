"""The ``local`` profile: one machine runs the stages, a local registry keeps the images, and
containers on the local Docker engine are the deploy target (with GitOps semantics)."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.python import PythonOperator

from delivery.catalog.models import EnvironmentSpec, Platform, Profile, Service
from delivery.catalog.toolchains import ResolvedStage
from delivery.profiles.base import Sync
from delivery.profiles.local.stages import local_stage_operator
from delivery.profiles.local.steps import local_sync
from delivery.profiles.local.workspaces import finish_workspace, run_workspace, service_workspaces, sweep


class LocalProfile:
    kind = Profile.LOCAL
    description = "stages run as shell commands in a per-run checkout, deploys go to the local Docker engine"
    poke_interval = 5.0

    def registry(self, platform: Platform) -> str:
        return platform.local.registry

    def stage_task(
        self, *, service: Service, platform: Platform, stage: ResolvedStage, **operator_kwargs: Any
    ) -> Any:
        return local_stage_operator(service=service, platform=platform, stage=stage, **operator_kwargs)

    def sync_task(self, sync: Sync) -> Any:
        return PythonOperator(
            task_id=sync.task_id,
            python_callable=local_sync,
            op_kwargs={
                "service_name": sync.service.name,
                "environment": sync.environment,
                "commit_task": sync.commit_task,
                "plan_task": sync.plan_task,
            },
        )

    def service_url(self, env: EnvironmentSpec) -> str:
        return f"http://127.0.0.1:{env.local_port}" if env.local_port else env.url

    def finish_run(self, *, service: Service, platform: Platform, run_id: str, succeeded: bool) -> None:
        """Remove a successful run's checkout, keep a failed one's, sweep the expired ones."""
        service_dir = service_workspaces(platform, service.name)
        finish_workspace(run_workspace(service_dir, run_id), succeeded=succeeded)
        sweep(service_dir, keep_failed=platform.local.keep_failed_workspaces)
