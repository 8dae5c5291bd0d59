"""An inconclusive verification holds the release for a human; a conclusive one asks nobody."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from delivery.verification.review import KEEP, ROLL_BACK, HoldReviewOperator, VerificationRejected


class _TI:
    def __init__(self, verdict: object) -> None:
        self.verdict = verdict

    def xcom_pull(self, task_ids: str) -> object:
        assert task_ids == "verify_production.verify"
        return self.verdict


def _op() -> HoldReviewOperator:
    return HoldReviewOperator(
        task_id="review",
        verify_task_id="verify_production.verify",
        subject="inconclusive",
        assigned_users=[{"id": "alice", "name": "alice"}],
        response_timeout=timedelta(hours=1),
    )


def test_conclusive_verification_needs_no_review() -> None:
    result = _op().execute({"ti": _TI({"decision": "promote", "phase": "Successful"})})  # type: ignore[arg-type]
    assert result == {"chosen_options": [KEEP], "reviewed": False}


def test_roll_back_choice_fails_the_task_so_the_rollback_branch_runs() -> None:
    event = {
        "chosen_options": [ROLL_BACK],
        "params_input": {},
        "responded_at": datetime.now(UTC),
        "responded_by_user": {"id": "alice", "name": "alice"},
    }
    with pytest.raises(VerificationRejected, match="roll back chosen by alice"):
        _op().execute_complete(context={}, event=event)  # type: ignore[arg-type]


def test_keep_choice_lets_the_release_be_recorded() -> None:
    event = {
        "chosen_options": [KEEP],
        "params_input": {},
        "responded_at": datetime.now(UTC),
        "responded_by_user": {"id": "bob", "name": "bob"},
    }
    assert _op().execute_complete(context={}, event=event)["chosen_options"] == [KEEP]


def test_the_default_on_timeout_is_to_roll_back() -> None:
    assert _op().defaults == [ROLL_BACK]
