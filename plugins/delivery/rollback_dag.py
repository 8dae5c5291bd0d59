"""Manual (and Alertmanager-triggered) rollback DAG of one service: seed flow 6.

``rollback_<service>`` restores an earlier release of one environment through
GitOps, whatever broke it. People start it from the UI with a reason; the
Alertmanager receiver (:mod:`delivery.webhooks.alertmanager`) starts it with
the alert's fingerprint and labels. The graph::

    identify ─► check_migration ─┬─► restore_database (HITL: Continue / Abort) ─┬─► revert ─► sync
                                 └────────────────────────────────────────────────┘      │
                                                           aborted ◄─ (Abort) ─┘   health_check
                                                                                          │
                            notify (all done: Slack / severity router) ◄── record ◄───────┘
                                  │
                               outcome (the run's true state)

* **identify** reads the environment's release history from the GitOps repo.
  Without ``target_version`` the target is the newest earlier release that
  *passed* verification (never a failed or unverified one); a given
  ``target_version`` (image tag or source sha) must be a release of that
  history and must not have failed verification. It records what will be
  undone and whether any of it carries a DB migration (catalog ``migrations``
  flag, or a ``Delivery-Migration: true`` trailer on a release newer than the
  target).
* **restore_database** only runs when a migration is involved: the catalog
  approvers restore the DB backup and choose Continue; Abort (also the
  default on timeout) ends the run before anything is reverted.
* **revert** writes the target back (``Delivery-Action: rollback`` commit with
  the reason in ``Delivery-Reason``) and marks the undone release failed.
* **sync** applies the new GitOps revision (Argo CD in the kubernetes profile,
  the local Docker engine in the local profile); **health_check** waits for
  the service; **record** marks the restored release verified.
* **notify** reports success (``rollback_succeeded``) or escalates a failure as
  P1 (``rollback_failed``) through :mod:`delivery.alerts` when present, Slack
  otherwise; **outcome** fails the run with a one-line summary when the
  rollback failed or was aborted.

Nothing here touches the network, the metadata database or Variables at parse
time; the callables below import what they need when they run.
"""

from __future__ import annotations

import importlib
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk import DAG, Param

from delivery.catalog import Catalog, Profile, Service
from delivery.catalog.models import Platform

if TYPE_CHECKING:
    from delivery.gitops import Release

log = logging.getLogger(__name__)

ENVIRONMENTS = ("production", "staging")

IDENTIFY = "identify"
CHECK_MIGRATION = "check_migration"
RESTORE_DATABASE = "restore_database"
ABORTED = "aborted"
REVERT = "revert"
SYNC = "sync"
HEALTH_CHECK = "health_check"
RECORD = "record"
NOTIFY = "notify"
OUTCOME = "outcome"

CONTINUE = "Continue"
ABORT = "Abort"

DOC = """\
### Roll back {name}

Restores an earlier release of **{name}** through the GitOps repository (seed flow 6).

* **target_version** empty: the previous release that passed production verification.
  Otherwise an image tag or source sha that must be in the environment's release history.
* **reason** (required) is written in the rollback commit's `Delivery-Reason` trailer.
* When the release being undone carries a database migration, the run stops at
  `restore_database` until one of {approvers} restores the DB backup and chooses
  *Continue* (*Abort*, the default on timeout after {approval_timeout}, reverts nothing).
* Profile `{profile}`: {profile_doc}.

Alertmanager starts this DAG for firing alerts labelled `service="{name}"` and
`rollback="auto"` (run id `alert__...`, one run per alert occurrence).
"""

PROFILE_DOC = {
    Profile.KUBERNETES: "Argo CD syncs the rollback revision",
    Profile.LOCAL: "the local Docker engine runs the restored image",
}


# -- DAG ---------------------------------------------------------------------------


class RestoreDatabaseGate(HITLBranchOperator):
    """HITL Continue/Abort that branches, and keeps who answered (XCom ``response``) for the audit trail."""

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" not in event:
            user = event.get("responded_by_user") or {}
            context["ti"].xcom_push(
                key="response",
                value={
                    "chosen_options": list(event.get("chosen_options") or []),
                    "responded_by_user": dict(user) if isinstance(user, dict) else None,
                },
            )
        return super().execute_complete(context, event)


