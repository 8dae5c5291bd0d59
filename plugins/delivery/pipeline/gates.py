"""Human gates of the pipeline: operators whose answer decides what runs next.

Each gate retries, and a retry resumes with an answer the scheduler threw away
(:mod:`delivery.integrations.hitl`), so a fast answer is never lost.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator, HITLOperator
from airflow.sdk import Param
from airflow.sdk.bases.skipmixin import SkipMixin
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowSkipException

from delivery.integrations.hitl import ResumableGateMixin
from delivery.pipeline.contract import untrusted
from delivery.steps.approval import APPROVE, BREAK_GLASS, REJECT

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

CONTINUE = "Continue"
ABORT = "Abort"

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
