"""Human gates of the pipeline: operators whose answer decides what runs next.

**A fast answer is never lost.** On Airflow 3.3 a human gate parks its task
(``awaiting_input``) and the task's process exits cleanly. When the answer
arrives before the scheduler has read that exit from the executor, the
scheduler re-queues the task for the answer, then reads the stale exit, sees a
queued task that "finished", and fails it ("state mismatch"; seen in 8 of 10
answers given within 0.1 s). A plain retry would ask again and wipe the
recorded answer. So every gate here retries, and a retry first looks for the
answer of the try the scheduler threw away (the task's HITL record and the
``state mismatch`` entry in the audit log, read from the REST API): when both
are there, it resumes with that answer without asking again.
"""

from __future__ import annotations

import copy
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator, HITLOperator
from airflow.sdk import Param
from airflow.sdk.bases.skipmixin import SkipMixin
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowSkipException

from delivery.integrations.airflow_api import AirflowApiError, AirflowApiHook
from delivery.pipeline.contract import untrusted
from delivery.steps.approval import APPROVE, BREAK_GLASS, REJECT

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

CONTINUE = "Continue"
ABORT = "Abort"
GATE_RETRIES = 2
GATE_RETRY_DELAY = timedelta(seconds=3)

_WHY = {
    "migration": (
        "The releases being undone carry a **database migration**. Restore the database backup "
        "taken before it, then choose **Continue**."
    ),
    "unverified_target": (
        "The release to restore **never passed production verification**. Choose **Continue** only "
        "if you vouch for it."
    ),
}


def recorded_answer(context: Any, *, api_conn_id: str) -> dict[str, Any] | None:
    """The answer given to this task's previous try, when the scheduler failed that try after it.

    None on a first try, without a recorded answer, or when the previous try failed for
    another reason (then the gate asks again).
    """
    ti = context["ti"]
    if ti.try_number <= 1:
        return None
    map_index = ti.map_index if ti.map_index is not None else -1
    try:
        api = AirflowApiHook(airflow_api_conn_id=api_conn_id)
        detail = api.hitl_detail(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=map_index)
        if not detail or not detail.get("response_received"):
            return None
        killed = api.events(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            events=("state mismatch",),
            try_number=ti.try_number - 1,
        )
    except AirflowApiError as exc:
        log.warning("Cannot look for an earlier answer (%s): asking again", exc)
        return None
    if not killed:
        return None
    log.info(
        "Honouring the answer %s of %s given to try %d, which the scheduler failed after it was answered",
        detail.get("chosen_options"),
        (detail.get("responded_by_user") or {}).get("id"),
        ti.try_number - 1,
    )
    return {
        "chosen_options": detail.get("chosen_options") or [],
        "params_input": detail.get("params_input") or {},
        "responded_at": datetime.fromisoformat(str(detail["responded_at"])),
        "responded_by_user": detail.get("responded_by_user"),
    }


class ResumableGateMixin:
    """Retries that honour an answer the scheduler threw away (see the module docstring)."""

    api_conn_id: str

    def _init_gate(self, api_conn_id: str) -> None:
        self.api_conn_id = api_conn_id
        self.retries = max(getattr(self, "retries", 0) or 0, GATE_RETRIES)
        self.retry_delay = GATE_RETRY_DELAY

    def execute(self, context: Context) -> Any:
        event = recorded_answer(context, api_conn_id=self.api_conn_id)
        if event is not None:
            return self.execute_complete(context, event)  # type: ignore[attr-defined]
        return super().execute(context)  # type: ignore[misc]


