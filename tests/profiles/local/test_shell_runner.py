"""The shell runner's stage process: the stage resolved at parse time, a process that imports almost nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from delivery.catalog import load_catalog
from delivery.pipeline.factory import DagFactory
from delivery.profiles.local.profile import LocalProfile
from delivery.profiles.local.shell import SPEC_ENV, StageSpec
from delivery.profiles.local.stages import StageShellOperator
from delivery.profiles.local.workspaces import run_workspace
from tests.helpers import ROOT
from tests.web.support import git, make_catalog, make_repo

if TYPE_CHECKING:
    from pathlib import Path

SERVICE = "visiobook-demo-web"
# Text a Jinja template would eat ({# starts a comment) and a shell would expand: it must reach bash as written.
COMMAND = 'arr=(a b); echo "count=${#arr[@]} {{ not_a_template }}" > out.txt; env > env.txt; cat app.txt'


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, str]:
    bare, work = make_repo(tmp_path, SERVICE, files={"app.txt": "v1\n"})
    return bare, git("rev-parse", "HEAD", cwd=work)


def _spec(tmp_path: Path, bare: Path, **changes: Any) -> StageSpec:
    fields: dict[str, Any] = {
        "service": SERVICE,
        "stage": "unit_tests",
        "command": COMMAND,
        "repo_url": str(bare),
        "workspaces": str(tmp_path / "workspaces" / SERVICE),
        "keep_failed_s": 3600.0,
    }
    return StageSpec(**{**fields, **changes})


def _run(spec: StageSpec, *, sha: str, run_id: str, catalog_dir: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT / "plugins"),
        "DELIVERY_CATALOG_DIR": catalog_dir,
        "DELIVERY_RUN_ID": run_id,
        "DELIVERY_SHA": sha,
        SPEC_ENV: spec.to_json(),
    }
    command = [sys.executable, "-m", "delivery.profiles.local.shell", "--service", spec.service]
    return subprocess.run(
        [*command, "--stage", spec.stage], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_stage_process_imports_neither_airflow_nor_the_catalog() -> None:
    code = (
        "import sys, delivery.profiles.local.shell\n"
        "heavy = {'airflow', 'pydantic', 'kubernetes', 'docker', 'requests', 'aiohttp'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "plugins")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_a_resolved_stage_runs_without_reading_the_catalog(tmp_path: Path, source: tuple[Path, str]) -> None:
    bare, sha = source
    spec = _spec(tmp_path, bare)
    proc = _run(spec, sha=sha, run_id="manual__1", catalog_dir=str(tmp_path / "no-catalog-here"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workspace = run_workspace(tmp_path / "workspaces" / SERVICE, "manual__1")
    assert (workspace / "out.txt").read_text() == "count=2 {{ not_a_template }}\n"
    assert "v1" in proc.stdout
    env = dict(line.split("=", 1) for line in (workspace / "env.txt").read_text().splitlines() if "=" in line)
    assert env["HOME"] == env["DELIVERY_WORKSPACE"] == str(workspace)
    assert SPEC_ENV not in env  # the runner's input is not the command's


def test_a_spec_for_another_stage_is_refused(tmp_path: Path, source: tuple[Path, str]) -> None:
    bare, sha = source
    spec = _spec(tmp_path, bare)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT / "plugins"),
        "DELIVERY_RUN_ID": "r",
        "DELIVERY_SHA": sha,
        SPEC_ENV: spec.to_json(),
    }
    command = [sys.executable, "-m", "delivery.profiles.local.shell", "--service", SERVICE, "--stage", "lint"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "is the stage visiobook-demo-web/unit_tests, not visiobook-demo-web/lint" in proc.stderr
    assert not (tmp_path / "workspaces").exists()


@pytest.mark.parametrize(
    ("policy", "code", "message"), [("skip", 99, "skipped: no GPU"), ("fail", 1, "requires a GPU")]
)
def test_a_gpu_stage_without_a_gpu_follows_its_policy(
    tmp_path: Path, source: tuple[Path, str], policy: str, code: int, message: str
) -> None:
    from delivery.profiles.local.shell import has_gpu

    if has_gpu()[0]:
        pytest.skip("this machine has a GPU: the no-GPU policy cannot be observed")
    bare, sha = source
    spec = _spec(tmp_path, bare, stage="gpu_inference", gpu_policy=policy)
    proc = _run(spec, sha=sha, run_id="manual__gpu", catalog_dir=str(tmp_path / "none"))
    assert proc.returncode == code
    assert message in proc.stdout
    assert not (tmp_path / "workspaces").exists()  # refused before any checkout


class _TaskInstance:
    """What a stage's templates read of the task instance: the checkout step's XCom."""

    dag_id, task_id, try_number = "deliver_visiobook_demo_web", "build_and_test.unit_tests", 1

    def __init__(self, source: dict[str, Any]) -> None:
        self._source = source

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self._source


def test_the_factory_s_stage_task_runs_its_resolved_stage(
    tmp_path: Path, source: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bare, sha = source
    root = make_catalog(tmp_path, repos={SERVICE: bare})
    platform_file = root / "platform.yaml"
    platform = yaml.safe_load(platform_file.read_text())
    platform["platform"]["local"]["workspace_root"] = str(tmp_path / "workspaces")
    platform_file.write_text(yaml.safe_dump(platform))
    service_file = root / "services" / f"{SERVICE}.yaml"
    data = yaml.safe_load(service_file.read_text())
    data["stages"]["unit_tests"] = {"command": COMMAND}
    service_file.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("DELIVERY_CATALOG_DIR", str(root))
    catalog, _ = load_catalog(root)
    dag = DagFactory(catalog=catalog, profile=LocalProfile()).build(catalog.service(SERVICE))
    task = dag.get_task("build_and_test.unit_tests")
    assert isinstance(task, StageShellOperator)
    assert json.loads(task.stage_spec)["command"] == COMMAND
    assert "stage_spec" not in task.template_fields
    assert [name for name, value in task.env.items() if "xcom_pull" in value] == [
        "DELIVERY_SOURCE"
    ]  # read once

    source_xcom = {"sha": sha, "ref": "main", "branch": "main", "tag": "", "image_tags": [sha, "main"]}
    context: Any = {"ti": _TaskInstance(source_xcom), "run_id": "manual__op", "params": {}}
    task.render_template_fields(context)
    task.execute(context)

    workspace = run_workspace(tmp_path / "workspaces" / SERVICE, "manual__op")
    assert (workspace / "out.txt").read_text() == "count=2 {{ not_a_template }}\n"
    env = dict(line.split("=", 1) for line in (workspace / "env.txt").read_text().splitlines() if "=" in line)
    assert env["DELIVERY_SHA"] == sha and env["IMAGE_TAGS"] == f"{sha} main"
    assert env["DELIVERY_REF"] == env["DELIVERY_BRANCH"] == "main"
    assert SPEC_ENV not in env and "DELIVERY_SOURCE" not in env
