"""The harness on a real CUDA GPU. Skipped only where torch sees no GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from gpu_harness_support import TINY_MODEL, run_harness, validate

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
    ),
]


def test_harness_on_cuda(tmp_path: Path) -> None:
    run = run_harness(
        "--model",
        TINY_MODEL,
        "--device",
        "cuda",
        "--require-gpu",
        "--batch-sizes",
        "1,8,32",
        "--warmup",
        "5",
        "--iterations",
        "30",
        "--health-interval-ms",
        "20",
        output=tmp_path / "result.json",
    )
    assert run.returncode == 0, run.stderr
    result = run.result
    validate(result)
    assert result["status"] == "passed"
    assert result["device"] == "cuda"
    assert result["gpu_checked"] is True
    gpu = result["gpu"]
    assert gpu["available"] is True
    assert gpu["device_count"] >= 1
    assert gpu["devices"][0]["name"]
    assert gpu["devices"][0]["total_memory_mb"] > 0
    assert gpu["cuda_version"] == torch.version.cuda
    for bench in result["benchmarks"]:
        lat = bench["latency_ms"]
        assert bench["timer"] == "cuda_event"
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        assert bench["throughput_per_s"] > 0
    memory = result["memory"]
    assert memory["source"] == "torch.cuda"
    assert memory["peak_mb"] == memory["peak_reserved_mb"] >= memory["peak_allocated_mb"] > 0
    health = result["health"]
    if health["available"]:
        assert health["source"] == "nvml"
        assert health["samples"] >= 2
        assert health["temperature_c"]["max"] > 0
    else:
        assert health["reason"]
