"""The text of each pipeline event, per kind of destination (pure)."""

from __future__ import annotations

import html
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
}

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
}

SECRET_KEY_WORDS = ("password", "secret", "token", "key", "credential")


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """Where an event happened, read from the task context."""

    dag_id: str
    run_id: str
    task_id: str | None = None
    try_number: int | None = None
    log_url: str | None = None

    @classmethod
    def from_context(cls, context: Any, *, default_dag_id: str) -> RunInfo:
        ti = _get(context, "ti") or _get(context, "task_instance")
        dag = _get(context, "dag")
        dag_id = getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None) or _get(context, "dag_id")
        run_id = _get(context, "run_id") or getattr(ti, "run_id", None) or ""
        log_url = None
        try:
            log_url = getattr(ti, "log_url", None)
        except Exception:  # not every context object can build one
            log_url = None
        return cls(
            dag_id=str(dag_id or default_dag_id),
            run_id=str(run_id),
            task_id=getattr(ti, "task_id", None),
            try_number=getattr(ti, "try_number", None),
            log_url=log_url if isinstance(log_url, str) else None,
        )


def _get(context: Any, key: str) -> Any:
    try:
        return context.get(key)
    except Exception:
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
    event: PipelineEvent
    service: str
    environment: str
    headline: str
    run: RunInfo
    run_url: str
    facts: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"[{self.event.severity.value}] {self.service}: {self.headline}"

    def slack_text(self) -> str:
        lines = [f"{ICONS[self.event]} *{_slack_escape(self.title)}*"]
        lines.append(f"DAG `{self.run.dag_id}`, run `{_slack_escape(self.run.run_id)}`")
        lines += [f"• {name}: {_slack_escape(value)}" for name, value in self.facts.items()]
        lines += [f"<{url}|{_slack_escape(text)}>" for text, url in self.links.items()]
        return "\n".join(lines)

    def email_subject(self) -> str:
        return self.title

    def email_html(self) -> str:
        items = "".join(
            f"<li><b>{html.escape(name)}</b>: {html.escape(value)}</li>" for name, value in self.facts.items()
        )
        links = "".join(
            f'<p><a href="{html.escape(url, quote=True)}">{html.escape(text)}</a></p>'
            for text, url in self.links.items()
        )
        return (
            f"<h3>{html.escape(self.title)}</h3>"
            f"<p>DAG <code>{html.escape(self.run.dag_id)}</code>, run <code>{html.escape(self.run.run_id)}</code></p>"
            f"<ul>{items}</ul>{links}"
        )

    def pagerduty_event(self) -> dict[str, Any]:
        """Keyword arguments of ``PagerdutyNotifier`` (without the dedup key and action)."""
        return {
            "summary": self.title[:1024],
            "severity": PAGERDUTY_SEVERITY[self.event.severity],
            "source": self.run.dag_id,
            "component": self.service,
            "group": self.environment,
            "class_type": self.event.value,
            "custom_details": {"run_id": self.run.run_id, **self.facts},
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


def build_message(
    event: PipelineEvent,
    *,
    service: Service,
    base_url: str,
    run: RunInfo,
    details: dict[str, Any],
) -> EventMessage:
    """The message of ``event``. Keys of ``details`` that look like secrets are never shown."""
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
        facts["approvers"] = ", ".join(service.approvers)
        facts["times out after"] = str(service.approval_timeout)
    facts["environment"] = environment
    for name, value in details.items():
        if name in ("environment", "approval_task_id", "incident_dag_id", "incident_run_id"):
            continue
        if any(word in name.lower() for word in SECRET_KEY_WORDS):
            continue
        text = _fact(value)
        if text is not None:
            facts[name] = text
    if event is not PipelineEvent.APPROVAL_REQUESTED:
        if run.log_url:
            links["Task log"] = run.log_url
        links["Pipeline run"] = url
    headline = HEADLINES[event].format(environment=environment)
    return EventMessage(
        event=event,
        service=service.name,
        environment=environment,
        headline=headline,
        run=run,
        run_url=url,
        facts=facts,
        links=links,
    )
