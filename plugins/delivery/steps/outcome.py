"""End of run: the summary notification, the delivery metrics and the run's true outcome.

The same two steps end the delivery pipeline (``mode="pipeline"``) and the
rollback DAG (``mode="manual"``); only the reading of the task states differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from delivery.gitops import GitOpsError
from delivery.notify import PipelineEvent, notify_event
from delivery.pipeline import task_ids as ids
from delivery.profiles import active_profile
from delivery.reporting import metrics
from delivery.reporting.dora import parse_time
from delivery.runtime import PipelineError, catalog, service

log = logging.getLogger(__name__)

FAILED_STATES = {"failed", "upstream_failed"}


def task_states(context: dict[str, Any]) -> dict[str, str]:
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[context["run_id"]])
    return {k: str(v) for k, v in states.get(context["run_id"], {}).items()}


def describe_outcome(states: dict[str, str]) -> tuple[str, str]:
    """(outcome, sentence) of a delivery run from its task states."""
    failed = sorted(t for t, s in states.items() if s == "failed")
    rolled_back = states.get(ids.ROLLBACK_HEALTH) == "success"
    if states.get(ids.ROLLBACK_ABORTED) == "success":
        return (
            "rollback_aborted",
            f"production failed ({', '.join(failed)}) and the rollback was aborted at the DB restore "
            "step: nothing was reverted, production needs manual intervention",
        )
    if states.get(ids.ROLLBACK_PLAN) in ("success", "failed") or rolled_back:
        if states.get(ids.ROLLBACK_REVERT) == "skipped" and states.get(ids.ROLLBACK_PLAN) == "success":
            return (
                "rollback_superseded",
                f"production failed ({', '.join(failed)}); a newer release replaced this run's before its "
                "rollback: nothing was reverted",
            )
        if rolled_back:
            return (
                "rolled_back",
                f"production failed ({', '.join(failed)}); rolled back to the previous stable version",
            )
        return "rollback_failed", f"production failed and the rollback failed too ({', '.join(failed)})"
    if failed:
        return "failed", f"failed at {', '.join(failed)}"
    if states.get(ids.PRODUCTION_COMMIT) == "success" and states.get(ids.VERIFY) == "skipped":
        return "superseded", "deployed to production, then superseded by a newer release before verification"
    if states.get(ids.VERIFY) == "success":
        return "deployed", "deployed to production and verified"
    if states.get(ids.RELEASE_GATE) == "success" and states.get(ids.IMAGE_BUILD) == "skipped":
        return "ci_passed", "validate, build and test passed (no deploy for this event)"
    if states.get(ids.APPROVE_PRODUCTION) == "success" and states.get(ids.PRODUCTION_COMMIT) == "skipped":
        return "rejected", "production deploy was rejected or the approval timed out; production is untouched"
    return "incomplete", "the run ended before production"


NOTHING_REVERTED = ("not_needed", "superseded")
"""Rollback DAG outcomes that leave production as it was and are not failures: the release the
alert (or the person) was about is no longer current, or a newer one landed after the plan."""


def describe_rollback(states: dict[str, str]) -> tuple[str, str]:
    """(outcome, sentence) of a rollback DAG run from its task states."""
    failed = sorted(t for t, s in states.items() if s in FAILED_STATES and t != ids.RB_OUTCOME)
    if states.get(ids.RB_RECORD) == "success":
        return "rolled_back", "rolled back, the restored release is healthy and marked verified"
    if states.get(ids.RB_IDENTIFY) == "skipped":
        return "not_needed", "the release the alert was about is no longer current: nothing rolled back"
    if states.get(ids.RB_ABORTED) == "success":
        return "aborted", "aborted at the confirmation step: nothing was reverted"
    if states.get(ids.RB_REVERT) == "skipped" and states.get(ids.RB_IDENTIFY) == "success" and not failed:
        return (
            "superseded",
            "a newer release landed after the rollback was planned; it was not examined, so nothing was reverted",
        )
    if failed:
        where = ", ".join(failed)
        if states.get(ids.RB_REVERT) == "success":
            return (
                "rollback_failed",
                f"the rollback commit was pushed but {where} failed: production may be unhealthy",
            )
        return "rollback_failed", f"the rollback failed at {where}: nothing was reverted"
    return "incomplete", "the rollback did not finish"


_PIPELINE_SUMMARY = {
    "deployed": PipelineEvent.DEPLOY_SUCCEEDED,
    "rolled_back": PipelineEvent.ROLLBACK_SUCCEEDED,  # also resolves the PagerDuty incident
    "rollback_aborted": PipelineEvent.ROLLBACK_ABORTED,
}
"""The summary event of a delivery run; any other outcome is ``run_finished``.

