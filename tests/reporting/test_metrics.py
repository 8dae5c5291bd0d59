"""Delivery metrics without a server: StatsD over a real UDP socket, the Pushgateway exposition read
back with prometheus_client's own parser, and emission that never raises.

The real Pushgateway (and Prometheus evaluating the shipped rules over it) is in
``tests/reporting/test_pushgateway.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from delivery.reporting import metrics
from delivery.reporting.metrics import Deploy, Run, RunOutcome

RUN = Run(service="visiobook-api", dag_id="deliver_visiobook_api", run_id="manual__2026-05-01T10:00:00+00:00")
DEPLOYED = RunOutcome(
    pipeline="success",
    duration_s=1800,
    deploys=(
        Deploy(environment="staging", result="success", duration_s=95.5),
        Deploy(environment="production", result="success", duration_s=45),
    ),
    approval="approved",
    lead_time_s=7201.25,
)


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "statsd")
    monkeypatch.setenv("DELIVERY_METRICS_URL", f"udp://127.0.0.1:{sock.getsockname()[1]}")
    try:
        yield sock
    finally:
        sock.close()


def _receive(sock: socket.socket) -> list[str]:
    lines = []
    sock.settimeout(0.5)
    try:
        while True:
            lines.append(sock.recvfrom(65535)[0].decode())
    except TimeoutError:
        return lines


def test_statsd_open_run_creates_every_counter_at_zero(statsd: socket.socket) -> None:
    assert metrics.open_run(RUN)
    lines = _receive(statsd)
    assert all(line.split("|")[0].endswith(":0") and "|c|#" in line for line in lines)
    assert "delivery_pipeline_runs_total:0|c|#service:visiobook-api,result:failed" in lines
    assert "delivery_deploy_total:0|c|#service:visiobook-api,environment:staging,result:success" in lines
    assert "delivery_rollback_total:0|c|#service:visiobook-api,environment:production,result:failed" in lines
    assert "delivery_approval_total:0|c|#service:visiobook-api,result:timeout" in lines
    assert len(lines) == 2 + 4 + 4 + 3


def test_statsd_end_of_run_sends_the_events(statsd: socket.socket) -> None:
    assert metrics.record_run(RUN, DEPLOYED)
    assert _receive(statsd) == [
        "delivery_pipeline_runs_total:1|c|#service:visiobook-api,result:success",
        "delivery_pipeline_duration_seconds:1800000|ms|#service:visiobook-api",
        "delivery_deploy_total:1|c|#service:visiobook-api,environment:staging,result:success",
        "delivery_deploy_duration_seconds:95500|ms|#service:visiobook-api,environment:staging",
        "delivery_deploy_total:1|c|#service:visiobook-api,environment:production,result:success",
        "delivery_deploy_duration_seconds:45000|ms|#service:visiobook-api,environment:production",
        "delivery_approval_total:1|c|#service:visiobook-api,result:approved",
        "delivery_lead_time_seconds:7201250|ms|#service:visiobook-api",
        "delivery_approvals_pending:0|g|#service:visiobook-api,environment:production,"
        "dag_id:deliver_visiobook_api,run_id:manual__2026-05-01T10_00_00+00_00",
    ]


def test_statsd_pending_approval_gauge_is_the_runs(statsd: socket.socket) -> None:
    assert metrics.record_approvals_pending(RUN, pending=True)
    assert _receive(statsd) == [
        "delivery_approvals_pending:1|g|#service:visiobook-api,environment:production,"
        "dag_id:deliver_visiobook_api,run_id:manual__2026-05-01T10_00_00+00_00"
    ]


def test_emission_never_raises(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "none")
    assert metrics.record_run(RUN, DEPLOYED)
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "pushgateway")
    monkeypatch.setenv("DELIVERY_METRICS_URL", "http://127.0.0.1:9")  # nothing listens there
    assert metrics.open_run(RUN) is False
    assert metrics.record_run(RUN, DEPLOYED) is False
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "carrier-pigeon")
    assert metrics.record_approvals_pending(RUN, pending=True) is False
    assert "must be none, pushgateway or statsd, got 'carrier-pigeon'" in caplog.text
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "statsd")
    assert metrics.record_run(RUN, RunOutcome(approval="maybe")) is False  # invalid result: logged
    assert "result must be one of approved, rejected, timeout, got 'maybe'" in caplog.text


def _exposition(samples: list[metrics.Sample]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """What the Pushgateway receives, read back with prometheus_client's parser: name -> labels -> value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics._Collector(samples))
    read: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        assert (
            family.documentation
            == metrics.HELP[family.name if family.type != "counter" else f"{family.name}_total"]
        )
        for sample in family.samples:
            read.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return read


