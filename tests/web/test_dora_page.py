"""The DORA page and its JSON: Airflow JWT required (Bearer or the UI's cookie), inline SVG chart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from delivery.reporting import dora
from delivery.web.dora import app, report_loader
from tests.reporting.history import COMMIT_TIMES, EXPECTED, RELEASES, RUNS, SINCE, UNTIL


def _known_report(**_: Any) -> dora.DoraReport:
    return dora.compute(releases=RELEASES, runs=RUNS, since=SINCE, until=UNTIL, commit_times=COMMIT_TIMES)


@pytest.fixture
def client() -> Iterator[TestClient]:
    app.dependency_overrides[report_loader] = lambda: _known_report
    try:
        with TestClient(app, root_path="/delivery/dora") as test_client:
            yield test_client
    finally:
        app.dependency_overrides.clear()


@pytest.mark.parametrize("path", ["/", "/api/report"])
def test_no_token_no_page(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    forged = client.get(path, headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 401
    client.cookies.set("_token", "also-not-a-jwt")
    assert client.get(path).status_code == 401


def test_json_with_bearer_token(client: TestClient, token: str) -> None:
    response = client.get("/api/report?since=10d", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    body = response.json()
    assert body["overall"] == pytest.approx(EXPECTED["overall"])
    assert body == _known_report().as_dict()


def test_page_with_the_ui_cookie(client: TestClient, token: str) -> None:
    client.cookies.set("_token", token)
    response = client.get("/?since=10d")
    assert response.status_code == 200
    page = response.text
    assert response.headers["content-type"].startswith("text/html")
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in page
    assert "<script" not in page and "src=" not in page and "<link" not in page  # nothing to download
    # 10 days, a bar group per day with deploys: 05-02, 05-04, 05-05, 05-06, 05-07, 05-09, 05-10.
    assert page.count("<g><title>") == 7
    assert "<title>2025-05-05: 2 deploys, 2 failed</title>" in page
    assert "<title>2025-05-02: 1 deploys, 0 failed</title>" in page
    assert (
        "<td>All services</td><td>8</td><td>0.80</td><td>1.0h</td><td>62%</td><td>22.0h</td><td>1</td>"
        in page
    )
    assert "href='/delivery/dora/api/report?since=10d'" in page


def test_bad_window_is_a_400(client: TestClient, token: str) -> None:
    response = client.get("/api/report?since=forever", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400


def test_a_revoked_token_is_refused(client: TestClient, airflow_db: object) -> None:
    from datetime import UTC, datetime, timedelta

    import jwt
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken

    manager = init_auth_manager()
    logged_out = manager.generate_jwt(SimpleAuthManagerUser(username="bob", role="viewer"))  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {logged_out}"}
    assert client.get("/api/report", headers=headers).status_code == 200
    jti = jwt.decode(logged_out, options={"verify_signature": False})["jti"]
    RevokedToken.revoke(jti, datetime.now(UTC) + timedelta(hours=1))
    assert client.get("/api/report", headers=headers).status_code == 401
