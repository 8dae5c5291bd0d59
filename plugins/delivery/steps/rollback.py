"""Rollback steps (seed flow 6), shared by the pipeline's rollback group and the ``rollback_<service>`` DAG.

* **plan** identifies what is undone and what is restored. In the pipeline
  (``mode="pipeline"``) that is this run's failed production release and the
  newest earlier release that passed verification; nothing is rolled back when
  this run did not change production, or when another run's release is current
  (a run only ever undoes its own release). In the rollback DAG
  (``mode="manual"``) it comes from the form or the alert: by default the
  newest earlier verified release; an explicit ``target_version`` must be in the
  history, never a release that failed verification, and a release that was
  never verified needs an approver's answer at the gate.
* the **gate** (:class:`delivery.pipeline.gates.RollbackGate`) asks the
  approvers when a DB migration is undone (restore the backup first) or the
  target is unverified; *Abort*, also the default on timeout, reverts nothing.
* **aborted** escalates (P1, manual intervention) and reverts nothing.
* **revert** writes the target back (``Delivery-Action: rollback``, the reason,
  the approver who answered the gate) and marks the undone release failed. It only
  undoes the release the plan examined: when another release landed in between (a
  pipeline's deploy between the plan and the revert, or while the gate waited), the
  revert is skipped and nothing changes; the check is made on the GitOps head the rollback
  commit is pushed onto (:meth:`delivery.gitops.GitOpsRepo.rollback`, ``undoing``).
* **record** (rollback DAG) marks the restored release verified once healthy.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from delivery.catalog import Service
from delivery.gitops import (
    Release,
    ReleaseAction,
    ReleaseMetadata,
    ReleaseMovedError,
    Verification,
    VerificationStatus,
)
from delivery.integrations.airflow_api import AirflowApiError, AirflowApiHook
from delivery.pipeline import task_ids as ids
from delivery.reporting import metrics
from delivery.runtime import PipelineError, catalog, gitops_repo, service

log = logging.getLogger(__name__)

ENVIRONMENTS = ("production", "staging")


class NothingToRollBack(Exception):
    """Raised inside planning when there is nothing this run may roll back (the step is skipped)."""


def find_target(releases: list[Release], version: str) -> tuple[int, Release]:
    """(index, release) of ``version`` (image tag, source sha or GitOps revision) in ``releases``.

    The newest match that did not fail verification wins; a version whose every
    release failed verification is refused.
    """
    wanted = version.strip().lower()
    matches = [
        (i, r)
        for i, r in enumerate(releases)
        if wanted
        and (
            (r.image_tag or "").lower() == wanted
            or (r.source_sha or "").lower() == wanted
            or (len(wanted) >= 7 and r.revision.startswith(wanted))
        )
    ]
    if not matches:
        where = releases[0].values_path if releases else "the values file"
        raise PipelineError(f"version {version!r} is not in the release history of {where}")
    usable = [(i, r) for i, r in matches if r.verification.status is not VerificationStatus.FAILED]
    if not usable:
        raise PipelineError(
            f"version {version!r} failed verification ({matches[0][1].short_revision}); "
            "refusing to roll back to a release known to be bad"
        )
    return usable[0]


def _pipeline_target(svc_name: str, context: dict[str, Any]) -> tuple[str, list[Release], int, str]:
    """(environment, history, index of the target, reason) for the pipeline's own failed release."""
    states = context["ti"].get_task_states(dag_id=context["ti"].dag_id, run_ids=[context["run_id"]])
    if str(states.get(context["run_id"], {}).get(ids.PRODUCTION_COMMIT)) != "success":
        # one_failed also fires on upstream_failed: an earlier stage failed and production is untouched.
        raise NothingToRollBack("production was not changed by this run: nothing to roll back")
    svc = service(svc_name)
    values_path = svc.environments.production.values_path
    repo = gitops_repo()
    deploy = context["ti"].xcom_pull(task_ids=ids.PRODUCTION_COMMIT) or {}
    own = repo.get_release(
        environment="production", service=svc.name, values_path=values_path, revision=deploy["revision"]
    )
    if deploy.get("changed") and own.verification.status is not VerificationStatus.FAILED:
        repo.mark_verified(release=own, ok=False, summary=f"failed in run {context['run_id']}")
    releases = repo.history(environment="production", service=svc.name, values_path=values_path)
    current = releases[0] if releases else None
    if current is None or current.image_tag != own.image_tag:
        raise NothingToRollBack(
            f"production now runs {current.image_tag if current else 'nothing'} "
            f"({current.short_revision if current else '-'}), not this run's release {own.image_tag}: "
            "a run only rolls back its own release"
        )
    stable = repo.previous_stable(
        environment="production", service=svc.name, values_path=values_path, before=current.revision
    )
    if stable is None:
        raise PipelineError(
            f"{svc.name}: no earlier production release passed verification; nothing safe to roll back to. "
            "Restore by hand and record it with the manual rollback DAG."
        )
    index = next(i for i, r in enumerate(releases) if r.revision == stable.revision)
    return (
        "production",
        releases,
        index,
        f"automatic rollback after a failed production release in run {context['run_id']}",
    )


