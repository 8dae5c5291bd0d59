"""The GitHub receiver's answers, in process, against the test metadata DB: the runs it really creates.

Signature, content type, size, age, replays and untrusted pull requests; the
secret is an Airflow connection from the environment (see ``conftest.py``).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from delivery.web import github
from delivery.web.cache import CATALOG, TtlValue
from tests.web.conftest import CATALOG_DIR, stored_runs
from tests.web.support import SECRET, encode, headers, payload

URL = "/delivery/webhooks/github"


@pytest.fixture
def dag_id(receiver_env: dict[str, str]) -> str:
    return receiver_env["delivery"]


@pytest.fixture
def client(receiver_env: dict[str, str]) -> Iterator[TestClient]:
    app = FastAPI()
    sub = FastAPI()
    sub.include_router(github.router)
    app.mount("/delivery", sub)
    with TestClient(app) as test_client:
        yield test_client


def post(client: TestClient, data: dict[str, Any] | bytes, *, event: str = "push", **kw: Any) -> Any:
    body = data if isinstance(data, bytes) else encode(data)
    hdrs = headers(body, event=event, delivery=kw.pop("delivery", None), secret=kw.pop("secret", SECRET))
    hdrs.update(kw.pop("extra_headers", {}))
    return client.post(URL, content=kw.pop("content", body), headers=hdrs)


def fresh_push(**changes: Any) -> dict[str, Any]:
    """The push-main fixture with a sha of its own, so each test's runs are its own."""
    return payload("push-main", after=f"{time.time_ns():040x}"[-40:], **changes)


def test_push_to_main_creates_a_queued_full_run(client: TestClient, dag_id: str) -> None:
    resp = post(client, fresh_push())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "triggered" and "untrusted_reason" not in body
    (created,) = body["runs"]
    assert created["dag_id"] == dag_id and created["run_id"].startswith("git__push__")
    run = stored_runs(dag_id, [created["run_id"]])[created["run_id"]]
    assert (run["state"], run["run_type"], run["triggering_user_name"]) == (
        "queued",
        "manual",
        "github-webhook",
    )
    conf = run["conf"]
    assert (conf["pipeline"], conf["event"], conf["author"]) == ("full", "push", "alice")
    assert conf["trusted"] is True and conf["untrusted_reason"] == ""


def test_redelivery_is_a_duplicate(client: TestClient, dag_id: str) -> None:
    data = fresh_push()
    first = post(client, data, delivery="d-1").json()
    again = post(client, data, delivery="d-1")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["duplicates"] == first["runs"]
    # A new delivery id is a new delivery (a new run), within the age window.
    other = post(client, data, delivery="d-2").json()
    assert other["status"] == "triggered"
    ids = [first["runs"][0]["run_id"], other["runs"][0]["run_id"]]
    assert sorted(stored_runs(dag_id, ids)) == sorted(ids)


