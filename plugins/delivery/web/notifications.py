"""The notification inbox page in the Airflow UI (local profile): what production would have sent.

Mounted at ``/delivery/notifications`` by ``plugins/delivery_plugin.py`` (*Browse >
Notifications*). ``GET /`` is an HTML page, ``GET /api/notifications`` the same list as JSON;
both take ``limit`` (1-1000, 200 by default) and require the Airflow JWT like the DORA page
(:mod:`delivery.web.auth`).

The entries come from the inbox store (:mod:`delivery.notification_inbox`) that
``DELIVERY_NOTIFICATION_INBOX`` names: the Slack, PagerDuty and e-mail messages of the
pipelines and of Alertmanager, as the local inbox received them, and the destinations the
notification path could not use (not configured, failing). Newest first: time, severity,
destination, source, text, and a link to the run, the approval or the alert. Every text is
foreign (commit messages, alert annotations): it is HTML-escaped, and only http(s) links are
links. The head of the page says whether each of the pipeline's notification connections is
configured. Without a store (any profile but local) both answer ``404``.
"""

from __future__ import annotations

import html
import logging
from typing import Annotated, Any

from airflow.models.connection import Connection
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse

from delivery.notification_inbox import EntryStatus, InboxEntry, InboxStore, safe_link, store_from_env
from delivery.web.auth import require_user
from delivery.web.cache import CATALOG

log = logging.getLogger(__name__)

NO_INBOX = (
    "There is no notification inbox here: it is kept by the local profile only "
    "(scripts/run-local.sh start). Elsewhere the messages go to Slack, PagerDuty and e-mail."
)
KINDS = {"slack": "Slack", "pagerduty": "PagerDuty", "email": "E-mail", "routing": "Routing"}
SOURCES = {"pipeline": "Pipeline", "alertmanager": "Alertmanager"}
NEEDS = {"slack": "password", "pagerduty": "password", "email": "host"}
"""What each kind's connection must have, as the providers check it (bot token, routing key, host)."""

app = FastAPI(title="Visiobook delivery: notifications", docs_url=None, redoc_url=None, openapi_url=None)


def inbox_store() -> InboxStore | None:
    """The inbox of this Airflow (override in tests with ``app.dependency_overrides``)."""
    return store_from_env()


def destinations() -> dict[str, dict[str, str]]:
    """Each notification connection of the pipelines, and whether it is configured."""
    catalog = CATALOG.get()
    if catalog is None:
        return {}
    conns = catalog.platform.connections
    out: dict[str, dict[str, str]] = {}
    for kind, conn_id in (("slack", conns.slack_api), ("pagerduty", conns.pagerduty), ("email", conns.smtp)):
        try:
            conn = Connection.get_connection_from_secrets(conn_id)
        except Exception:  # not defined, or the secrets backend failed
            out[kind] = {"connection": conn_id, "state": "not configured: the connection is not defined"}
            continue
        configured = bool(getattr(conn, NEEDS[kind], None))
        state = "configured" if configured else f"not configured: the connection has no {NEEDS[kind]}"
        out[kind] = {"connection": conn_id, "state": state}
    return out


User = Annotated[Any, Depends(require_user)]
Store = Annotated[InboxStore | None, Depends(inbox_store)]
Destinations = Annotated[dict[str, dict[str, str]], Depends(destinations)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _entries(store: InboxStore | None, limit: int) -> list[InboxEntry]:
    if store is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NO_INBOX)
    return store.entries(limit=limit)


@app.get("/api/notifications")
def notifications_json(user: User, store: Store, found: Destinations, limit: Limit = 200) -> JSONResponse:
    entries = _entries(store, limit)
    return JSONResponse({"notifications": [e.as_dict() for e in entries], "destinations": found})


@app.get("/", response_class=HTMLResponse)
def notifications_page(
    request: Request, user: User, store: Store, found: Destinations, limit: Limit = 200
) -> HTMLResponse:
    if store is None:
        return HTMLResponse(_document(f"<p>{html.escape(NO_INBOX)}</p>"), status_code=404)
    root = request.scope.get("root_path", "").rstrip("/")
    return HTMLResponse(render_page(store.entries(limit=limit), found, json_url=f"{root}/api/notifications"))


