"""DORA numbers from a known history equal the hand computation in tests/reporting/history.py."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timedelta

import pytest

from delivery.reporting import dora
from tests.reporting.history import API, COMMIT_TIMES, EXPECTED, RELEASES, RUNS, SINCE, UNTIL, WEB, release


def _report() -> dora.DoraReport:
    return dora.compute(releases=RELEASES, runs=RUNS, since=SINCE, until=UNTIL, commit_times=COMMIT_TIMES)


def test_per_service_and_overall_numbers_equal_the_hand_computation() -> None:
    report = _report()
    assert report.days == 10
    for key in (API, WEB):
        assert asdict(report.services[key]) == pytest.approx(EXPECTED[key]), key
    assert asdict(report.overall) == pytest.approx(EXPECTED["overall"])


def test_each_deploy_is_explained() -> None:
    facts = {(d.service, d.source_sha): d for d in _report().deploys}
    assert sorted(facts) == sorted(
        [
            (API, "s1"),
            (API, "s2"),
            (API, "s4"),
            (API, "s6"),
            (WEB, "w1"),
            (WEB, "w2"),
            (WEB, "w3"),
            (WEB, "w4"),
        ]
    )
    assert facts[(API, "s4")].failed and facts[(API, "s4")].restored_after_s == 7200
    assert facts[(API, "s6")].lead_time_s is None
    assert facts[(WEB, "w4")].failed and facts[(WEB, "w4")].restored_after_s is None


def test_empty_history_and_bad_window() -> None:
    report = dora.compute(releases={API: []}, since=SINCE, until=UNTIL)
    metrics = report.services[API]
    assert (
        metrics.deployments == 0
        and metrics.change_failure_rate is None
        and metrics.lead_time_median_s is None
    )
    with pytest.raises(ValueError, match="the window is empty"):
        dora.compute(releases={}, since=UNTIL, until=SINCE)


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's adapters return the known history (they read GitOps and the DagRun table otherwise)."""

    def releases(*, catalog: object, services: list[str], max_count: int = 1000) -> dict[str, list[object]]:
        return {name: list(RELEASES.get(name, [])) for name in services}

    def runs(*, catalog: object, services: list[str], since: object) -> dict[str, list[object]]:
        return {name: list(RUNS.get(name, [])) for name in services}

    monkeypatch.setattr(dora, "load_releases", releases)
    monkeypatch.setattr(dora, "load_runs", runs)


def test_cli_json_and_table(
    records: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Freeze "now" at the end of the known window.
    real = dora.datetime

    class Frozen(real):  # type: ignore[misc,valid-type]
        @classmethod
        def now(cls, tz: object = None) -> real:  # type: ignore[override,valid-type]
            return UNTIL

    monkeypatch.setattr(dora, "datetime", Frozen)
    assert dora.main(["--since", "10d", "--service", API, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["services"]) == [API]
    # Lead time from runs only here (no commit_times map): R2 uses run r2's start 05-04 08:00 -> 3600 s,
    # so the samples are 7200, 3600, 3600: median 3600.
    assert out["services"][API]["lead_time_median_s"] == 3600
    assert out["services"][API]["change_failure_rate"] == 0.5
    assert out["services"][API]["time_to_restore_median_s"] == 4500

    assert dora.main(["--since", "10d"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "DORA metrics 2025-05-01 00:00 to 2025-05-11 00:00 UTC"
    assert table[1].split() == [
        "service",
        "deploys",
        "per",
        "day",
        "lead",
        "time",
        "change",
        "fail",
        "restore",
        "open",
    ]
    api_row = next(line for line in table if line.startswith(API)).split()
    assert api_row == [API, "4", "0.40", "1.0h", "50%", "1.2h", "0"]

    assert dora.main(["--service", "no-such"]) == 2
    assert "no service 'no-such'" in capsys.readouterr().err


def test_dag_run_adapter_reads_the_metadata_db(airflow_db: object) -> None:
    """Real DagRun rows in the test's metadata DB, read back through Airflow's ORM."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType
    from sqlalchemy import delete

    from delivery.catalog import load_catalog

    catalog, _ = load_catalog()
    dag_id = catalog.service(API).dag_id
    committed = SINCE + timedelta(hours=1, minutes=15)
    started = SINCE + timedelta(hours=2)

    def row(run_id: str, dag: str, start: datetime, state: DagRunState, conf: dict[str, str]) -> DagRun:
        run = DagRun(
            dag_id=dag,
            run_id=run_id,
            run_type=DagRunType.MANUAL,
            run_after=start,
            start_date=start,
            state=state,
            conf=conf,
        )
        run.end_date = start + timedelta(minutes=30)
        return run

    rows = [
        # The run's conf carries the commit's time (ISO 8601 with a Z, as GitHub writes it).
        row("dora__in_window", dag_id, started, DagRunState.SUCCESS, {"commit_time": "2025-05-01T01:15:00Z"}),
        row(
            "dora__before",
            dag_id,
            SINCE - timedelta(minutes=1),
            DagRunState.FAILED,
            {"commit_time": "2025-04-30T23:00:00Z"},
        ),
        row("dora__not_delivery", "some_other_dag", started, DagRunState.SUCCESS, {}),
    ]
    with create_session() as session:
        session.add_all(rows)
    try:
        runs = dora.load_runs(catalog=catalog, services=[API, WEB], since=SINCE)
    finally:
        with create_session() as session:
            session.execute(delete(DagRun).where(DagRun.run_id.in_([r.run_id for r in rows])))

    ours = [r for r in runs[API] if r.run_id.startswith("dora__")]
    assert ours == [
        dora.RunRecord(
            dag_id=dag_id,
            run_id="dora__in_window",
            state="success",
            start_date=started,
            end_date=started + timedelta(minutes=30),
            commit_time=committed,
        )
    ]  # the run before since, and the run of another DAG, are not read
    assert all(r.dag_id == catalog.service(WEB).dag_id for r in runs[WEB])
    # The commit time read back is what the lead time of the run's production release starts from.
    deployed = release(API, 1, started + timedelta(hours=1), sha="unknown-sha", run_id="dora__in_window")
    report = dora.compute(releases={API: [deployed]}, runs={API: ours}, since=SINCE, until=UNTIL)
    assert (
        report.services[API].lead_time_median_s == (started + timedelta(hours=1) - committed).total_seconds()
    )
    assert report.services[API].pipeline_runs == 1
