"""Release steps: the GitOps commit of an environment and the record of a verified release."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from delivery.catalog import Service
from delivery.gitops import GitOpsError, GitOpsRepo, ReleaseMetadata
from delivery.gitops.remote import commit_authors, is_ancestor
from delivery.integrations.airflow_api import (
    SET_BY_HAND,
    AirflowApiError,
    AirflowApiHook,
    describe_state_changes,
)
from delivery.notify import PipelineEvent, notify_event
from delivery.paths import git_url
from delivery.pipeline import task_ids as ids
from delivery.runtime import PipelineError, catalog, gitops_repo, service
from delivery.steps.approval import Decision, decide
from delivery.steps.source import SHA_RE

log = logging.getLogger(__name__)


def checked_out(context: dict[str, Any]) -> dict[str, Any]:
    src = context["ti"].xcom_pull(task_ids=ids.CHECKOUT)
    if not src:
        raise PipelineError("no resolved commit from validate.checkout; rerun that task first")
    return dict(src)


def forward_only(svc: Service, environment: str, sha: str) -> None:
    """Refuse a commit that is not a descendant of what ``environment`` runs (rollbacks go elsewhere)."""
    env = getattr(svc.environments, environment)
    current = gitops_repo().current(environment=environment, service=svc.name, values_path=env.values_path)
    running = current.source_sha if current else None
    if not running or running == sha or not SHA_RE.match(running):
        return
    if not is_ancestor(git_url(svc.repo.url), running, sha):
        raise AirflowFailException(
            f"{svc.name} {environment} runs {running[:12]} ({current.short_revision if current else '-'}), and "
            f"{sha[:12]} is not a descendant of it: a run only moves an environment forward. Deliver a newer "
            f"commit, or use the {svc.rollback_dag_id} DAG to go back."
        )


def production_gate(svc: Service, sha: str, context: dict[str, Any]) -> Decision:
    """Check this run's recorded approval (see :mod:`delivery.steps.approval`); refuse loudly."""
    platform = catalog().platform
    api = AirflowApiHook(airflow_api_conn_id=platform.connections.airflow_api)
    ti, run_id = context["ti"], context["run_id"]
    try:
        detail = api.hitl_detail(dag_id=ti.dag_id, run_id=run_id, task_id=ids.APPROVE_PRODUCTION)
        current = gitops_repo().current(
            environment="production", service=svc.name, values_path=svc.environments.production.values_path
        )
        base = current.source_sha if current else None
        authors = commit_authors(git_url(svc.repo.url), base, sha) if svc.four_eyes else []
        decision = decide(detail, service=svc, sha=sha, authors=authors, identities=platform.identities)
    except (AirflowApiError, GitOpsError, PipelineError) as exc:
        decision = Decision.refuse(f"the approval could not be checked: {exc}")
    if not decision.allowed:
        try:
            changed = describe_state_changes(
                api.state_changes(dag_id=ti.dag_id, run_id=run_id, task_id=ids.APPROVE_PRODUCTION)
            )
        except AirflowApiError as exc:
            changed = f"who changed the approval's state is unknown ({exc})"
        details = {"refused": decision.refusal, "approval": changed, "commit": sha}
        notify_event(
            PipelineEvent.PRODUCTION_GATE_REFUSED, service_name=svc.name, context=context, details=details
        )
        raise AirflowFailException(f"production deploy of {svc.name} refused: {decision.refusal}; {changed}")
    if decision.break_glass:
        details = {"by": decision.approver, "reason": decision.reason, "commit": sha}
        notify_event(
            PipelineEvent.BREAK_GLASS_DEPLOY, service_name=svc.name, context=context, details=details
        )
    log.info(
        "%s: production %s by %s",
        svc.name,
        "BREAK GLASS" if decision.break_glass else "approved",
        decision.approver,
    )
    return decision


