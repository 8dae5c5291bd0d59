"""DORA metrics of the delivery pipelines, from their own records.

* **Deployment frequency**: production deploys (GitOps releases with
  ``Delivery-Action: deploy``) in the window, per day.
* **Lead time for changes**: median of commit time to production deploy. The
  commit time is, in order: ``commit_times[source_sha]``, the run's
  ``commit_time`` (run conf or ``validate.checkout`` XCom), or the run's start
  (the pipeline starts on the push, so this is push-to-production).
* **Change failure rate**: production deploys whose verification failed or
  that the next production release rolled back, over all production deploys.
* **Time to restore**: median of a failed deploy's time to the first later
  release that restored service (a rollback, or a deploy that passed
  verification). Failures not restored yet are counted as ``open_failures``.

:func:`compute` is pure (releases and run rows in, report out). The adapters
read the GitOps history (:func:`load_releases`) and the DagRun table
(:func:`load_runs`, Airflow's ORM). ``python -m delivery.reporting.dora --since 30d``
prints the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.utils.session import create_session
from sqlalchemy import select

from delivery.catalog.fields import parse_duration
from delivery.gitops import Release, ReleaseAction, VerificationStatus
from delivery.runtime import catalog as active_catalog
from delivery.runtime import gitops_repo

if TYPE_CHECKING:
    from delivery.catalog.models import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One DagRun of a delivery DAG, as plain data."""

    dag_id: str
    run_id: str
    state: str
    start_date: datetime | None = None
    end_date: datetime | None = None
    commit_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class DeployFacts:
    """One production deploy and what followed it."""

    service: str
    revision: str
    timestamp: datetime
    source_sha: str | None
    run_id: str | None
    lead_time_s: float | None
    failed: bool
    restored_after_s: float | None


@dataclass(kw_only=True)
class DoraMetrics:
    deployments: int = 0
    deployment_frequency_per_day: float = 0.0
    lead_time_median_s: float | None = None
    change_failures: int = 0
    change_failure_rate: float | None = None
    time_to_restore_median_s: float | None = None
    restores: int = 0
    open_failures: int = 0
    pipeline_runs: int = 0
    pipeline_runs_failed: int = 0


@dataclass(kw_only=True)
class DoraReport:
    since: datetime
    until: datetime
    services: dict[str, DoraMetrics]
    overall: DoraMetrics
    deploys: list[DeployFacts] = field(default_factory=list)

    @property
    def days(self) -> float:
        return (self.until - self.since).total_seconds() / 86400

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "days": round(self.days, 3),
            "overall": asdict(self.overall),
            "services": {name: asdict(m) for name, m in sorted(self.services.items())},
            "deploys": [
                {**asdict(d), "timestamp": d.timestamp.isoformat()}
                for d in sorted(self.deploys, key=lambda d: d.timestamp)
            ],
        }


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _service_facts(
    service: str,
    releases: Iterable[Release],
    *,
    since: datetime,
    until: datetime,
    runs: Mapping[str, RunRecord],
    commit_times: Mapping[str, datetime],
) -> list[DeployFacts]:
    ordered = sorted(
        (r for r in releases if r.environment == "production"),
        key=lambda r: (_aware(r.timestamp), r.revision),
    )
    facts = []
    for index, release in enumerate(ordered):
        at = _aware(release.timestamp)
        if release.action is not ReleaseAction.DEPLOY or not since <= at < until:
            continue
        later = ordered[index + 1 :]
        failed = release.verification.status is VerificationStatus.FAILED or (
            bool(later) and later[0].action is ReleaseAction.ROLLBACK
        )
        restored_after = None
        if failed:
            for nxt in later:
                if nxt.action is ReleaseAction.ROLLBACK or (
                    nxt.action is ReleaseAction.DEPLOY
                    and nxt.verification.status is VerificationStatus.PASSED
                ):
                    restored_after = (_aware(nxt.timestamp) - at).total_seconds()
                    break
        committed = commit_times.get(release.source_sha or "")
        run = runs.get(release.run_id or "")
        if committed is None and run is not None:
            committed = run.commit_time or run.start_date
        lead = (at - _aware(committed)).total_seconds() if committed is not None else None
        facts.append(
            DeployFacts(
                service=service,
                revision=release.revision,
                timestamp=at,
                source_sha=release.source_sha,
                run_id=release.run_id,
                lead_time_s=lead,
                failed=failed,
                restored_after_s=restored_after,
            )
        )
    return facts


def _metrics(facts: Sequence[DeployFacts], *, days: float, runs: Sequence[RunRecord]) -> DoraMetrics:
    failures = [f for f in facts if f.failed]
    restores = [f.restored_after_s for f in failures if f.restored_after_s is not None]
    return DoraMetrics(
        deployments=len(facts),
        deployment_frequency_per_day=len(facts) / days if days > 0 else 0.0,
        lead_time_median_s=_median([f.lead_time_s for f in facts if f.lead_time_s is not None]),
        change_failures=len(failures),
        change_failure_rate=len(failures) / len(facts) if facts else None,
        time_to_restore_median_s=_median(restores),
        restores=len(restores),
        open_failures=len(failures) - len(restores),
        pipeline_runs=sum(1 for r in runs if r.state in ("success", "failed")),
        pipeline_runs_failed=sum(1 for r in runs if r.state == "failed"),
    )