class ProductionApproval(ResumableGateMixin, HITLOperator, SkipMixin):
    """Approve / Reject (and Break glass when the service has break-glass approvers).

    Reject, and the default on timeout, skip the production deploy. Approve and Break glass let
    it run; the deploy then checks the recorded answer itself (:mod:`delivery.steps.approval`).
    """

    inherits_from_skipmixin = True

    def __init__(self, *, api_conn_id: str, break_glass: bool, **kwargs: Any) -> None:
        options = [APPROVE, REJECT, *([BREAK_GLASS] if break_glass else [])]
        params = copy.copy(kwargs.pop("params", None)) or ParamsDict()  # the DAG's params, passed down
        if break_glass:
            params["reason"] = Param(
                "", type="string", title="Reason", description="Required for Break glass.", source="task"
            )
        super().__init__(options=options, defaults=[REJECT], multiple=False, params=params, **kwargs)
        self._init_gate(api_conn_id)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        if result["chosen_options"] == [REJECT]:
            self.log.info("Rejected (or timed out): production is not deployed")
            self.skip(ti=context["ti"], tasks=list(context["task"].get_direct_relatives(upstream=False)))
        return result


class RollbackGate(ResumableGateMixin, HITLBranchOperator):
    """Continue / Abort before a rollback reverts anything, asked only when a human must confirm.

    The plan step says what needs confirming (``confirm``: a DB migration among the undone
    releases, or a target that never passed verification). With nothing to confirm the gate is
    skipped, without a request, and the revert (which also follows the plan) runs. *Abort*, and
    the default on timeout, branch to the ``aborted`` step: nothing is reverted. The answer and
    who gave it are kept (XCom ``response``) for the GitOps commit's ``Delivery-Approver``.
    """

    def __init__(
        self, *, plan_task: str, continue_task: str, abort_task: str, api_conn_id: str, **kwargs: Any
    ) -> None:
        super().__init__(
            options=[CONTINUE, ABORT],
            options_mapping={CONTINUE: continue_task, ABORT: abort_task},
            defaults=[ABORT],
            **kwargs,
        )
        self.plan_task = plan_task
        self._init_gate(api_conn_id)

    def execute(self, context: Context) -> Any:
        plan = context["ti"].xcom_pull(task_ids=self.plan_task) or {}
        confirm = list(plan.get("confirm") or [])
        if not confirm:
            raise AirflowSkipException(
                "nothing to confirm (no DB migration, verified target): the rollback goes on"
            )
        target = (plan.get("target") or {}).get("image_tag") or "?"
        current = (plan.get("current") or {}).get("image_tag") or "?"
        reasons = "\n\n".join(_WHY[c] for c in confirm if c in _WHY)
        self.body = (
            f"Rolling back {plan.get('environment', '?')} from `{current}` to `{target}`.\n\n{reasons}\n\n"
            "**Abort** stops the rollback: nothing is reverted, and the on-call is paged.\n\n"
            f"Reason given: {plan.get('reason', '')}"
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
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


class TrustGate(ResumableGateMixin, HITLOperator, SkipMixin):
    """Lets an untrusted pull request's code run only once an approver says so.

    A run whose ``trusted`` param is false (a fork's pull request, or an author who is not an
    owner, member or collaborator; set by the webhook receiver) asks the service's approvers;
    Reject, and the default on timeout, skip everything after it. Other runs pass at once.
    """

    inherits_from_skipmixin = True

    def __init__(self, *, api_conn_id: str, **kwargs: Any) -> None:
        super().__init__(options=[APPROVE, REJECT], defaults=[REJECT], multiple=False, **kwargs)
        self._init_gate(api_conn_id)

    def execute(self, context: Context) -> Any:
        if not untrusted(context):
            self.log.info("Trusted event: nothing to ask")
            return None
        reason = str(context["params"].get("untrusted_reason") or "untrusted author")
        self.body = (
            f"This run builds code from an untrusted pull request ({reason}). Its stages get no secrets.\n\n"
            "Read the change first. **Approve** runs its CI (validate, build, test); **Reject** runs nothing."
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        if result["chosen_options"] != [APPROVE]:
            self.log.info("Not approved: the untrusted pull request's code does not run")
            self.skip(ti=context["ti"], tasks=list(context["task"].get_direct_relatives(upstream=False)))
        return result
