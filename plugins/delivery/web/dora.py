"""The DORA page in the Airflow UI: a FastAPI app for the plugin's ``fastapi_apps``.

``GET /`` is an HTML page (a chart drawn server-side as inline SVG; no script,
nothing loaded from elsewhere) and ``GET /api/report`` the same report as
JSON. Both take ``since`` (``30d``, ``12h``, ``4w``) and ``service``.

Airflow does not authenticate plugin apps: every route here requires the
Airflow JWT, as ``Authorization: Bearer <token>`` or the ``_token`` cookie the
UI sets, validated by the configured auth manager; without a valid one the
answer is ``401``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse

from delivery.reporting.dora import DoraReport, human_duration, load_report, parse_window
from delivery.web.auth import require_user
from delivery.web.cache import TtlCache

CACHE_TTL_S = 60.0
CACHE_SIZE = 32

ReportLoader = Callable[..., DoraReport]

app = FastAPI(title="Visiobook delivery: DORA metrics", docs_url=None, redoc_url=None, openapi_url=None)


REPORTS: TtlCache[DoraReport] = TtlCache(ttl=CACHE_TTL_S, maxsize=CACHE_SIZE)
"""Reports by (window, service): a minute old at most, and a bounded number of them."""


def _cached_load(*, since: datetime, until: datetime, service: str | None, window: str) -> DoraReport:
    return REPORTS.get((window, service), lambda: load_report(since=since, until=until, service=service))


def report_loader() -> ReportLoader:
    """Where reports come from (override in tests with ``app.dependency_overrides``)."""
    return _cached_load


User = Annotated[Any, Depends(require_user)]
Loader = Annotated[ReportLoader, Depends(report_loader)]


def _report(loader: ReportLoader, since: str, service: str | None) -> DoraReport:
    try:
        window = parse_window(since)
    except Exception as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    until = datetime.now(UTC)
    try:
        return loader(since=until - window, until=until, service=service or None, window=since)
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc.args[0] if exc.args else exc)) from exc


@app.get("/api/report")
def report_json(
    user: User, loader: Loader, since: Annotated[str, Query()] = "30d", service: str | None = None
) -> JSONResponse:
    return JSONResponse(_report(loader, since, service).as_dict())


@app.get("/", response_class=HTMLResponse)
def report_page(
    request: Request,
    user: User,
    loader: Loader,
    since: Annotated[str, Query()] = "30d",
    service: str | None = None,
) -> HTMLResponse:
    report = _report(loader, since, service)
    root = request.scope.get("root_path", "").rstrip("/")
    return HTMLResponse(render_page(report, json_url=f"{root}/api/report?since={html.escape(since)}"))


# -- rendering --------------------------------------------------------------------------


def daily_counts(report: DoraReport) -> list[tuple[datetime, int, int]]:
    """(day, deploys, failed deploys) for every day of the window, oldest first."""
    start = report.since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = max(1, (report.until - start).days + (1 if (report.until - start) % timedelta(days=1) else 0))
    counts = {start + timedelta(days=i): [0, 0] for i in range(days)}
    for deploy in report.deploys:
        day = deploy.timestamp.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if day in counts:
            counts[day][0] += 1
            counts[day][1] += int(deploy.failed)
    return [(day, c[0], c[1]) for day, c in sorted(counts.items())]


def render_chart(report: DoraReport, *, width: int = 760, height: int = 200) -> str:
    """Production deploys per day: green bars, their failed part in red. Inline SVG."""
    days = daily_counts(report)
    top = max([d[1] for d in days] + [1])
    pad_left, pad_bottom, pad_top = 30, 24, 10
    plot_w, plot_h = width - pad_left - 10, height - pad_bottom - pad_top
    step = plot_w / len(days)
    bar = max(1.0, step * 0.7)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="Production deploys per day">',
        f'<line x1="{pad_left}" y1="{pad_top + plot_h}" x2="{width - 10}" y2="{pad_top + plot_h}" stroke="#888"/>',
        f'<text x="{pad_left - 6}" y="{pad_top + 4}" font-size="10" text-anchor="end">{top}</text>',
        f'<text x="{pad_left - 6}" y="{pad_top + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]
    for i, (day, deploys, failed) in enumerate(days):
        x = pad_left + i * step + (step - bar) / 2
        ok_h, bad_h = plot_h * (deploys - failed) / top, plot_h * failed / top
        base = pad_top + plot_h
        label = f"{day:%Y-%m-%d}: {deploys} deploys, {failed} failed"
        if deploys:
            parts.append(
                f"<g><title>{label}</title>"
                f'<rect class="ok" x="{x:.1f}" y="{base - ok_h:.1f}" width="{bar:.1f}" height="{ok_h:.1f}" fill="#2e7d32"/>'
                f'<rect class="failed" x="{x:.1f}" y="{base - ok_h - bad_h:.1f}" width="{bar:.1f}" '
                f'height="{bad_h:.1f}" fill="#c62828"/></g>'
            )
        if i % max(1, len(days) // 6) == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">{day:%m-%d}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def render_page(report: DoraReport, *, json_url: str) -> str:
    rows = []
    for name, m in [*sorted(report.services.items()), ("All services", report.overall)]:
        rate = "-" if m.change_failure_rate is None else f"{m.change_failure_rate:.0%}"
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{m.deployments}</td>"
            f"<td>{m.deployment_frequency_per_day:.2f}</td><td>{human_duration(m.lead_time_median_s)}</td>"
            f"<td>{rate}</td><td>{human_duration(m.time_to_restore_median_s)}</td><td>{m.open_failures}</td></tr>"
        )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>DORA metrics</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}"
        "table{border-collapse:collapse}td,th{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>"
        f"<h1>DORA metrics</h1><p>{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC "
        f"({report.days:.0f} days). <a href='{json_url}'>JSON</a></p>"
        "<h2>Production deploys per day</h2>"
        f"{render_chart(report)}"
        "<table><thead><tr><th>Service</th><th>Deploys</th><th>Per day</th><th>Lead time (median)</th>"
        "<th>Change failure rate</th><th>Time to restore (median)</th><th>Open failures</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></body></html>"
    )
