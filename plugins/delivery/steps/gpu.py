"""GPU steps: the budget gate over the GPU benchmark's result (seed flow 4)."""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from delivery.gpu.gate import GpuGateSkipped, enforce
from delivery.pipeline import task_ids as ids
from delivery.runtime import PipelineError, service

log = logging.getLogger(__name__)


def benchmark_result(value: Any) -> dict[str, Any]:
    """The harness result as a mapping, whichever runner produced it.

    A pod writes ``/airflow/xcom/return.json`` (a mapping); the local shell runner's XCom is the
    last line it printed, the same JSON as a string.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise PipelineError(
                f"{ids.GPU_BENCHMARK} returned {value[:200]!r}, which is not the harness's JSON result"
            ) from exc
    if not isinstance(value, dict) or not value:
        raise PipelineError(
            f"{ids.GPU_BENCHMARK} returned no result ({type(value).__name__}); its pod must write "
            "/airflow/xcom/return.json, and a local stage must print the result as its last line"
        )
    return value


def gpu_gate(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Compare the GPU benchmark with the service's budgets; every missed budget is listed."""
    svc = service(service_name)
    assert svc.gpu is not None
    result = benchmark_result(context["ti"].xcom_pull(task_ids=ids.GPU_BENCHMARK))
    try:
        report = enforce(result, svc.gpu.budgets.model_dump())
    except GpuGateSkipped as exc:
        if svc.gpu.on_missing_gpu == "fail":
            raise PipelineError(f"{svc.name}: GPU is mandatory but the benchmark was skipped: {exc}") from exc
        raise AirflowSkipException(f"skipped: {exc}") from exc
    log.info("%s", report.summary())
    return {
        "status": report.status,
        "device": report.device,
        "checked": list(report.checked),
        "result": result,
    }
