"""Per-run workspaces of the local profile: one checkout per run, a safe folder name, a cleanup.

``<workspace_root>/<service>/<run folder>`` is a clone of the service's
repository checked out (detached) at the run's commit. The shell runner, the
Docker runner and the image steps all find it with :func:`run_workspace`,
computed in Python at run time from the run id, never from a template.

* **Folder names** (:func:`run_folder`): a run id is free text (``.``, ``..``,
  ``a/b``, ``manual__2026-01-01T00:00:00+00:00``). The folder is a readable
  slug of it (letters, digits, ``.``, ``_``, ``-``; never starting with a dot)
  plus 12 hex digits of the SHA-256 of the exact run id, so every run id gets
  its own folder inside the service's folder, and two run ids that slug the
  same still differ.
* **Preparation** (:func:`ensure_workspace`) happens under a lock (a sibling
  ``.<folder>.lock``) by whichever stage needs the checkout first, so reruns
  and parallel stages are safe; the checkout's ``HEAD`` must be the run's commit. Every
  later stage of the run finds the checkout there: under the lock, it reads the detached
  ``HEAD`` from ``.git/HEAD`` (no git process, no clone), which is the common case.
* **Cleanup**: at the end of a run (:func:`finish_workspace`, from the
  pipeline's outcome task) a successful run's workspace is removed; a failed
  run's is kept for inspection with a sibling ``.<folder>.finished`` record,
  and removed by a later run's :func:`sweep` once older than the catalog's
  ``platform.local.keep_failed_workspaces``. A workspace without a record
  belongs to a run still going (or one that never reached its outcome task)
  and is never swept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from delivery.gitops.errors import GitOpsError, GitOpsLockTimeoutError
from delivery.gitops.git import SHA_RE, Git, check_sha
from delivery.gitops.locks import file_lock
from delivery.paths import project_path
from delivery.pipeline.contract import run_folder

if TYPE_CHECKING:
    from collections.abc import Iterator

    from delivery.catalog.models import Platform

log = logging.getLogger(__name__)

__all__ = [
    "WorkspaceError",
    "ensure_workspace",
    "finish_workspace",
    "prepare_run_workspace",
    "run_folder",
    "run_workspace",
    "service_workspaces",
    "sweep",
]

CLONE_TIMEOUT_S = 600.0
FINISH_LOCK_TIMEOUT_S = 60.0


class WorkspaceError(GitOpsError):
    """A workspace could not be prepared at the run's commit."""


def service_workspaces(platform: Platform, service_name: str) -> Path:
    """The folder holding a service's run workspaces."""
    return project_path(platform.local.workspace_root) / service_name


def run_workspace(service_dir: Path, run_id: str) -> Path:
    return service_dir / run_folder(run_id)


def _lock_path(workspace: Path) -> Path:
    return workspace.parent / f".{workspace.name}.lock"


def _record_path(workspace: Path) -> Path:
    return workspace.parent / f".{workspace.name}.finished"