def _manual_target(svc_name: str, params: dict[str, Any]) -> tuple[str, list[Release], int, str]:
    """(environment, history, index of the target, reason) from the rollback DAG's form or alert."""
    svc = service(svc_name)
    reason = str(params.get("reason") or "").strip()
    if not reason:
        raise PipelineError("param 'reason' is required: it is recorded in the GitOps rollback commit")
    environment = str(params.get("environment") or "production")
    if environment not in ENVIRONMENTS:
        raise PipelineError(f"param 'environment' must be one of {ENVIRONMENTS}, got {environment!r}")
    env = getattr(svc.environments, environment)
    repo = gitops_repo()
    releases = repo.history(environment=environment, service=svc.name, values_path=env.values_path)
    if not releases:
        raise PipelineError(
            f"{svc.name} {environment}: no release in {env.values_path}; nothing to roll back"
        )
    current = releases[0]
    starts_at = str(params.get("starts_at") or "").strip()
    if starts_at and current.timestamp > datetime.fromisoformat(starts_at):
        # The alert predates the current release (often: an earlier rollback already restored
        # service): rolling this release back would go one step too far.
        raise NothingToRollBack(
            f"{svc.name} {environment}: the current release {current.short_revision} ({current.image_tag}) "
            f"was committed at {current.timestamp.isoformat()}, after the alert started ({starts_at}); "
            "not rolling it back automatically"
        )
    version = str(params.get("target_version") or "").strip()
    if version:
        index, _ = find_target(releases, version)
        return environment, releases, index, reason
    stable = repo.previous_stable(
        environment=environment, service=svc.name, values_path=env.values_path, before=current.revision
    )
    if stable is None:
        raise PipelineError(
            f"{svc.name} {environment}: no release before {current.short_revision} "
            f"({current.image_tag}) passed verification; give target_version explicitly"
        )
    return (
        environment,
        releases,
        next(i for i, r in enumerate(releases) if r.revision == stable.revision),
        reason,
    )


def plan_rollback(
    *, service_name: str, mode: str, health_urls: dict[str, str], **context: Any
) -> dict[str, Any]:
    """Identify the release to restore and what is undone; say whether a human must confirm first."""
    svc = service(service_name)
    if mode == "manual":  # the rollback DAG starts here; a pipeline run's metrics opened at checkout
        metrics.open_run(metrics.Run.of(svc.name, context), approval_timeout=svc.approval_timeout)
    try:
        if mode == "pipeline":
            environment, releases, index, reason = _pipeline_target(service_name, context)
        else:
            environment, releases, index, reason = _manual_target(service_name, context["params"])
    except NothingToRollBack as exc:
        raise AirflowSkipException(str(exc)) from exc
    env = getattr(svc.environments, environment)
    target, current, undone = releases[index], releases[0], releases[:index]
    migrations = [r.short_revision for r in undone if r.migration]
    confirm = confirmations(svc, target, undone)
    result = {
        "service": svc.name,
        "environment": environment,
        "values_path": env.values_path,
        "argocd_app": env.argocd_app,
        "argocd_project": env.argocd_project,
        "argocd_app_namespace": env.argocd_app_namespace,
        "health_url": health_urls[environment],
        "reason": reason,
        "target": target.as_dict(),
        "current": current.as_dict(),
        "undone": [r.short_revision for r in undone],
        "migration": "migration" in confirm,
        "migration_releases": migrations,
        "confirm": confirm,
        "fingerprint": str(context["params"].get("fingerprint") or ""),
    }
    log.info(
        "Rolling %s %s back from %s (%s) to %s (%s, verification %s); to confirm: %s",
        svc.name,
        environment,
        current.image_tag,
        current.short_revision,
        target.image_tag,
        target.short_revision,
        target.verification.status.value,
        ", ".join(confirm) or "nothing",
    )
    return result


def planned(context: dict[str, Any], plan_task: str) -> dict[str, Any]:
    data = context["ti"].xcom_pull(task_ids=plan_task)
    if not data:
        raise PipelineError(f"no rollback plan from {plan_task}; rerun that task first")
    return dict(data)


def confirmations(svc: Service, target: Release, undone: list[Release]) -> list[str]:
    """What a human must confirm before ``target`` replaces the ``undone`` releases."""
    confirm = []
    if svc.migrations or any(r.migration for r in undone):
        confirm.append("migration")
    if not target.stable:
        confirm.append("unverified_target")
    return confirm


