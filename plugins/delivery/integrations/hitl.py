"""Human-in-the-loop operators that never lose a fast answer.

On Airflow 3.3 a human gate parks its task (``awaiting_input``) and the task's
process exits cleanly. When the answer arrives before the scheduler has read
that exit from the executor, the scheduler re-queues the task for the answer,
then reads the stale exit, sees a queued task that "finished", and fails it
("state mismatch"; seen in 8 of 10 answers given within 0.1 s). A plain retry
would ask again and wipe the recorded answer. So every gate of the project
retries, and a retry first looks for the answer of the try the scheduler threw
away (the task's HITL record and the ``state mismatch`` entry in the audit log,
read from the REST API): when both are there, it resumes with that answer
without asking again.

An answer that lands in the very moment the task parks can also be recorded
without resuming the task; Airflow's own timeout sweep then resumes it with the
recorded answer when ``response_timeout`` passes, which is why every gate here
has one.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from delivery.integrations.airflow_api import AirflowApiError, AirflowApiHook

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

GATE_RETRIES = 2
GATE_RETRY_DELAY = timedelta(seconds=3)


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
