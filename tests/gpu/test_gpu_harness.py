"""The GPU harness, run for real on the CPU with a tiny model.

The subprocess runs are what the GPU stage's container does
(``python -m delivery.gpu.harness ...``); the device policy matrix and the
failure paths run in-process (``main(argv)``) with the GPU probe replaced, so
they mean the same on machines with and without a GPU.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from gpu_harness_support import (
    REPO,
    TINY_MODEL,
    TINY_TESTS,
    harness_env,
    no_gpu_probe,
    run_harness,
    validate,
)

from delivery.gpu import harness
from delivery.gpu.gate import GpuBudgetError, GpuGateSkipped, enforce, evaluate, metrics_from_result

BATCH_SIZES = [1, 8, 32]
# A CPU run everywhere, also on a machine with a GPU.
CPU_ONLY_ENV = {"CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    output = tmp_path_factory.mktemp("cpu-run") / "result.json"
    return run_harness(
        "--model",
        TINY_MODEL,
        "--device",
        "auto",
        "--no-require-gpu",
        "--allow-cpu",
        "--batch-sizes",
        ",".join(map(str, BATCH_SIZES)),
        "--warmup",
        "3",
        "--iterations",
        "20",
        "--service",
        "tiny",
        "--tests",
        TINY_TESTS,
        "--tests-cwd",
        str(REPO),
        output=output,
        env=harness_env(**CPU_ONLY_ENV),
    )


# --------------------------------------------------------------------------- real CPU run


def test_cpu_run_passes_and_validates(cpu_run: Any) -> None:
    assert cpu_run.returncode == 0, cpu_run.stderr
    assert cpu_run.stdout == ""  # the result went to --output, logs to stderr
    result = cpu_run.result
    validate(result)
    assert result["status"] == "passed"
    assert result["reason"] is None
    assert result["errors"] == []
    assert result["device"] == "cpu"
    assert result["gpu_checked"] is False
    assert result["gpu_required"] is False
    assert result["gpu"]["available"] is False
    assert result["service"] == "tiny"


def test_cpu_run_metadata(cpu_run: Any) -> None:
    result = cpu_run.result
    assert result["schema_version"] == harness.SCHEMA_VERSION == "1.0"
    started = datetime.fromisoformat(result["started_at"])
    finished = datetime.fromisoformat(result["finished_at"])
    assert started <= finished
    assert result["duration_s"] > 0
    assert result["torch_version"] == metadata.version("torch")
    assert result["host"]["hostname"]
    assert result["host"]["torch"] == result["torch_version"]
    assert result["percentile_method"] == "linear"


def test_cpu_run_model_loading(cpu_run: Any) -> None:
    model = cpu_run.result["model"]
    assert model["loaded"] is True
    assert model["spec"] == TINY_MODEL
    assert model["load_time_s"] >= 0
    # Linear(16, 32) + Linear(32, 4)
    assert model["parameters"] == 16 * 32 + 32 + 32 * 4 + 4


def test_cpu_run_benchmarks(cpu_run: Any) -> None:
    benchmarks = cpu_run.result["benchmarks"]
    assert [b["batch_size"] for b in benchmarks] == BATCH_SIZES
    for bench in benchmarks:
        lat = bench["latency_ms"]
        assert 0 <= lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert bench["throughput_per_s"] > 0
        assert bench["timer"] == "perf_counter"
        assert (bench["warmup"], bench["iterations"]) == (3, 20)
        assert bench["memory"]["peak_rss_mb"] > 0


def test_cpu_run_memory_and_health(cpu_run: Any) -> None:
    result = cpu_run.result
    memory = result["memory"]
    assert memory["source"] == "getrusage"
    assert memory["peak_metric"] == "ru_maxrss"
    assert memory["peak_mb"] == memory["peak_rss_mb"] > 0
    assert memory["peak_reserved_mb"] is None
    health = result["health"]
    assert health["available"] is False
    assert "CPU" in health["reason"]
    assert health["temperature_c"] is None


def test_cpu_run_ran_the_service_tests(cpu_run: Any) -> None:
    tests = cpu_run.result["tests"]
    assert tests["command"] == TINY_TESTS
    assert tests["exit_code"] == 0
    assert tests["passed"] is True
    assert "3 passed" in tests["summary"]


def test_gate_on_the_real_cpu_result(cpu_run: Any) -> None:
    result = cpu_run.result
    generous = {
        "max_p95_latency_ms": 10_000.0,
        "min_throughput_per_s": 0.001,
        "max_memory_mb": 1_000_000.0,
        "max_temperature_c": 90.0,
    }
    report = enforce(result, generous)
    assert report.status == "passed"
    assert report.notes == ("max_temperature_c not applicable: the run was on the CPU",)

    impossible = {"max_p95_latency_ms": 1e-9, "min_throughput_per_s": 1e12, "max_memory_mb": 1.0}
    with pytest.raises(GpuBudgetError) as excinfo:
        enforce(result, impossible)
    message = str(excinfo.value)
    for bench in result["benchmarks"]:
        assert f"p95 latency at batch {bench['batch_size']}: " in message
        assert f"throughput at batch {bench['batch_size']}: " in message
    assert "peak memory (RSS): " in message
    assert len(excinfo.value.violations) == 2 * len(BATCH_SIZES) + 1

    names = {name for name, _, _ in metrics_from_result(result, "tiny")}
    assert names == {
        "delivery_gpu_latency_p95_ms",
        "delivery_gpu_throughput_per_s",
        "delivery_gpu_memory_peak_mb",
    }


# ----------------------------------------------------------------- XCom, demo model, real missing GPU


def test_xcom_with_the_demo_model(tmp_path: Path) -> None:
    xcom_file = tmp_path / "airflow" / "xcom" / "return.json"
    run = run_harness(
        "--model",
        "delivery.gpu.demo_model:build",
        "--device",
        "cpu",
        "--batch-sizes",
        "2",
        "--warmup",
        "1",
        "--iterations",
        "3",
        "--xcom",
        output=None,
        env=harness_env(DELIVERY_XCOM_PATH=str(xcom_file)),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    result = json.loads(xcom_file.read_text(encoding="utf-8"))
    validate(result)
    assert result["status"] == "passed"
    assert result["model"]["spec"] == "delivery.gpu.demo_model:build"
    assert result["model"]["parameters"] > 10_000
    assert result["benchmarks"][0]["batch_size"] == 2


def test_xcom_path_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(harness.XCOM_PATH_ENV, raising=False)
    assert harness.xcom_path() == Path("/airflow/xcom/return.json")
    monkeypatch.setenv(harness.XCOM_PATH_ENV, "/tmp/x/return.json")
    assert harness.xcom_path() == Path("/tmp/x/return.json")


def test_required_gpu_missing_is_skipped_for_real(tmp_path: Path) -> None:
    """No GPU visible (CUDA_VISIBLE_DEVICES=''), GPU required, --on-missing-gpu skip."""
    run = run_harness(
        "--model",
        TINY_MODEL,
        "--device",
        "cuda",
        "--require-gpu",
        "--on-missing-gpu",
        "skip",
        "--batch-sizes",
        "1,8,32",
        output=tmp_path / "result.json",
        env=harness_env(**CPU_ONLY_ENV),
    )
    assert run.returncode == 0, run.stderr
    result = run.result
    validate(result)
    assert result["status"] == "skipped"
    assert result["reason"].startswith("no GPU")
    assert result["gpu_checked"] is False
    assert result["benchmarks"] == []
    assert result["model"]["loaded"] is False

    report = evaluate(result, {"max_p95_latency_ms": 10.0})
    assert report.status == "skipped"
    assert not report.passed
    assert report.reason is not None and report.reason.startswith("no GPU")
    with pytest.raises(GpuGateSkipped):
        enforce(result, {"max_p95_latency_ms": 10.0})
    assert enforce(result, {}, on_skipped="return").status == "skipped"


def test_help_runs_without_torch_import() -> None:
    run = run_harness("--help", output=None, parse=False)
    assert run.returncode == 0
    assert "--require-gpu" in run.stdout
    assert "--on-missing-gpu" in run.stdout


def test_harness_does_not_import_airflow() -> None:
    import ast

    gpu = REPO / "plugins" / "delivery" / "gpu"
    for path in [*sorted((gpu / "harness").glob("*.py")), gpu / "demo_model.py"]:
        name = str(path.relative_to(gpu))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        assert "airflow" not in imported, name
        assert imported & {"delivery"} == set(), name  # stand-alone: only its own modules, relatively


# --------------------------------------------------------------------------- in-process: device policy


def _main(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    output = tmp_path / "result.json"
    code = harness.main([*args, "--output", str(output), "--quiet"])
    result = json.loads(output.read_text(encoding="utf-8"))
    validate(result)
    return code, result


FAST = ("--model", TINY_MODEL, "--batch-sizes", "1,4", "--warmup", "1", "--iterations", "3")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--require-gpu"], ("failed", 1, False)),
        (["--require-gpu", "--on-missing-gpu", "skip"], ("skipped", 0, False)),
        (["--device", "cuda"], ("failed", 1, False)),
        (["--device", "cuda", "--on-missing-gpu", "skip"], ("skipped", 0, False)),
        ([], ("failed", 1, False)),  # auto without --allow-cpu: no silent pass
        (["--on-missing-gpu", "skip"], ("skipped", 0, False)),
        (["--require-gpu", "--allow-cpu"], ("failed", 1, True)),
        (["--require-gpu", "--allow-cpu", "--on-missing-gpu", "skip"], ("skipped", 0, True)),
        (["--device", "cuda", "--allow-cpu", "--on-missing-gpu", "skip"], ("skipped", 0, True)),
        (["--allow-cpu"], ("passed", 0, True)),
        (
            # later flags win: how a DAG turns the catalog's GPU command into a CPU run that can pass
            ["--device", "cuda", "--require-gpu", "--allow-cpu", "--device", "auto", "--no-require-gpu"],
            ("passed", 0, True),
        ),
        (["--device", "cpu"], ("passed", 0, True)),
    ],
)
def test_device_policy_without_gpu(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    expected: tuple[str, int, bool],
) -> None:
    status, code, ran_on_cpu = expected
    monkeypatch.setattr(harness.probe, "probe_gpu", no_gpu_probe)
    exit_code, result = _main(tmp_path, *FAST, *flags)
    assert (result["status"], exit_code) == (status, code)
    assert result["gpu_checked"] is False
    if result["gpu_required"]:
        assert result["status"] != "passed"
    if status != "passed":
        assert result["reason"].startswith("no GPU: simulated")
    if status == "failed":
        assert result["errors"][0]["stage"] == "gpu"
    if ran_on_cpu:
        assert result["device"] == "cpu"
        assert [b["batch_size"] for b in result["benchmarks"]] == [1, 4]
    else:
        assert result["device"] is None
        assert result["benchmarks"] == []
        assert result["model"]["loaded"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["--model", TINY_MODEL, "--device", "cpu", "--require-gpu"],
        ["--model", TINY_MODEL, "--batch-sizes", "0"],
        ["--model", TINY_MODEL, "--iterations", "0"],
        ["--model", TINY_MODEL, "--warmup", "-1"],
        ["--model", TINY_MODEL, "--device", "tpu"],
        ["--device", "cpu"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        harness.main(args)
    assert excinfo.value.code == 2


# --------------------------------------------------------------------------- in-process: hard failures


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("gpu_tiny_model:broken_build", "RuntimeError: weights file is corrupt"),
        ("gpu_tiny_model:not_a_module", "not a torch.nn.Module"),
        ("gpu_tiny_model:no_such_factory", "AttributeError"),
        ("no_such_module_xyz:build", "ModuleNotFoundError"),
    ],
)
def test_model_load_errors_fail(tmp_path: Path, model: str, message: str) -> None:
    code, result = _main(tmp_path, "--model", model, "--device", "cpu")
    assert code == 1
    assert result["status"] == "failed"
    assert result["errors"][0]["stage"] == "model_load"
    assert message in result["errors"][0]["message"]
    assert message in result["reason"]
    assert result["model"]["loaded"] is False


def test_missing_example_input_fails(tmp_path: Path) -> None:
    # torch.nn has no example_input, nor has the Identity module
    code, result = _main(tmp_path, "--model", "torch.nn:Identity", "--device", "cpu")
    assert code == 1
    assert "no example input" in result["errors"][0]["message"]


def test_input_hook_with_keyword_inputs(tmp_path: Path) -> None:
    code, result = _main(
        tmp_path,
        "--model",
        "gpu_tiny_model:build_keyword",
        "--input",
        "gpu_tiny_model:keyword_input",
        "--device",
        "cpu",
        "--batch-sizes",
        "3",
        "--iterations",
        "2",
    )
    assert (code, result["status"]) == (0, "passed")
    assert result["model"]["input_spec"] == "gpu_tiny_model:keyword_input"


def test_failing_service_tests_fail_the_run(tmp_path: Path) -> None:
    failing = f"{sys.executable} -c \"import sys; print('1 failed, 2 passed in 0.01s'); sys.exit(1)\""
    code, result = _main(tmp_path, *FAST, "--device", "cpu", "--tests", failing)
    assert code == 1
    assert result["status"] == "failed"
    assert result["tests"]["exit_code"] == 1
    assert result["tests"]["summary"] == "1 failed, 2 passed in 0.01s"
    assert result["errors"][0]["stage"] == "tests"
    # the benchmarks still ran, for the record
    assert len(result["benchmarks"]) == 2


def test_service_tests_timeout_and_missing_command(tmp_path: Path) -> None:
    slow = f'{sys.executable} -c "import time; time.sleep(30)"'
    code, result = _main(tmp_path, *FAST, "--device", "cpu", "--tests", slow, "--tests-timeout", "0.5")
    assert code == 1
    assert result["tests"]["timed_out"] is True
    assert result["tests"]["exit_code"] is None

    code, result = _main(tmp_path, *FAST, "--device", "cpu", "--tests", "no-such-test-runner-xyz -q")
    assert code == 1
    assert result["tests"]["exit_code"] == 127


def test_stdout_when_no_output_given(capsys: pytest.CaptureFixture[str]) -> None:
    code = harness.main([*FAST, "--device", "cpu", "--quiet"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    validate(result)
    assert result["status"] == "passed"


def test_hard_failure_on_the_cpu_fallback_wins_over_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.probe, "probe_gpu", no_gpu_probe)
    code, result = _main(
        tmp_path,
        "--model",
        "gpu_tiny_model:broken_build",
        "--require-gpu",
        "--allow-cpu",
        "--on-missing-gpu",
        "skip",
    )
    assert (code, result["status"]) == (1, "failed")
    assert result["reason"] == "model_load: RuntimeError: weights file is corrupt"
