"""The Alertmanager receiver, in process, against the test metadata DB: token first, capped body, real runs.

The "authenticated before the body is read" tests run the plugin's app under a
real HTTP server (uvicorn, on a free loopback port), wrapped in an ASGI
middleware that counts the body bytes the app pulls from the server. The client
announces a 20 MB body and sends only its first 16 KiB: a receiver that read
the body before checking the token would wait for the rest and never answer.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from delivery.web import alertmanager
from delivery.web.app import create_app
from tests.helpers import ROOT, free_port
from tests.web.conftest import ALERT_TOKEN, stored_runs
from tests.web.support import headers

URL = "/delivery/alertmanager/webhook"
FIXTURES = ROOT / "tests" / "fixtures" / "alertmanager"
HUGE = 20 * 1024 * 1024


def notification(name: str, **labels: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    for alert in data["alerts"]:
        alert["labels"].update(labels)
    return data


def mounted() -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    app.mount("/delivery", create_app())
    return app


@pytest.fixture
def client(receiver_env: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(mounted()) as test_client:
        yield test_client


def bearer(token: str = ALERT_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _fail_run(dag_id: str, run_id: str) -> None:
    """End a run the test created (no scheduler here), so the service has no rollback in progress."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(
            update(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id).values(state="failed")
        )


def test_a_firing_alert_starts_one_rollback_and_its_repeat_none(
    client: TestClient, receiver_env: dict[str, str]
) -> None:
    dag_id = receiver_env["rollback"]
    body = notification("firing-rollback.json", service="visiobook-demo-web")
    first = client.post(URL, json=body, headers=bearer())
    assert first.status_code == 200, first.text
    (started,) = first.json()["triggered"]
    assert (started["dag_id"], started["service"]) == (dag_id, "visiobook-demo-web")
    try:
        run = stored_runs(dag_id, [started["run_id"]])[started["run_id"]]
        assert (run["state"], run["triggering_user_name"]) == ("queued", "alertmanager")
        assert run["conf"]["reason"].startswith("automatic rollback: HTTPErrorRateCritical")
        assert run["note"] == run["conf"]["reason"]
        assert run["conf"]["environment"] == "production"
        repeat = client.post(URL, json=body, headers=bearer())  # repeat_interval: the same notification
        assert repeat.status_code == 200
        assert repeat.json()["triggered"] == []
        assert repeat.json()["ignored"][0]["reason"].startswith("duplicate: rollback run")
    finally:
        _fail_run(dag_id, started["run_id"])
    assert list(stored_runs(dag_id, [started["run_id"]])) == [started["run_id"]]


def test_resolved_and_ineligible_alerts_start_nothing(
    client: TestClient, receiver_env: dict[str, str]
) -> None:
    before = set(stored_runs(receiver_env["rollback"]))
    resolved = client.post(URL, json=notification("resolved-rollback.json"), headers=bearer())
    assert resolved.json() == {
        "triggered": [],
        "ignored": [{"fingerprint": "6c1d1e4f0b7a9e21", "reason": "alert is resolved, not firing"}],
    }
    others = client.post(URL, json=notification("firing-not-eligible.json"), headers=bearer())
    assert others.status_code == 200 and len(others.json()["ignored"]) == 3
    assert set(stored_runs(receiver_env["rollback"])) == before


