"""Per-run workspaces of the local profile: safe unique folders, isolation between runs, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import yaml

from delivery.catalog import load_catalog
from delivery.gitops import InvalidRequestError
from delivery.profiles.local.profile import LocalProfile
from delivery.profiles.local.workspaces import (
    ensure_workspace,
    finish_workspace,
    prepare_run_workspace,
    run_folder,
    run_workspace,
    service_workspaces,
    sweep,
)
from tests.helpers import ROOT
from tests.web.support import commit, git, make_catalog, make_repo

if TYPE_CHECKING:
    from pathlib import Path

SERVICE = "visiobook-demo-web"
RUN_IDS = [
    ".",
    "..",
    "a/b",
    "../../etc",
    "manual__2026-01-01T00:00:00+00:00",
    "manual__2026-01-01T00-00-00-00-00",  # slugs like the one above
    "a:b",
    "a+b",  # slugs like "a:b"
    "",
    "x" * 300,
]


def test_every_run_id_gets_its_own_safe_folder_inside_the_service_folder(tmp_path: Path) -> None:
    service_dir = tmp_path / "workspaces" / SERVICE
    folders = [run_workspace(service_dir, run_id) for run_id in RUN_IDS]
    assert len(set(folders)) == len(RUN_IDS)
    for folder in folders:
        assert folder.parent == service_dir
        assert folder.resolve().parent == service_dir.resolve()
        assert not folder.name.startswith((".", "-")) and "/" not in folder.name
        assert len(folder.name) <= 100
    assert run_folder("manual__2026-01-01T00:00:00+00:00").startswith("manual__2026-01-01T00-00-00-00-00-")
    assert run_folder("manual__x") == run_folder("manual__x")


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Path]:
    """A service repository (bare) and its working clone."""
    return make_repo(tmp_path, SERVICE, files={"app.txt": "v1\n"})


def test_a_run_named_dot_leaves_the_other_runs_checkouts_alone(
    tmp_path: Path, source: tuple[Path, Path]
) -> None:
    bare, work = source
    first = git("rev-parse", "HEAD", cwd=work)
    second = commit(work, path="app.txt", text="v2\n")
    service_dir = tmp_path / "workspaces" / SERVICE
    keep = timedelta(hours=24)

    other = prepare_run_workspace(
        service_dir=service_dir, keep_failed=keep, run_id="manual__1", repo_url=str(bare), sha=first
    )
    (other / "build-output.txt").write_text("from the first run\n")
    for run_id in (".", ".."):
        ws = prepare_run_workspace(
            service_dir=service_dir, keep_failed=keep, run_id=run_id, repo_url=str(bare), sha=second
        )
        assert (ws / "app.txt").read_text() == "v2\n"
        assert ws.parent == service_dir

    assert (other / "build-output.txt").read_text() == "from the first run\n"
    assert git("rev-parse", "HEAD", cwd=other) == first
    assert (other / "app.txt").read_text() == "v1\n"


def test_a_workspace_at_another_commit_is_checked_out_again(
    tmp_path: Path, source: tuple[Path, Path]
) -> None:
    bare, work = source
    first = git("rev-parse", "HEAD", cwd=work)
    second = commit(work, path="app.txt", text="v2\n")
    workspace = tmp_path / "ws" / run_folder("run")
    ensure_workspace(workspace, str(bare), first)
    ensure_workspace(workspace, str(bare), second)
    assert git("rev-parse", "HEAD", cwd=workspace) == second
    with pytest.raises(InvalidRequestError, match="not a full 40-character"):
        ensure_workspace(workspace, str(bare), "--upload-pack=touch pwned")


def test_success_removes_the_workspace_and_failures_are_kept_until_they_expire(
    tmp_path: Path, source: tuple[Path, Path]
) -> None:
    bare, work = source
    sha = git("rev-parse", "HEAD", cwd=work)
    service_dir = tmp_path / "workspaces" / SERVICE
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    ws = {run: run_workspace(service_dir, run) for run in ("ok", "old-failure", "new-failure", "running")}
    for workspace in ws.values():
        ensure_workspace(workspace, str(bare), sha)

    assert finish_workspace(ws["ok"], succeeded=True) == "removed"
    assert finish_workspace(ws["old-failure"], succeeded=False, now=now - timedelta(hours=25)) == "kept"
    assert finish_workspace(ws["new-failure"], succeeded=False, now=now - timedelta(hours=1)) == "kept"
    assert finish_workspace(run_workspace(service_dir, "no-stage-ran"), succeeded=True) == "absent"
    assert not ws["ok"].exists()
    assert all(ws[name].is_dir() for name in ("old-failure", "new-failure", "running"))

    removed = sweep(service_dir, keep_failed=timedelta(hours=24), now=now)

    assert removed == [ws["old-failure"].name]
    assert not ws["old-failure"].exists()
    assert ws["new-failure"].is_dir() and ws["running"].is_dir()
    assert sorted(p.name for p in service_dir.iterdir() if not p.name.startswith(".")) == sorted(
        [ws["new-failure"].name, ws["running"].name]
    )
    # Only the lock and record files of the remaining workspaces are left.
    assert {p.name for p in service_dir.iterdir() if p.name.startswith(".")} == {
        f".{ws['new-failure'].name}.lock",
        f".{ws['new-failure'].name}.finished",
        f".{ws['running'].name}.lock",
    }


def test_a_cleared_failed_run_that_reruns_is_not_swept(tmp_path: Path, source: tuple[Path, Path]) -> None:
    bare, work = source
    sha = git("rev-parse", "HEAD", cwd=work)
    workspace = run_workspace(tmp_path / "workspaces" / SERVICE, "failed-then-cleared")
    ensure_workspace(workspace, str(bare), sha)
    finish_workspace(workspace, succeeded=False, now=datetime.now(UTC) - timedelta(days=3))
    ensure_workspace(workspace, str(bare), sha)  # a stage of the cleared run prepares it again
    assert sweep(workspace.parent, keep_failed=timedelta(hours=1)) == []
    assert workspace.is_dir()


@pytest.fixture
def catalog_dir(tmp_path: Path, source: tuple[Path, Path]) -> Path:
    """The local catalog with workspaces under ``tmp_path`` and a unit test stage that reports where it ran."""
    bare, _work = source
    root = make_catalog(tmp_path, repos={SERVICE: bare})
    platform_file = root / "platform.yaml"
    platform = yaml.safe_load(platform_file.read_text())
    platform["platform"]["local"]["workspace_root"] = str(tmp_path / "workspaces")
    platform_file.write_text(yaml.safe_dump(platform))
    service_file = root / "services" / f"{SERVICE}.yaml"
    service = yaml.safe_load(service_file.read_text())
    service["stages"]["unit_tests"] = {
        "command": 'echo "$PWD $HOME $DELIVERY_WORKSPACE" > where.txt; cat app.txt'
    }
    service_file.write_text(yaml.safe_dump(service, sort_keys=False))
    return root


def _run_stage(catalog_dir: Path, *, run_id: str, sha: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT / "plugins"),
        "DELIVERY_CATALOG_DIR": str(catalog_dir),
        "DELIVERY_PROFILE": "local",
        "DELIVERY_RUN_ID": run_id,
        "DELIVERY_SHA": sha,
    }
    command = [
        sys.executable,
        "-m",
        "delivery.profiles.local.shell",
        "--service",
        SERVICE,
        "--stage",
        "unit_tests",
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_shell_runner_runs_each_run_in_its_own_folder(
    catalog_dir: Path, source: tuple[Path, Path]
) -> None:
    _bare, work = source
    sha = git("rev-parse", "HEAD", cwd=work)
    catalog, _ = load_catalog(catalog_dir)
    service_dir = service_workspaces(catalog.platform, SERVICE)

    for run_id in (".", "scheduled__2026-01-01T00:00:00+00:00"):
        proc = _run_stage(catalog_dir, run_id=run_id, sha=sha)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        workspace = service_dir / run_folder(run_id)
        assert (workspace / "where.txt").read_text().split() == [str(workspace)] * 3
        assert "v1" in proc.stdout

    assert len([p for p in service_dir.iterdir() if not p.name.startswith(".")]) == 2


def test_the_shell_runner_reports_a_commit_it_cannot_check_out(
    catalog_dir: Path, source: tuple[Path, Path]
) -> None:
    proc = _run_stage(catalog_dir, run_id="manual__1", sha="c" * 40)
    assert proc.returncode == 1
    assert f"failed: no checkout of {'c' * 40}" in proc.stdout


def test_the_local_profile_cleans_up_at_the_end_of_a_run(
    catalog_dir: Path, source: tuple[Path, Path]
) -> None:
    bare, work = source
    sha = git("rev-parse", "HEAD", cwd=work)
    catalog, _ = load_catalog(catalog_dir)
    service = catalog.service(SERVICE)
    service_dir = service_workspaces(catalog.platform, SERVICE)
    for run_id in ("good", "bad"):
        ensure_workspace(run_workspace(service_dir, run_id), str(bare), sha)

    profile = LocalProfile()
    profile.finish_run(service=service, platform=catalog.platform, run_id="good", succeeded=True)
    profile.finish_run(service=service, platform=catalog.platform, run_id="bad", succeeded=False)

    assert not run_workspace(service_dir, "good").exists()
    assert run_workspace(service_dir, "bad").is_dir()
    assert catalog.platform.local.keep_failed_workspaces == timedelta(hours=24)
