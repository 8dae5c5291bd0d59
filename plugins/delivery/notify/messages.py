"""The text of each pipeline event, per kind of destination (pure)."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from delivery.catalog.models import Service
from delivery.notify.routing import PAGERDUTY_SEVERITY, PipelineEvent
from delivery.pipeline import task_ids as ids

APPROVAL_TASK_ID = ids.APPROVE_PRODUCTION

HEADLINES: dict[PipelineEvent, str] = {
    PipelineEvent.PRODUCTION_DEPLOY_FAILED: "production deploy failed",
    PipelineEvent.ROLLBACK_FAILED: "rollback FAILED: production needs manual intervention",
    PipelineEvent.ROLLBACK_ABORTED: "rollback aborted, nothing reverted: production needs manual intervention",
    PipelineEvent.BREAK_GLASS_DEPLOY: "BREAK GLASS: deploying to production without the normal approval",
    PipelineEvent.PRODUCTION_GATE_REFUSED: "production deploy refused: no valid approval",
    PipelineEvent.PRODUCTION_VERIFICATION_FAILED: "production verification failed",
    PipelineEvent.STAGING_FAILED: "staging failed",
    PipelineEvent.APPROVAL_TIMED_OUT: "production approval timed out; the release was not deployed",
    PipelineEvent.VERIFICATION_INCONCLUSIVE: "production verification was inconclusive",
    PipelineEvent.APPROVAL_REQUESTED: "waits for a production approval",
    PipelineEvent.DEPLOY_SUCCEEDED: "deployed to {environment}",
    PipelineEvent.ROLLBACK_SUCCEEDED: "rolled back to the previous stable version; service restored",
    PipelineEvent.TASK_FAILED: "task {task} failed",
    PipelineEvent.RUN_FINISHED: "{summary}",
}
"""Fixed text; the only fields are ``environment``, ``task`` and ``summary`` (never re-rendered)."""

ICONS: dict[PipelineEvent, str] = {
    PipelineEvent.PRODUCTION_DEPLOY_FAILED: ":rotating_light:",
    PipelineEvent.ROLLBACK_FAILED: ":rotating_light:",
    PipelineEvent.ROLLBACK_ABORTED: ":rotating_light:",
    PipelineEvent.BREAK_GLASS_DEPLOY: ":rotating_light:",
    PipelineEvent.PRODUCTION_GATE_REFUSED: ":no_entry:",
    PipelineEvent.PRODUCTION_VERIFICATION_FAILED: ":rotating_light:",
    PipelineEvent.STAGING_FAILED: ":warning:",
    PipelineEvent.APPROVAL_TIMED_OUT: ":warning:",
    PipelineEvent.VERIFICATION_INCONCLUSIVE: ":warning:",
    PipelineEvent.APPROVAL_REQUESTED: ":raised_hand:",
    PipelineEvent.DEPLOY_SUCCEEDED: ":white_check_mark:",
    PipelineEvent.ROLLBACK_SUCCEEDED: ":rewind:",
    PipelineEvent.TASK_FAILED: ":x:",
    PipelineEvent.RUN_FINISHED: ":information_source:",
}

OUTCOME_ICONS: dict[str, str] = {
    "ci_passed": ":white_check_mark:",
    "not_needed": ":white_check_mark:",
    "failed": ":x:",
    "rollback_failed": ":x:",
}
"""The icon of a ``run_finished`` summary, by the run's outcome (``details["outcome"]``)."""

HIDDEN_DETAILS = ("environment", "approval_task_id", "incident_dag_id", "incident_run_id")
"""Details that steer the message (links, dedup key) rather than being shown as facts.

``summary`` is also hidden from a ``run_finished`` message, whose headline it is.
"""

SECRET_KEY_WORDS = ("password", "secret", "token", "key", "credential")


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """Where an event happened, read from the task context."""

    dag_id: str
    run_id: str
    task_id: str | None = None
    try_number: int | None = None
    map_index: int | None = None
    log_url: str | None = None

    @classmethod
    def from_context(cls, context: Any, *, default_dag_id: str) -> RunInfo:
        """Read-only and tolerant: works with the small context a dag-processor callback gets."""
        ti = _get(context, "ti") or _get(context, "task_instance")
        dag = _get(context, "dag")
        dag_id = _attr(ti, "dag_id") or _attr(dag, "dag_id") or _get(context, "dag_id")
        run_id = _get(context, "run_id") or _attr(ti, "run_id") or ""
        log_url = _attr(ti, "log_url")
        try_number, map_index = _attr(ti, "try_number"), _attr(ti, "map_index")
        return cls(
            dag_id=str(dag_id or default_dag_id),
            run_id=str(run_id),
            task_id=_attr(ti, "task_id"),
            try_number=try_number if isinstance(try_number, int) else None,
            map_index=map_index if isinstance(map_index, int) and map_index >= 0 else None,
            log_url=log_url if isinstance(log_url, str) else None,
        )

    @property
    def task_label(self) -> str:
        """``task`` or ``task[2]`` for a mapped task instance."""
        task = self.task_id or "?"
        return task if self.map_index is None else f"{task}[{self.map_index}]"


def _get(context: Any, key: str) -> Any:
    try:
        return context.get(key)
    except Exception:  # a context-like object that cannot answer: treat as absent
        return None


def _attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that cannot be computed here (no config, no server)
        return None


def run_url(*, base_url: str, dag_id: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id)}"


