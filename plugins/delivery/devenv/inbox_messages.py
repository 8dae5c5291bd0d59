"""What the real clients send, read into inbox entries (pure; the servers are in :mod:`inbox_server`).

Four shapes, each as its sender writes it:

* the pipeline's Slack Web API call ``chat.postMessage`` (``slack_sdk``: JSON body, the bot
  token as ``Authorization: Bearer``; https://api.slack.com/methods/chat.postMessage);
* Alertmanager's ``slack_configs``: an incoming-webhook post, one attachment with ``title``,
  ``title_link``, ``text`` (``notify/slack/slack.go``);
* PagerDuty Events API v2 events, from the ``pagerduty`` client of the pipeline and from
  Alertmanager's ``pagerduty_configs`` (``notify/pagerduty/pagerduty.go``: the payload is
  sent on resolve too, the dedup key is the alert group's hash, ``client_url`` links the
  Alertmanager); validated as PagerDuty does
  (https://developer.pagerduty.com/docs/events-api-v2-overview#response-codes--retry-logic);
* e-mail, from the SMTP hook of the pipeline and Alertmanager's ``email_configs`` (HTML
  body; Alertmanager's default template links the Alertmanager first).

Every value is foreign text: it is kept as text, links only when they are http(s) URLs.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Mapping
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

from delivery.notification_inbox import InboxEntry, Source, safe_link, severity_in, slack_plain

PAGERDUTY_ACTIONS = ("trigger", "acknowledge", "resolve")
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")
P_OF_PAGERDUTY = {"critical": "P1", "error": "P2", "warning": "P2", "info": "P3"}
"""``delivery.notify.routing.PAGERDUTY_SEVERITY`` read backwards (and ``error`` as P2), for a
PagerDuty event whose text names no severity. Kept here: the inbox imports nothing of Airflow."""

_EMOJI = re.compile(r"^(:[a-z0-9_+-]+:\s*)+")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# -- Slack ---------------------------------------------------------------------------------


def slack_api_errors(body: Mapping[str, Any], *, authorization: str) -> str | None:
    """The ``error`` Slack's ``chat.postMessage`` answers (with HTTP 200), or None when it posts."""
    token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    if not token:
        return "not_authed"
    if not isinstance(body.get("channel"), str) or not body["channel"].strip():
        return "channel_not_found"
    if not (body.get("text") or body.get("blocks") or body.get("attachments")):
        return "no_text"
    return None


def slack_api_message(body: Mapping[str, Any]) -> InboxEntry:
    """The pipeline's ``chat.postMessage``: its first line is the title, the last link the run's."""
    raw = _text(body.get("text")) or "\n".join(
        _text(a.get("fallback") or a.get("text"))
        for a in body.get("attachments") or []
        if isinstance(a, dict)
    )
    text, links = slack_plain(raw)
    first = text.strip().splitlines()[0] if text.strip() else "(no text)"
    return InboxEntry(
        source=Source.PIPELINE,
        kind="slack",
        destination=_text(body.get("channel")),
        title=_EMOJI.sub("", first).replace("*", "").strip(),
        text=text,
        link=links[-1] if links else None,
    )


def slack_webhook_message(
    body: Mapping[str, Any], *, receiver: str | None, alertmanager_url: str | None
) -> InboxEntry:
    """An incoming-webhook post from Alertmanager: its attachment's title and text.

    The link is the Alertmanager's view of the receiver's alerts, as Alertmanager builds it
    for PagerDuty and e-mail (``__alertmanagerURL``); the shipped ``title_link`` (a runbook)
    is kept in ``detail``.
    """
    attachments = [a for a in body.get("attachments") or [] if isinstance(a, dict)]
    first = attachments[0] if attachments else {}
    parts = [_text(first.get(k)) for k in ("title", "pretext", "text")] + [_text(body.get("text"))]
    text, _ = slack_plain("\n".join(p for p in parts if p))
    title = _text(first.get("title")) or (text.splitlines()[0] if text else "(no text)")
    link = None
    if alertmanager_url:
        query = f"?receiver={quote(receiver, safe='')}" if receiver else ""
        link = f"{alertmanager_url.rstrip('/')}/#/alerts{query}"
    detail = {"receiver": receiver or ""}
    if safe_link(first.get("title_link")):
        detail["title_link"] = str(first["title_link"])
    return InboxEntry(
        source=Source.ALERTMANAGER,
        kind="slack",
        destination=_text(body.get("channel")) or "(the webhook's channel)",
        title=slack_plain(title)[0],
        text=text,
        link=link or safe_link(first.get("title_link")),
        detail=detail,
    )


