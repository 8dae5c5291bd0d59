"""A real Pushgateway, and a real Prometheus that scrapes it and evaluates the shipped delivery rules.

Both come from Debian packages (``prometheus-pushgateway``, ``prometheus``), run on free loopback
ports with their data in a temporary folder, and are stopped at the end. A missing binary fails the
test: CI installs them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, free_port, stop_process

DELIVERY_RULES = ROOT / "include" / "monitoring" / "prometheus" / "rules" / "delivery.yml"


def _binary(*names: str, package: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' / '.join(names)} not found: apt-get install -y {package}", pytrace=False)


def _wait_ready(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(300):
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}")
        try:
            if requests.get(f"{url}/-/ready", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} did not start")


@dataclass(frozen=True)
class Gateway:
    url: str

    def series(self) -> list[tuple[str, dict[str, str], float]]:
        """Every ``delivery_*`` sample the gateway serves to Prometheus, read with prometheus_client's parser."""
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        return [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("delivery_")
        ]

    def total(self, name: str, **labels: str) -> float:
        """The sum over every run group of the series ``name`` with ``labels``."""
        return sum(
            value
            for sample, have, value in self.series()
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )


@pytest.fixture(scope="module")
def pushgateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    binary = _binary("prometheus-pushgateway", "pushgateway", package="prometheus-pushgateway")
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [binary, f"--web.listen-address={url.removeprefix('http://')}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(url, process, "the Pushgateway")
        yield Gateway(url)
    finally:
        stop_process(process)


@pytest.fixture
def pushgateway(pushgateway_server: Gateway, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """The module's Pushgateway as the delivery metrics backend of this test."""
    monkeypatch.setenv("DELIVERY_METRICS_BACKEND", "pushgateway")
    monkeypatch.setenv("DELIVERY_METRICS_URL", pushgateway_server.url)
    monkeypatch.delenv("DELIVERY_METRICS_JOB", raising=False)
    monkeypatch.delenv("DELIVERY_METRICS_RETENTION", raising=False)
    return pushgateway_server


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, promql: str, *, timeout: float = 30) -> list[dict[str, Any]]:
        """The query's answer once it is not empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.25)
        pytest.fail(f"no answer to {promql} after {timeout}s")


@pytest.fixture(scope="module")
def prometheus(pushgateway_server: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping the Pushgateway every second (``honor_labels``), with the shipped rules."""
    binary = _binary("prometheus", package="prometheus")
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    shutil.copy(DELIVERY_RULES, workdir / "delivery.yml")
    (workdir / "prometheus.yml").write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "rule_files: [delivery.yml]\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['{pushgateway_server.url.removeprefix('http://')}']}}]\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    try:
        _wait_ready(url, process, "Prometheus")
        yield Prometheus(url)
    finally:
        stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)