A failed rollback is told by the failing rollback task itself (``rollback_failed``, P1):
its run's summary is a ``run_finished``, so the P1 is not posted twice.
"""

_ROLLBACK_SUMMARY = {
    "rolled_back": PipelineEvent.ROLLBACK_SUCCEEDED,
    "aborted": PipelineEvent.ROLLBACK_ABORTED,
    "rollback_failed": PipelineEvent.ROLLBACK_FAILED,  # the rollback DAG's tasks send task_failed only
}
"""The summary event of a rollback DAG run; any other outcome is ``run_finished``."""


def _approval_timed_out(context: dict[str, Any]) -> bool:
    result = context["ti"].xcom_pull(task_ids=ids.APPROVE_PRODUCTION)
    if not isinstance(result, dict):
        return False
    return not (result.get("responded_by") or result.get("responded_by_user"))


def _pipeline_events(outcome: str, context: dict[str, Any]) -> list[PipelineEvent]:
    """The run's summary event, then the seed flow 5 events no task failure reports."""
    if outcome == "rejected" and _approval_timed_out(context):
        events = [PipelineEvent.APPROVAL_TIMED_OUT]
    else:
        events = [_PIPELINE_SUMMARY.get(outcome, PipelineEvent.RUN_FINISHED)]
    verdict = context["ti"].xcom_pull(task_ids=ids.VERIFY)
    if isinstance(verdict, dict) and verdict.get("decision") == "hold":
        events.append(PipelineEvent.VERIFICATION_INCONCLUSIVE)
    return events


def _pipeline_details(context: dict[str, Any], outcome: str, sentence: str) -> dict[str, Any]:
    src = context["ti"].xcom_pull(task_ids=ids.CHECKOUT) or {}
    ref = src.get("ref") or (context.get("params") or {}).get("ref")
    details = {"outcome": outcome, "summary": sentence, "ref": ref, "sha": src.get("sha")}
    return {k: v for k, v in details.items() if v}


def _rollback_details(context: dict[str, Any], outcome: str, sentence: str) -> dict[str, Any]:
    plan = context["ti"].xcom_pull(task_ids=ids.RB_IDENTIFY) or {}
    details = {
        "environment": plan.get("environment") or context["params"].get("environment") or "production",
        "reason": plan.get("reason") or context["params"].get("reason") or "",
        "from": (plan.get("current") or {}).get("image_tag") or "?",
        "to": (plan.get("target") or {}).get("image_tag") or "?",
        "outcome": outcome,
        "summary": sentence,
    }
    if plan.get("fingerprint"):
        details["alert_fingerprint"] = plan["fingerprint"]
    return details


def notify_summary(*, service_name: str, mode: str = "pipeline", **context: Any) -> dict[str, Any]:
    """The run's summary, posted once as an event of the notification path. Never fails.

    Returns the outcome and what became of each notification: ``notified`` (every
    destination has it), ``not_configured`` (destinations without a connection) and
    ``errors``. The run's result is given by ``notify.outcome``, whatever happens here.
    """
    try:
        return _summarise(service_name=service_name, mode=mode, context=context)
    except Exception as exc:  # a notification never changes the run's result
        log.exception("The run's summary could not be sent")
        error = f"{type(exc).__name__}: {exc}"[:500]
        return {"outcome": "unknown", "message": error, "events": [], "notified": False, "errors": [error]}


def _summarise(*, service_name: str, mode: str, context: dict[str, Any]) -> dict[str, Any]:
    svc = service(service_name)
    states = task_states(context)
    if mode == "manual":
        outcome, sentence = describe_rollback(states)
        events = [_ROLLBACK_SUMMARY.get(outcome, PipelineEvent.RUN_FINISHED)]
        details = _rollback_details(context, outcome, sentence)
        _record_metrics(svc.name, context, lambda: rollback_outcome(outcome, details))
    else:
        outcome, sentence = describe_outcome(states)
        events = _pipeline_events(outcome, context)
        details = _pipeline_details(context, outcome, sentence)
        _record_metrics(svc.name, context, lambda: pipeline_outcome(states, outcome, context))
    reports = [notify_event(e, service_name=svc.name, context=context, details=details) for e in events]
    return {
        "outcome": outcome,
        "message": sentence,
        "events": [e.value for e in events],
        "notified": all(r.ok for r in reports),
        "not_configured": [d for r in reports for d in r.not_configured],
        "errors": [e for r in reports for e in r.errors],
    }


def _record_metrics(
    service_name: str, context: dict[str, Any], outcome: Callable[[], metrics.RunOutcome]
) -> None:
    """The run's delivery metrics; a problem is logged, never raised (like a notification)."""
    try:
        metrics.record_run(metrics.Run.of(service_name, context), outcome())
    except Exception:
        log.exception("The delivery metrics of this run could not be recorded")


def _xcom(context: dict[str, Any], task_id: str) -> dict[str, Any]:
    value = context["ti"].xcom_pull(task_ids=task_id)
    return value if isinstance(value, dict) else {}