def test_a_run_opens_with_every_series_of_the_contract_at_zero() -> None:
    read = _exposition(metrics.run_samples("visiobook-api", RunOutcome()))
    assert set(read) == {
        "delivery_pipeline_runs_total",
        "delivery_pipeline_duration_seconds_bucket",
        "delivery_pipeline_duration_seconds_sum",
        "delivery_pipeline_duration_seconds_count",
        "delivery_deploy_total",
        "delivery_deploy_duration_seconds_bucket",
        "delivery_deploy_duration_seconds_sum",
        "delivery_deploy_duration_seconds_count",
        "delivery_rollback_total",
        "delivery_approval_total",
        "delivery_approvals_pending",
        "delivery_lead_time_seconds_bucket",
        "delivery_lead_time_seconds_sum",
        "delivery_lead_time_seconds_count",
    }
    assert all(value == 0 for series in read.values() for value in series.values())
    assert len(read["delivery_deploy_total"]) == 4  # (staging, production) x (success, failed)
    assert len(read["delivery_approval_total"]) == 3
    assert len(read["delivery_deploy_duration_seconds_bucket"]) == 2 * (len(metrics.DEPLOY_BUCKETS) + 1)


def test_the_end_of_a_run_holds_its_events() -> None:
    read = _exposition(metrics.run_samples("visiobook-api", DEPLOYED))
    api = (("service", "visiobook-api"),)

    def value(name: str, **labels: str) -> float:
        return read[name][tuple(sorted((*api, *labels.items())))]

    assert value("delivery_pipeline_runs_total", result="success") == 1
    assert value("delivery_pipeline_runs_total", result="failed") == 0
    assert value("delivery_deploy_total", environment="production", result="success") == 1
    assert value("delivery_deploy_total", environment="production", result="failed") == 0
    assert value("delivery_deploy_duration_seconds_bucket", environment="production", le="30.0") == 0
    assert value("delivery_deploy_duration_seconds_bucket", environment="production", le="60.0") == 1
    assert value("delivery_deploy_duration_seconds_bucket", environment="production", le="+Inf") == 1
    assert value("delivery_deploy_duration_seconds_sum", environment="staging") == 95.5
    assert value("delivery_approval_total", result="approved") == 1
    assert value("delivery_approvals_pending", environment="production") == 0
    assert value("delivery_lead_time_seconds_bucket", le="3600.0") == 0
    assert value("delivery_lead_time_seconds_bucket", le="14400.0") == 1
    assert value("delivery_rollback_total", environment="production", result="failed") == 0


def test_a_rollback_run_counts_its_environment() -> None:
    read = _exposition(
        metrics.run_samples("web", RunOutcome(rollback="failed", rollback_environment="staging"))
    )
    failed = read["delivery_rollback_total"]
    assert failed[(("environment", "staging"), ("result", "failed"), ("service", "web"))] == 1
    assert failed[(("environment", "production"), ("result", "failed"), ("service", "web"))] == 0
    assert sum(read["delivery_pipeline_runs_total"].values()) == 0  # not a delivery DAG run


def test_the_run_is_read_from_a_task_context() -> None:
    class Ti:
        dag_id = "rollback_visiobook_api"
        run_id = "alertmanager__abc"

    run = Run.of("visiobook-api", {"ti": Ti(), "run_id": "alertmanager__abc"})
    assert run.grouping_key() == {
        "service": "visiobook-api",
        "dag_id": "rollback_visiobook_api",
        "run_id": "alertmanager__abc",
    }