def rollback_params(service: Service) -> dict[str, Param]:
    """The trigger form; the Alertmanager receiver sends the same keys as ``conf``."""
    return {
        "reason": Param(
            type="string",
            minLength=1,
            title="Reason",
            description="Why production is rolled back (recorded in the GitOps commit). Required.",
        ),
        "target_version": Param(
            "",
            type="string",
            title="Target version",
            description="Image tag or source sha to restore. Empty: the previous stable release.",
        ),
        "environment": Param("production", type="string", enum=list(ENVIRONMENTS), title="Environment"),
        "fingerprint": Param(
            "", type="string", title="Alert fingerprint", description="Set by the Alertmanager receiver."
        ),
        "alert": Param(
            {},
            type="object",
            title="Alert labels",
            description="Labels of the alert that started this rollback (Alertmanager receiver).",
        ),
        "starts_at": Param(
            "",
            type="string",
            title="Alert start",
            description="When the alert started (Alertmanager receiver): a release deployed after it is kept.",
        ),
    }


def build_rollback_dag(*, service: Service, platform: Platform, profile: Profile) -> DAG:
    """The ``rollback_<service>`` DAG of one service for the active profile."""
    from airflow.providers.standard.operators.python import BranchPythonOperator, PythonOperator

    from delivery.notifications import slack_failure_notifier
    from delivery.operators.health import HealthCheckSensor

    default_args: dict[str, Any] = {
        "owner": service.team or "platform",
        "retries": 0,
        "retry_delay": timedelta(seconds=30),
        "on_failure_callback": [slack_failure_notifier(slack_conn_id=platform.connections.slack)],
    }
    doc = DOC.format(
        name=service.name,
        approvers=", ".join(service.approvers),
        approval_timeout=service.approval_timeout,
        profile=profile.value,
        profile_doc=PROFILE_DOC[profile],
    )
    name = service.name
    with DAG(
        dag_id=service.rollback_dag_id,
        description=f"Roll back {name} to an earlier release (GitOps)",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # two rollbacks of one service must not interleave
        # Only manual or Alertmanager runs: unpaused, so an automatic rollback never waits for a click.
        is_paused_upon_creation=False,
        tags=["delivery", "rollback", f"profile:{profile.value}", f"service:{name}"],
        params=rollback_params(service),
        doc_md=doc,
        default_args=default_args,
    ) as dag:
        identify = PythonOperator(
            task_id=IDENTIFY, python_callable=rollback_identify, op_kwargs={"service_name": name}
        )
        check = BranchPythonOperator(
            task_id=CHECK_MIGRATION,
            python_callable=rollback_check_migration,
            op_kwargs={"service_name": name},
        )
        restore = RestoreDatabaseGate(
            task_id=RESTORE_DATABASE,
            subject=f"{name}: restore the database backup before the rollback",
            body=(
                "The release being rolled back in "
                "{{ ti.xcom_pull(task_ids='identify')['environment'] }} carries a database migration "
                "(from {{ ti.xcom_pull(task_ids='identify')['current']['image_tag'] }} back to "
                "{{ ti.xcom_pull(task_ids='identify')['target']['image_tag'] }}).\n\n"
                "Restore the database backup taken before the migration, then choose **Continue**. "
                "**Abort** stops the rollback: nothing is reverted.\n\n"
                "Reason: {{ params.reason }}"
            ),
            options=[CONTINUE, ABORT],
            options_mapping={CONTINUE: REVERT, ABORT: ABORTED},
            defaults=[ABORT],
            assigned_users=[{"id": user, "name": user} for user in service.approvers],
            response_timeout=service.approval_timeout,
        )
        aborted = PythonOperator(
            task_id=ABORTED, python_callable=rollback_aborted, op_kwargs={"service_name": name}
        )
        revert = PythonOperator(
            task_id=REVERT,
            python_callable=rollback_execute,
            op_kwargs={"service_name": name},
            trigger_rule="none_failed_min_one_success",
        )
        if profile is Profile.KUBERNETES:
            from delivery.operators.argocd import ArgoCDSyncOperator

            sync: Any = ArgoCDSyncOperator(
                task_id=SYNC,
                app_name="{{ ti.xcom_pull(task_ids='identify')['argocd_app'] }}",
                revision="{{ ti.xcom_pull(task_ids='revert')['revision'] }}",
                argocd_conn_id=platform.connections.argocd,
                project="{{ ti.xcom_pull(task_ids='identify')['argocd_project'] or '' }}",
                app_namespace="{{ ti.xcom_pull(task_ids='identify')['argocd_app_namespace'] or '' }}",
                gitops_repo_url=platform.gitops.repo_url,
                timeout=max(
                    e.health_timeout for e in (service.environments.production, service.environments.staging)
                ),
                deferrable=True,
            )
        else:
            sync = PythonOperator(
                task_id=SYNC, python_callable=rollback_local_sync, op_kwargs={"service_name": name}
            )
        health = HealthCheckSensor(
            task_id=HEALTH_CHECK,
            url="{{ ti.xcom_pull(task_ids='identify')['health_url'] }}",
            timeout=max(
                e.health_timeout.total_seconds()
                for e in (service.environments.production, service.environments.staging)
            ),
            poke_interval=5 if profile is Profile.LOCAL else 15,
        )
        record = PythonOperator(
            task_id=RECORD, python_callable=rollback_record, op_kwargs={"service_name": name}
        )
        notify = PythonOperator(
            task_id=NOTIFY,
            python_callable=rollback_notify,
            op_kwargs={"service_name": name},
            trigger_rule="all_done",
        )
        outcome = PythonOperator(
            task_id=OUTCOME,
            python_callable=rollback_outcome,
            trigger_rule="all_done",
            on_failure_callback=None,
        )
        identify >> check >> [restore, revert]
        restore >> [revert, aborted]
        revert >> sync >> health >> record >> notify >> outcome
        aborted >> notify
    return dag


