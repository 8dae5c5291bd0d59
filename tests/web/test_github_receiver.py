"""The receiver's answers, in process: signature, content type, size, age, replays (no Airflow)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from delivery.catalog import load_catalog
from delivery.web import github
from tests.web.support import ROOT, SECRET, encode, headers, payload

URL = "/delivery/webhooks/github"


class FakeRuns:
    """Stands in for the metadata database: a set guarded like the (dag_id, run_id) constraint."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()

    def trigger(self, *, dag_id: str, run_id: str, conf: dict[str, Any]) -> bool:
        with self.lock:
            if (dag_id, run_id) in self.runs:
                return False
            self.runs[(dag_id, run_id)] = conf
            return True


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRuns]:
    fake = FakeRuns()
    catalog, _ = load_catalog(ROOT / "include" / "catalog-local")
    monkeypatch.setattr(github, "trigger_run", fake.trigger)
    monkeypatch.setattr(github, "SECRET", github.TtlCache(loader=SECRET.encode, ttl=60))
    monkeypatch.setattr(github, "CATALOG", github.TtlCache(loader=lambda: catalog, ttl=60))
    yield fake


@pytest.fixture
def client(runs: FakeRuns) -> TestClient:
    app = FastAPI()
    sub = FastAPI()
    sub.include_router(github.router)
    app.mount("/delivery", sub)
    return TestClient(app)


def post(client: TestClient, data: dict[str, Any] | bytes, *, event: str = "push", **kw: Any) -> Any:
    body = data if isinstance(data, bytes) else encode(data)
    hdrs = headers(body, event=event, delivery=kw.pop("delivery", None), secret=kw.pop("secret", SECRET))
    hdrs.update(kw.pop("extra_headers", {}))
    return client.post(URL, content=kw.pop("content", body), headers=hdrs)


