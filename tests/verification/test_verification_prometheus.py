"""Verification against a real Prometheus scraping a real (test) exporter.

Prometheus comes from the Debian package ``prometheus`` (``/usr/bin/prometheus``). It runs with
its own config and data directory in a temporary folder, on a free loopback port, scraping
:class:`tests.standins.exporter.MetricsExporter` every second.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
from airflow.sdk.exceptions import TaskDeferred

from delivery.catalog.models import VerifySpec
from delivery.integrations.prometheus import PrometheusAsyncHook, PrometheusHook
from delivery.verification.analysis import (
    DECISION_HOLD,
    DECISION_PROMOTE,
    Phase,
    VerificationFailed,
    VerificationInconclusive,
    run_analysis,
)
from delivery.verification.operator import VerifyReleaseOperator
from delivery.verification.trigger import AnalysisTrigger
from tests.helpers import free_port, stop_process
from tests.standins.exporter import MetricsExporter

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from airflow.triggers.base import TriggerEvent

pytestmark = [pytest.mark.e2e, pytest.mark.duration(35)]

PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
HEALTHY, ERRORS, SLOW = "catalog", "billing", "render"

VERIFY: dict[str, Any] = {
    "interval": "1s",
    "count": 3,
    "failure_limit": 1,
    "inconclusive_limit": 1,
    "on_inconclusive": "hold",
    "checks": [
        {
            "name": "error_rate",
            "query": 'sum(rate(http_requests_total{service="{{ service }}",code=~"5.."}[1m])) '
            '/ clamp_min(sum(rate(http_requests_total{service="{{ service }}"}[1m])), 1e-9)',
            "max": 0.05,
        },
        {
            "name": "latency_p95",
            "query": "histogram_quantile(0.95, sum by (le) "
            '(rate(http_request_duration_seconds_bucket{service="{{ service }}"}[1m])))',
            "max": 0.5,
        },
    ],
}


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, port: int) -> None:
    uri = json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http"})
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", uri)


def run_trigger(trigger: AnalysisTrigger) -> TriggerEvent:
    async def first_event() -> TriggerEvent:
        async for event in trigger.run():
            return event
        raise AssertionError("the trigger fired no event")

    return asyncio.run(first_event())


@pytest.fixture(scope="module")
def exporter() -> Iterator[MetricsExporter]:
    with MetricsExporter(requests_per_second=50) as exp:
        exp.set_service(HEALTHY, error_fraction=0.0, latency=0.08)
        exp.set_service(ERRORS, error_fraction=0.5, latency=0.08)
        exp.set_service(SLOW, error_fraction=0.0, latency=2.0)
        yield exp


@pytest.fixture(scope="module")
def prometheus(exporter: MetricsExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the exporter every second; yields its base URL."""
    if not (os.path.isfile(PROMETHEUS) and os.access(PROMETHEUS, os.X_OK)):
        pytest.fail(
            f"{PROMETHEUS} not found: install the Debian package `prometheus` "
            "(apt-get install -y prometheus) to run the verification integration tests"
        )
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: visiobook\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        "    static_configs:\n"
        f"      - targets: ['{exporter.address}']\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        wait_ready(url, process, log_path)
        wait_for_data(url, process, log_path)
        yield url
    finally:
        stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _die(message: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    tail = log_path.read_text(errors="replace")[-3000:]
    pytest.fail(f"{message} (exit code {process.poll()}); Prometheus log:\n{tail}")


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _die("Prometheus exited", process, log_path)
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    _die(f"Prometheus not ready after {timeout}s", process, log_path)


def wait_for_data(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30) -> None:
    """Wait until both queries give a number for every service (rate() needs two scrapes)."""
    spec = VerifySpec.model_validate(VERIFY)
    queries = [
        check.query for name in (HEALTHY, ERRORS, SLOW) for check in spec.render({"service": name}).checks
    ]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _die("Prometheus exited", process, log_path)
        answers = [
            requests.get(f"{url}/api/v1/query", params={"query": q}, timeout=2).json() for q in queries
        ]
        if all(a["status"] == "success" and a["data"]["result"] for a in answers):
            return
        time.sleep(0.5)
    _die(f"no data for the verification queries after {timeout}s", process, log_path)


@pytest.fixture
def prom_conn(prometheus: str, monkeypatch: pytest.MonkeyPatch) -> str:
    conn_id = "prometheus_verification_test"
    set_connection(monkeypatch, conn_id, int(prometheus.rsplit(":", 1)[1]))
    return conn_id


@pytest.fixture
def dead_conn(monkeypatch: pytest.MonkeyPatch) -> str:
    """A connection to a loopback port nobody listens on (Prometheus stopped)."""
    conn_id = "prometheus_verification_down"
    set_connection(monkeypatch, conn_id, free_port())
    return conn_id


def operator(conn_id: str, service: str, *, deferrable: bool, **verify: Any) -> VerifyReleaseOperator:
    return VerifyReleaseOperator(
        task_id=f"verify_{service}",
        verify=VerifySpec.model_validate({**VERIFY, **verify}),
        service=service,
        environment="production",
        prometheus_conn_id=conn_id,
        query_timeout=2.0,
        deferrable=deferrable,
    )


def defer_and_resume(op: VerifyReleaseOperator) -> dict[str, Any]:
    """What the scheduler and triggerer do: execute -> defer -> run the trigger -> resume."""
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context={})
    trigger = deferred.value.trigger
    assert isinstance(trigger, AnalysisTrigger)
    event = run_trigger(trigger)
    method = getattr(op, deferred.value.method_name)
    result: dict[str, Any] = method(context={}, event=event.payload)
    return result