# -- rendering --------------------------------------------------------------------------


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}"
    "table{border-collapse:collapse;width:100%}td,th{padding:.35rem .6rem;border-bottom:1px solid #ddd;"
    "text-align:left;vertical-align:top}.text{white-space:pre-wrap;font-size:.9em;color:#444;margin-top:.2rem}"
    ".P1{background:#c62828;color:#fff}.P2{background:#ef6c00;color:#fff}.P3{background:#1565c0;color:#fff}"
    ".sev{padding:.1rem .4rem;border-radius:.2rem;font-weight:600}.missing{color:#c62828;font-weight:600}"
    "small{color:#666}"
)


def _document(body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Notifications</title>"
        f"<meta http-equiv='refresh' content='30'><style>{STYLE}</style></head><body>"
        f"<h1>Notifications</h1>{body}</body></html>"
    )


def _destination_cell(entry: InboxEntry) -> str:
    kind = KINDS.get(entry.kind, entry.kind)
    cell = f"{html.escape(kind)} {html.escape(entry.destination)}"
    if entry.detail.get("dedup_key"):
        cell += f"<br><small>dedup key {html.escape(entry.detail['dedup_key'])}</small>"
    if entry.status is not EntryStatus.RECEIVED:
        reason = entry.detail.get("reason") or ""
        cell += f"<br><span class='missing'>{html.escape(entry.status.value)}</span>"
        cell += f"<br><small>{html.escape(reason)}</small>" if reason else ""
    return cell


def render_row(entry: InboxEntry) -> str:
    """One entry as a table row; every value escaped, the link only when it is http(s)."""
    severity = entry.severity if entry.severity in ("P1", "P2", "P3") else ""
    badge = f"<span class='sev {severity}'>{severity}</span>" if severity else "?"
    link = safe_link(entry.link)
    label = "alert" if entry.source.value == "alertmanager" else "run"
    anchor = (
        f"<a href=\"{html.escape(link, quote=True)}\" rel='noopener noreferrer'>{label}</a>" if link else "-"
    )
    return (
        f"<tr class='notification status-{entry.status.name.lower()}'>"
        f"<td>{entry.received_at:%Y-%m-%d %H:%M:%S}</td><td>{badge}</td>"
        f"<td>{_destination_cell(entry)}</td><td>{html.escape(SOURCES.get(entry.source.value, ''))}</td>"
        f"<td><b>{html.escape(entry.title)}</b><div class='text'>{html.escape(entry.text)}</div></td>"
        f"<td>{anchor}</td></tr>"
    )


def render_page(entries: list[InboxEntry], found: dict[str, dict[str, str]], *, json_url: str) -> str:
    states = "".join(
        f"<li>{html.escape(KINDS[kind])} (connection <code>{html.escape(d['connection'])}</code>): "
        + (
            html.escape(d["state"])
            if d["state"] == "configured"
            else f"<span class='missing'>{html.escape(d['state'])}</span>"
        )
        + "</li>"
        for kind, d in found.items()
    )
    rows = "".join(render_row(entry) for entry in entries) or (
        "<tr><td colspan='6'>Nothing yet: a pipeline run or an alert will show here.</td></tr>"
    )
    return _document(
        "<p>The Slack, PagerDuty and e-mail messages of the pipelines and of Alertmanager, as the local "
        "inbox received them, and the destinations that could not be used: what production would page "
        f"about. Newest first, times in UTC. <a href='{html.escape(json_url, quote=True)}'>JSON</a></p>"
        f"<ul>{states}</ul>"
        "<table><thead><tr><th>Time</th><th>Severity</th><th>Destination</th><th>Source</th>"
        f"<th>Message</th><th>Link</th></tr></thead><tbody>{rows}</tbody></table>"
    )
