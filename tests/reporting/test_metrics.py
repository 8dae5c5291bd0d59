"""Delivery metrics on the wire: StatsD over a real UDP socket, Pushgateway over HTTP (a capture
server for the exact bytes, and the real Pushgateway when it is installed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from delivery.reporting import metrics


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


def _receive(sock: socket.socket, count: int) -> list[str]:
    return [sock.recvfrom(65535)[0].decode() for _ in range(count)]


def test_statsd_deploy_wire_format(statsd: socket.socket) -> None:
    assert metrics.record_deploy(
        service="visiobook-api", environment="production", result="success", duration_s=93.5
    )
    assert _receive(statsd, 3) == [
        "delivery_deploy_total:1|c|#service:visiobook-api,environment:production,result:success",
        "delivery_deploy_total:0|c|#service:visiobook-api,environment:production,result:failed",
        "delivery_deploy_duration_seconds:93500|ms|#service:visiobook-api,environment:production",
    ]


def test_statsd_rollback_approval_lead_time_and_runs(statsd: socket.socket) -> None:
    commit = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
    assert metrics.record_rollback(service="visiobook-web", result="failed")
    assert metrics.record_approval(service="visiobook-web", result="timeout")
    assert metrics.record_approvals_pending(service="visiobook-web", pending=2)
    assert metrics.record_lead_time(
        service="visiobook-web", commit_time=commit, deployed_at=commit + timedelta(hours=2, seconds=1.25)
    )
    assert metrics.record_pipeline_run(service="visiobook-web", result="failed", duration_s=600)
    assert _receive(statsd, 10) == [
        "delivery_rollback_total:0|c|#service:visiobook-web,environment:production,result:success",
        "delivery_rollback_total:1|c|#service:visiobook-web,environment:production,result:failed",
        "delivery_approval_total:0|c|#service:visiobook-web,result:approved",
        "delivery_approval_total:0|c|#service:visiobook-web,result:rejected",
        "delivery_approval_total:1|c|#service:visiobook-web,result:timeout",
        "delivery_approvals_pending:2|g|#service:visiobook-web,environment:production",
        "delivery_lead_time_seconds:7201250|ms|#service:visiobook-web",
        "delivery_pipeline_runs_total:0|c|#service:visiobook-web,result:success",
        "delivery_pipeline_runs_total:1|c|#service:visiobook-web,result:failed",
        "delivery_pipeline_duration_seconds:600000|ms|#service:visiobook-web",
    ]


def test_emission_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "none")
    assert metrics.record_deploy(service="x", environment="staging", result="success")
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "pushgateway")
    monkeypatch.setenv("DELIVERY_METRICS_URL", "http://127.0.0.1:9")  # nothing listens there
    assert metrics.record_deploy(service="x", environment="staging", result="success") is False
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "carrier-pigeon")
    assert metrics.record_approval(service="x", result="approved") is False
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "statsd")
    assert metrics.record_approval(service="x", result="maybe") is False  # invalid result: logged


class _Capture:
    """A Pushgateway-shaped HTTP server: serves ``exposition`` on /metrics, records pushes."""

    def __init__(self) -> None:
        self.exposition = ""
        self.pushes: list[tuple[str, str, dict[str, str], str]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = capture.exposition.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                capture.pushes.append(("POST", self.path, dict(self.headers), raw))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Capture]:
    server = _Capture()
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "pushgateway")
    monkeypatch.setenv("DELIVERY_METRICS_URL", server.url)
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def test_pushgateway_first_push_wire_format(capture: _Capture) -> None:
    assert metrics.record_deploy(
        service="visiobook-api", environment="production", result="failed", duration_s=45
    )
    [(method, path, headers, body)] = capture.pushes
    assert (method, path) == ("POST", "/metrics/job/delivery/service/visiobook-api")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    labels = 'service="visiobook-api",environment="production"'
    buckets = [
        f'delivery_deploy_duration_seconds_bucket{{{labels},le="{le}"}} {n}'
        for le, n in (
            ("30", 0),
            ("60", 1),
            ("120", 1),
            ("300", 1),
            ("600", 1),
            ("1200", 1),
            ("1800", 1),
            ("3600", 1),
        )
    ]
    assert body.splitlines() == [
        "# HELP delivery_deploy_duration_seconds Duration of a deploy, start to healthy (or failure).",
        "# TYPE delivery_deploy_duration_seconds histogram",
        *buckets,
        f'delivery_deploy_duration_seconds_bucket{{{labels},le="+Inf"}} 1',
        f"delivery_deploy_duration_seconds_sum{{{labels}}} 45",
        f"delivery_deploy_duration_seconds_count{{{labels}}} 1",
        "# HELP delivery_deploy_total Finished deploys to an environment.",
        "# TYPE delivery_deploy_total counter",
        f'delivery_deploy_total{{{labels},result="failed"}} 1',
        f'delivery_deploy_total{{{labels},result="success"}} 0',
    ]


def test_pushgateway_counters_stay_cumulative(capture: _Capture) -> None:
    # What the gateway holds after earlier pushes (its own label order, grouping labels added).
    capture.exposition = "\n".join(
        [
            "# TYPE delivery_approval_total counter",
            'delivery_approval_total{instance="",job="delivery",result="approved",service="visiobook-api"} 4',
            'delivery_approval_total{instance="",job="delivery",result="rejected",service="visiobook-api"} 1',
            'delivery_approval_total{instance="",job="delivery",result="timeout",service="visiobook-api"} 0',
            'delivery_approval_total{instance="",job="delivery",result="approved",service="visiobook-web"} 9',
            'push_time_seconds{instance="",job="delivery",service="visiobook-api"} 1.7e+09',
        ]
    )
    assert metrics.record_approval(service="visiobook-api", result="approved")
    [(_, path, _, body)] = capture.pushes
    assert path == "/metrics/job/delivery/service/visiobook-api"
    assert body == (
        "# HELP delivery_approval_total Answered (or timed out) approval requests.\n"
        "# TYPE delivery_approval_total counter\n"
        'delivery_approval_total{service="visiobook-api",result="approved"} 5\n'
        'delivery_approval_total{service="visiobook-api",result="rejected"} 1\n'
        'delivery_approval_total{service="visiobook-api",result="timeout"} 0\n'
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pushgateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    assert binary is not None, "install the Pushgateway (Debian: apt-get install prometheus-pushgateway)"
    port = _free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{url}/-/ready", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("the Pushgateway did not start")
        monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "pushgateway")
        monkeypatch.setenv("DELIVERY_METRICS_URL", url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_real_pushgateway_accumulates(pushgateway: str) -> None:
    assert metrics.record_deploy(
        service="visiobook-api", environment="production", result="success", duration_s=50
    )
    assert metrics.record_deploy(
        service="visiobook-api", environment="production", result="success", duration_s=700
    )
    assert metrics.record_deploy(
        service="visiobook-api", environment="staging", result="failed", duration_s=20
    )
    assert metrics.record_deploy(
        service="visiobook-web", environment="production", result="success", duration_s=10
    )
    text = requests.get(f"{pushgateway}/metrics", timeout=5).text
    values = {
        (name, tuple(sorted(labels.items()))): value
        for name, labels, value in metrics.parse_exposition(text)
        if name.startswith("delivery_")
    }

    def value(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"instance": "", "job": "delivery", **labels}.items())))
        return values[key]

    api_prod = {"service": "visiobook-api", "environment": "production"}
    assert value("delivery_deploy_total", **api_prod, result="success") == 2
    assert value("delivery_deploy_total", **api_prod, result="failed") == 0
    assert (
        value("delivery_deploy_total", service="visiobook-api", environment="staging", result="failed") == 1
    )
    assert (
        value("delivery_deploy_total", service="visiobook-web", environment="production", result="success")
        == 1
    )
    assert value("delivery_deploy_duration_seconds_count", **api_prod) == 2
    assert value("delivery_deploy_duration_seconds_sum", **api_prod) == 750
    assert value("delivery_deploy_duration_seconds_bucket", **api_prod, le="60") == 1
    assert value("delivery_deploy_duration_seconds_bucket", **api_prod, le="1200") == 2
    assert value("delivery_deploy_duration_seconds_bucket", **api_prod, le="+Inf") == 2