def gitops_commit(
    *, service_name: str, environment: str, image_repository: str, **context: Any
) -> dict[str, Any]:
    """Set the run's image tag in the environment's Helm values and push (idempotent).

    ``image_repository`` is ``registry/repository`` of the active profile's registry.
    """
    svc = service(service_name)
    env = getattr(svc.environments, environment)
    src = checked_out(context)
    forward_only(svc, environment, src["sha"])
    decision = production_gate(svc, src["sha"], context) if environment == "production" else None
    result = gitops_repo().deploy(
        environment=environment,
        service=svc.name,
        values_path=env.values_path,
        image_tag=src["sha"],
        image_repository=image_repository,
        metadata=ReleaseMetadata(
            source_sha=src["sha"],
            run_id=context["run_id"],
            approver=decision.approver if decision else None,
            break_glass=bool(decision and decision.break_glass),
            reason=decision.reason if decision else None,
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
    """Mark this run's production release as verified (stable) in the GitOps history.

    Only this run's own release, and only while it is the current one: a release that another
    run has replaced meanwhile is left as it is.
    """
    svc = service(service_name)
    deploy = context["ti"].xcom_pull(task_ids=ids.PRODUCTION_COMMIT) or {}
    verdict = context["ti"].xcom_pull(task_ids=ids.VERIFY) or {}
    repo = gitops_repo()
    values_path = svc.environments.production.values_path
    release = repo.get_release(
        environment="production",
        service=svc.name,
        values_path=values_path,
        revision=str(deploy.get("revision")),
    )
    current = repo.current(environment="production", service=svc.name, values_path=values_path)
    if release.run_id != context["run_id"] or current is None or current.revision != release.revision:
        raise AirflowSkipException(
            f"production runs {current.short_revision if current else 'nothing'}, not this run's release "
            f"{release.short_revision} (run {release.run_id}): nothing to record"
        )
    set_by_hand = verification_set_by_hand(svc, context)
    if set_by_hand:
        notify_event(
            PipelineEvent.PRODUCTION_GATE_REFUSED,
            service_name=svc.name,
            context=context,
            details={"refused": "the release is not recorded as verified", "verification": set_by_hand},
        )
        raise AirflowFailException(f"{svc.name}: not recording the release as verified: {set_by_hand}")
    summary = verdict.get("message") if isinstance(verdict, dict) else None
    repo.mark_verified(release=release, ok=True, summary=summary or "verification passed")
    return {"revision": release.revision, "image_tag": release.image_tag, "stable": True}


def _same_desired_state(repo: GitOpsRepo, values_path: str, revision: str, current: str) -> bool:
    """Whether ``revision`` holds the same values file as the current release (a commit step that
    found nothing to change answers with the branch head, which may carry other files' changes)."""
    if revision == current:
        return True
    try:
        return repo.read_values(values_path=values_path, revision=revision) == repo.read_values(
            values_path=values_path, revision=current
        )
    except GitOpsError:
        return False


def guard_sync(
    context: dict[str, Any],
    *,
    service_name: str,
    environment: str | None,
    commit_task: str,
    plan_task: str | None = None,
) -> str:
    """Refuse to apply a GitOps revision that is not the environment's current release; returns it.

    A sync applies what the GitOps history says the environment runs now. A revision read from a
    commit step's XCom (which users can write) that is older than the current release, or not a
    release of this service at all, is refused, so nothing reaches an environment around its gate.
    """
    if environment is None:
        environment = str((context["ti"].xcom_pull(task_ids=plan_task) or {}).get("environment") or "")
    svc = service(service_name)
    env = getattr(svc.environments, environment, None)
    if env is None:
        raise AirflowFailException(f"{service_name}: no environment {environment!r} to sync")
    commit = context["ti"].xcom_pull(task_ids=commit_task) or {}
    revision = str(commit.get("revision") or "")
    repo = gitops_repo()
    current = repo.current(environment=environment, service=svc.name, values_path=env.values_path)
    if (
        current is None
        or not revision
        or not _same_desired_state(repo, env.values_path, revision, current.revision)
    ):
        raise AirflowFailException(
            f"{svc.name} {environment}: refusing to apply GitOps revision {revision[:12] or '(none)'} from "
            f"{commit_task}: the environment's current release is "
            f"{current.short_revision if current else 'none'} ({env.values_path}); rerun {commit_task}"
        )
    return revision


def verification_set_by_hand(svc: Service, context: dict[str, Any]) -> str | None:
    """Who set the verification's or its review's state by hand (the audit log), if anyone did.

    A verification marked success by hand proves nothing: such a release is never recorded as
    verified (it would become a rollback target without having passed).
    """
    api = AirflowApiHook(airflow_api_conn_id=catalog().platform.connections.airflow_api)
    ti, run_id = context["ti"], context["run_id"]
    for task_id in (ids.VERIFY, ids.REVIEW):
        try:
            changes = api.events(dag_id=ti.dag_id, run_id=run_id, task_id=task_id, events=SET_BY_HAND)
        except AirflowApiError as exc:
            return f"the audit log of {task_id} could not be read ({exc})"
        if changes:
            return f"{task_id}: {describe_state_changes(changes)}"
    return None


def guard_own_release(context: dict[str, Any], *, service_name: str) -> None:
    """Verification acts only on this run's release: skip when production runs another one now."""
    svc = service(service_name)
    deploy = context["ti"].xcom_pull(task_ids=ids.PRODUCTION_COMMIT) or {}
    current = gitops_repo().current(
        environment="production", service=svc.name, values_path=svc.environments.production.values_path
    )
    if current is None or current.revision != deploy.get("revision"):
        raise AirflowSkipException(
            f"production now runs {current.image_tag if current else 'nothing'} "
            f"({current.short_revision if current else '-'}), released after this run's: superseded, "
            "so this run does not verify it"
        )
