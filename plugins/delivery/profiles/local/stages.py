"""Local runner: the same stages as shell commands in a per-run git workspace.

This is how a shell runner works in other CI systems, with the safety a
worker needs:

* **resolved once**: the stage's command, helper services, GPU policy,
  repository and workspace folder are resolved when the DAG is parsed and handed
  to the stage's process (:class:`~delivery.profiles.local.shell.StageSpec`, JSON in
  ``DELIVERY_STAGE_SPEC``, never a Jinja template), which then imports neither
  Airflow nor the catalog: a stage costs little more than the command itself;
* **workspace**: ``<workspace_root>/<service>/<run folder>``, a clone of the
  service repo checked out (detached) at the run's commit, created under a file
  lock by whichever stage needs it first, so reruns and parallel stages are
  safe; the folder name is computed at run time from the run id, safe and
  unique per run (:mod:`delivery.profiles.local.workspaces`);
* **clean env**: the command sees only the stage contract
  (:func:`delivery.pipeline.contract.stage_env`) plus ``PATH``, ``HOME`` and the
  locale, never the worker's own environment (no Airflow secrets);
* **timeout**: the stage's ``execution_timeout``; Airflow kills the process group;
* **output** streams to the task log line by line;
* **cleanup**: ``notify.outcome`` removes a successful run's workspace and keeps
  a failed run's for ``platform.local.keep_failed_workspaces`` (a later run
  removes it); a stage recreates it when a cleared task reruns later;
* **helper services**: a ``test-db`` service is a throwaway PostgreSQL cluster
  started from the host's PostgreSQL binaries for the stage's duration;
* **GPU stages** on a machine without a GPU end as *skipped* with the reason
  (``on_missing_gpu: skip``), fail (``fail``), or run the CPU path where the
  catalog allows it (``allow_cpu_fallback``); never silently green.

The container image of a stage is not used here: the host's toolchains run
the command. Image stages use the Docker engine through the docker SDK.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from delivery.catalog.loader import catalog_dir
from delivery.catalog.models import Platform, Service, Stage
from delivery.catalog.toolchains import ResolvedStage
from delivery.paths import PROJECT_ROOT
from delivery.pipeline.contract import SOURCE_ENV, SOURCE_TEMPLATE, source_templates, stage_env
from delivery.profiles.local import steps
from delivery.profiles.local.shell import SKIP_EXIT_CODE, SPEC_ENV, StageSpec

if TYPE_CHECKING:
    from airflow.sdk import Context

IMAGE_STAGES = {
    Stage.IMAGE_BUILD: steps.local_image_build,
    Stage.IMAGE_SCAN: steps.local_image_scan,
    Stage.IMAGE_PUSH: steps.local_image_push,
}


class StageShellOperator(BashOperator):
    """A stage's command: its failure is final; only an infrastructure failure (a killed worker or
    process, a lost heartbeat) uses the task's retries, so a red test is not run twice.

    ``stage_spec`` (JSON, not a template field) reaches the stage's process in ``DELIVERY_STAGE_SPEC``,
    added to the environment once the templates are rendered.
    """

    def __init__(self, *, stage_spec: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_spec = stage_spec

    def execute(self, context: Context) -> Any:
        self.env = {**(self.env or {}), SPEC_ENV: self.stage_spec}
        try:
            return super().execute(context)
        except AirflowException as exc:
            if "Bash command failed" in str(exc):
                raise AirflowFailException(f"stage {self.task_id} failed: {exc}") from exc
            raise


def local_stage_operator(
    *, service: Service, platform: Platform, stage: ResolvedStage, **operator_kwargs: Any
) -> Any:
    if stage.stage in IMAGE_STAGES:
        return PythonOperator(
            python_callable=IMAGE_STAGES[stage.stage],
            op_kwargs={"service_name": service.name},
            **operator_kwargs,
        )
    if platform.local.runner == "docker":
        from delivery.profiles.local.docker import docker_stage_operator  # noqa: PLC0415 the docker SDK: docker runner only

        return docker_stage_operator(service=service, platform=platform, stage=stage, **operator_kwargs)
    # The runner (delivery.profiles.local.shell) sets DELIVERY_WORKSPACE and HOME to the run's checkout.
    # PYTHONPATH, the catalog folder and the profile are the commands' (python3 -m delivery.gpu.harness...).
    env = stage_env(
        service=service, platform=platform, stage=stage, workspace=None, registry=platform.local.registry
    )
    # The commit variables: the runner expands validate.checkout's result, read once (not once each).
    templates = source_templates()
    env = {name: value for name, value in env.items() if templates.get(name) != value}
    env[SOURCE_ENV] = SOURCE_TEMPLATE
    env.update(
        {
            "PATH": os.pathsep.join(
                [os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            ),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(PROJECT_ROOT / "plugins"),
            "DELIVERY_CATALOG_DIR": str(catalog_dir()),
            "DELIVERY_PROFILE": "local",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    command = (
        f"exec {shlex.quote(sys.executable)} -m delivery.profiles.local.shell "
        f"--service {shlex.quote(service.name)} --stage {shlex.quote(stage.name)}"
    )
    return StageShellOperator(
        stage_spec=StageSpec.resolve(service=service, platform=platform, stage=stage).to_json(),
        bash_command=command,
        env=env,
        append_env=False,
        skip_on_exit_code=SKIP_EXIT_CODE,
        do_xcom_push=stage.stage is Stage.GPU_BENCHMARK,
        **operator_kwargs,
    )