def compute(
    *,
    releases: Mapping[str, Iterable[Release]],
    runs: Mapping[str, Sequence[RunRecord]] | None = None,
    since: datetime,
    until: datetime,
    commit_times: Mapping[str, datetime] | None = None,
) -> DoraReport:
    """The report of ``releases`` (service -> its production release history) in ``[since, until)``.

    ``runs``: service -> the DagRuns of its delivery DAG (for commit times and run counts).
    """
    since, until = _aware(since), _aware(until)
    if until <= since:
        raise ValueError(
            f"the window is empty: since {since.isoformat()} is not before until {until.isoformat()}"
        )
    runs = runs or {}
    commits = {sha: _aware(t) for sha, t in (commit_times or {}).items()}
    days = (until - since).total_seconds() / 86400
    services: dict[str, DoraMetrics] = {}
    every: list[DeployFacts] = []
    every_run: list[RunRecord] = []
    for service in sorted(set(releases) | set(runs)):
        service_runs = [
            r for r in runs.get(service, ()) if r.start_date is None or since <= _aware(r.start_date) < until
        ]
        by_run = {r.run_id: r for r in runs.get(service, ())}
        facts = _service_facts(
            service, releases.get(service, ()), since=since, until=until, runs=by_run, commit_times=commits
        )
        services[service] = _metrics(facts, days=days, runs=service_runs)
        every += facts
        every_run += service_runs
    return DoraReport(
        since=since,
        until=until,
        services=services,
        overall=_metrics(every, days=days, runs=every_run),
        deploys=every,
    )


# -- adapters ---------------------------------------------------------------------------


def load_releases(
    *, catalog: Catalog, services: Sequence[str], max_count: int = 1000
) -> dict[str, list[Release]]:
    """Production release history of each service, from the GitOps repository."""
    repo = gitops_repo()
    return {
        name: repo.history(
            environment="production",
            service=name,
            values_path=catalog.service(name).environments.production.values_path,
            max_count=max_count,
        )
        for name in services
    }


def load_runs(*, catalog: Catalog, services: Sequence[str], since: datetime) -> dict[str, list[RunRecord]]:
    """DagRuns of the services' delivery DAGs since ``since``, from Airflow's metadata DB (ORM)."""
    from airflow.models.dagrun import DagRun  # noqa: PLC0415 Airflow's ORM: only when the report reads runs

    dag_to_service = {catalog.service(name).dag_id: name for name in services}
    result: dict[str, list[RunRecord]] = {name: [] for name in services}
    with create_session() as session:
        rows = session.scalars(
            select(DagRun).where(DagRun.dag_id.in_(list(dag_to_service)), DagRun.start_date >= since)
        ).all()
        for row in rows:
            conf = row.conf if isinstance(row.conf, dict) else {}
            commit_time = parse_time(conf.get("commit_time"))
            result[dag_to_service[row.dag_id]].append(
                RunRecord(
                    dag_id=row.dag_id,
                    run_id=row.run_id,
                    state=str(row.state),
                    start_date=row.start_date,
                    end_date=row.end_date,
                    commit_time=commit_time,
                )
            )
    return result


def parse_time(value: Any) -> datetime | None:
    """A timezone-aware datetime from a datetime or ISO 8601 text (``Z`` allowed); ``None`` otherwise."""
    if isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, str) and value:
        try:
            return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def load_report(
    *,
    since: datetime,
    until: datetime | None = None,
    service: str | None = None,
    catalog: Catalog | None = None,
) -> DoraReport:
    """Read the records (GitOps + DagRuns) and compute the report. A missing DB is not fatal."""
    if catalog is None:
        catalog = active_catalog()
    services = [service] if service else sorted(catalog.services)
    for name in services:
        catalog.service(name)  # a clear error for an unknown service
    until = until or datetime.now(UTC)
    releases = load_releases(catalog=catalog, services=services)
    try:
        runs = load_runs(catalog=catalog, services=services, since=since)
    except Exception as exc:
        log.warning("DagRuns not readable (%s): lead times use commit times only", exc)
        runs = {}
    return compute(releases=releases, runs=runs, since=since, until=until)


# -- CLI --------------------------------------------------------------------------------


def parse_window(text: str) -> timedelta:
    """The report's window (``30d``, ``12h``, ``4w``, ``1d12h``...), in the project's duration grammar."""
    try:
        window = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if window <= timedelta(0):
        raise argparse.ArgumentTypeError(f"the window must be longer than zero, got {text!r}")
    return window


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_table(report: DoraReport) -> str:
    header = ("service", "deploys", "per day", "lead time", "change fail", "restore", "open")
    rows = [header]
    for name, m in [*sorted(report.services.items()), ("(all)", report.overall)]:
        rows.append(
            (
                name,
                str(m.deployments),
                f"{m.deployment_frequency_per_day:.2f}",
                human_duration(m.lead_time_median_s),
                "-" if m.change_failure_rate is None else f"{m.change_failure_rate:.0%}",
                human_duration(m.time_to_restore_median_s),
                str(m.open_failures),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"DORA metrics {report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC"]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if j == 0 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m delivery.reporting.dora", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--since", type=parse_window, default=timedelta(days=30), help="window: 30d, 12h, 4w")
    parser.add_argument("--service", help="one service of the catalog (default: all)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    until = datetime.now(UTC)
    try:
        report = load_report(since=until - args.since, until=until, service=args.service)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2) if args.format == "json" else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
