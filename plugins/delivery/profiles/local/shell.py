"""Run one catalog stage as a shell command in the run's workspace (local profile).

The stage's ``BashOperator`` (:class:`~delivery.profiles.local.stages.StageShellOperator`)
runs ``python -m delivery.profiles.local.shell --service S --stage T`` with the clean stage
environment, plus the stage **resolved at parse time** (:class:`StageSpec`: its command,
helper services, GPU policy, repository and workspace folder) as JSON in
``DELIVERY_STAGE_SPEC``. So this process imports almost nothing (no Airflow, no catalog, no
pydantic) and reads no catalog file. Without ``DELIVERY_STAGE_SPEC`` (by hand, or a test) it
resolves the stage from the catalog first.

See :mod:`delivery.profiles.local.stages` for the guarantees. The run's workspace
(:mod:`delivery.profiles.local.workspaces`) is found here from ``DELIVERY_RUN_ID`` and
handed to the command as ``DELIVERY_WORKSPACE`` (also its ``HOME``). ``DELIVERY_SOURCE``
(``validate.checkout``'s result, read once by the operator) becomes the contract's commit
variables (``DELIVERY_SHA``, ``DELIVERY_REF``, ``DELIVERY_BRANCH``, ``IMAGE_TAGS``); it and the
spec are removed from the command's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from delivery.gitops.errors import GitOpsError
from delivery.paths import git_url
from delivery.pipeline.contract import SOURCE_ENV, source_env
from delivery.profiles.local.workspaces import prepare_run_workspace, service_workspaces

if TYPE_CHECKING:
    from collections.abc import Iterator

    from delivery.catalog.models import Platform, Service
    from delivery.catalog.toolchains import ResolvedStage

SKIP_EXIT_CODE = 99
SPEC_ENV = "DELIVERY_STAGE_SPEC"
GPU_BENCHMARK = "gpu_benchmark"


def say(message: str) -> None:
    print(f"[delivery] {message}", flush=True)


def gpu_policy(service: Service, stage: ResolvedStage) -> str | None:
    """What a GPU stage does on a host without a GPU: ``cpu``, ``skip`` or ``fail``; None: no GPU needed."""
    if not stage.gpu or service.gpu is None:
        return None
    return "cpu" if service.gpu.allow_cpu_fallback else service.gpu.on_missing_gpu


@dataclass(frozen=True)
class StageSpec:
    """One stage as the catalog resolves it: everything its process needs, as plain data."""

    service: str
    stage: str
    command: str
    repo_url: str  # as git understands it (a relative catalog path made absolute)
    workspaces: str  # the service's folder of run workspaces
    keep_failed_s: float  # platform.local.keep_failed_workspaces
    helpers: list[str] = field(default_factory=list)  # helper services (only "test-db" runs locally)
    gpu_policy: str | None = None

    @classmethod
    def resolve(cls, *, service: Service, platform: Platform, stage: ResolvedStage) -> StageSpec:
        return cls(
            service=service.name,
            stage=stage.name,
            command=stage.command,
            repo_url=git_url(service.repo.url),
            workspaces=str(service_workspaces(platform, service.name)),
            keep_failed_s=platform.local.keep_failed_workspaces.total_seconds(),
            helpers=[helper.name for helper in stage.services],
            gpu_policy=gpu_policy(service, stage),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StageSpec:
        return cls(**json.loads(text))


def from_catalog(service_name: str, stage_name: str) -> StageSpec:
    """The stage resolved from the catalog on disk (when no resolved stage was passed)."""
    from delivery.catalog.models import Stage  # noqa: PLC0415 pydantic: only without a resolved stage
    from delivery.catalog.toolchains import resolve_stages  # noqa: PLC0415 pydantic: only without a resolved stage
    from delivery.runtime import catalog  # noqa: PLC0415 Airflow's Task SDK: only without a resolved stage

    cat = catalog()
    service = cat.service(service_name)
    stage = resolve_stages(service, cat.platform)[Stage(stage_name)]
    return StageSpec.resolve(service=service, platform=cat.platform, stage=stage)


def has_gpu() -> tuple[bool, str]:
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        if proc.returncode == 0 and "GPU" in proc.stdout:
            return True, proc.stdout.strip().splitlines()[0]
        return False, f"nvidia-smi found no GPU: {(proc.stderr or proc.stdout).strip()[:200]}"
    return False, "no NVIDIA driver on this machine (nvidia-smi not found)"


@contextlib.contextmanager
def test_database() -> Iterator[str]:
    """A throwaway PostgreSQL cluster from the host's binaries; yields its URL."""
    from delivery.devenv.postgres import (  # noqa: PLC0415 test-db stages only: the stage process stays minimal
        PostgresCluster,
        PostgresError,
    )

    folder = Path(tempfile.mkdtemp(prefix="delivery-testdb-"))
    try:
        cluster = PostgresCluster(folder=folder, user="test").start()
    except PostgresError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"[delivery] this stage needs a test database: {exc}") from exc
    try:
        cluster.create_database("test")
        say(f"test database ready on 127.0.0.1:{cluster.port}")
        yield cluster.url("test")
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
        say("test database stopped")


