"""The notification inbox of the local profile: what production would have sent, in one SQLite file.

In the local profile nothing reaches Slack, PagerDuty or a mail server. The local inbox
server (:mod:`delivery.devenv.inbox_server`) receives what the real clients send (the
pipeline's provider hooks, Alertmanager's receivers) and records each message here; the
notification path records here what it could not deliver (a destination without a
connection, or one that kept failing), so that nothing is dropped silently. The Airflow UI
lists the entries, newest first (:mod:`delivery.web.notifications`).

``DELIVERY_NOTIFICATION_INBOX`` names the database; the local Airflow gets it from
:func:`delivery.devenv.monitoring.airflow_env`. Without it (any other profile)
:func:`store_from_env` is None and nothing is recorded.

One SQLite database in WAL mode with a busy timeout: the inbox server's threads and every
task process write at once, each with its own short connection. Only what a reader of the
message sees is kept (never a token, a routing key or a password), each text capped, and
the newest :data:`KEEP_ENTRIES` entries only. Standard library only: the notification path
imports it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INBOX_ENV = "DELIVERY_NOTIFICATION_INBOX"
KEEP_ENTRIES = 5000
BUSY_TIMEOUT_S = 5.0
"""A write waits this long at most for another writer: a failure callback has little time."""
MAX_TITLE = 500
MAX_TEXT = 20_000
MAX_FIELD = 300

_SEVERITY = re.compile(r"(?<![A-Za-z0-9])(P[1-3])(?![A-Za-z0-9])")
_SLACK_LINK = re.compile(r"<([^<>|]+)\|([^<>]*)>")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    destination TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    link TEXT,
    detail TEXT NOT NULL
)
"""
_COLUMNS = "id, received_at, source, kind, destination, severity, status, title, text, link, detail"


class Source(StrEnum):
    """Who sent the message."""

    PIPELINE = "pipeline"
    ALERTMANAGER = "alertmanager"


class EntryStatus(StrEnum):
    RECEIVED = "received"
    """The destination's endpoint got it: production would have delivered it."""
    NOT_CONFIGURED = "not configured"
    """The notification path had no usable connection for the destination: nothing was sent."""
    FAILED = "failed"
    """The notification path tried and gave up (see ``detail["reason"]``)."""


def severity_in(*texts: str | None) -> str:
    """The first ``P1``/``P2``/``P3`` the texts name (as the message says it), or ``""``."""
    for text in texts:
        found = _SEVERITY.search(text or "")
        if found:
            return found.group(1)
    return ""


def safe_link(url: Any) -> str | None:
    """``url`` when it is an absolute http(s) URL, else None: a link from a message is data."""
    if not isinstance(url, str):
        return None
    url = url.strip()
    if not re.match(r"^https?://[^\s\"'<>]+$", url, flags=re.IGNORECASE) or len(url) > 2000:
        return None
    return url