# ------------------------------------------------------------------------------------------


def test_healthy_service_is_successful(prom_conn: str) -> None:
    spec = VerifySpec.model_validate(VERIFY).render({"service": HEALTHY})
    hook = PrometheusHook(prometheus_conn_id=prom_conn, timeout=2.0)
    started = time.monotonic()
    analysis = run_analysis(spec, hook.query)
    summary = analysis.summary()
    assert analysis.phase is Phase.SUCCESSFUL, summary
    assert summary["measurements"] == 3
    assert time.monotonic() - started >= 2.0  # two 1 s intervals between three measurements
    assert summary["checks"]["error_rate"]["values"] == [0.0, 0.0, 0.0]
    latencies = summary["checks"]["latency_p95"]["values"]
    assert all(0.05 < value <= 0.1 for value in latencies), latencies


def test_worker_and_triggerer_hooks_read_the_same_answer(prom_conn: str) -> None:
    promql = 'up{job="visiobook"}'
    samples = PrometheusHook(prometheus_conn_id=prom_conn).query(promql)

    async def read() -> list[Any]:
        async with PrometheusAsyncHook(prometheus_conn_id=prom_conn).querying() as query:
            return await query(promql)

    assert samples == asyncio.run(read())
    assert [sample.value for sample in samples] == [1.0]
    assert samples[0].labels["job"] == "visiobook"


def test_healthy_service_deferred_is_promoted(prom_conn: str) -> None:
    result = defer_and_resume(operator(prom_conn, HEALTHY, deferrable=True))
    assert result["decision"] == DECISION_PROMOTE
    assert result["phase"] == "Successful"
    assert result["checks"]["error_rate"]["failed"] == 0


def test_half_errors_fail_on_error_rate(prom_conn: str) -> None:
    op = operator(prom_conn, ERRORS, deferrable=False)
    with pytest.raises(VerificationFailed, match=r"error_rate \[max 0\.05\] failed in 2/2") as failed:
        op.execute(context={})
    summary = failed.value.summary
    assert summary["phase"] == "Failed"
    assert "latency_p95" not in str(failed.value)
    assert all(0.4 <= value <= 0.6 for value in summary["checks"]["error_rate"]["values"])


def test_half_errors_fail_deferred(prom_conn: str) -> None:
    with pytest.raises(VerificationFailed, match="error_rate"):
        defer_and_resume(operator(prom_conn, ERRORS, deferrable=True))


def test_slow_service_fails_on_latency(prom_conn: str) -> None:
    with pytest.raises(VerificationFailed, match=r"latency_p95 \[max 0\.5\] failed") as failed:
        defer_and_resume(operator(prom_conn, SLOW, deferrable=True))
    assert "error_rate [" not in str(failed.value)


def test_unknown_service_is_inconclusive(prom_conn: str) -> None:
    # No series: the error ratio is an empty vector and the quantile NaN or empty.
    op = operator(prom_conn, "ghost", deferrable=False, on_inconclusive="fail")
    with pytest.raises(VerificationInconclusive, match=r"empty result|NaN"):
        op.execute(context={})


def test_bad_query_is_inconclusive(prom_conn: str) -> None:
    checks = [
        {"name": "broken", "query": 'sum(rate(http_requests_total{service="{{ service }}"}[1m]', "max": 1}
    ]
    op = operator(prom_conn, HEALTHY, deferrable=False, checks=checks)
    result = op.execute(context={})
    assert result["decision"] == DECISION_HOLD
    assert any("query error: HTTP 400 bad_data" in e for e in result["checks"]["broken"]["errors"])


def test_unreachable_prometheus_holds(dead_conn: str) -> None:
    result = defer_and_resume(operator(dead_conn, HEALTHY, deferrable=True))
    assert result["phase"] == "Inconclusive"
    assert result["decision"] == DECISION_HOLD
    assert result["measurements"] == 2  # stops as soon as inconclusive > inconclusive_limit
    errors = result["checks"]["error_rate"]["errors"]
    assert errors and all(e.startswith("metrics provider unreachable") for e in errors), errors


def test_unreachable_prometheus_fails_when_asked(dead_conn: str) -> None:
    op = operator(dead_conn, HEALTHY, deferrable=False, on_inconclusive="fail")
    with pytest.raises(VerificationInconclusive, match="unreachable"):
        op.execute(context={})


def test_unreachable_prometheus_passes_when_asked(dead_conn: str) -> None:
    result = operator(dead_conn, HEALTHY, deferrable=False, on_inconclusive="pass").execute(context={})
    assert result["decision"] == DECISION_PROMOTE
    assert "unreachable" in result["warning"]


def test_missing_connection_is_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_PROMETHEUS_VERIFICATION_NOWHERE", raising=False)
    trigger = AnalysisTrigger(
        spec=VerifySpec.model_validate(VERIFY).render({"service": HEALTHY}),
        prometheus_conn_id="prometheus_verification_nowhere",
    )
    event = run_trigger(trigger)
    assert event.payload["phase"] == "Error"
    assert "prometheus_verification_nowhere" in event.payload["summary"]["reason"]
