"""What every runner passes to a stage: the environment contract of stage commands.

Values are Jinja templates rendered by Airflow at run time, reading the commit
resolved by ``validate.checkout`` from XCom, so that every stage of a run
works on the same commit even when the trigger named a branch. A runner that
starts its own process (the local shell runner) may read that result once
instead (:data:`SOURCE_TEMPLATE`, :func:`source_env`): one XCom read per stage
rather than one per variable.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only types: the local stage runner's process imports this module without pydantic
    from collections.abc import Mapping

    from delivery.catalog.models import Platform, Service
    from delivery.catalog.toolchains import ResolvedStage

CHECKOUT_TASK = "validate.checkout"
TEST_DATABASE_URL = "postgresql://test:test@127.0.0.1:5432/test"
"""Where a stage's ``test-db`` helper service answers (a sidecar in Kubernetes)."""


def _commit(key: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + CHECKOUT_TASK + "')['" + key + "'] }}"


COMMIT_SHA = _commit("sha")
_SOURCE_VARS = {"DELIVERY_SHA": "sha", "DELIVERY_REF": "ref", "DELIVERY_BRANCH": "branch"}
SOURCE_ENV = "DELIVERY_SOURCE"
SOURCE_TEMPLATE = "{{ ti.xcom_pull(task_ids='" + CHECKOUT_TASK + "') | tojson }}"
"""``validate.checkout``'s whole result as JSON, for :func:`source_env` (one XCom read)."""


def source_templates() -> dict[str, str]:
    """The variables of the contract read from ``validate.checkout``'s result, as templates."""
    templates = {name: _commit(key) for name, key in _SOURCE_VARS.items()}
    templates["IMAGE_TAGS"] = "{{ ti.xcom_pull(task_ids='" + CHECKOUT_TASK + "')['image_tags'] | join(' ') }}"
    return templates


def source_env(source: Mapping[str, Any]) -> dict[str, str]:
    """The same variables, with the values those templates render, from the result itself."""
    env = {name: str(source[key]) for name, key in _SOURCE_VARS.items()}
    env["IMAGE_TAGS"] = " ".join(str(tag) for tag in source["image_tags"])
    return env


def untrusted(context: Any) -> bool:
    """Whether this run builds code nobody trusted yet (a fork's or an outside contributor's pull request).

    Such a run waits for an approver at ``validate.trust``, and its stages never get secrets.
    """
    params = context.get("params") or {}
    return params.get("trusted") is False


SLUG_LENGTH = 80
DIGEST_LENGTH = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_folder(run_id: str) -> str:
    """The folder name of a run's workspace: ``<slug>-<12 hex of sha256(run id)>`` (``run-<hex>`` when no slug).

    Safe and unique for any run id (``.``, ``..``, ``a/b``, two ids with the same slug), in both
    profiles: a local folder, or the ``subPath`` of the workspace claim in Kubernetes.
    """
    slug = _UNSAFE.sub("-", run_id).strip(".-")[:SLUG_LENGTH].rstrip(".-")
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_LENGTH]
    return f"{slug or 'run'}-{digest}"


TEMPLATE_FILTERS = {"run_folder": run_folder}
"""Jinja filters every generated DAG declares (``user_defined_filters``)."""

RUN_KEY = "{{ run_id | run_folder }}"


def stage_env(
    *, service: Service, platform: Platform, stage: ResolvedStage, workspace: str | None, registry: str
) -> dict[str, str]:
    """The env vars a stage command can rely on (see :mod:`delivery.catalog.toolchains`).

    ``workspace`` None: the runner sets ``DELIVERY_WORKSPACE`` itself at run time (the local
    shell runner, which computes the run's folder from ``DELIVERY_RUN_ID``).
    """
    env = {
        "DELIVERY_SERVICE": service.name,
        "DELIVERY_STAGE": stage.name,
        **source_templates(),
        "DELIVERY_RUN_ID": "{{ run_id }}",
        "DELIVERY_REPO_URL": service.repo.url,
        "IMAGE": f"{registry}/{service.image.repository}",
        "IMAGE_CONTEXT": service.image.context,
        "IMAGE_DOCKERFILE": service.image.dockerfile,
        "MIN_COVERAGE": f"{service.min_coverage:g}",
        "STAGING_URL": service.environments.staging.url,
        "DAST_TARGET_URL": "http://127.0.0.1:8080",
    }
    if workspace is not None:
        env["DELIVERY_WORKSPACE"] = workspace
    if service.sonar_project_key:
        env["SONAR_PROJECT_KEY"] = service.sonar_project_key
    if any(s.name == "test-db" for s in stage.services):
        env["DATABASE_URL"] = TEST_DATABASE_URL
    if service.gpu is not None:
        env["GPU_MODEL"] = service.gpu.model
        env["GPU_BATCH_SIZES"] = ",".join(str(b) for b in service.gpu.batch_sizes)
    env.update(stage.env)
    return env