def hitl_url(*, base_url: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The Airflow UI's *Required actions* page of one task instance (Human-in-the-loop).

    Same shape as ``HITLOperator.generate_link_to_ui``; the run id is quoted like
    the task instance's ``log_url`` and a path prefix of ``base_url`` is kept.
    """
    query = urlencode({"map_index": map_index})
    return (
        f"{run_url(base_url=base_url, dag_id=dag_id, run_id=run_id)}/tasks/{task_id}/required_actions?{query}"
    )


@dataclass(frozen=True, kw_only=True)
class EventMessage:
    """One event, ready to send: plain text per destination kind, nothing left to render.

    Every value may quote foreign text (an error, a reason, a ref); it is escaped for
    the destination (Slack control characters, HTML) and never passed to a template engine.
    """

    event: PipelineEvent
    service: str
    """The service, or what the event is about when it is not a service (a git poller)."""
    environment: str
    headline: str
    icon: str
    run: RunInfo
    run_url: str
    failed_task: bool = False
    """The event comes from a task's failure: the message names the task and its try."""
    facts: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"[{self.event.severity.value}] {self.service}: {self.headline}"

    def _failed_task_text(self, *, code: Callable[[str], str]) -> str:
        if not self.failed_task:
            return ""
        attempt = f" (try {self.run.try_number})" if self.run.try_number else ""
        return f": task {code(self.run.task_label)} failed{attempt}"

    def slack_text(self) -> str:
        def code(value: str) -> str:
            return f"`{_slack_escape(value)}`"

        lines = [f"{self.icon} *{_slack_escape(self.title)}*"]
        lines.append(
            f"DAG {code(self.run.dag_id)}, run {code(self.run.run_id)}" + self._failed_task_text(code=code)
        )
        lines += [f"• {name}: {_slack_escape(value)}" for name, value in self.facts.items()]
        lines += [f"<{_slack_escape(url)}|{_slack_escape(text)}>" for text, url in self.links.items()]
        return "\n".join(lines)

    def email_subject(self) -> str:
        return self.title

    def email_html(self) -> str:
        def code(value: str) -> str:
            return f"<code>{html.escape(value)}</code>"

        items = "".join(
            f"<li><b>{html.escape(name)}</b>: {html.escape(value)}</li>" for name, value in self.facts.items()
        )
        links = "".join(
            f'<p><a href="{html.escape(url, quote=True)}">{html.escape(text)}</a></p>'
            for text, url in self.links.items()
        )
        where = f"DAG {code(self.run.dag_id)}, run {code(self.run.run_id)}" + self._failed_task_text(
            code=code
        )
        return f"<h3>{html.escape(self.title)}</h3><p>{where}</p><ul>{items}</ul>{links}"

    def pagerduty_event(self) -> dict[str, Any]:
        """Keyword arguments of ``PagerdutyEventsHook.send_event`` (without the dedup key and action)."""
        details: dict[str, Any] = {"run_id": self.run.run_id}
        if self.failed_task:
            details |= {"task": self.run.task_label, "try": self.run.try_number}
        return {
            "summary": self.title[:1024],
            "severity": PAGERDUTY_SEVERITY[self.event.severity],
            "source": self.run.dag_id,
            "component": self.service,
            "group": self.environment or None,
            "class_type": self.event.value,
            "custom_details": details | self.facts,
            "links": [{"href": url, "text": text} for text, url in self.links.items()],
        }


def _slack_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fact(value: Any) -> str | None:
    if value is None or value in ("", [], {}):
        return None
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def _facts(details: dict[str, Any], *, hidden: tuple[str, ...]) -> dict[str, str]:
    """The details worth showing; keys that look like secrets are never shown."""
    facts: dict[str, str] = {}
    for name, value in details.items():
        if name in hidden or any(word in name.lower() for word in SECRET_KEY_WORDS):
            continue
        text = _fact(value)
        if text is not None:
            facts[name] = text
    return facts


def build_message(
    event: PipelineEvent,
    *,
    service: Service | None,
    base_url: str,
    run: RunInfo,
    details: dict[str, Any],
    subject: str | None = None,
    failed_task: bool = False,
) -> EventMessage:
    """The message of ``event`` about ``service`` (or ``subject`` when it is not a service).

    ``failed_task``: the event is raised by the failure of the task in ``run``.
    """
    event = PipelineEvent(event)
    environment = str(details.get("environment") or event.default_environment)
    facts: dict[str, str] = {}
    links: dict[str, str] = {}
    url = run_url(base_url=base_url, dag_id=run.dag_id, run_id=run.run_id)
    if event is PipelineEvent.APPROVAL_REQUESTED:
        task_id = str(details.get("approval_task_id") or APPROVAL_TASK_ID)
        links["Approve or reject in Airflow"] = hitl_url(
            base_url=base_url, dag_id=run.dag_id, run_id=run.run_id, task_id=task_id
        )
        if service is not None:
            facts["approvers"] = ", ".join(service.approvers)
            facts["times out after"] = str(service.approval_timeout)
    if environment:
        facts["environment"] = environment
    hidden = (*HIDDEN_DETAILS, "summary") if event is PipelineEvent.RUN_FINISHED else HIDDEN_DETAILS
    facts |= _facts(details, hidden=hidden)
    if event is not PipelineEvent.APPROVAL_REQUESTED:
        if run.log_url:
            links["Task log"] = run.log_url
        links["Pipeline run"] = url
    outcome = str(details.get("outcome") or "")
    headline = HEADLINES[event].format(
        environment=environment,
        task=run.task_label,
        summary=_fact(details.get("summary")) or outcome.replace("_", " ") or "run finished",
    )
    icon = OUTCOME_ICONS.get(outcome, ICONS[event]) if event is PipelineEvent.RUN_FINISHED else ICONS[event]
    return EventMessage(
        event=event,
        service=service.name if service is not None else (subject or run.dag_id),
        environment=environment,
        headline=headline,
        icon=icon,
        run=run,
        run_url=url,
        failed_task=failed_task,
        facts=facts,
        links=links,
    )
