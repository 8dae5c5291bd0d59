"""End of run: the summary notification, the delivery metrics and the run's true outcome.

The same two steps end the delivery pipeline (``mode="pipeline"``) and the
rollback DAG (``mode="manual"``); only the reading of the task states differs.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from delivery.catalog import Service
from delivery.notify import PipelineEvent, notify_event
from delivery.pipeline import task_ids as ids
from delivery.reporting import metrics
from delivery.runtime import PipelineError, service

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
        if rolled_back:
            return (
                "rolled_back",
                f"production failed ({', '.join(failed)}); rolled back to the previous stable version",
            )
        return "rollback_failed", f"production failed and the rollback failed too ({', '.join(failed)})"
    if failed:
        return "failed", f"failed at {', '.join(failed)}"
    if states.get(ids.VERIFY) == "success":
        return "deployed", "deployed to production and verified"
    if states.get(ids.RELEASE_GATE) == "success" and states.get(ids.IMAGE_BUILD) == "skipped":
        return "ci_passed", "validate, build and test passed (no deploy for this event)"
    if states.get(ids.APPROVE_PRODUCTION) == "success" and states.get(ids.PRODUCTION_COMMIT) == "skipped":
        return "rejected", "production deploy was rejected or the approval timed out; production is untouched"
    return "incomplete", "the run ended before production"


def describe_rollback(states: dict[str, str]) -> tuple[str, str]:
    """(outcome, sentence) of a rollback DAG run from its task states."""
    failed = sorted(t for t, s in states.items() if s in FAILED_STATES and t != ids.RB_OUTCOME)
    if states.get(ids.RB_RECORD) == "success":
        return "rolled_back", "rolled back, the restored release is healthy and marked verified"
    if states.get(ids.RB_IDENTIFY) == "skipped":
        return "not_needed", "the release the alert was about is no longer current: nothing rolled back"
    if states.get(ids.RB_ABORTED) == "success":
        return "aborted", "aborted at the confirmation step: nothing was reverted"
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
    else:
        outcome, sentence = describe_outcome(states)
        events = _pipeline_events(outcome, context)
        details = _pipeline_details(context, outcome, sentence)
        _record_metrics(svc, states, outcome, context)
    reports = [notify_event(e, service_name=svc.name, context=context, details=details) for e in events]
    return {
        "outcome": outcome,
        "message": sentence,
        "events": [e.value for e in events],
        "notified": all(r.ok for r in reports),
        "not_configured": [d for r in reports for d in r.not_configured],
        "errors": [e for r in reports for e in r.errors],
    }


def _record_metrics(svc: Service, states: dict[str, str], outcome: str, context: dict[str, Any]) -> None:
    """Delivery metrics (count, result, duration, lead time); never raises."""
    dag_run = context.get("dag_run")
    started = getattr(dag_run, "start_date", None)
    now = datetime.now(tz=started.tzinfo) if started else None
    duration = (now - started).total_seconds() if started and now else None
    metrics.record_pipeline_run(
        service=svc.name,
        result="success" if outcome in ("deployed", "ci_passed") else "failed",
        duration_s=duration,
    )
    for env in ("staging", "production"):
        health = states.get(f"deploy_{env}.health_check")
        if health in ("success", "failed") or states.get(f"deploy_{env}.sync") == "failed":
            metrics.record_deploy(
                service=svc.name, environment=env, result="success" if health == "success" else "failed"
            )
    if states.get(ids.ROLLBACK_PLAN) == "success":
        result = "success" if states.get(ids.ROLLBACK_HEALTH) == "success" else "failed"
        metrics.record_rollback(service=svc.name, environment="production", result=result)
    if states.get(ids.APPROVE_PRODUCTION) == "success":
        if states.get(ids.PRODUCTION_COMMIT) not in (None, "skipped"):
            metrics.record_approval(service=svc.name, result="approved")
        else:
            metrics.record_approval(
                service=svc.name, result="timeout" if _approval_timed_out(context) else "rejected"
            )
    if outcome == "deployed" and started and now:
        metrics.record_lead_time(service=svc.name, commit_time=started, deployed_at=now)


def outcome(*, mode: str = "pipeline", **context: Any) -> str:
    """Give the run its true state: failed when the release (or the rollback) failed, even after a good rollback."""
    states = task_states(context)
    if mode == "manual":
        result, sentence = describe_rollback(states)
        failed = result not in ("rolled_back", "not_needed")
        what = "Rollback"
    else:
        result, sentence = describe_outcome(states)
        failed = result in ("failed", "rolled_back", "rollback_failed", "rollback_aborted")
        what = "Release"
    try:
        context["dag_run"].note = sentence  # best effort: visible in the UI's run notes
    except Exception:
        log.debug("run note not writable here", exc_info=True)
    if failed:
        raise PipelineError(f"{what} {result.replace('_', ' ')}: {sentence}")
    log.info("Outcome: %s", sentence)
    return result