def check_gpu(spec: StageSpec, env: dict[str, str]) -> int | None:
    """Sets ``DELIVERY_GPU_DEVICE`` for a GPU stage; an exit code when the stage must not run."""
    if spec.gpu_policy is None:
        return None
    present, detail = has_gpu()
    if present:
        say(f"GPU: {detail}")
        env["DELIVERY_GPU_DEVICE"] = "cuda"
    elif spec.gpu_policy == "cpu":
        say(f"no GPU ({detail}); the catalog allows the CPU path, running on CPU")
        env["DELIVERY_GPU_DEVICE"] = "cpu"
    elif spec.gpu_policy == "skip":
        say(f"skipped: no GPU: {detail}")
        return SKIP_EXIT_CODE
    else:
        say(f"failed: {spec.service} requires a GPU for {spec.stage}, and {detail}")
        return 1
    return None


def run_command(spec: StageSpec, env: dict[str, str], workspace: Path) -> int:
    """The stage's command in ``workspace``, with its helper services; the stage's exit code."""
    with contextlib.ExitStack() as stack:
        for helper in spec.helpers:
            if helper == "test-db":
                env["DATABASE_URL"] = stack.enter_context(test_database())
            else:
                say(f"helper service {helper!r} has no local equivalent; only 'test-db' runs locally")
                return 1
        # stdin from /dev/null: bash treats a socket on stdin as a remote shell and would source bashrc
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", spec.command],
            cwd=workspace,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if proc.returncode != 0:
        say(f"{spec.stage} failed with exit code {proc.returncode}")
        return proc.returncode if proc.returncode != SKIP_EXIT_CODE else 1
    if spec.stage == GPU_BENCHMARK:
        result = workspace / ".delivery" / "gpu-result.json"
        if not result.is_file():
            say(f"{spec.stage} wrote no result at {result}")
            return 1
        print(json.dumps(json.loads(result.read_text()), separators=(",", ":")), flush=True)
    return 0


def run_stage(spec: StageSpec, env: dict[str, str]) -> int:
    """Check the GPU, prepare the run's checkout, run the command: the process's exit code."""
    sha = env["DELIVERY_SHA"]
    refused = check_gpu(spec, env)
    if refused is not None:
        return refused
    try:
        workspace = prepare_run_workspace(
            service_dir=Path(spec.workspaces),
            keep_failed=timedelta(seconds=spec.keep_failed_s),
            run_id=env["DELIVERY_RUN_ID"],
            repo_url=spec.repo_url,
            sha=sha,
        )
    except GitOpsError as exc:
        say(f"failed: no checkout of {sha} for {spec.service}: {exc}")
        return 1
    env["DELIVERY_WORKSPACE"] = env["HOME"] = str(workspace)
    say(f"{spec.service} {spec.stage} at {sha[:12]} in {workspace}")
    return run_command(spec, env, workspace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True)
    parser.add_argument("--stage", required=True)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    source = env.pop(SOURCE_ENV, None)
    if source:  # validate.checkout's result: the commit variables a stage command relies on
        for name, value in source_env(json.loads(source)).items():
            env.setdefault(name, value)
    resolved = env.pop(SPEC_ENV, None)
    spec = StageSpec.from_json(resolved) if resolved else from_catalog(args.service, args.stage)
    if (spec.service, spec.stage) != (args.service, args.stage):
        parser.error(f"{SPEC_ENV} is the stage {spec.service}/{spec.stage}, not {args.service}/{args.stage}")
    return run_stage(spec, env)


if __name__ == "__main__":
    sys.exit(main())
