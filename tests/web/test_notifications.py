"""The notification inbox page: what the local profile's pipelines and Alertmanager would have sent.

The page and its JSON require the Airflow JWT (as the DORA page), list the inbox newest first
and treat every text as data. The pipeline's messages reach the inbox through the real
provider hooks (``notify_event`` with the connections ``airflow_env`` gives the local Airflow);
a destination without a connection shows as not configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from delivery.catalog import Catalog, load_catalog
from delivery.notification_inbox import INBOX_ENV, EntryStatus, InboxEntry, InboxStore, Source
from delivery.notify import PipelineEvent, hitl_url, notify_event, run_url
from delivery.web.cache import CATALOG
from delivery.web.notifications import app, inbox_store
from tests.devenv.inbox_support import LocalInbox, running_inbox
from tests.notify.conftest import FAST, FakeTaskInstance, context_of
from tests.web.conftest import CATALOG_DIR

DEMO = "visiobook-demo-web"
DAG_ID = "deliver_visiobook_demo_web"
RUN_ID = "manual__2025-05-01T10:00:00+00:00"


@pytest.fixture
def store(tmp_path: Path) -> InboxStore:
    return InboxStore(tmp_path / "inbox.sqlite3")


@pytest.fixture
def client(store: InboxStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("DELIVERY_CATALOG_DIR", str(CATALOG_DIR))
    CATALOG.clear()
    app.dependency_overrides[inbox_store] = lambda: store
    try:
        with TestClient(app, root_path="/delivery/notifications") as test_client:
            yield test_client
    finally:
        app.dependency_overrides.clear()
        CATALOG.clear()


def _listed(client: TestClient, token: str) -> list[dict[str, Any]]:
    answer = client.get("/api/notifications", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["notifications"])


@pytest.mark.parametrize("path", ["/", "/api/notifications"])
def test_no_token_no_inbox(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert client.get(path, headers={"Authorization": "Bearer not.a.jwt"}).status_code == 401


def test_the_page_lists_newest_first_and_foreign_text_stays_text(
    client: TestClient, store: InboxStore, token: str
) -> None:
    then = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
    store.add(
        InboxEntry(
            source=Source.PIPELINE,
            kind="slack",
            destination="#alerts",
            title="[P2] api: staging failed",
            text="commit: fix <script>alert(1)</script> & more",
            link="javascript:alert(1)",
            received_at=then,
        )
    )
    store.add(
        InboxEntry(
            source=Source.ALERTMANAGER,
            kind="pagerduty",
            destination="trigger",
            title="[P1] ServiceDown on api (production)",
            link="http://127.0.0.1:9093/#/alerts?receiver=pagerduty-critical",
            detail={"dedup_key": "abc123"},
            received_at=then + timedelta(minutes=1),
        )
    )
    client.cookies.set("_token", token)
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "javascript:" not in page
    assert "<script" not in page and "src=" not in page  # nothing to run, nothing to download
    assert page.index("ServiceDown on api") < page.index("staging failed")  # newest first
    assert "PagerDuty trigger<br><small>dedup key abc123</small>" in page
    assert "<span class='sev P1'>P1</span>" in page and "<span class='sev P2'>P2</span>" in page
    assert 'href="http://127.0.0.1:9093/#/alerts?receiver=pagerduty-critical"' in page
    assert "href='/delivery/notifications/api/notifications'" in page


def test_the_json_variant_has_every_field(client: TestClient, store: InboxStore, token: str) -> None:
    store.add(
        InboxEntry(
            source=Source.PIPELINE,
            kind="pagerduty",
            destination="trigger",
            title="[P1] api: production deploy failed",
            status=EntryStatus.NOT_CONFIGURED,
            detail={"reason": "connection 'pagerduty_default' is not defined"},
        )
    )
    [entry] = _listed(client, token)
    assert {k: entry[k] for k in ("source", "kind", "destination", "severity", "status", "link")} == {
        "source": "pipeline",
        "kind": "pagerduty",
        "destination": "trigger",
        "severity": "P1",
        "status": "not configured",
        "link": None,
    }
    assert entry["detail"]["reason"] == "connection 'pagerduty_default' is not defined"
    client.cookies.set("_token", token)
    page = client.get("/").text
    assert "<span class='missing'>not configured</span>" in page
    assert "connection &#x27;pagerduty_default&#x27; is not defined" in page


def test_the_head_of_the_page_says_which_destination_is_not_configured(
    client: TestClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_API", '{"conn_type": "slack", "password": "xoxb-local-1"}')
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", '{"conn_type": "smtp", "port": 25}')
    monkeypatch.delenv("AIRFLOW_CONN_PAGERDUTY_DEFAULT", raising=False)
    answer = client.get("/api/notifications", headers={"Authorization": f"Bearer {token}"})
    assert answer.json()["destinations"] == {
        "slack": {"connection": "slack_api", "state": "configured"},
        "pagerduty": {
            "connection": "pagerduty_default",
            "state": "not configured: the connection is not defined",
        },
        "email": {"connection": "smtp_default", "state": "not configured: the connection has no host"},
    }
    client.cookies.set("_token", token)
    assert "xoxb-local-1" not in client.get("/").text


def test_without_an_inbox_the_page_says_so(client: TestClient, token: str) -> None:
    app.dependency_overrides[inbox_store] = lambda: None
    answer = client.get("/api/notifications", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 404 and "local profile only" in answer.json()["detail"]
    client.cookies.set("_token", token)
    page = client.get("/")
    assert page.status_code == 404 and "local profile only" in page.text


# -- through the pipeline's real provider hooks -------------------------------------------------


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalInbox]:
    """The inbox, and the connections and store the local Airflow's tasks get (no SSL_CERT_FILE)."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with running_inbox(tmp_path) as inbox:
        for name, value in inbox.airflow_env().items():
            monkeypatch.setenv(name, value)
        yield inbox


