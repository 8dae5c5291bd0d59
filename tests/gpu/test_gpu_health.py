"""``GpuServiceHealthOperator`` against the real demo inference service (a subprocess on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from airflow.sdk.exceptions import AirflowSkipException

from delivery.devenv.demo import assemble_service
from delivery.gpu.health import GpuServiceCheckFailed, GpuServiceHealthOperator
from tests.helpers import ROOT

REPO = ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_service(**extra_env: str) -> Iterator[str]:
    app_dir = Path(tempfile.mkdtemp(prefix="inference-"))
    assemble_service("visiobook-inference", app_dir)  # the seeded repo: the service and the shared tooling
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DEMO_"))}
    env.update(HOST="127.0.0.1", PORT=str(port), INFERENCE_DEVICE="cpu", APP_COMMIT="abc1234", **extra_env)
    proc = subprocess.Popen(
        [sys.executable, str(app_dir / "app.py")],
        cwd=app_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the inference service exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            try:
                requests.get(f"{url}/health", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    yield from _start_service()


@pytest.fixture(scope="module")
def broken_service_url() -> Iterator[str]:
    yield from _start_service(DEMO_FAIL_HEALTH="1")


def context() -> dict[str, Any]:
    return {"run_id": "manual__health", "params": {}}


def make(url: str, **kwargs: Any) -> GpuServiceHealthOperator:
    kwargs.setdefault("require_gpu", False)
    return GpuServiceHealthOperator(task_id="deploy_staging.gpu_health", url=url, **kwargs)


def test_cpu_service_is_skipped_when_a_gpu_is_required_and_the_catalog_says_skip(service_url: str) -> None:
    op = make(service_url, require_gpu=True, on_missing_gpu="skip", latency_budget_ms=1000.0)
    with pytest.raises(AirflowSkipException, match="no GPU") as info:
        op.execute(context())  # type: ignore[arg-type]
    assert str(info.value).startswith("skipped: no GPU")
    assert "'cpu'" in str(info.value)


def test_cpu_service_fails_when_a_gpu_is_required_and_the_catalog_says_fail(service_url: str) -> None:
    op = make(service_url, require_gpu=True, on_missing_gpu="fail")
    with pytest.raises(GpuServiceCheckFailed, match="no GPU"):
        op.execute(context())  # type: ignore[arg-type]


def test_passes_within_a_generous_budget(service_url: str) -> None:
    op = make(service_url, latency_budget_ms=5000.0, samples=20)
    result = op.execute(context())  # type: ignore[arg-type]
    assert result["status"] == "passed"
    assert result["device"] == "cpu"
    assert result["commit"] == "abc1234"
    assert result["samples"] == 20
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 5000.0
    assert result["latency_budget_ms"] == 5000.0


def test_fails_over_a_tiny_budget_listing_measured_and_allowed(service_url: str) -> None:
    op = make(service_url, latency_budget_ms=0.001, samples=5)
    with pytest.raises(GpuServiceCheckFailed) as info:
        op.execute(context())  # type: ignore[arg-type]
    message = str(info.value)
    assert "p95 latency of POST" in message and "/predict over 5 requests" in message
    measured = float(message.split("measured ", 1)[1].split(" ms", 1)[0])
    assert measured > 0.001
    assert "allowed 0.001 ms" in message


def test_custom_predict_body_and_templated_url(service_url: str) -> None:
    op = make("{{ params.base }}", predict_body={"texts": ["a dragon", "a detective"]}, samples=3)
    op.render_template_fields({"params": {"base": service_url}})  # type: ignore[arg-type]
    assert op.url == service_url
    assert op.execute(context())["samples"] == 3  # type: ignore[arg-type]


def test_bad_predict_body_fails_with_the_services_answer(service_url: str) -> None:
    op = make(service_url, predict_body={"prompt": "wrong key"}, samples=1)
    with pytest.raises(GpuServiceCheckFailed, match="answered 400"):
        op.execute(context())  # type: ignore[arg-type]


def test_unhealthy_release_fails_before_any_prediction(broken_service_url: str) -> None:
    op = make(broken_service_url, require_gpu=True, on_missing_gpu="skip")
    with pytest.raises(GpuServiceCheckFailed, match="answered 503: DEMO_FAIL_HEALTH is set"):
        op.execute(context())  # type: ignore[arg-type]


def test_unreachable_service_fails() -> None:
    op = make(f"http://127.0.0.1:{_free_port()}", timeout=2.0)
    with pytest.raises(GpuServiceCheckFailed, match=r"GET http://127\.0\.0\.1:\d+/health failed"):
        op.execute(context())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "inference.local"},
        {"on_missing_gpu": "maybe"},
        {"samples": 0},
        {"latency_budget_ms": 0},
    ],
)
def test_arguments_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(kwargs.pop("url", "http://127.0.0.1:1"), **kwargs)
