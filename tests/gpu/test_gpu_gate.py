"""The GPU gate: every missed budget listed with measured and allowed values."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from gpu_harness_support import validate

from delivery.gpu.gate import (
    BUDGET_KEYS,
    METRIC_NAMES,
    GateReport,
    GpuBudgetError,
    GpuGateSkipped,
    enforce,
    evaluate,
    metrics_from_result,
)

ALL_BUDGETS = {
    "max_p95_latency_ms": 10.0,
    "min_throughput_per_s": 100.0,
    "max_memory_mb": 1024.0,
    "max_temperature_c": 80.0,
}


def _bench(batch_size: int, p95: float, throughput: float) -> dict[str, Any]:
    return {
        "batch_size": batch_size,
        "warmup": 5,
        "iterations": 50,
        "timer": "cuda_event",
        "latency_ms": {
            "p50": p95 * 0.8,
            "p95": p95,
            "p99": p95 * 1.1,
            "mean": p95 * 0.85,
            "min": 0.5,
            "max": p95 * 1.2,
        },
        "wall_s": 1.0,
        "throughput_per_s": throughput,
        "memory": {"peak_allocated_mb": 900.0, "peak_reserved_mb": 2048.0},
    }


def make_result(
    *,
    benches: list[dict[str, Any]] | None = None,
    peak_mb: float = 2048.0,
    temperature_max: float | None = 85.0,
) -> dict[str, Any]:
    """A GPU run's result, as the harness writes it (checked against the schema)."""
    benches = benches if benches is not None else [_bench(1, 5.0, 200.0), _bench(8, 12.4, 50.0)]
    result: dict[str, Any] = {
        "schema_version": "1.0",
        "status": "passed",
        "reason": None,
        "errors": [],
        "notes": [],
        "service": "tts",
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:01:00.000Z",
        "duration_s": 60.0,
        "host": {
            "hostname": "gpu-node-1",
            "platform": "Linux",
            "python": "3.11.7",
            "cpu_count": 16,
            "torch": "2.13.0",
        },
        "torch_version": "2.13.0",
        "device_requested": "cuda",
        "gpu_required": True,
        "device": "cuda",
        "gpu_checked": True,
        "gpu": {
            "available": True,
            "source": "nvml+torch",
            "device_count": 1,
            "devices": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "total_memory_mb": 81559.0}],
            "driver_version": "560.35.03",
            "cuda_version": "12.8",
            "cuda_driver_version": "12.8",
            "nvml": {"available": True, "reason": None},
            "reason": None,
        },
        "model": {
            "spec": "tts.model:build",
            "input_spec": None,
            "loaded": True,
            "load_time_s": 2.5,
            "parameters": 1000,
        },
        "tests": None,
        "benchmarks": benches,
        "percentile_method": "linear",
        "memory": {
            "source": "torch.cuda",
            "peak_mb": peak_mb,
            "peak_metric": "max_memory_reserved",
            "peak_allocated_mb": 900.0,
            "peak_reserved_mb": peak_mb,
            "peak_rss_mb": 3000.0,
        },
        "health": {
            "available": temperature_max is not None,
            "source": "nvml" if temperature_max is not None else None,
            "reason": None if temperature_max is not None else "pynvml (nvidia-ml-py) is not installed",
            "interval_ms": 200,
            "samples": 12 if temperature_max is not None else 0,
            "errors": 0,
            "utilization_pct": {"mean": 70.0, "max": 99.0} if temperature_max is not None else None,
            "temperature_c": {"mean": 70.0, "max": temperature_max} if temperature_max is not None else None,
            "memory_used_mb": None,
        },
        "config": {
            "batch_sizes": [b["batch_size"] for b in benches] or [1],
            "warmup": 5,
            "iterations": 50,
            "allow_cpu": False,
            "on_missing_gpu": "fail",
        },
    }
    validate(result)
    return result