def build_rollback_dags(*, catalog: Catalog, profile: Profile | None = None) -> dict[str, DAG]:
    """One rollback DAG per catalog service; a service whose DAG cannot be built is logged and skipped."""
    from delivery.profiles import active_profile

    resolved = profile or active_profile(catalog.platform)
    dags: dict[str, DAG] = {}
    for name, service in sorted(catalog.services.items()):
        try:
            dag = build_rollback_dag(service=service, platform=catalog.platform, profile=resolved)
        except Exception:
            log.exception(
                "Could not build the rollback DAG of service %r (%s)", name, catalog.sources.get(name)
            )
            continue
        dags[dag.dag_id] = dag
    return dags


# -- run time -----------------------------------------------------------------------


def _tasks() -> Any:
    return importlib.import_module("delivery.tasks")


def _identified(context: dict[str, Any]) -> dict[str, Any]:
    data = context["ti"].xcom_pull(task_ids=IDENTIFY)
    if not data:
        raise _tasks().PipelineError("no rollback target from the identify task; rerun it first")
    return dict(data)


def find_target(releases: list[Release], version: str) -> tuple[int, Release]:
    """(index, release) of ``version`` (image tag, source sha or GitOps revision) in ``releases``.

    The newest match that did not fail verification wins; a version whose every
    release failed verification is refused.
    """
    from delivery.gitops import VerificationStatus

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
    errors = _tasks().PipelineError
    if not matches:
        where = releases[0].values_path if releases else "the values file"
        raise errors(f"version {version!r} is not in the release history of {where}")
    usable = [(i, r) for i, r in matches if r.verification.status is not VerificationStatus.FAILED]
    if not usable:
        raise errors(
            f"version {version!r} failed verification ({matches[0][1].short_revision}); "
            "refusing to roll back to a release known to be bad"
        )
    return usable[0]