def slack_plain(text: str) -> tuple[str, list[str]]:
    """Slack ``mrkdwn`` as a reader sees it, and its links in order.

    ``<url|label>`` becomes ``label (url)``; Slack's three escapes (``&amp;``, ``&lt;``,
    ``&gt;``, https://api.slack.com/reference/surfaces/formatting#escaping) are undone.
    """
    links = [match.group(1) for match in _SLACK_LINK.finditer(text)]
    plain = _SLACK_LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", text)
    for escaped, char in (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")):
        plain = plain.replace(escaped, char)
    unescaped = [link.replace("&amp;", "&") for link in links]
    return plain, unescaped


def _cap(text: Any, limit: int) -> str:
    value = "" if text is None else str(text)
    return value if len(value) <= limit else value[: limit - 3] + "..."


@dataclass(frozen=True, kw_only=True)
class InboxEntry:
    """One message, as a reader would have seen it, and where it went."""

    source: Source
    kind: str
    """``slack``, ``pagerduty`` or ``email`` (:class:`delivery.notify.routing.DestinationKind`)."""
    destination: str
    """A Slack channel, ``trigger``/``resolve`` for PagerDuty, the e-mail recipients."""
    title: str
    text: str = ""
    severity: str = ""
    status: EntryStatus = EntryStatus.RECEIVED
    link: str | None = None
    """The run, the approval or the alert: an http(s) URL only."""
    detail: dict[str, str] = field(default_factory=dict)
    """Small facts: PagerDuty's dedup key, the Alertmanager receiver, why it was not delivered."""
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "source": self.source.value,
            "kind": self.kind,
            "destination": self.destination,
            "severity": self.severity,
            "status": self.status.value,
            "title": self.title,
            "text": self.text,
            "link": self.link,
            "detail": dict(self.detail),
        }

    def bounded(self) -> InboxEntry:
        """The entry as it is stored: texts capped, the link checked, the severity found if unset."""
        return replace(
            self,
            kind=_cap(self.kind, 40),
            destination=_cap(self.destination, MAX_FIELD),
            title=_cap(self.title, MAX_TITLE),
            text=_cap(self.text, MAX_TEXT),
            severity=self.severity or severity_in(self.title, self.text),
            link=safe_link(self.link),
            detail={_cap(k, 60): _cap(v, MAX_FIELD) for k, v in self.detail.items()},
        )


class InboxStore:
    """The entries of one SQLite file; safe for concurrent writers (threads and processes)."""

    def __init__(self, path: Path, *, keep: int = KEEP_ENTRIES) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep!r}")
        self.path = Path(path)
        self.keep = keep

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        conn.execute(_SCHEMA)
        return conn

    def add(self, entry: InboxEntry) -> int:
        """Store ``entry`` (bounded) and drop the oldest beyond ``keep``; returns its id."""
        e = entry.bounded()
        row = (
            e.received_at.astimezone(UTC).isoformat(),
            e.source.value,
            e.kind,
            e.destination,
            e.severity,
            e.status.value,
            e.title,
            e.text,
            e.link,
            json.dumps(e.detail, sort_keys=True),
        )
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            cursor = conn.execute(
                f"INSERT INTO notifications ({_COLUMNS.removeprefix('id, ')}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            new_id = int(cursor.lastrowid or 0)
            conn.execute("DELETE FROM notifications WHERE id <= ?", (new_id - self.keep,))
            conn.execute("COMMIT")
        finally:
            conn.close()
        return new_id

    def entries(self, *, limit: int = 200) -> list[InboxEntry]:
        """The newest ``limit`` entries, newest first."""
        if not self.path.exists():
            return []
        conn = self._connect()
        try:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM notifications ORDER BY id DESC LIMIT ?", (max(0, limit),)
            ).fetchall()
        finally:
            conn.close()
        return [_entry(row) for row in rows]


def _entry(row: tuple[Any, ...]) -> InboxEntry:
    (id_, received_at, source, kind, destination, severity, status, title, text, link, detail) = row
    return InboxEntry(
        id=int(id_),
        received_at=datetime.fromisoformat(received_at),
        source=Source(source),
        kind=kind,
        destination=destination,
        severity=severity,
        status=EntryStatus(status),
        title=title,
        text=text,
        link=link,
        detail=dict(json.loads(detail)),
    )


def store_from_env() -> InboxStore | None:
    """The inbox named by ``DELIVERY_NOTIFICATION_INBOX``, or None outside the local profile."""
    path = os.environ.get(INBOX_ENV, "").strip()
    return InboxStore(Path(path)) if path else None


def record(entry: InboxEntry) -> bool:
    """Add ``entry`` to the inbox of this environment, if there is one. Never raises."""
    store = store_from_env()
    if store is None:
        return False
    try:
        store.add(entry)
    except (OSError, sqlite3.Error) as err:
        log.warning("Could not record a notification in the local inbox %s: %s", store.path, err)
        return False
    return True