@pytest.fixture(scope="module")
def local_catalog() -> Catalog:
    return load_catalog(CATALOG_DIR)[0]


def _notify(event: PipelineEvent, catalog: Catalog, task_id: str, **details: Any) -> Any:
    ti = FakeTaskInstance(dag_id=DAG_ID, run_id=RUN_ID, task_id=task_id)
    return notify_event(
        event, service_name=DEMO, context=context_of(ti), details=details, catalog=catalog, policy=FAST
    )


def test_the_inbox_shows_the_p3_approval_request_with_the_approvers_and_the_link(
    local: LocalInbox, local_catalog: Catalog, client: TestClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.dependency_overrides[inbox_store] = lambda: local.store
    report = _notify(PipelineEvent.APPROVAL_REQUESTED, local_catalog, "approval.approve_production")
    assert report.ok and report.not_configured == [], report.as_dict()

    [entry] = _listed(client, token)
    link = hitl_url(
        base_url=local_catalog.platform.airflow_base_url,
        dag_id=DAG_ID,
        run_id=RUN_ID,
        task_id="approval.approve_production",
    )
    assert (entry["severity"], entry["kind"], entry["destination"], entry["source"]) == (
        "P3",
        "slack",
        "#monitoring",
        "pipeline",
    )
    assert entry["title"] == f"[P3] {DEMO}: waits for a production approval"
    assert "approvers: alice, bob" in entry["text"]
    assert entry["link"] == link
    client.cookies.set("_token", token)
    page = client.get("/").text
    assert "approvers: alice, bob" in page and f'href="{link.replace("&", "&amp;")}"' in page


def test_a_p1_page_its_resolution_and_a_p2_mail_land_in_the_inbox(
    local: LocalInbox, local_catalog: Catalog
) -> None:
    paged = _notify(PipelineEvent.PRODUCTION_DEPLOY_FAILED, local_catalog, "deploy_production.health_check")
    restored = _notify(PipelineEvent.ROLLBACK_SUCCEEDED, local_catalog, "rollback.verify")
    mailed = _notify(
        PipelineEvent.STAGING_FAILED, local_catalog, "deploy_staging.health_check", error="tests <red>"
    )
    assert paged.ok and restored.ok and mailed.ok, [r.as_dict() for r in (paged, restored, mailed)]
    assert paged.dedup_key and paged.dedup_key == restored.dedup_key

    received = [
        (e.severity, e.kind, e.destination, e.detail.get("dedup_key")) for e in reversed(local.entries())
    ]
    assert ("P1", "pagerduty", "trigger", paged.dedup_key) in received
    assert ("P1", "slack", "#critical-alerts", None) in received
    assert ("P3", "pagerduty", "resolve", paged.dedup_key) in received  # the rollback's own P3 message
    assert ("P2", "email", "oncall@visiobook.io", None) in received
    assert all(e.status is EntryStatus.RECEIVED and e.source is Source.PIPELINE for e in local.entries())
    [mail] = [e for e in local.entries() if e.kind == "email"]
    assert "error: tests <red>" in mail.text
    assert mail.link == run_url(
        base_url=local_catalog.platform.airflow_base_url, dag_id=DAG_ID, run_id=RUN_ID
    )


def test_a_destination_without_a_connection_is_listed_as_not_configured(
    local: LocalInbox, local_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_PAGERDUTY_DEFAULT")
    report = _notify(PipelineEvent.PRODUCTION_DEPLOY_FAILED, local_catalog, "deploy_production.health_check")
    assert report.not_configured == ["pagerduty:events-v2 (trigger)"]
    by_kind = {e.kind: e for e in local.entries()}
    assert by_kind["slack"].status is EntryStatus.RECEIVED
    missing = by_kind["pagerduty"]
    assert (missing.status, missing.destination, missing.severity) == (
        EntryStatus.NOT_CONFIGURED,
        "trigger",
        "P1",
    )
    assert missing.detail["reason"] == "connection 'pagerduty_default' is not defined"
    assert missing.detail["dedup_key"] == report.dedup_key


def test_nothing_is_recorded_outside_the_local_profile(
    local: LocalInbox, local_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INBOX_ENV)
    monkeypatch.delenv("AIRFLOW_CONN_PAGERDUTY_DEFAULT")
    report = _notify(PipelineEvent.PRODUCTION_DEPLOY_FAILED, local_catalog, "deploy_production.health_check")
    assert report.not_configured == ["pagerduty:events-v2 (trigger)"]
    assert [e.kind for e in local.entries()] == ["slack"]  # what the inbox's endpoint received, only