def rollback_identify(*, service_name: str, params: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Seed flow 6: identify the release to restore and what is being undone."""
    tasks = _tasks()
    svc = tasks.service(service_name)
    reason = str(params.get("reason") or "").strip()
    if not reason:
        raise tasks.PipelineError("param 'reason' is required: it is recorded in the GitOps rollback commit")
    environment = str(params.get("environment") or "production")
    if environment not in ENVIRONMENTS:
        raise tasks.PipelineError(f"param 'environment' must be one of {ENVIRONMENTS}, got {environment!r}")
    env = getattr(svc.environments, environment)
    repo = tasks.gitops_repo()
    releases = repo.history(environment=environment, service=svc.name, values_path=env.values_path)
    if not releases:
        raise tasks.PipelineError(
            f"{svc.name} {environment}: no release in {env.values_path}; nothing to roll back"
        )
    current = releases[0]
    starts_at = str(params.get("starts_at") or "").strip()
    if starts_at and current.timestamp > datetime.fromisoformat(starts_at):
        from airflow.sdk.exceptions import AirflowSkipException

        # The alert predates the current release (often: an earlier rollback already restored
        # service): rolling this release back would go one step too far.
        raise AirflowSkipException(
            f"{svc.name} {environment}: the current release {current.short_revision} ({current.image_tag}) "
            f"was committed at {current.timestamp.isoformat()}, after the alert started ({starts_at}); "
            "not rolling it back automatically"
        )
    version = str(params.get("target_version") or "").strip()
    if version:
        index, target = find_target(releases, version)
    else:
        stable = repo.previous_stable(
            environment=environment, service=svc.name, values_path=env.values_path, before=current.revision
        )
        if stable is None:
            raise tasks.PipelineError(
                f"{svc.name} {environment}: no release before {current.short_revision} "
                f"({current.image_tag}) passed verification; give target_version explicitly"
            )
        target = stable
        index = next(i for i, r in enumerate(releases) if r.revision == stable.revision)
    undone = releases[:index]
    migrations = [r.short_revision for r in undone if r.migration]
    url = env.url.rstrip("/") + env.health_path
    from delivery.profiles import active_profile

    if active_profile(tasks.catalog().platform) is Profile.LOCAL and env.local_port:
        url = f"http://127.0.0.1:{env.local_port}{env.health_path}"
    result = {
        "service": svc.name,
        "environment": environment,
        "values_path": env.values_path,
        "argocd_app": env.argocd_app,
        "argocd_project": env.argocd_project,
        "argocd_app_namespace": env.argocd_app_namespace,
        "health_url": url,
        "reason": reason,
        "target": target.as_dict(),
        "current": current.as_dict(),
        "undone": [r.short_revision for r in undone],
        "migration": bool(svc.migrations or migrations),
        "migration_releases": migrations,
        "fingerprint": str(params.get("fingerprint") or ""),
    }
    log.info(
        "Rolling %s %s back from %s (%s) to %s (%s, verification %s); DB migration involved: %s",
        svc.name,
        environment,
        current.image_tag,
        current.short_revision,
        target.image_tag,
        target.short_revision,
        target.verification.status.value,
        result["migration"],
    )
    return result


def rollback_check_migration(*, service_name: str, **context: Any) -> str:
    """Branch: a DB migration among the undone releases needs a restored backup first."""
    plan = _identified(context)
    if plan["migration"]:
        log.info(
            "%s: DB migration involved (catalog flag or releases %s): waiting for a DB restore",
            service_name,
            ", ".join(plan["migration_releases"]) or "-",
        )
        return RESTORE_DATABASE
    return REVERT


def _responder(context: dict[str, Any]) -> str | None:
    result = context["ti"].xcom_pull(task_ids=RESTORE_DATABASE, key="response")
    if isinstance(result, dict):
        user = result.get("responded_by_user") or result.get("responded_by") or {}
        if isinstance(user, dict):
            return user.get("name") or user.get("id")
    return None


def rollback_aborted(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Abort at the DB restore step: nothing was reverted."""
    who = _responder(context) or "timeout (default Abort)"
    log.warning("%s: rollback aborted at the DB restore step by %s; nothing was reverted", service_name, who)
    return {"aborted_by": who}


def rollback_execute(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Write the target back to the GitOps repo, then mark the undone release failed."""
    from delivery.gitops import Release, ReleaseAction, ReleaseMetadata, Verification, VerificationStatus

    tasks = _tasks()
    svc = tasks.service(service_name)
    plan = _identified(context)
    environment = plan["environment"]
    target_data = dict(plan["target"])
    verification = target_data.pop("verification") or {}
    target = Release(
        **{
            **target_data,
            "action": ReleaseAction(target_data["action"]),
            "timestamp": datetime.fromisoformat(target_data["timestamp"]),
            "verification": Verification(status=VerificationStatus(verification.get("status", "unverified"))),
        }
    )
    repo = tasks.gitops_repo()
    result = repo.rollback(
        environment=environment,
        service=svc.name,
        values_path=plan["values_path"],
        to=target,
        metadata=ReleaseMetadata(
            source_sha=target.source_sha or target.image_tag or target.revision,
            run_id=context["run_id"],
            approver=_responder(context),
            reason=plan["reason"],
        ),
    )
    current = plan["current"]
    if result.changed and current["image_tag"] != target.image_tag:
        undone = repo.get_release(
            environment=environment,
            service=svc.name,
            values_path=plan["values_path"],
            revision=current["revision"],
        )
        if undone.verification.status is not VerificationStatus.FAILED:
            repo.mark_verified(
                release=undone, ok=False, summary=f"rolled back in run {context['run_id']}: {plan['reason']}"
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


def rollback_local_sync(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Local profile: run the rollback revision's image in the environment's container."""
    plan = _identified(context)
    return dict(
        _tasks().local_sync(
            service_name=service_name, environment=plan["environment"], commit_task=REVERT, **context
        )
    )


def rollback_record(*, service_name: str, **context: Any) -> dict[str, Any]:
    """The restored release is healthy again: mark it verified (stable) in the GitOps history."""
    tasks = _tasks()
    plan = _identified(context)
    reverted = context["ti"].xcom_pull(task_ids=REVERT)
    repo = tasks.gitops_repo()
    release = repo.get_release(
        environment=plan["environment"],
        service=plan["service"],
        values_path=plan["values_path"],
        revision=reverted["revision"],
    )
    repo.mark_verified(
        release=release,
        ok=True,
        summary=f"rollback to {plan['target']['image_tag']} healthy in run {context['run_id']}",
    )
    return {"revision": release.revision, "image_tag": release.image_tag, "stable": True}


def _states(context: dict[str, Any]) -> dict[str, str]:
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[context["run_id"]])
    return {k: str(v) for k, v in states.get(context["run_id"], {}).items()}


def describe_rollback(states: dict[str, str]) -> tuple[str, str]:
    """(outcome, sentence) of a rollback run from its task states."""
    failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed") and t != OUTCOME)
    if states.get(RECORD) == "success":
        return "rolled_back", "rolled back, the restored release is healthy and marked verified"
    if states.get(IDENTIFY) == "skipped":
        return "not_needed", "the release the alert was about is no longer current: nothing rolled back"
    if states.get(ABORTED) == "success":
        return "aborted", "aborted at the DB restore step: nothing was reverted"
    if failed:
        reverted = states.get(REVERT) == "success"
        where = ", ".join(failed)
        if reverted:
            return (
                "rollback_failed",
                f"the rollback commit was pushed but {where} failed: production may be unhealthy",
            )
        return "rollback_failed", f"the rollback failed at {where}: nothing was reverted"
    return "incomplete", "the rollback did not finish"


def rollback_notify(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Report the rollback; a failure is escalated as P1. Never raises on delivery problems."""
    tasks = _tasks()
    states = _states(context)
    outcome, sentence = describe_rollback(states)
    plan = context["ti"].xcom_pull(task_ids=IDENTIFY) or {}
    target = (plan.get("target") or {}).get("image_tag") or "?"
    current = (plan.get("current") or {}).get("image_tag") or "?"
    environment = plan.get("environment") or context["params"].get("environment") or "production"
    details = {
        "environment": environment,
        "reason": plan.get("reason") or context["params"].get("reason") or "",
        "from": current,
        "to": target,
        "outcome": sentence,
    }
    if plan.get("fingerprint"):
        details["alert_fingerprint"] = plan["fingerprint"]
    event = {"rolled_back": "rollback_succeeded", "rollback_failed": "rollback_failed"}.get(outcome)
    delivered = False
    try:
        alerts = importlib.import_module("delivery.alerts")
    except ImportError:
        alerts = None
    if event and alerts is not None and hasattr(alerts, "notify_event"):
        report = alerts.notify_event(event, service_name=service_name, context=context, details=details)
        delivered = bool(getattr(report, "ok", False))
    else:
        icon = {"rolled_back": ":rewind:", "aborted": ":double_vertical_bar:"}.get(
            outcome, ":rotating_light:"
        )
        prefix = "[P1] " if outcome in ("rollback_failed", "incomplete") else ""
        text = (
            f"{icon} {prefix}*{service_name}* {environment} rollback {current} -> {target} "
            f"run `{context['run_id']}`: {sentence}. Reason: {details['reason']}"
        )
        from delivery.notifications import send_slack

        delivered = send_slack(
            slack_conn_id=tasks.catalog().platform.connections.slack, text=text, context=context
        )
    return {"outcome": outcome, "message": sentence, "event": event, "notified": delivered}


def rollback_outcome(**context: Any) -> str:
    """Give the run its true state: failed when the rollback failed or was aborted."""
    states = _states(context)
    result, sentence = describe_rollback(states)
    try:
        context["dag_run"].note = sentence
    except Exception:
        log.debug("run note not writable here", exc_info=True)
    if result not in ("rolled_back", "not_needed"):
        raise _tasks().PipelineError(f"Rollback {result.replace('_', ' ')}: {sentence}")
    log.info("Outcome: %s", sentence)
    return result
