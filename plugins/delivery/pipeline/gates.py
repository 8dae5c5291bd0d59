"""Human gates of the pipeline: operators whose answer decides what runs next."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk.exceptions import AirflowSkipException

if TYPE_CHECKING:
    from airflow.sdk import Context

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


class RollbackGate(HITLBranchOperator):
    """Continue / Abort before a rollback reverts anything, asked only when a human must confirm.

    The plan step says what needs confirming (``confirm``: a DB migration among the undone
    releases, or a target that never passed verification). With nothing to confirm the gate is
    skipped, without a request, and the revert (which also follows the plan) runs. *Abort*, and
    the default on timeout,
    branch to the ``aborted`` step: nothing is reverted. The answer and who gave it are kept
    (XCom ``response``) for the GitOps commit's ``Delivery-Approver``.
    """

    def __init__(self, *, plan_task: str, continue_task: str, abort_task: str, **kwargs: Any) -> None:
        super().__init__(
            options=[CONTINUE, ABORT],
            options_mapping={CONTINUE: continue_task, ABORT: abort_task},
            defaults=[ABORT],
            **kwargs,
        )
        self.plan_task = plan_task

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
