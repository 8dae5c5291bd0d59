"""The failure callback of every task: one event of the notification path, wherever Airflow runs it.

:class:`TaskFailureNotifier` is the ``on_failure_callback`` of every delivery task
(the ``task_failed`` event, or the step's own severity event such as
``production_deploy_failed``) and of the git poller DAGs. It runs in two places:

* in the task's own process, when the task raised: the context has ``exception``;
* in the dag-processor, when the scheduler failed the task (process killed,
  heartbeat lost, executor state mismatch, state changed from outside): the
  context has no ``exception``, ``ti.state`` is None, and ``ti.xcom_push`` hangs
  (the dag-processor's supervisor does not answer it). The scheduler's reason is not
  passed on, so the message says the error is not known and links the task log.

So the callback only reads the context (never pushes XCom or writes anything to
Airflow), never renders a template (``template_fields = ()``; the error is data),
never raises, and keeps to a short deadline. Airflow may run it twice for one
failure (heartbeat timeout: once from the purge, once from the resulting state
mismatch): a destination that already has the message for this DAG, run, task,
map index and try is skipped (:mod:`delivery.notify.dedup`; PagerDuty also
deduplicates by its dedup key).

The dag-processor runs all the callbacks of one DAG file in one process and kills
it after ``dag_file_processor_timeout`` (50 s), losing the whole batch. So each
callback sends within :data:`CALLBACK_DEADLINE_S`, and all callbacks of a process
share :data:`PROCESS_BUDGET` (30 s in any 50 s): when many tasks fail at once and the
destinations hang, the later ones are logged as not sent instead of taking every
callback of the batch down with them.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.notifier import BaseNotifier
from airflow.sdk.log import redact as mask

from delivery.notify.dedup import SentMarks
from delivery.notify.messages import RunInfo
from delivery.notify.routing import PipelineEvent
from delivery.notify.send import NotifyReport, notify_event

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

CALLBACK_DEADLINE_S = 10.0
PER_TRY_MARK_TTL = timedelta(hours=1)
UNKNOWN_ERROR = (
    "not known here: the scheduler ended this task (process killed, heartbeat lost, or its state "
    "changed outside the task); see the task log and the audit log"
)
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)")
_SLACK_SECRETS = re.compile(r"xox[a-z]-[A-Za-z0-9-]+|https://hooks\.slack\.com/\S+")


class CallbackBudget:
    """Seconds the failure callbacks of one process may spend sending within any ``window_s``."""

    def __init__(self, *, total_s: float = 30.0, window_s: float = 50.0) -> None:
        if not 0 < total_s <= window_s:
            raise ValueError(f"total_s must be in (0, window_s={window_s!r}], got {total_s!r}")
        self.total_s = total_s
        self.window_s = window_s
        self._spent: deque[tuple[float, float]] = deque()  # (ended at, seconds)
        self._lock = threading.Lock()

    def remaining(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._spent and self._spent[0][0] < now - self.window_s:
                self._spent.popleft()
            return self.total_s - sum(seconds for _, seconds in self._spent)

    def spend(self, seconds: float) -> None:
        with self._lock:
            self._spent.append((time.monotonic(), seconds))

    def __deepcopy__(self, memo: dict[int, Any]) -> CallbackBudget:
        return self  # a budget is shared: copies of a DAG's tasks spend the same one

    def __getstate__(self) -> dict[str, float]:
        return {"total_s": self.total_s, "window_s": self.window_s}

    def __setstate__(self, state: dict[str, float]) -> None:  # another process: a fresh budget
        self.total_s, self.window_s = state["total_s"], state["window_s"]
        self._spent = deque()
        self._lock = threading.Lock()


PROCESS_BUDGET = CallbackBudget()


def error_text(exception: Any) -> str:
    """The task's error as data: secrets Airflow knows of and credentials in URLs are masked."""
    if exception is None:
        return UNKNOWN_ERROR
    text = str(exception) or type(exception).__name__
    try:
        text = str(mask(text))  # Airflow's secrets masker (connection passwords...)
    except Exception:  # no masker in this process: the patterns below still apply
        log.debug("secrets masker unavailable", exc_info=True)
    return _SLACK_SECRETS.sub("[redacted]", _URL_CREDENTIALS.sub("[redacted]", text))


class TaskFailureNotifier(BaseNotifier):
    """``on_failure_callback``: the failure of a task as an event of the notification path.

    ``service_name``: the service whose routes apply, or None with ``subject`` for a DAG
    that is not a service (a git poller: the platform's routes). ``event``: what the failure
    means (``task_failed`` unless the step raises a severity event of its own).
    ``quiet_period``: report a task that keeps failing (every run of a poller) at most once
    per period, instead of once per try.
    """

    template_fields = ()

    def __init__(
        self,
        *,
        service_name: str | None,
        event: PipelineEvent | str = PipelineEvent.TASK_FAILED,
        subject: str | None = None,
        quiet_period: timedelta | None = None,
        budget: CallbackBudget | None = None,
    ) -> None:
        super().__init__()
        if not service_name and not subject:
            raise ValueError(
                "TaskFailureNotifier needs a service_name or, for a DAG that is not a service, a subject"
            )
        if quiet_period is not None and quiet_period <= timedelta(0):
            raise ValueError(f"quiet_period must be positive, got {quiet_period!r}")
        self.service_name = service_name
        self.event = PipelineEvent(event)
        self.subject = subject
        self.quiet_period = quiet_period
        self.budget = budget

    def notify(self, context: Context) -> None:
        try:
            self.send(context)
        except Exception:  # a notification never changes a pipeline's result
            log.exception("The failure notification could not be sent; the task's result is unchanged")

    def send(self, context: Context | dict[str, Any]) -> NotifyReport | None:
        """Send the failure of the task in ``context``; None when this process's budget is spent."""
        run = RunInfo.from_context(context, default_dag_id=self.subject or self.service_name or "?")
        budget = self.budget or PROCESS_BUDGET
        remaining = budget.remaining()
        if remaining < 1.0:
            log.error(
                "Failure of %s/%s/%s not notified: the failure callbacks of this process already spent "
                "their %.0fs budget (destinations too slow)",
                run.dag_id,
                run.run_id,
                run.task_label,
                budget.total_s,
            )
            return None
        ttl = self.quiet_period or PER_TRY_MARK_TTL
        started = time.monotonic()
        try:
            return notify_event(
                self.event,
                service_name=self.service_name,
                subject=self.subject,
                context=context,
                details={"error": error_text(context.get("exception"))},
                failed_task=True,
                deadline_s=min(CALLBACK_DEADLINE_S, remaining),
                marks=SentMarks(ttl_s=ttl.total_seconds()),
                mark_key=self._mark_key(run),
            )
        finally:
            budget.spend(time.monotonic() - started)

    def _mark_key(self, run: RunInfo) -> str:
        if self.quiet_period is not None:
            return "\x1f".join(("task", run.dag_id, run.task_label, str(self.event)))
        return "\x1f".join(
            ("try", run.dag_id, run.run_id, run.task_label, str(run.try_number), str(self.event))
        )
