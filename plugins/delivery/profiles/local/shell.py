"""Run one catalog stage as a shell command in the run's workspace (local profile).

Invoked by the stage's ``BashOperator`` as ``python -m delivery.profiles.local.shell
--service S --stage T`` with the clean stage environment; see
:mod:`delivery.profiles.local.stages` for the guarantees. The run's workspace
(:mod:`delivery.profiles.local.workspaces`) is found here from ``DELIVERY_RUN_ID``
and handed to the command as ``DELIVERY_WORKSPACE`` (also its ``HOME``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from delivery.catalog.models import Stage
from delivery.catalog.toolchains import resolve_stages
from delivery.gitops import GitOpsError
from delivery.paths import git_url
from delivery.profiles.local.workspaces import prepare_run_workspace, service_workspaces
from delivery.runtime import catalog

SKIP_EXIT_CODE = 99


def say(message: str) -> None:
    print(f"[delivery] {message}", flush=True)


def has_gpu() -> tuple[bool, str]:
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        if proc.returncode == 0 and "GPU" in proc.stdout:
            return True, proc.stdout.strip().splitlines()[0]
        return False, f"nvidia-smi found no GPU: {(proc.stderr or proc.stdout).strip()[:200]}"
    return False, "no NVIDIA driver on this machine (nvidia-smi not found)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def test_database() -> Iterator[str]:
    """A throwaway PostgreSQL cluster from the host's binaries; yields its URL."""
    from delivery.devenv.postgres import PostgresCluster, PostgresError

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True)
    parser.add_argument("--stage", required=True)
    args = parser.parse_args(argv)

    cat = catalog()
    service = cat.service(args.service)
    stage = resolve_stages(service, cat.platform)[Stage(args.stage)]
    env = dict(os.environ)
    sha = env["DELIVERY_SHA"]

    if stage.gpu:
        assert service.gpu is not None
        present, detail = has_gpu()
        if present:
            say(f"GPU: {detail}")
            env["DELIVERY_GPU_DEVICE"] = "cuda"
        elif service.gpu.allow_cpu_fallback:
            say(f"no GPU ({detail}); the catalog allows the CPU path, running on CPU")
            env["DELIVERY_GPU_DEVICE"] = "cpu"
        elif service.gpu.on_missing_gpu == "skip":
            say(f"skipped: no GPU: {detail}")
            return SKIP_EXIT_CODE
        else:
            say(f"failed: {service.name} requires a GPU for {stage.name}, and {detail}")
            return 1

    try:
        workspace = prepare_run_workspace(
            service_dir=service_workspaces(cat.platform, service.name),
            keep_failed=cat.platform.local.keep_failed_workspaces,
            run_id=env["DELIVERY_RUN_ID"],
            repo_url=git_url(service.repo.url),
            sha=sha,
        )
    except GitOpsError as exc:
        say(f"failed: no checkout of {sha} for {service.name}: {exc}")
        return 1
    env["DELIVERY_WORKSPACE"] = env["HOME"] = str(workspace)
    say(f"{service.name} {stage.name} at {sha[:12]} in {workspace}")
    with contextlib.ExitStack() as stack:
        for helper in stage.services:
            if helper.name == "test-db":
                env["DATABASE_URL"] = stack.enter_context(test_database())
            else:
                say(f"helper service {helper.name!r} has no local equivalent; only 'test-db' runs locally")
                return 1
        # stdin from /dev/null: bash treats a socket on stdin as a remote shell and would source bashrc
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", stage.command],
            cwd=workspace,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if proc.returncode != 0:
        say(f"{stage.name} failed with exit code {proc.returncode}")
        return proc.returncode if proc.returncode != SKIP_EXIT_CODE else 1
    if stage.stage is Stage.GPU_BENCHMARK:
        result = workspace / ".delivery" / "gpu-result.json"
        if not result.is_file():
            say(f"{stage.name} wrote no result at {result}")
            return 1
        print(json.dumps(json.loads(result.read_text()), separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