def test_every_missed_budget_is_listed() -> None:
    result = make_result()
    report = evaluate(result, ALL_BUDGETS)
    assert report.status == "failed"
    assert not report.passed
    assert report.problems == (
        "p95 latency at batch 8: 12.4 ms > 10.0 ms allowed",
        "throughput at batch 8: 50.0/s < 100.0/s required",
        "peak memory (reserved): 2048.0 MB > 1024.0 MB allowed",
        "max GPU temperature: 85.0 C > 80.0 C allowed",
    )
    latency = report.violations[0]
    assert (latency.budget, latency.measured, latency.allowed) == ("max_p95_latency_ms", 12.4, 10.0)

    with pytest.raises(GpuBudgetError) as excinfo:
        enforce(result, ALL_BUDGETS)
    error = excinfo.value
    assert isinstance(error, ValueError)
    message = str(error)
    assert message.startswith("GPU gate failed: 4 problem(s)")
    for piece in (
        "p95 latency at batch 8: 12.4 ms > 10.0 ms allowed",
        "throughput at batch 8: 50.0/s < 100.0/s required",
        "peak memory (reserved): 2048.0 MB > 1024.0 MB allowed",
        "max GPU temperature: 85.0 C > 80.0 C allowed",
    ):
        assert piece in message
    assert "batch 1" not in message
    assert error.report is not None and len(error.violations) == 4


def test_within_budgets_passes() -> None:
    budgets = {
        "max_p95_latency_ms": 20.0,
        "min_throughput_per_s": 10.0,
        "max_memory_mb": 4096.0,
        "max_temperature_c": 90.0,
    }
    report = enforce(make_result(), budgets)
    assert report.status == "passed"
    assert report.problems == ()
    assert "p95 latency at batch 1" in report.checked
    assert "max GPU temperature" in report.checked
    assert report.summary().startswith("GPU gate passed on cuda")
    assert report.to_dict()["status"] == "passed"


def test_equal_to_the_budget_passes() -> None:
    assert evaluate(make_result(), {"max_p95_latency_ms": 12.4, "min_throughput_per_s": 50.0}).passed


def test_none_budgets_are_not_checked() -> None:
    report = evaluate(make_result(), dict.fromkeys(BUDGET_KEYS))
    assert report.status == "passed"
    assert report.checked == ()
    assert evaluate(make_result(), {}).passed


def test_per_batch_latency_map() -> None:
    # batch 1 must be under 4 ms, batch 8 under 15 ms
    report = evaluate(make_result(), {"max_p95_latency_ms": {"1": 4.0, 8: 15.0}})
    assert report.problems == ("p95 latency at batch 1: 5.0 ms > 4.0 ms allowed",)
    # a default for the sizes not listed
    report = evaluate(make_result(), {"max_p95_latency_ms": {"*": 10.0, 1: 6.0}})
    assert report.problems == ("p95 latency at batch 8: 12.4 ms > 10.0 ms allowed",)
    # a listed size that was not benchmarked is a failure, not a pass
    report = evaluate(make_result(), {"min_throughput_per_s": {32: 1000.0}})
    assert report.problems == ("throughput at batch 32: not measured (1000.0/s required)",)
    with pytest.raises(ValueError, match="not an integer"):
        evaluate(make_result(), {"max_p95_latency_ms": {"large": 4.0}})


def test_unmeasured_metrics_fail() -> None:
    result = make_result(benches=[], temperature_max=None)
    report = evaluate(result, ALL_BUDGETS)
    assert report.status == "failed"
    assert report.problems == (
        "p95 latency (no benchmark): not measured (10.0 ms allowed)",
        "throughput (no benchmark): not measured (100.0/s required)",
        "peak memory (reserved): 2048.0 MB > 1024.0 MB allowed",
        "max GPU temperature: not measured (80.0 C allowed)",
    )
    assert "temperature not sampled: pynvml (nvidia-ml-py) is not installed" in report.notes


def test_temperature_on_a_cpu_run_is_not_applicable() -> None:
    result = make_result(temperature_max=None)
    result.update(device="cpu", gpu_checked=False, gpu_required=False, device_requested="auto")
    result["memory"].update(
        source="getrusage", peak_metric="ru_maxrss", peak_allocated_mb=None, peak_reserved_mb=None
    )
    validate(result)
    report = evaluate(result, {"max_temperature_c": 80.0, "max_memory_mb": 1024.0})
    assert report.problems == ("peak memory (RSS): 2048.0 MB > 1024.0 MB allowed",)
    assert report.notes == ("max_temperature_c not applicable: the run was on the CPU",)


