"""Release steps: the GitOps commit of an environment and the record of a verified release."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from delivery.gitops.repo import ReleaseMetadata
from delivery.pipeline import task_ids as ids
from delivery.runtime import PipelineError, gitops_repo, service

log = logging.getLogger(__name__)


def checked_out(context: dict[str, Any]) -> dict[str, Any]:
    src = context["ti"].xcom_pull(task_ids=ids.CHECKOUT)
    if not src:
        raise PipelineError("no resolved commit from validate.checkout; rerun that task first")
    return dict(src)


def _approver(context: dict[str, Any]) -> str | None:
    result = context["ti"].xcom_pull(task_ids=ids.APPROVE_PRODUCTION)
    if isinstance(result, dict):
        user = result.get("responded_by_user") or result.get("responded_by") or {}
        if isinstance(user, dict):
            return user.get("name") or user.get("id")
    return None


def gitops_commit(
    *, service_name: str, environment: str, image_repository: str, **context: Any
) -> dict[str, Any]:
    """Set the run's image tag in the environment's Helm values and push (idempotent).

    ``image_repository`` is ``registry/repository`` of the active profile's registry.
    """
    svc = service(service_name)
    env = getattr(svc.environments, environment)
    src = checked_out(context)
    result = gitops_repo().deploy(
        environment=environment,
        service=svc.name,
        values_path=env.values_path,
        image_tag=src["sha"],
        image_repository=image_repository,
        metadata=ReleaseMetadata(
            source_sha=src["sha"],
            run_id=context["run_id"],
            approver=_approver(context) if environment == "production" else None,
            migration=svc.migrations or bool(context["params"].get("migration")),
        ),
    )
    log.info(
        "%s %s: %s at GitOps revision %s",
        svc.name,
        environment,
        "committed" if result.changed else "already deployed",
        result.revision,
    )
    # When the deploy started, for the deploy duration metric (steps/outcome.py).
    return {**result.as_dict(), "committed_at": datetime.now(UTC).isoformat()}


def record_verification(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Mark the production release as verified (stable) in the GitOps history."""
    svc = service(service_name)
    deploy = context["ti"].xcom_pull(task_ids=ids.PRODUCTION_COMMIT)
    verdict = context["ti"].xcom_pull(task_ids=ids.VERIFY) or {}
    repo = gitops_repo()
    release = repo.get_release(
        environment="production",
        service=svc.name,
        values_path=svc.environments.production.values_path,
        revision=deploy["revision"],
    )
    summary = verdict.get("message") if isinstance(verdict, dict) else None
    repo.mark_verified(release=release, ok=True, summary=summary or "verification passed")
    return {"revision": release.revision, "image_tag": release.image_tag, "stable": True}