def confirmed_by(svc: Service, context: dict[str, Any], gate_task: str) -> str | None:
    """The approver who chose Continue at the gate, from its HITL record (None: no valid answer)."""
    ti = context["ti"]
    try:
        api = AirflowApiHook(airflow_api_conn_id=catalog().platform.connections.airflow_api)
        detail = api.hitl_detail(dag_id=ti.dag_id, run_id=context["run_id"], task_id=gate_task)
    except AirflowApiError as exc:
        raise PipelineError(f"the answer at {gate_task} could not be read: {exc}") from exc
    if not detail or not detail.get("response_received") or detail.get("chosen_options") != ["Continue"]:
        return None
    user = (detail.get("responded_by_user") or {}).get("id")
    return user if user in svc.approvers else None


def gate_responder(context: dict[str, Any], gate_task: str) -> str | None:
    """Who answered the rollback gate (None when no human was needed, or on timeout)."""
    result = context["ti"].xcom_pull(task_ids=gate_task, key="response")
    if isinstance(result, dict):
        user = result.get("responded_by_user") or {}
        if isinstance(user, dict):
            return user.get("name") or user.get("id")
    return None


def rollback_aborted(*, service_name: str, gate_task: str, **context: Any) -> dict[str, Any]:
    """Abort (or timeout) at the gate: nothing was reverted; a human must step in (P1)."""
    who = gate_responder(context, gate_task) or "timeout (default Abort)"
    log.warning("%s: rollback aborted at %s by %s; nothing was reverted", service_name, gate_task, who)
    return {"aborted_by": who}


def _release_from(data: dict[str, Any]) -> Release:
    data = dict(data)
    verification = data.pop("verification") or {}
    return Release(
        **{
            **data,
            "action": ReleaseAction(data["action"]),
            "timestamp": datetime.fromisoformat(data["timestamp"]),
            "verification": Verification(status=VerificationStatus(verification.get("status", "unverified"))),
        }
    )


def rollback_revert(*, service_name: str, plan_task: str, gate_task: str, **context: Any) -> dict[str, Any]:
    """Write the target back to the GitOps repo, then mark the undone release failed.

    What needs a human's confirmation is decided again here from the GitOps history, not from the
    plan's XCom (which users can write), and the confirmation is read from the gate's HITL record.
    """
    svc = service(service_name)
    plan = planned(context, plan_task)
    environment = str(plan.get("environment"))
    if environment not in ENVIRONMENTS:
        raise PipelineError(f"the rollback plan names environment {environment!r}, not one of {ENVIRONMENTS}")
    env = getattr(svc.environments, environment)
    repo = gitops_repo()
    releases = repo.history(environment=environment, service=svc.name, values_path=env.values_path)
    index, target = find_target(releases, str(plan["target"]["revision"]))
    confirm = confirmations(svc, target, releases[:index])
    approver = confirmed_by(svc, context, gate_task) if confirm else None
    if confirm and approver is None:
        raise PipelineError(
            f"the rollback needs an approver's Continue at {gate_task} ({', '.join(confirm)}); "
            "none was recorded, so nothing is reverted"
        )
    try:
        result = repo.rollback(
            environment=environment,
            service=svc.name,
            values_path=env.values_path,
            to=target,
            metadata=ReleaseMetadata(
                source_sha=target.source_sha or target.image_tag or target.revision,
                run_id=context["run_id"],
                approver=approver,
                reason=str(plan.get("reason") or "rollback"),
            ),
            # The release the plan examined: another one landed since (a deploy while the gate
            # waited, or between two tasks) is never undone by this run.
            undoing=str((plan.get("current") or {}).get("image_tag") or "") or None,
        )
    except ReleaseMovedError as exc:
        raise AirflowSkipException(f"{svc.name} {environment}: {exc}") from exc
    current = releases[0]
    if result.changed and current.image_tag != target.image_tag:
        undone = repo.get_release(
            environment=environment, service=svc.name, values_path=env.values_path, revision=current.revision
        )
        if undone.verification.status is not VerificationStatus.FAILED:
            repo.mark_verified(
                release=undone,
                ok=False,
                summary=f"rolled back in run {context['run_id']}: {plan.get('reason')}",
            )
    log.info(
        "%s %s: %s (GitOps revision %s)",
        svc.name,
        environment,
        f"rolled back {result.previous_image_tag} -> {result.image_tag}"
        if result.changed
        else "already at target",
        result.revision[:12],
    )
    return result.as_dict()


def rollback_record(*, service_name: str, plan_task: str, revert_task: str, **context: Any) -> dict[str, Any]:
    """The restored release is healthy again: mark it verified (stable) in the GitOps history."""
    plan = planned(context, plan_task)
    reverted = context["ti"].xcom_pull(task_ids=revert_task)
    repo = gitops_repo()
    release = repo.get_release(
        environment=plan["environment"],
        service=service_name,
        values_path=plan["values_path"],
        revision=reverted["revision"],
    )
    repo.mark_verified(
        release=release,
        ok=True,
        summary=f"rollback to {plan['target']['image_tag']} healthy in run {context['run_id']}",
    )
    return {"revision": release.revision, "image_tag": release.image_tag, "stable": True}
