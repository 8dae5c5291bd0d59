"""The receiver's decisions, without servers: eligibility and deterministic run ids."""

from __future__ import annotations

from delivery.web.alertmanager import WebhookBody, rollback_reason, rollback_run_id, triage
from tests.rollback.conftest import fixture_payload


def test_run_id_is_deterministic_and_per_occurrence() -> None:
    a = rollback_run_id(
        service="rb-web", fingerprint="6c1d1e4f0b7a9e21", starts_at="2026-03-30T20:17:50.814674209Z"
    )
    b = rollback_run_id(
        service="rb-web", fingerprint="6c1d1e4f0b7a9e21", starts_at="2026-03-30T22:17:50.814674+02:00"
    )
    assert a == b and a.startswith("alert__6c1d1e4f0b7a9e21__")
    assert a != rollback_run_id(
        service="rb-web", fingerprint="6c1d1e4f0b7a9e21", starts_at="2026-03-31T00:00:00Z"
    )
    assert a != rollback_run_id(
        service="rb-db", fingerprint="6c1d1e4f0b7a9e21", starts_at="2026-03-30T20:17:50Z"
    )


def test_triage_of_the_fixtures() -> None:
    body = WebhookBody.model_validate(fixture_payload("firing-rollback.json"))
    accepted, ignored = triage(body, services={"rb-web"})
    assert [s for _, s in accepted] == ["rb-web"] and ignored == []
    assert rollback_reason(accepted[0][0]) == (
        "automatic rollback: HTTPErrorRateCritical (rb-web production: 5xx ratio above 5%)"
    )

    body = WebhookBody.model_validate(fixture_payload("resolved-rollback.json"))
    assert triage(body, services={"rb-web"})[0] == []

    payload = fixture_payload("firing-rollback.json")
    payload["alerts"].append({**payload["alerts"][0], "fingerprint": "ffff0000ffff0000"})
    payload["alerts"].append(
        {
            **payload["alerts"][0],
            "fingerprint": "eeee",
            "labels": {**payload["alerts"][0]["labels"], "environment": "qa"},
        }
    )
    accepted, ignored = triage(WebhookBody.model_validate(payload), services={"rb-web"})
    assert len(accepted) == 1
    assert [i["reason"] for i in ignored] == [
        "another alert of this notification already rolls back rb-web",
        "environment 'qa' is not one of production, staging",
    ]