def _head(workspace: Path) -> str:
    """The commit the checkout's ``HEAD`` names: read from ``.git/HEAD`` when it is detached at a
    commit (every workspace is), else asked of git."""
    git_dir = workspace / ".git"
    if not git_dir.is_dir():
        return ""
    try:
        detached = (git_dir / "HEAD").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        detached = ""
    if SHA_RE.match(detached):
        return detached
    proc = Git(cwd=workspace).run("rev-parse", "-q", "--verify", "HEAD", action="git rev-parse", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def ensure_workspace(workspace: Path, repo_url: str, sha: str) -> None:
    """Clone ``repo_url`` at ``sha`` into ``workspace`` once, under a lock; verify ``HEAD``."""
    commit = check_sha(sha, what="commit")
    with file_lock(_lock_path(workspace), timeout_s=None, what=f"workspace {workspace}"):
        _record_path(workspace).unlink(missing_ok=True)  # in use (again): not finished
        if _head(workspace) != commit:
            if workspace.exists():
                shutil.rmtree(workspace)
            log.info("checking out %s of %s in %s", commit, Git(repo=repo_url).display, workspace)
            Git(repo=repo_url, timeout_s=CLONE_TIMEOUT_S).run(
                "clone",
                "--quiet",
                "--no-checkout",
                "--",
                repo_url,
                str(workspace),
                action="git clone",
                remote=True,
            )
            Git(cwd=workspace).run(
                "checkout", "--quiet", "--detach", commit, "--", action=f"git checkout {commit}"
            )
        head = _head(workspace)
        if head != commit:
            raise WorkspaceError(f"workspace {workspace} is at {head or 'no commit'}, expected {commit}")
    (workspace / ".delivery").mkdir(exist_ok=True)


def prepare_run_workspace(
    *, service_dir: Path, keep_failed: timedelta, run_id: str, repo_url: str, sha: str
) -> Path:
    """The run's workspace in ``service_dir`` at ``sha``, after sweeping the expired failed ones."""
    sweep(service_dir, keep_failed=keep_failed)
    workspace = run_workspace(service_dir, run_id)
    ensure_workspace(workspace, repo_url, sha)
    return workspace


def _remove(workspace: Path) -> None:
    """Remove a workspace, its record and its lock file (the caller holds the lock)."""
    shutil.rmtree(workspace, ignore_errors=True)
    _record_path(workspace).unlink(missing_ok=True)
    _lock_path(workspace).unlink(missing_ok=True)


def finish_workspace(workspace: Path, *, succeeded: bool, now: datetime | None = None) -> str:
    """End of a run: remove the workspace of a success, keep a failure's with its record.

    Returns what happened: ``removed``, ``kept`` or ``absent`` (no workspace: no stage ran here).
    """
    with file_lock(_lock_path(workspace), timeout_s=FINISH_LOCK_TIMEOUT_S, what=f"workspace {workspace}"):
        if not workspace.exists():
            _remove(workspace)
            return "absent"
        if succeeded:
            _remove(workspace)
            log.info("removed the workspace %s of a successful run", workspace)
            return "removed"
        finished = (now or datetime.now(UTC)).isoformat()
        _record_path(workspace).write_text(json.dumps({"state": "failed", "finished_at": finished}))
        log.info("kept the workspace %s of a failed run for inspection", workspace)
        return "kept"


def _finished_at(record: Path) -> datetime | None:
    """When the run of a record finished (the record's own time when it cannot be read)."""
    try:
        data = json.loads(record.read_text())
        finished = datetime.fromisoformat(str(data["finished_at"]))
    except (ValueError, KeyError, TypeError):
        try:
            return datetime.fromtimestamp(record.stat().st_mtime, tz=UTC)
        except OSError:
            return None
    except OSError:
        return None  # removed meanwhile
    return finished if finished.tzinfo else finished.replace(tzinfo=UTC)


def _records(service_dir: Path) -> Iterator[tuple[Path, datetime | None]]:
    if not service_dir.is_dir():
        return
    for record in sorted(service_dir.glob(".*.finished")):
        yield service_dir / record.name[1 : -len(".finished")], _finished_at(record)


def sweep(service_dir: Path, *, keep_failed: timedelta, now: datetime | None = None) -> list[str]:
    """Remove the failed runs' workspaces finished more than ``keep_failed`` ago; their folder names.

    A workspace whose lock is held (a rerun preparing it) is left for a later sweep.
    """
    moment = now or datetime.now(UTC)
    removed = []
    for workspace, finished in _records(service_dir):
        if finished is None or moment - finished < keep_failed:
            continue
        lock = file_lock(_lock_path(workspace), timeout_s=0, what=f"workspace {workspace}")
        with contextlib.suppress(GitOpsLockTimeoutError), lock:
            if _record_path(workspace).exists():  # not taken back by a rerun meanwhile
                _remove(workspace)
                removed.append(workspace.name)
    if removed:
        log.info(
            "removed %d expired workspace(s) of failed runs in %s: %s", len(removed), service_dir, removed
        )
    return removed
