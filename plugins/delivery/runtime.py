"""The bottom floor: process-wide accessors for the run-time steps.

Every step callable, web endpoint and notifier reaches the catalog and the
GitOps repository through these functions. This module imports only the
catalog, the paths and the GitOps package; nothing above it (steps, profiles,
the pipeline factory) is ever imported from here, so there is no import cycle
to fall into.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from pathlib import Path

from airflow.sdk.bases.hook import BaseHook
from airflow.sdk.exceptions import AirflowFailException

from delivery.catalog import Catalog, Service, load_catalog
from delivery.catalog.loader import catalog_dir
from delivery.gitops import GitOpsRepo
from delivery.paths import git_url

log = logging.getLogger(__name__)


class PipelineError(AirflowFailException):
    """A pipeline step failed for a reason the message explains.

    Final: the task's retries are kept for infrastructure failures (a killed worker, a lost
    heartbeat), never spent on a reason that would fail again.
    """


@functools.lru_cache(maxsize=4)
def _catalog_cached(key: tuple[str, float]) -> Catalog:
    catalog, _ = load_catalog(key[0], strict=False)
    return catalog


def catalog() -> Catalog:
    """The catalog as it is on disk now (re-read when a file changes)."""
    root = catalog_dir()
    mtime = max((p.stat().st_mtime for p in root.rglob("*.y*ml")), default=0.0)
    return _catalog_cached((str(root), mtime))


def service(name: str) -> Service:
    return catalog().service(name)


def gitops_repo() -> GitOpsRepo:
    """The platform's GitOps repository, with the credentials of its Airflow connection if any."""
    platform = catalog().platform
    url = git_url(platform.gitops.repo_url)
    username = password = None
    try:
        conn = BaseHook.get_connection(platform.connections.gitops)
        username, password = conn.login, conn.password
    except Exception:  # no connection configured: anonymous or the worker's git credentials
        log.debug("no GitOps connection %r", platform.connections.gitops)
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    workdir = Path(tempfile.gettempdir()) / "delivery-gitops" / key
    return GitOpsRepo(
        url=url, workdir=workdir, branch=platform.gitops.branch, username=username, password=password
    )
