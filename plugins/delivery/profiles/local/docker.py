"""Docker runner (local profile, ``platform.local.runner: docker``): each stage in its catalog image.

A ``DockerOperator`` (apache-airflow-providers-docker) runs the stage's command
in the stage's image on the configured Docker engine, with the run's checkout
(the same per-run workspace as the shell runner, found at run time from the run
id by :mod:`delivery.profiles.local.workspaces`) mounted at ``/workspace``, the
stage contract in the environment, the host network (so helper services and
deployed environments on 127.0.0.1 are reachable), the catalog's memory limit,
and the container removed once it succeeded. GPU stages ask the engine for
GPUs with a ``device_requests`` entry; on a host without a GPU they end skipped
or failed as the catalog says, never silently green.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowSkipException
from docker.types import DeviceRequest, Mount

from delivery.catalog.fields import quantity_to_bytes
from delivery.paths import git_url
from delivery.pipeline.contract import stage_env
from delivery.profiles.local.shell import SKIP_EXIT_CODE, gpu_policy, has_gpu
from delivery.profiles.local.workspaces import prepare_run_workspace, service_workspaces

if TYPE_CHECKING:
    from airflow.sdk import Context

    from delivery.catalog.models import Platform, Service
    from delivery.catalog.toolchains import ResolvedStage

CONTAINER_WORKSPACE = "/workspace"


class StageDockerOperator(DockerOperator):
    """Prepares the run's workspace on the host, checks for a GPU, then runs the stage's container."""

    def __init__(
        self,
        *,
        service_name: str,
        repo_url: str,
        workspaces_dir: str,
        keep_failed_workspaces: timedelta,
        gpu_policy: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.service_name = service_name
        self.repo_url = repo_url
        self.workspaces_dir = workspaces_dir  # the service's folder of run workspaces
        self.keep_failed_workspaces = keep_failed_workspaces
        self.host_workspace: str | None = None  # the run's, known at run time
        self.gpu_policy = gpu_policy  # None (no GPU needed), "skip", "fail" or "cpu"

    def execute(self, context: Context) -> Any:
        if self.gpu_policy is not None:
            present, detail = has_gpu()
            if not present:
                if self.gpu_policy == "skip":
                    raise AirflowSkipException(f"skipped: no GPU: {detail}")
                if self.gpu_policy == "fail":
                    raise RuntimeError(f"{self.service_name} requires a GPU for {self.task_id}, and {detail}")
                self.log.warning("No GPU (%s): the catalog allows the CPU path", detail)
                self.device_requests = None
                self.environment["DELIVERY_GPU_DEVICE"] = "cpu"
        workspace = prepare_run_workspace(
            service_dir=Path(self.workspaces_dir),
            keep_failed=self.keep_failed_workspaces,
            run_id=self.environment["DELIVERY_RUN_ID"],
            repo_url=self.repo_url,
            sha=self.environment["DELIVERY_SHA"],
        )
        self.host_workspace = str(workspace)
        self.mounts = [Mount(target=CONTAINER_WORKSPACE, source=self.host_workspace, type="bind")]
        return super().execute(context)


def docker_stage_operator(
    *, service: Service, platform: Platform, stage: ResolvedStage, **operator_kwargs: Any
) -> StageDockerOperator:
    env = stage_env(
        service=service,
        platform=platform,
        stage=stage,
        workspace=CONTAINER_WORKSPACE,
        registry=platform.local.registry,
    )
    env.setdefault("HOME", "/tmp")
    policy = gpu_policy(service, stage)
    device_requests = None
    if policy is not None and service.gpu is not None:
        device_requests = [DeviceRequest(count=service.gpu.count, capabilities=[["gpu"]])]
        env["DELIVERY_GPU_DEVICE"] = "cuda"
    memory = stage.resources.memory_limit or stage.resources.memory
    return StageDockerOperator(
        service_name=service.name,
        repo_url=git_url(service.repo.url),
        workspaces_dir=str(service_workspaces(platform, service.name)),
        keep_failed_workspaces=platform.local.keep_failed_workspaces,
        gpu_policy=policy,
        image=stage.image,
        command=["bash", "-euo", "pipefail", "-c", stage.command],
        environment=env,
        working_dir=CONTAINER_WORKSPACE,
        network_mode="host",
        mount_tmp_dir=False,
        auto_remove="success",
        mem_limit=quantity_to_bytes(memory),
        shm_size=quantity_to_bytes(service.gpu.shm_size) if stage.gpu and service.gpu else None,
        device_requests=device_requests,
        docker_url=os.environ.get("DOCKER_HOST", "unix://var/run/docker.sock"),
        skip_on_exit_code=SKIP_EXIT_CODE,
        labels={"io.visiobook.service": service.name, "io.visiobook.stage": stage.name},
        **operator_kwargs,
    )
