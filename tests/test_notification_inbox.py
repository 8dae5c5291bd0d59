"""The notification inbox store: newest first, bounded, data kept as data, many writers at once."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from delivery.notification_inbox import (
    INBOX_ENV,
    MAX_TEXT,
    EntryStatus,
    InboxEntry,
    InboxStore,
    Source,
    record,
    safe_link,
    severity_in,
    slack_plain,
)


def _entry(title: str, **fields: object) -> InboxEntry:
    return InboxEntry(source=Source.PIPELINE, kind="slack", destination="#alerts", title=title, **fields)  # type: ignore[arg-type]


def test_entries_come_back_newest_first_as_they_were_given(tmp_path: Path) -> None:
    store = InboxStore(tmp_path / "inbox" / "notifications.sqlite3")
    assert store.entries() == []
    at = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
    first = store.add(_entry("[P2] api: staging failed", received_at=at, detail={"reason": "x"}))
    second = store.add(
        InboxEntry(
            source=Source.ALERTMANAGER,
            kind="pagerduty",
            destination="resolve",
            title="ServiceDown resolved",
            text="firing: 0",
            severity="P1",
            status=EntryStatus.RECEIVED,
            link="http://127.0.0.1:9093/#/alerts",
            detail={"dedup_key": "k"},
            received_at=at,
        )
    )
    newest, oldest = store.entries()
    assert (newest.id, oldest.id) == (second, first) and second > first
    assert newest.as_dict() == {
        "id": second,
        "received_at": "2025-05-01T10:00:00+00:00",
        "source": "alertmanager",
        "kind": "pagerduty",
        "destination": "resolve",
        "severity": "P1",
        "status": "received",
        "title": "ServiceDown resolved",
        "text": "firing: 0",
        "link": "http://127.0.0.1:9093/#/alerts",
        "detail": {"dedup_key": "k"},
    }
    assert oldest.severity == "P2"  # as the message says
    assert [e.id for e in store.entries(limit=1)] == [second]


def test_only_http_links_are_kept_and_long_texts_are_capped(tmp_path: Path) -> None:
    store = InboxStore(tmp_path / "inbox.sqlite3")
    store.add(_entry("x", link="javascript:alert(1)", text="y" * (MAX_TEXT + 10)))
    [entry] = store.entries()
    assert entry.link is None
    assert len(entry.text) == MAX_TEXT and entry.text.endswith("...")
    assert safe_link("https://ci.example/runs/1?a=b") == "https://ci.example/runs/1?a=b"
    for bad in ("data:text/html,x", "//evil.example", 'http://x" onmouseover="y', None, 42):
        assert safe_link(bad) is None, bad


def test_the_oldest_entries_go_beyond_the_bound(tmp_path: Path) -> None:
    store = InboxStore(tmp_path / "inbox.sqlite3", keep=3)
    for number in range(5):
        store.add(_entry(f"message {number}"))
    assert [e.title for e in store.entries()] == ["message 4", "message 3", "message 2"]
    with pytest.raises(ValueError, match="keep must be at least 1"):
        InboxStore(tmp_path / "x.sqlite3", keep=0)


def _write_many(path: str, writer: int, count: int) -> None:
    store = InboxStore(Path(path))
    for number in range(count):
        store.add(_entry(f"writer {writer} message {number}"))


def test_many_processes_write_at_once_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite3"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(path), w, 25)) for w in range(4)]
    for process in writers:
        process.start()
    _write_many(str(path), 4, 25)  # and this one, meanwhile
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    titles = [e.title for e in InboxStore(path).entries(limit=1000)]
    assert len(titles) == len(set(titles)) == 125


def test_severity_and_slack_text_as_a_reader_sees_them() -> None:
    assert severity_in("[FIRING] P1 ServiceDown - api", "P3") == "P1"
    assert severity_in("HTTP2 errors", "SP1 P4", None, "[P3] api: deployed") == "P3"
    assert severity_in("nothing") == ""
    text, links = slack_plain(
        ":rewind: *[P3] api: rolled back*\nerror: a &lt;b&gt; &amp;amp;\n<http://127.0.0.1:8080/dags/d/runs/r?a=1&amp;b=2|Pipeline run>"
    )
    assert text.splitlines()[1] == "error: a <b> &amp;"
    assert links == ["http://127.0.0.1:8080/dags/d/runs/r?a=1&b=2"]


def test_record_writes_only_where_the_local_profile_names_an_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INBOX_ENV, raising=False)
    assert record(_entry("nowhere")) is False
    path = tmp_path / "inbox.sqlite3"
    monkeypatch.setenv(INBOX_ENV, str(path))
    assert record(_entry("here")) is True
    assert [e.title for e in InboxStore(path).entries()] == ["here"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(INBOX_ENV, str(blocker / "inbox.sqlite3"))
    assert record(_entry("cannot")) is False  # logged, never raised: a notification never fails a task
