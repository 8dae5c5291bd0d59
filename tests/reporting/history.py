"""A known release history of two services, and the DORA numbers computed from it by hand."""

from __future__ import annotations

from datetime import UTC, datetime

from delivery.gitops import Release, ReleaseAction, Verification, VerificationStatus
from delivery.reporting.dora import RunRecord

SINCE = datetime(2025, 5, 1, tzinfo=UTC)
UNTIL = datetime(2025, 5, 11, tzinfo=UTC)  # a 10-day window

PASSED = Verification(status=VerificationStatus.PASSED)
FAILED = Verification(status=VerificationStatus.FAILED)
UNVERIFIED = Verification(status=VerificationStatus.UNVERIFIED)


def t(day: int, hour: int = 0, minute: int = 0, month: int = 5) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=UTC)


def release(
    service: str,
    n: int,
    at: datetime,
    *,
    action: ReleaseAction = ReleaseAction.DEPLOY,
    verification: Verification = UNVERIFIED,
    sha: str | None = None,
    run_id: str | None = None,
) -> Release:
    return Release(
        revision=f"{n:040x}",
        service=service,
        environment="production",
        values_path=f"apps/{service}/values-production.yaml",
        image_tag=sha,
        image_repository=None,
        action=action,
        timestamp=at,
        subject=f"{action.value} {service}",
        source_sha=sha,
        run_id=run_id,
        verification=verification,
    )


API = "visiobook-api"
WEB = "visiobook-web"
ROLLBACK = ReleaseAction.ROLLBACK

RELEASES = {
    API: [
        release(API, 0, t(28, 10, month=4), verification=PASSED, sha="s0"),  # before the window
        release(API, 1, t(2, 12), verification=PASSED, sha="s1", run_id="r1"),
        release(API, 2, t(4, 9), verification=FAILED, sha="s2", run_id="r2"),
        release(API, 3, t(4, 9, 30), action=ROLLBACK, sha="s0", run_id="r2"),
        release(API, 4, t(6, 15), sha="s4", run_id="r4"),  # unverified, but rolled back next
        release(API, 5, t(6, 17), action=ROLLBACK, sha="s1"),
        release(API, 6, t(10, 8), verification=PASSED, sha="s6"),
        release(API, 7, t(11, 1), verification=PASSED, sha="s7"),  # after the window
    ],
    WEB: [
        release(WEB, 11, t(5, 0), verification=FAILED, sha="w1"),
        release(WEB, 12, t(5, 6), verification=FAILED, sha="w2"),
        release(WEB, 13, t(7, 0), verification=PASSED, sha="w3"),
        release(WEB, 14, t(9, 12), verification=FAILED, sha="w4"),  # never restored
    ],
}

COMMIT_TIMES = {"s2": t(3, 21), "w1": t(4, 0), "w2": t(5, 5), "w3": t(6, 23), "w4": t(9, 11, 30)}

RUNS = {
    API: [
        RunRecord(
            dag_id="deliver_visiobook_api",
            run_id="r1",
            state="success",
            start_date=t(2, 10, 5),
            commit_time=t(2, 10),
        ),
        RunRecord(dag_id="deliver_visiobook_api", run_id="r2", state="failed", start_date=t(4, 8)),
        RunRecord(dag_id="deliver_visiobook_api", run_id="r4", state="failed", start_date=t(6, 14)),
        RunRecord(dag_id="deliver_visiobook_api", run_id="ci", state="success", start_date=t(8, 9)),
        RunRecord(
            dag_id="deliver_visiobook_api", run_id="old", state="success", start_date=t(20, 9, month=4)
        ),
        RunRecord(dag_id="deliver_visiobook_api", run_id="now", state="running", start_date=t(10, 9)),
    ],
}

# By hand.
#
# visiobook-api, deploys in [05-01, 05-11): R1, R2, R4, R6 (R0 and R7 are outside, R3 and R5 are rollbacks).
#   frequency      4 / 10 days = 0.4 per day
#   lead times     R1: run r1 commit_time 05-02 10:00 -> 12:00 = 7200 s
#                  R2: commit_times[s2] 05-03 21:00 -> 05-04 09:00 = 43200 s (wins over run r2's start)
#                  R4: run r4 has no commit time, its start 05-06 14:00 -> 15:00 = 3600 s
#                  R6: no commit time, no run: no sample
#                  median(3600, 7200, 43200) = 7200 s
#   failures       R2 (verification failed), R4 (next release is a rollback): 2 / 4 = 0.5
#   restores       R2 -> R3 rollback 09:30: 1800 s; R4 -> R5 rollback 17:00: 7200 s; median 4500 s
#   runs           r1, r2, r4, ci finished in the window (old is before it, now is running): 4, 2 failed
#
# visiobook-web: W1, W2, W3, W4.
#   frequency      0.4 per day
#   lead times     W1 86400, W2 3600, W3 3600, W4 1800: median (3600 + 3600) / 2 = 3600 s
#   failures       W1, W2, W4 (verification failed): 3 / 4 = 0.75
#   restores       W1 05-05 00:00 -> W3 (first later passed deploy) 05-07 00:00 = 172800 s
#                  W2 05-05 06:00 -> W3 05-07 00:00 = 151200 s
#                  W4: not restored (1 open failure); median (151200 + 172800) / 2 = 162000 s
#
# Overall: 8 deploys, 0.8 per day;
#   lead times 1800, 3600, 3600, 3600, 7200, 43200, 86400: median 3600 s
#   change failure rate 5 / 8 = 0.625
#   restores 1800, 7200, 151200, 172800: median (7200 + 151200) / 2 = 79200 s; 1 open failure
#   runs 4, 2 failed
EXPECTED = {
    API: {
        "deployments": 4,
        "deployment_frequency_per_day": 0.4,
        "lead_time_median_s": 7200.0,
        "change_failures": 2,
        "change_failure_rate": 0.5,
        "time_to_restore_median_s": 4500.0,
        "restores": 2,
        "open_failures": 0,
        "pipeline_runs": 4,
        "pipeline_runs_failed": 2,
    },
    WEB: {
        "deployments": 4,
        "deployment_frequency_per_day": 0.4,
        "lead_time_median_s": 3600.0,
        "change_failures": 3,
        "change_failure_rate": 0.75,
        "time_to_restore_median_s": 162000.0,
        "restores": 2,
        "open_failures": 1,
        "pipeline_runs": 0,
        "pipeline_runs_failed": 0,
    },
    "overall": {
        "deployments": 8,
        "deployment_frequency_per_day": 0.8,
        "lead_time_median_s": 3600.0,
        "change_failures": 5,
        "change_failure_rate": 0.625,
        "time_to_restore_median_s": 79200.0,
        "restores": 4,
        "open_failures": 1,
        "pipeline_runs": 4,
        "pipeline_runs_failed": 2,
    },
}