# -- PagerDuty -----------------------------------------------------------------------------


def pagerduty_errors(event: Any) -> list[str]:
    """What PagerDuty's Events API v2 refuses in ``event`` (a 400 answer), or ``[]``."""
    if not isinstance(event, dict):
        return ["the event must be a JSON object"]
    action, key = event.get("event_action"), event.get("dedup_key")
    payload = _mapping(event.get("payload"))
    trigger = action == "trigger"
    routing_key = event.get("routing_key")
    checks = (
        (
            isinstance(routing_key, str) and len(routing_key) == 32,
            "'routing_key' must be a 32 character string",
        ),
        (
            action in PAGERDUTY_ACTIONS,
            "'event_action' is invalid (must be one of: trigger, acknowledge, resolve)",
        ),
        (
            key is None or (isinstance(key, str) and len(key) <= 255),
            "'dedup_key' must be a string of at most 255 characters",
        ),
        (
            action not in ("acknowledge", "resolve") or bool(key),
            "'dedup_key' is required for acknowledge and resolve",
        ),
        (not trigger or bool(payload.get("summary")), "'payload.summary' is missing or blank"),
        (not trigger or bool(payload.get("source")), "'payload.source' is missing or blank"),
        (not trigger or payload.get("severity") in PAGERDUTY_SEVERITIES, "'payload.severity' is invalid"),
        (
            not trigger or len(_text(payload.get("summary"))) <= 1024,
            "'payload.summary' is longer than 1024 characters",
        ),
    )
    return [message for valid, message in checks if not valid]


def pagerduty_message(event: Mapping[str, Any], *, source: Source, dedup_key: str) -> InboxEntry:
    """A valid Events v2 event: trigger or resolve, its dedup key, summary and details."""
    payload = _mapping(event.get("payload"))
    action = _text(event.get("event_action"))
    summary = _text(payload.get("summary")) or f"{action} {dedup_key}"
    details = _mapping(payload.get("custom_details"))
    lines = [summary] + [f"{name}: {_text(value)}" for name, value in details.items() if _text(value)]
    links = [link.get("href") for link in event.get("links") or [] if isinstance(link, dict)]
    link = safe_link(event.get("client_url")) or next(
        (url for url in reversed(links) if safe_link(url)), None
    )
    severity = _text(payload.get("severity"))
    return InboxEntry(
        source=source,
        kind="pagerduty",
        destination=action,
        title=summary,
        text="\n".join(lines),
        severity=severity_in(summary) or P_OF_PAGERDUTY.get(severity, ""),
        link=link,
        detail={"dedup_key": dedup_key, "pagerduty_severity": severity},
    )


# -- e-mail --------------------------------------------------------------------------------


class _HtmlText(HTMLParser):
    """The text a reader sees in an HTML mail, and its links in order (no style, no script)."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6", "ul"})
    HIDDEN = frozenset({"style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        if tag == "a":
            href = dict(attrs).get("href")
            if safe_link(href):
                self.links.append(str(href).strip())

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return "\n".join(line for line in lines if line)


def html_text(markup: str) -> tuple[str, list[str]]:
    """(text, links) of an HTML document."""
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    return parser.text(), parser.links


def email_message(
    *, mail_from: str, rcpt_tos: list[str], content: bytes, alertmanager_sender: str | None
) -> InboxEntry:
    """One mail: its subject, the text of its body, its recipients.

    It comes from Alertmanager when the envelope sender is Alertmanager's ``smtp_from``; the
    link is then the first of the mail (Alertmanager's view of the alerts), else the last (the
    pipeline's messages end with their run, or the approval).
    """
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(preferencelist=("html", "plain"))
    body = part.get_content() if part is not None else ""
    if part is not None and part.get_content_subtype() == "html":
        text, links = html_text(body)
    else:
        text, links = body.strip(), [u for u in re.findall(r"https?://[^\s<>\"']+", body) if safe_link(u)]
    from_alertmanager = bool(alertmanager_sender) and mail_from.lower() == str(alertmanager_sender).lower()
    return InboxEntry(
        source=Source.ALERTMANAGER if from_alertmanager else Source.PIPELINE,
        kind="email",
        destination=", ".join(rcpt_tos),
        title=str(message.get("Subject", "")) or "(no subject)",
        text=text,
        link=(links[0] if from_alertmanager else links[-1]) if links else None,
        detail={"from": mail_from},
    )