def test_signature_is_required_and_checked(client: TestClient, dag_id: str) -> None:
    before = set(stored_runs(dag_id))
    data = fresh_push()
    missing = post(client, data, secret=None)
    assert missing.status_code == 401 and "missing" in missing.json()["reason"]
    wrong = post(client, data, secret="not-the-secret")
    assert wrong.status_code == 401 and "invalid" in wrong.json()["reason"]
    body = encode(data)
    truncated = post(client, body, content=body[: len(body) // 2])
    assert truncated.status_code == 401
    assert set(stored_runs(dag_id)) == before


def test_signed_but_malformed_json_is_400(client: TestClient, dag_id: str) -> None:
    before = set(stored_runs(dag_id))
    body = encode(fresh_push())[:-7]
    assert post(client, body).status_code == 400
    assert post(client, b"[1, 2]").json() == {"status": "error", "reason": "the body is not a JSON object"}
    assert set(stored_runs(dag_id)) == before


def test_content_type_must_be_json(client: TestClient) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = post(client, fresh_push(), extra_headers=form)
    assert resp.status_code == 400 and "application/json" in resp.json()["reason"]
    ok = post(client, fresh_push(), extra_headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200 and ok.json()["status"] == "triggered"


def test_oversize_body_is_413_by_header_and_by_stream(
    client: TestClient, dag_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(stored_runs(dag_id))
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_BYTES", "2048")
    data = fresh_push(padding="x" * 4096)
    assert post(client, data).status_code == 413
    body = encode(data)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    resp = client.post(URL, content=chunks(), headers=headers(body, event="push"))
    assert resp.status_code == 413 and "DELIVERY_WEBHOOK_MAX_BYTES" in resp.json()["reason"]
    assert set(stored_runs(dag_id)) == before


def test_stale_delivery_is_refused(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    old = fresh_push()
    old["repository"]["pushed_at"] = int((datetime.now(tz=UTC) - timedelta(hours=2)).timestamp())
    resp = post(client, old)
    assert resp.status_code == 422 and "stale" in resp.json()["reason"]
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_AGE", "3h")
    assert post(client, old).status_code == 200
    stale_pr = payload("pull-request-opened", fresh=False)
    stale_pr["pull_request"]["updated_at"] = "2020-01-01T00:00:00Z"
    assert post(client, stale_pr, event="pull_request").status_code == 422


def test_tag_push_is_dated_by_the_push_not_the_commit(client: TestClient, dag_id: str) -> None:
    resp = post(client, payload("push-tag"))  # head_commit.timestamp is days old; pushed_at is now
    assert resp.status_code == 200 and resp.json()["status"] == "triggered"
    run_id = resp.json()["runs"][0]["run_id"]
    conf = stored_runs(dag_id, [run_id])[run_id]["conf"]
    assert (conf["event"], conf["pipeline"], conf["ref"]) == ("tag", "full", "refs/tags/v1.4.0")


def test_pull_request_ping_and_other_events(client: TestClient, dag_id: str) -> None:
    pr = post(client, payload("pull-request-opened"), event="pull_request").json()
    assert pr["status"] == "triggered" and pr["runs"][0]["run_id"].startswith("git__pull_request__")
    conf = stored_runs(dag_id, [pr["runs"][0]["run_id"]])[pr["runs"][0]["run_id"]]["conf"]
    assert (conf["pipeline"], conf["pr_number"], conf["trusted"]) == ("ci", 7, True)
    before = set(stored_runs(dag_id))
    closed = payload("pull-request-opened", action="closed")
    assert post(client, closed, event="pull_request").json()["status"] == "ignored"
    ping = post(client, payload("ping", fresh=False), event="ping")
    assert ping.status_code == 200 and ping.json()["status"] == "pong"
    issues = post(client, {"action": "opened"}, event="issues")
    assert issues.status_code == 202 and "issues" in issues.json()["reason"]
    assert set(stored_runs(dag_id)) == before


@pytest.mark.parametrize("fixture", ["pull-request-fork", "pull-request-first-time-contributor"])
def test_an_untrusted_pull_request_starts_a_ci_run_marked_untrusted(
    client: TestClient, dag_id: str, fixture: str
) -> None:
    resp = post(client, payload(fixture), event="pull_request")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "triggered"
    assert body["untrusted_reason"].startswith("pull request #1")  # #12 or #13
    assert "fork" in body["untrusted_reason"]
    run_id = body["runs"][0]["run_id"]
    run = stored_runs(dag_id, [run_id])[run_id]
    assert run["state"] == "queued"
    assert run["conf"]["pipeline"] == "ci"
    assert run["conf"]["trusted"] is False
    assert run["conf"]["untrusted_reason"] == body["untrusted_reason"]


def test_deleted_tag_starts_nothing(client: TestClient, dag_id: str) -> None:
    before = set(stored_runs(dag_id))
    resp = post(client, payload("push-tag-deleted"))
    assert resp.status_code == 200
    assert resp.json()["status"] == "ignored" and "deleted" in resp.json()["reason"]
    assert set(stored_runs(dag_id)) == before


def test_without_a_secret_every_delivery_is_refused(
    client: TestClient, dag_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_GITHUB_WEBHOOK")
    github.SECRET.clear()
    push = fresh_push()
    resp = post(client, push)
    assert resp.status_code == 503 and "secret is not configured" in resp.json()["reason"]
    # Earlier tests' recorded deliveries may still become runs meanwhile: look for this one's.
    assert not [r for r in stored_runs(dag_id).values() if r["conf"].get("sha") == push["after"]]


def test_a_run_that_cannot_be_created_is_503_and_a_redelivery_creates_it(
    client: TestClient, dag_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The catalog names a DAG the dag-processor has not written yet (a service just added).
    catalog = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, catalog)
    service_file = catalog / "services" / "visiobook-demo-web.yaml"
    service = yaml.safe_load(service_file.read_text())
    service["name"] = "visiobook-demo-web-next"
    service_file.unlink()
    (catalog / "services" / "visiobook-demo-web-next.yaml").write_text(
        yaml.safe_dump(service, sort_keys=False)
    )
    monkeypatch.setenv("DELIVERY_CATALOG_DIR", str(catalog))
    CATALOG.clear()
    data = fresh_push()
    failed = post(client, data, delivery="redeliver-me")
    assert failed.status_code == 503, failed.text
    assert failed.json()["errors"] == [
        "deliver_visiobook_demo_web_next: DagNotFound: DAG deliver_visiobook_demo_web_next is not deployed"
    ]
    monkeypatch.setenv("DELIVERY_CATALOG_DIR", str(CATALOG_DIR))  # the DAG is there now
    CATALOG.clear()
    redelivered = post(client, data, delivery="redeliver-me")  # GitHub's "Redeliver" button
    assert redelivered.status_code == 200 and redelivered.json()["status"] == "triggered"
    assert redelivered.json()["runs"][0]["dag_id"] == dag_id


def test_concurrent_copies_start_one_run(client: TestClient, dag_id: str) -> None:
    data = fresh_push()
    codes: list[str] = []

    def send() -> None:
        codes.append(post(client, data, delivery="same").json()["status"])

    threads = [threading.Thread(target=send) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == ["duplicate"] * 9 + ["triggered"]
    assert len([c for c in stored_runs(dag_id).values() if c["conf"]["sha"] == data["after"]]) == 1


def test_signature_helpers() -> None:
    body = b'{"a":1}'
    good = github.sign(secret=b"k", body=body)
    assert github.verify_signature(secret=b"k", body=body, header=good)
    assert not github.verify_signature(secret=b"k", body=body + b" ", header=good)
    assert not github.verify_signature(secret=b"k", body=body, header=good.replace("sha256=", "sha1="))
    assert not github.verify_signature(secret=b"k", body=body, header=None)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from delivery.web.inbound import max_body_bytes

    assert max_body_bytes() == 5 * 1024 * 1024 and github.max_age() == timedelta(hours=1)
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_BYTES", "1000")
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_AGE", "600")
    assert max_body_bytes() == 1000 and github.max_age() == timedelta(minutes=10)
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_AGE", "90m")
    assert github.max_age() == timedelta(minutes=90)
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_BYTES", "lots")
    assert max_body_bytes() == 5 * 1024 * 1024


def test_the_secret_is_read_from_its_connection_once_per_ttl(
    receiver_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert github.SECRET.get() == SECRET.encode()
    monkeypatch.setenv("AIRFLOW_CONN_GITHUB_WEBHOOK", '{"conn_type": "generic", "password": "rotated"}')
    assert github.SECRET.get() == SECRET.encode()  # cached
    short = TtlValue(loader=github._load_secret, ttl=0.05)
    assert short.get() == b"rotated"