def _deploys(states: dict[str, str], context: dict[str, Any]) -> tuple[metrics.Deploy, ...]:
    """Each environment's deploy of the run: success once healthy, failed at its sync or health check.

    A healthy deploy's duration runs from its GitOps commit to the health check's success (both in
    their XComs); a failed one is counted without a duration (its moment of failure is not recorded).
    """
    deploys = []
    for env in metrics.ENVIRONMENTS:
        group = f"deploy_{env}"
        health = states.get(ids.task_id(group, "health_check"))
        if health not in ("success", "failed") and states.get(ids.task_id(group, "sync")) != "failed":
            continue
        duration = None
        if health == "success":
            started = parse_time(_xcom(context, ids.task_id(group, "gitops_commit")).get("committed_at"))
            ended = parse_time(_xcom(context, ids.task_id(group, "health_check")).get("healthy_at"))
            duration = (ended - started).total_seconds() if started and ended else None
        result = "success" if health == "success" else "failed"
        deploys.append(metrics.Deploy(environment=env, result=result, duration_s=duration))
    return tuple(deploys)


def _approval_result(states: dict[str, str], context: dict[str, Any]) -> str | None:
    if states.get(ids.APPROVE_PRODUCTION) != "success":
        return None
    if states.get(ids.PRODUCTION_COMMIT) not in (None, "skipped"):
        return "approved"
    return "timeout" if _approval_timed_out(context) else "rejected"


def _lead_time(context: dict[str, Any], started: datetime | None) -> float | None:
    """Commit time (the run's ``commit_time`` conf key, as the DORA report reads it, else the run's
    start) to the production health check's success (else now)."""
    conf = getattr(context.get("dag_run"), "conf", None)
    committed = parse_time(conf.get("commit_time") if isinstance(conf, dict) else None) or started
    healthy_at = _xcom(context, ids.task_id(ids.DEPLOY_PRODUCTION, "health_check")).get("healthy_at")
    deployed = parse_time(healthy_at) or datetime.now(UTC)
    return (deployed - committed).total_seconds() if committed else None


def pipeline_outcome(states: dict[str, str], outcome: str, context: dict[str, Any]) -> metrics.RunOutcome:
    """What the delivery metrics count of a pipeline run that ended as ``outcome``."""
    started = parse_time(getattr(context.get("dag_run"), "start_date", None))
    rollback = None
    if states.get(ids.ROLLBACK_PLAN) == "success" and outcome != "rollback_superseded":
        rollback = "success" if states.get(ids.ROLLBACK_HEALTH) == "success" else "failed"
    return metrics.RunOutcome(
        pipeline="success" if outcome in ("deployed", "ci_passed") else "failed",
        duration_s=(datetime.now(UTC) - started).total_seconds() if started else None,
        deploys=_deploys(states, context),
        rollback=rollback,
        approval=_approval_result(states, context),
        lead_time_s=_lead_time(context, started) if outcome == "deployed" else None,
    )


def rollback_outcome(outcome: str, details: dict[str, Any]) -> metrics.RunOutcome:
    """What the delivery metrics count of a rollback DAG run (one not needed, or superseded, is not one)."""
    if outcome in NOTHING_REVERTED:
        return metrics.RunOutcome()
    environment = details.get("environment") or "production"
    return metrics.RunOutcome(
        rollback="success" if outcome == "rolled_back" else "failed", rollback_environment=environment
    )


def _finish_run(service_name: str, run_id: str, *, succeeded: bool) -> None:
    """Let the profile clean up after the run (the local profile's checkout); never fails the outcome."""
    platform = catalog().platform
    try:
        active_profile(platform).finish_run(
            service=service(service_name), platform=platform, run_id=run_id, succeeded=succeeded
        )
    except (OSError, GitOpsError) as exc:
        log.warning("Could not clean up after run %s of %s: %s", run_id, service_name, exc)


def outcome(*, mode: str = "pipeline", service_name: str | None = None, **context: Any) -> str:
    """Give the run its true state: failed when the release (or the rollback) failed, even after a good rollback.

    The profile then cleans up after the run (``service_name``), keeping what a failed run left.
    """
    states = task_states(context)
    if mode == "manual":
        result, sentence = describe_rollback(states)
        failed = result not in ("rolled_back", *NOTHING_REVERTED)
        what = "Rollback"
    else:
        result, sentence = describe_outcome(states)
        failed = result in (
            "failed",
            "rolled_back",
            "rollback_failed",
            "rollback_aborted",
            "rollback_superseded",
        )
        what = "Release"
    try:
        context["dag_run"].note = sentence  # best effort: visible in the UI's run notes
    except Exception:
        log.debug("run note not writable here", exc_info=True)
    if service_name is not None:
        _finish_run(service_name, context["run_id"], succeeded=not failed)
    if failed:
        raise PipelineError(f"{what} {result.replace('_', ' ')}: {sentence}")
    log.info("Outcome: %s", sentence)
    return result
