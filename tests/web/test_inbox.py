"""Deliveries recorded before the answer: none lost when their run is not created at once, none created twice.

Against the session's metadata DB (see ``conftest.py``). "A worker died after the
answer" is the state :func:`inbox.accept` leaves when :func:`inbox.deliver` never runs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from delivery.gitevents.routing import route, run_id_for
from delivery.web import github, inbox
from delivery.web.cache import CATALOG
from delivery.web.github_events import push_event
from tests.web.conftest import stored_runs
from tests.web.support import encode, headers, payload


def records() -> dict[tuple[str, str], Any]:
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return {(r.dag_id, r.run_id): r for r in session.execute(select(inbox.TABLE)).all()}


def set_stale(dag_id: str, stale: bool) -> None:
    from airflow.models import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_stale=stale))


def delivery() -> tuple[bytes, str, str, dict[str, Any]]:
    """(body, delivery id, run id, conf) of a new push to main, as the receiver would name its run."""
    data = payload("push-main", after=uuid.uuid4().hex + "0" * 8)
    body, delivery_id = encode(data), str(uuid.uuid4())
    catalog = CATALOG.get()
    assert catalog is not None
    (target,) = route(push_event(data), list(catalog.services.values())).targets
    run_id = run_id_for(event="push", key=f"{hashlib.sha256(body).hexdigest()}{delivery_id}")
    return body, delivery_id, run_id, target.conf


@pytest.fixture
def dag_id(receiver_env: dict[str, str]) -> Iterator[str]:
    yield receiver_env["delivery"]
    set_stale(receiver_env["delivery"], False)


def test_a_recorded_delivery_whose_worker_died_is_created_by_the_sweep(dag_id: str) -> None:
    _, _, run_id, conf = delivery()
    (accepted,) = inbox.accept(targets=[(dag_id, conf)], run_id=run_id, user="github-webhook")
    assert accepted.status == "recorded"
    assert (dag_id, run_id) in records() and not stored_runs(dag_id, [run_id])
    inbox.sweep()  # younger than SWEEP_AFTER: left to the request's own task
    assert (dag_id, run_id) in records() and not stored_runs(dag_id, [run_id])
    assert inbox.sweep(older_than=0) >= 1
    run = stored_runs(dag_id, [run_id])[run_id]
    assert (
        run["state"] == "queued" and run["conf"] == conf and run["triggering_user_name"] == "github-webhook"
    )
    assert (dag_id, run_id) not in records()
    assert inbox.accept(targets=[(dag_id, conf)], run_id=run_id, user="x")[0].status == "exists"


def test_a_redelivery_of_a_recorded_delivery_creates_its_run_once(dag_id: str) -> None:
    body, delivery_id, run_id, conf = delivery()
    inbox.accept(targets=[(dag_id, conf)], run_id=run_id, user="github-webhook")
    app = FastAPI()
    app.include_router(github.router)
    with TestClient(app) as client:
        resp = client.post(
            "/webhooks/github", content=body, headers=headers(body, event="push", delivery=delivery_id)
        )
    assert resp.status_code == 200 and resp.json()["status"] == "duplicate"
    assert resp.json()["duplicates"] == [{"dag_id": dag_id, "run_id": run_id}]
    assert list(stored_runs(dag_id, [run_id])) == [run_id]
    assert (dag_id, run_id) not in records()


def test_a_failed_creation_is_kept_counted_and_retried(dag_id: str) -> None:
    _, _, run_id, conf = delivery()
    inbox.accept(targets=[(dag_id, conf)], run_id=run_id, user="github-webhook")
    set_stale(dag_id, True)  # the DAG file was removed between the answer and the creation
    inbox.deliver([(dag_id, run_id)])
    record = records()[(dag_id, run_id)]
    assert record.attempts == 1 and record.last_error.startswith("DagNotFound: DAG")
    assert not stored_runs(dag_id, [run_id])
    set_stale(dag_id, False)  # it is back
    inbox.sweep(older_than=0)
    assert list(stored_runs(dag_id, [run_id])) == [run_id]
    assert (dag_id, run_id) not in records()


def test_an_undeployed_dag_is_refused_before_anything_is_recorded(dag_id: str) -> None:
    _, _, run_id, conf = delivery()
    set_stale(dag_id, True)
    (accepted,) = inbox.accept(targets=[(dag_id, conf)], run_id=run_id, user="github-webhook")
    assert accepted.status == "error" and accepted.error == f"DagNotFound: DAG {dag_id} is not deployed"
    assert (dag_id, run_id) not in records()


def test_a_hopeless_record_is_dropped_with_an_error(dag_id: str, caplog: pytest.LogCaptureFixture) -> None:
    _, _, run_id, conf = delivery()
    inbox.accept(targets=[(dag_id, conf)], run_id=run_id, user="github-webhook")
    set_stale(dag_id, True)
    with caplog.at_level(logging.ERROR, logger="delivery.web.inbox"):
        inbox.sweep(now=time.time() + inbox.GIVE_UP_AFTER + 1)
    assert (dag_id, run_id) not in records() and not stored_runs(dag_id, [run_id])
    assert f"giving up run {run_id} of {dag_id}" in caplog.text
    assert "redeliver" in caplog.text


def test_concurrent_copies_record_once(dag_id: str) -> None:
    _, _, run_id, conf = delivery()
    statuses: list[str] = []

    def record() -> None:
        statuses.extend(a.status for a in inbox.accept(targets=[(dag_id, conf)], run_id=run_id, user="u"))

    threads = [threading.Thread(target=record) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == ["pending"] * 5 + ["recorded"]
    inbox.deliver([(dag_id, run_id)] * 3)
    assert list(stored_runs(dag_id, [run_id])) == [run_id]


def test_the_sweep_interval_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DELIVERY_WEBHOOK_SWEEP_INTERVAL", raising=False)
    assert inbox.sweep_interval() == 10.0
    monkeypatch.setenv("DELIVERY_WEBHOOK_SWEEP_INTERVAL", "2.5")
    assert inbox.sweep_interval() == 2.5
    monkeypatch.setenv("DELIVERY_WEBHOOK_SWEEP_INTERVAL", "soon")
    assert inbox.sweep_interval() == 10.0
