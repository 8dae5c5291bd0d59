"""Human review of an inconclusive production verification (the safe default of ``on_inconclusive: hold``).

When Prometheus could not give a verdict (unreachable, no data), the release is
held and an approver decides: *Keep release* records it as verified, *Roll back*
fails this task, which starts the rollback branch. When the verification was
conclusive, the task returns at once without asking anyone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator

from delivery.integrations.hitl import ResumableGateMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

KEEP = "Keep release"
ROLL_BACK = "Roll back"


class VerificationRejected(RuntimeError):
    """An approver chose to roll back a release whose verification was inconclusive."""


class HoldReviewOperator(ResumableGateMixin, HITLOperator):
    def __init__(self, *, verify_task_id: str, api_conn_id: str = "airflow_api", **kwargs: Any) -> None:
        kwargs.setdefault("options", [KEEP, ROLL_BACK])
        kwargs.setdefault("defaults", [ROLL_BACK])
        super().__init__(**kwargs)
        self.verify_task_id = verify_task_id
        self._init_gate(api_conn_id)

    def execute(self, context: Context) -> Any:
        verdict = context["ti"].xcom_pull(task_ids=self.verify_task_id)
        if not (isinstance(verdict, dict) and verdict.get("decision") == "hold"):
            self.log.info("Verification was conclusive: no review needed")
            return {"chosen_options": [KEEP], "reviewed": False}
        self.log.warning(
            "Verification inconclusive (%s): holding the release for a human", verdict.get("reason")
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context=context, event=event)
        if result["chosen_options"] == [ROLL_BACK]:
            who = (result.get("responded_by_user") or {}).get("name") or "the response timeout"
            raise VerificationRejected(f"Inconclusive verification: roll back chosen by {who}")
        return result