def test_a_wrong_or_missing_token_is_401_and_a_missing_connection_503(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = notification("firing-rollback.json", service="visiobook-demo-web")
    for hdrs in (
        bearer("wrong-token"),
        {},
        {"Authorization": ALERT_TOKEN},
        {"Authorization": f"Basic {ALERT_TOKEN}"},
    ):
        resp = client.post(URL, json=body, headers=hdrs)
        assert resp.status_code == 401, hdrs
        assert resp.headers["www-authenticate"] == "Bearer"
        assert ALERT_TOKEN not in resp.text
    monkeypatch.delenv("AIRFLOW_CONN_ALERTMANAGER_WEBHOOK")
    alertmanager.TOKEN.clear()
    resp = client.post(URL, json=body, headers=bearer())
    assert resp.status_code == 503 and "not configured" in resp.json()["reason"]


def test_size_content_type_and_shape_are_checked_after_the_token(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIVERY_WEBHOOK_MAX_BYTES", "1024")
    big = json.dumps({"alerts": [], "padding": "x" * 2048}).encode()
    declared = client.post(URL, content=big, headers={**bearer(), "Content-Type": "application/json"})
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for start in range(0, len(big), 256):
            yield big[start : start + 256]

    streamed = client.post(URL, content=chunks(), headers={**bearer(), "Content-Type": "application/json"})
    assert streamed.status_code == 413
    text = client.post(URL, content=b"{}", headers={**bearer(), "Content-Type": "text/plain"})
    assert text.status_code == 400 and "application/json" in text.json()["reason"]
    for raw in (b"{not json", b"[]"):
        resp = client.post(URL, content=raw, headers={**bearer(), "Content-Type": "application/json"})
        assert resp.status_code == 400, raw
    shape = client.post(URL, json={"alerts": [{"labels": ["service"]}]}, headers=bearer())
    assert shape.status_code == 422
    assert shape.json()["reason"] == (
        "not an Alertmanager webhook notification: alerts.0.labels: Input should be a valid dictionary"
    )


# -- at the ASGI level, under a real HTTP server ----------------------------------------------


class BodyMeter:
    """ASGI middleware: the body bytes the app pulled from the server, request by request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pulled: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        index = len(self.pulled)
        self.pulled.append(0)

        async def metered() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                self.pulled[index] += len(message.get("body", b""))
            return message

        await self.app(scope, metered, send)


@pytest.fixture
def server(receiver_env: dict[str, str]) -> Iterator[tuple[int, BodyMeter]]:
    import uvicorn

    meter = BodyMeter(mounted())
    port = free_port()
    config = uvicorn.Config(meter, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port, meter
    instance.should_exit = True
    thread.join(timeout=10)


def send_partial(
    port: int, path: str, hdrs: dict[str, str], *, declared: int, sent: bytes
) -> tuple[int, dict[str, Any], float]:
    """Announce ``declared`` body bytes, send only ``sent``, and read the answer: (status, JSON, seconds)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {declared}"]
    lines += [f"{k}: {v}" for k, v in hdrs.items() if k.lower() != "content-length"]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < _length(raw):
            chunk = sock.recv(65536)  # a server waiting for the rest of the body times this out
            if not chunk:
                break
            raw += chunk
    elapsed = time.monotonic() - started
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body), elapsed


def _length(raw: bytes) -> int:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_an_unauthenticated_20_mb_body_is_refused_before_a_byte_of_it_is_read(
    server: tuple[int, BodyMeter],
) -> None:
    port, meter = server
    first = b'{"version":"4","status":"firing","alerts":[' + b" " * (16 * 1024)
    for hdrs in ({"Authorization": "Bearer wrong-token"}, {}):
        status, body, elapsed = send_partial(
            port, URL, {**hdrs, "Content-Type": "application/json"}, declared=HUGE, sent=first
        )
        assert (status, body["status"]) == (401, "unauthorized")
        assert elapsed < 5, "the receiver waited for the body"
    assert meter.pulled == [0, 0]


def test_an_authenticated_oversize_body_is_413_unread_and_a_small_one_is_read(
    server: tuple[int, BodyMeter],
) -> None:
    port, meter = server
    status, body, _ = send_partial(
        port, URL, {**bearer(), "Content-Type": "application/json"}, declared=HUGE, sent=b"{" * 1024
    )
    assert status == 413 and "DELIVERY_WEBHOOK_MAX_BYTES" in body["reason"]
    small = json.dumps(notification("resolved-rollback.json")).encode()
    status, body, _ = send_partial(
        port, URL, {**bearer(), "Content-Type": "application/json"}, declared=len(small), sent=small
    )
    assert status == 200 and body["triggered"] == []
    assert meter.pulled == [0, len(small)]  # the meter sees a body the receiver reads


def test_the_github_receiver_reads_no_body_without_a_signature(server: tuple[int, BodyMeter]) -> None:
    port, meter = server
    hdrs = headers(b"", event="push", secret=None)
    status, body, elapsed = send_partial(
        port, "/delivery/webhooks/github", hdrs, declared=HUGE, sent=b'{"ref":' + b" " * (16 * 1024)
    )
    assert (status, body["reason"]) == (401, "missing X-Hub-Signature-256")
    assert elapsed < 5 and meter.pulled == [0]