def test_skipped_result_is_reported_skipped_never_passed() -> None:
    result = make_result(benches=[])
    result.update(
        status="skipped",
        reason="no GPU: torch.cuda.is_available() is False",
        device=None,
        gpu_checked=False,
        memory=None,
        health=None,
    )
    result["model"].update(loaded=False, load_time_s=None, parameters=None)
    validate(result)
    report = evaluate(result, ALL_BUDGETS)
    assert report == GateReport(
        status="skipped", reason="no GPU: torch.cuda.is_available() is False", device=None
    )
    assert not report.passed
    assert report.summary() == "GPU gate skipped: no GPU: torch.cuda.is_available() is False"
    with pytest.raises(GpuGateSkipped) as excinfo:
        enforce(result, ALL_BUDGETS)
    assert excinfo.value.report.status == "skipped"
    assert enforce(result, ALL_BUDGETS, on_skipped="return").status == "skipped"
    assert metrics_from_result(result, "tts") == []


def test_failed_harness_fails_the_gate_with_its_errors() -> None:
    result = make_result(benches=[_bench(1, 50.0, 200.0)])
    result.update(status="failed", reason="tests: service tests failed (exit 1): 1 failed")
    result["errors"] = [{"stage": "tests", "message": "service tests failed (exit 1): 1 failed"}]
    validate(result)
    report = evaluate(result, {"max_p95_latency_ms": 10.0})
    assert report.status == "failed"
    assert report.problems == (
        "harness tests: service tests failed (exit 1): 1 failed",
        "p95 latency at batch 1: 50.0 ms > 10.0 ms allowed",
    )
    # with no budget at all a failed harness still fails the gate
    with pytest.raises(GpuBudgetError, match="harness tests"):
        enforce(result, {})


def test_failed_harness_does_not_repeat_unmeasured_metrics() -> None:
    result = make_result(benches=[], temperature_max=None)
    result.update(status="failed", reason="model_load: RuntimeError: boom", memory=None)
    result["errors"] = [{"stage": "model_load", "message": "RuntimeError: boom"}]
    result["model"].update(loaded=False, load_time_s=None, parameters=None)
    validate(result)
    assert evaluate(result, ALL_BUDGETS).problems == ("harness model_load: RuntimeError: boom",)


def test_unknown_budget_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_p99_latency_ms"):
        evaluate(make_result(), {"max_p99_latency_ms": 10.0})


def test_small_values_keep_their_digits() -> None:
    result = make_result(benches=[_bench(1, 0.0123, 200.0)])
    report = evaluate(result, {"max_p95_latency_ms": 0.01})
    assert report.problems == ("p95 latency at batch 1: 0.0123 ms > 0.01 ms allowed",)


def test_metrics_from_result() -> None:
    samples = metrics_from_result(make_result(), "tts")
    assert samples == [
        ("delivery_gpu_latency_p95_ms", {"service": "tts", "device": "cuda", "batch_size": "1"}, 5.0),
        ("delivery_gpu_throughput_per_s", {"service": "tts", "device": "cuda", "batch_size": "1"}, 200.0),
        ("delivery_gpu_latency_p95_ms", {"service": "tts", "device": "cuda", "batch_size": "8"}, 12.4),
        ("delivery_gpu_throughput_per_s", {"service": "tts", "device": "cuda", "batch_size": "8"}, 50.0),
        ("delivery_gpu_memory_peak_mb", {"service": "tts", "device": "cuda", "source": "torch.cuda"}, 2048.0),
        ("delivery_gpu_temperature_max_c", {"service": "tts", "device": "cuda"}, 85.0),
    ]
    assert {name for name, _, _ in samples} == set(METRIC_NAMES)
    # labels are independent copies
    samples[0][1]["service"] = "changed"
    assert samples[1][1]["service"] == "tts"


def test_evaluate_does_not_mutate_its_inputs() -> None:
    result = make_result()
    budgets = {"max_p95_latency_ms": {"1": 4.0}}
    before = (copy.deepcopy(result), copy.deepcopy(budgets))
    evaluate(result, budgets)
    assert (result, budgets) == before