def test_push_to_main_triggers_the_full_pipeline(client: TestClient, runs: FakeRuns) -> None:
    resp = post(client, payload("push-main"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "triggered"
    assert [r["dag_id"] for r in body["runs"]] == ["deliver_visiobook_demo_web"]
    assert body["runs"][0]["run_id"].startswith("git__push__")
    (conf,) = runs.runs.values()
    assert conf["pipeline"] == "full" and conf["event"] == "push" and conf["author"] == "alice"


def test_redelivery_is_a_duplicate(client: TestClient, runs: FakeRuns) -> None:
    data = payload("push-main")
    first = post(client, data, delivery="d-1").json()
    again = post(client, data, delivery="d-1")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["duplicates"] == first["runs"]
    assert len(runs.runs) == 1
    # A new delivery id is a new delivery (a new run), within the age window.
    assert post(client, data, delivery="d-2").json()["status"] == "triggered"


def test_signature_is_required_and_checked(client: TestClient, runs: FakeRuns) -> None:
    data = payload("push-main")
    missing = post(client, data, secret=None)
    assert missing.status_code == 401 and "missing" in missing.json()["reason"]
    wrong = post(client, data, secret="not-the-secret")
    assert wrong.status_code == 401 and "invalid" in wrong.json()["reason"]
    body = encode(data)
    truncated = post(client, body, content=body[: len(body) // 2])
    assert truncated.status_code == 401
    assert not runs.runs


def test_signed_but_malformed_json_is_400(client: TestClient, runs: FakeRuns) -> None:
    body = encode(payload("push-main"))[:-7]
    assert post(client, body).status_code == 400
    assert post(client, b"[1, 2]").status_code == 400
    assert not runs.runs


def test_content_type_must_be_json(client: TestClient, runs: FakeRuns) -> None:
    resp = post(
        client, payload("push-main"), extra_headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status_code == 400 and "application/json" in resp.json()["reason"]
    ok = post(client, payload("push-main"), extra_headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200
    assert len(runs.runs) == 1


def test_oversize_body_is_413_by_header_and_by_stream(
    client: TestClient, runs: FakeRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_BYTES", "2048")
    data = payload("push-main", padding="x" * 4096)
    assert post(client, data).status_code == 413
    body = encode(data)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    hdrs = headers(body, event="push")
    resp = client.post(URL, content=chunks(), headers=hdrs)
    assert resp.status_code == 413
    assert not runs.runs


def test_stale_delivery_is_refused(
    client: TestClient, runs: FakeRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = payload("push-main")
    old["repository"]["pushed_at"] = int((datetime.now(tz=UTC) - timedelta(hours=2)).timestamp())
    resp = post(client, old)
    assert resp.status_code == 422 and "stale" in resp.json()["reason"]
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_AGE", "3h")
    assert post(client, old).status_code == 200
    stale_pr = payload("pull-request-opened", fresh=False)  # dated 2026-01-05
    stale_pr["pull_request"]["updated_at"] = "2020-01-01T00:00:00Z"
    assert post(client, stale_pr, event="pull_request").status_code == 422


def test_tag_push_is_dated_by_the_push_not_the_commit(client: TestClient, runs: FakeRuns) -> None:
    data = payload("push-tag")  # head_commit.timestamp is days old; pushed_at is now
    resp = post(client, data)
    assert resp.status_code == 200 and resp.json()["status"] == "triggered"
    (conf,) = runs.runs.values()
    assert conf["event"] == "tag" and conf["pipeline"] == "full" and conf["ref"] == "refs/tags/v1.4.0"


def test_pull_request_ping_and_other_events(client: TestClient, runs: FakeRuns) -> None:
    pr = post(client, payload("pull-request-opened"), event="pull_request").json()
    assert pr["status"] == "triggered" and pr["runs"][0]["run_id"].startswith("git__pull_request__")
    closed = payload("pull-request-opened", action="closed")
    assert post(client, closed, event="pull_request").json()["status"] == "ignored"
    ping = post(client, payload("ping", fresh=False), event="ping")
    assert ping.status_code == 200 and ping.json()["status"] == "pong"
    issues = post(client, {"action": "opened"}, event="issues")
    assert issues.status_code == 202 and "issues" in issues.json()["reason"]
    assert len(runs.runs) == 1


def test_deleted_tag_starts_nothing(client: TestClient, runs: FakeRuns) -> None:
    resp = post(client, payload("push-tag-deleted"))
    assert resp.status_code == 200
    assert resp.json()["status"] == "ignored" and "deleted" in resp.json()["reason"]
    assert not runs.runs


def test_without_a_secret_every_delivery_is_refused(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(github, "SECRET", github.TtlCache(loader=lambda: None, ttl=60))
    assert post(client, payload("push-main")).status_code == 503


def test_concurrent_copies_start_one_run(client: TestClient, runs: FakeRuns) -> None:
    data = payload("push-main")
    codes: list[str] = []

    def send() -> None:
        codes.append(post(client, data, delivery="same").json()["status"])

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == ["duplicate"] * 19 + ["triggered"]
    assert len(runs.runs) == 1


def test_signature_helpers() -> None:
    body = b'{"a":1}'
    good = github.sign(secret=b"k", body=body)
    assert github.verify_signature(secret=b"k", body=body, header=good)
    assert not github.verify_signature(secret=b"k", body=body + b" ", header=good)
    assert not github.verify_signature(secret=b"k", body=body, header=good.replace("sha256=", "sha1="))
    assert not github.verify_signature(secret=b"k", body=body, header=None)


def test_secret_cache_reloads_after_its_ttl() -> None:
    calls: list[int] = []
    cache = github.TtlCache(loader=lambda: calls.append(1) or b"x", ttl=0.05)
    assert cache.get() == b"x" and cache.get() == b"x"
    assert len(calls) == 1
    import time

    time.sleep(0.06)
    cache.get()
    assert len(calls) == 2


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert github.max_body_bytes() == 5 * 1024 * 1024 and github.max_age() == timedelta(hours=1)
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_BYTES", "1000")
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_AGE", "600")
    assert github.max_body_bytes() == 1000 and github.max_age() == timedelta(minutes=10)
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_AGE", "90m")
    assert github.max_age() == timedelta(minutes=90)
