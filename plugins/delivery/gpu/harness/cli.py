"""The harness's command line and the order of its checks (see the package doc)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import probe
from .benchmark import (
    PERCENTILE_METHOD,
    cuda_peaks_mb,
    resolve_input_fn,
    rss_peak_mb,
    run_benchmark,
    run_service_tests,
)
from .common import (
    DEFAULT_XCOM_PATH,
    EXIT_FAILED,
    EXIT_OK,
    SCHEMA_VERSION,
    XCOM_PATH_ENV,
    load_object,
    log,
    now_iso,
    parse_batch_sizes,
    rounded,
    tail,
    xcom_path,
)
from .sampler import HealthSampler, nvml_reader, unavailable_health

if TYPE_CHECKING:
    from types import ModuleType

    import torch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m delivery.gpu.harness",
        description=(
            "GPU stage checks for an AI service: GPU availability, model loading, inference tests, "
            "latency/throughput benchmarks, memory peaks and GPU health. Writes one JSON result."
        ),
        epilog=(
            "Device policy: a run requires a GPU with --require-gpu or --device cuda. Without a usable GPU, "
            "--on-missing-gpu decides the status of such a run (fail: 'failed', exit 1; skip: 'skipped', "
            "exit 0), never 'passed'; --allow-cpu only adds a CPU run of the checks. "
            "'--device auto --no-require-gpu --allow-cpu' or '--device cpu' make CPU runs that can pass. "
            f"Exit status: 0 passed/skipped, 1 failed, 2 usage error. --xcom writes ${XCOM_PATH_ENV} "
            f"or {DEFAULT_XCOM_PATH}."
        ),
    )
    parser.add_argument("--model", required=True, help="module:factory; factory() returns a torch.nn.Module")
    parser.add_argument(
        "--input",
        dest="input_spec",
        default=None,
        help="module:fn; fn(batch_size) returns the model input (tensor, tuple, or dict of kwargs). "
        "Default: example_input on the model, else in the factory's module",
    )
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--require-gpu",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the run needs a GPU (implied by --device cuda)",
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="without a GPU, still run the checks on the CPU"
    )
    parser.add_argument(
        "--on-missing-gpu",
        choices=["fail", "skip"],
        default="fail",
        help="status of a GPU-needing run without GPU (default: fail)",
    )
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma separated (default: 1,8,32)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per batch size (default: 5)")
    parser.add_argument("--iterations", type=int, default=50, help="timed calls per batch size (default: 50)")
    parser.add_argument(
        "--tests", default=None, help='service test command, e.g. "pytest -q tests/inference" (no shell)'
    )
    parser.add_argument("--tests-cwd", default=None, help="working directory of --tests")
    parser.add_argument("--tests-timeout", type=float, default=1800.0, help="seconds (default: 1800)")
    parser.add_argument("--health-interval-ms", type=int, default=200, help="NVML sampling period")
    parser.add_argument("--service", default=None, help="service name, copied into the result")
    parser.add_argument(
        "--xcom", action="store_true", help=f"write the result to ${XCOM_PATH_ENV} or the XCom file"
    )
    parser.add_argument("--output", default=None, help="write the result to FILE")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    return parser


def _validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    try:
        batch_sizes = parse_batch_sizes(args.batch_sizes)
    except ValueError as exc:
        parser.error(str(exc))
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")
    if args.health_interval_ms < 1:
        parser.error("--health-interval-ms must be >= 1")
    if args.device == "cpu" and args.require_gpu:
        parser.error("--device cpu contradicts --require-gpu")
    return batch_sizes


def _host(torch_version: str | None) -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count() or 0,
        "pid": os.getpid(),
        "torch": torch_version,
    }


class _Run:
    """Collects the result document of one harness run."""

    def __init__(self, args: argparse.Namespace, batch_sizes: list[int]) -> None:
        self.args = args
        self.batch_sizes = batch_sizes
        self.started = time.perf_counter()
        self.gpu_required = bool(args.require_gpu or args.device == "cuda")
        # How a run without the GPU it needed ends (--on-missing-gpu), once the checks are done.
        self.missing_status: str | None = None
        self.missing_reason: str | None = None
        self.result: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": "failed",
            "reason": None,
            "errors": [],
            "notes": [],
            "service": args.service,
            "started_at": now_iso(),
            "finished_at": None,
            "duration_s": None,
            "host": _host(None),
            "torch_version": None,
            "device_requested": args.device,
            "gpu_required": self.gpu_required,
            "device": None,
            "gpu_checked": False,
            "gpu": None,
            "model": {
                "spec": args.model,
                "input_spec": args.input_spec,
                "loaded": False,
                "load_time_s": None,
                "parameters": None,
            },
            "tests": None,
            "benchmarks": [],
            "percentile_method": PERCENTILE_METHOD,
            "memory": None,
            "health": None,
            "config": {
                "batch_sizes": batch_sizes,
                "warmup": args.warmup,
                "iterations": args.iterations,
                "allow_cpu": args.allow_cpu,
                "on_missing_gpu": args.on_missing_gpu,
                "health_interval_ms": args.health_interval_ms,
                "tests": args.tests,
            },
        }

    def error(self, stage: str, message: str, *, detail: str | None = None) -> None:
        log.error("%s: %s", stage, message)
        entry: dict[str, Any] = {"stage": stage, "message": message}
        if detail:
            entry["detail"] = tail(detail)
        self.result["errors"].append(entry)

    def note(self, message: str) -> None:
        log.warning("%s", message)
        self.result["notes"].append(message)

    def finish(self, status: str | None = None, reason: str | None = None) -> tuple[dict[str, Any], int]:
        result = self.result
        if status is None:
            status = "failed" if result["errors"] else "passed"
        if result["errors"] and status != "failed":  # a hard failure wins over skipped/passed
            status, reason = "failed", None
        result["status"] = status
        if reason is None and status == "failed" and result["errors"]:
            reason = "; ".join(f"{e['stage']}: {e['message']}" for e in result["errors"])
        result["reason"] = reason
        result["finished_at"] = now_iso()
        result["duration_s"] = rounded(time.perf_counter() - self.started, 3)
        return result, EXIT_FAILED if status == "failed" else EXIT_OK

    def end(self) -> tuple[dict[str, Any], int]:
        """:meth:`finish` as the device policy says (a run missing its GPU is never ``passed``)."""
        return self.finish(self.missing_status, self.missing_reason)


def run(args: argparse.Namespace, batch_sizes: list[int]) -> tuple[dict[str, Any], int]:
    """Run every check; return the result document and the exit status."""
    state = _Run(args, batch_sizes)
    try:
        return _run(state)
    except Exception as exc:  # never leave without a result document
        state.error("harness", f"unexpected {type(exc).__name__}: {exc}", detail=traceback.format_exc())
        return state.finish()


def _run(state: _Run) -> tuple[dict[str, Any], int]:
    """The checks in order; each step records its outcome in ``state.result``."""
    torch = _import_torch(state)
    if torch is None:
        return state.finish()
    device = _choose_device(state, torch)  # 1-2. GPU availability and device policy
    if device is None:
        return state.end()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loaded = _load_model(state, torch, device)  # 3.
    if loaded is None:
        return state.end()
    model, input_fn = loaded
    load_peaks = cuda_peaks_mb(torch, device) if device.type == "cuda" else None
    if state.args.tests:  # 4. inference correctness: the service's own tests
        _run_service_tests(state, device)
    _run_benchmarks(state, torch, model, input_fn, device)  # 5-7., the health sampler running
    state.result["memory"] = _memory_summary(state, torch, device, load_peaks)
    return state.end()


def _import_torch(state: _Run) -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*NumPy.*")
            import torch  # noqa: PLC0415 optional: a missing or broken torch is reported in the result
    except Exception as exc:
        state.error("torch", f"cannot import torch: {exc}")
        return None
    state.result["torch_version"] = str(torch.__version__)
    state.result["host"]["torch"] = str(torch.__version__)
    return torch


def _choose_device(state: _Run, torch_mod: ModuleType) -> torch.device | None:
    """The device to run on (module doc: device policy); ``None`` when the run stops here."""
    args = state.args
    gpu = probe.probe_gpu(torch_mod)
    state.result["gpu"] = gpu
    log.info("GPU: available=%s count=%s %s", gpu["available"], gpu["device_count"], gpu["reason"] or "")
    if args.device == "cpu":
        device = torch_mod.device("cpu")
        if gpu["available"]:
            state.note("--device cpu: the GPU present is not used")
    elif gpu["available"]:
        device = torch_mod.device("cuda", 0)
        torch_mod.cuda.set_device(device)
    else:
        reason = f"no GPU: {gpu['reason']}"
        if state.gpu_required or not args.allow_cpu:
            state.missing_status = "skipped" if args.on_missing_gpu == "skip" else "failed"
            state.missing_reason = reason
            if state.missing_status == "failed":
                state.error("gpu", reason)
            if not args.allow_cpu:
                return None
            state.note(f"{reason}; --allow-cpu: checks run on the CPU, status stays {state.missing_status}")
        else:
            state.note(f"{reason}; --allow-cpu: running on the CPU")
        device = torch_mod.device("cpu")
    state.result["device"] = device.type
    state.result["gpu_checked"] = device.type == "cuda"
    return device


def _load_model(
    state: _Run, torch_mod: ModuleType, device: torch.device
) -> tuple[Any, Callable[[int], Any]] | None:
    """``factory()`` on the device, in eval mode, and its input builder; ``None`` if that failed."""
    spec = state.args.model
    try:
        factory = load_object(spec)
        t0 = time.perf_counter()
        model = factory()
        if not isinstance(model, torch_mod.nn.Module):
            raise TypeError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        model = model.to(device).eval()
        if device.type == "cuda":
            torch_mod.cuda.synchronize(device)
        load_time = time.perf_counter() - t0
        input_fn = resolve_input_fn(model=model, model_spec=spec, input_spec=state.args.input_spec)
    except Exception as exc:
        state.error("model_load", f"{type(exc).__name__}: {exc}", detail=traceback.format_exc())
        return None
    state.result["model"].update(
        loaded=True,
        load_time_s=rounded(load_time),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    log.info("model %s loaded in %.3f s on %s", spec, load_time, device)
    return model, input_fn


def _run_service_tests(state: _Run, device: torch.device) -> None:
    args = state.args
    tests = run_service_tests(
        command=args.tests, cwd=args.tests_cwd, timeout_s=args.tests_timeout, device=device.type
    )
    state.result["tests"] = tests
    if not tests["passed"]:
        state.error("tests", f"service tests failed (exit {tests['exit_code']}): {tests['summary']}")


def _health_sampler(state: _Run, torch_mod: ModuleType, device: torch.device) -> HealthSampler | None:
    """A sampler of the GPU's health over NVML, or ``None`` with the reason in ``result["health"]``."""
    interval_ms = state.args.health_interval_ms
    if device.type != "cuda":
        reason = "running on the CPU: no GPU utilisation or temperature to sample"
        state.result["health"] = unavailable_health(reason, interval_ms=interval_ms)
        return None
    nvml, nvml_reason = probe.import_nvml()
    if nvml is None:
        state.result["health"] = unavailable_health(str(nvml_reason), interval_ms=interval_ms)
        return None
    try:
        reader = nvml_reader(nvml, torch_mod, device.index or 0)
    except Exception as exc:
        state.result["health"] = unavailable_health(f"NVML handle failed: {exc}", interval_ms=interval_ms)
        return None
    return HealthSampler(read=reader, interval_ms=interval_ms, source="nvml")


def _run_benchmarks(
    state: _Run, torch_mod: ModuleType, model: Any, input_fn: Callable[[int], Any], device: torch.device
) -> None:
    """Every batch size in turn, the health sampler running; the first error stops the benchmarks."""
    args = state.args
    sampler = _health_sampler(state, torch_mod, device)
    if sampler is not None:
        sampler.start()
    try:
        for batch_size in state.batch_sizes:
            try:
                entry = run_benchmark(
                    torch_mod=torch_mod,
                    model=model,
                    input_fn=input_fn,
                    batch_size=batch_size,
                    warmup=args.warmup,
                    iterations=args.iterations,
                    device=device,
                )
            except Exception as exc:  # CUDA errors, OOM, shape errors
                cuda_error = device.type == "cuda" and "cuda" in f"{type(exc).__name__} {exc}".lower()
                message = f"batch {batch_size}: {type(exc).__name__}: {exc}"
                state.error("cuda" if cuda_error else "benchmark", message, detail=traceback.format_exc())
                break
            lat = entry["latency_ms"]
            log.info(
                "batch %d: p50 %.3f ms, p95 %.3f ms, p99 %.3f ms, %.1f samples/s",
                batch_size,
                lat["p50"],
                lat["p95"],
                lat["p99"],
                entry["throughput_per_s"],
            )
            state.result["benchmarks"].append(entry)
    finally:
        if sampler is not None:
            state.result["health"] = sampler.stop()


def _memory_summary(
    state: _Run, torch_mod: ModuleType, device: torch.device, load_peaks: tuple[float, float] | None
) -> dict[str, Any]:
    """What memory budgets apply to: peak reserved on CUDA, the process's peak RSS on the CPU."""
    if device.type != "cuda":
        rss = rss_peak_mb()
        return {
            "source": "getrusage",
            "peak_mb": rounded(rss, 2),
            "peak_metric": "ru_maxrss",
            "peak_allocated_mb": None,
            "peak_reserved_mb": None,
            "peak_rss_mb": rounded(rss, 2),
        }
    peaks = [cuda_peaks_mb(torch_mod, device)] if load_peaks is None else [load_peaks]
    peaks += [
        (b["memory"]["peak_allocated_mb"], b["memory"]["peak_reserved_mb"])
        for b in state.result["benchmarks"]
    ]
    allocated = max(p[0] for p in peaks)
    reserved = max(p[1] for p in peaks)
    return {
        "source": "torch.cuda",
        "peak_mb": rounded(reserved, 2),
        "peak_metric": "max_memory_reserved",
        "peak_allocated_mb": rounded(allocated, 2),
        "peak_reserved_mb": rounded(reserved, 2),
        "peak_rss_mb": rounded(rss_peak_mb(), 2),
    }


def write_result(result: Mapping[str, Any], *, to_xcom: bool, output: str | None) -> list[str]:
    """Write the result where asked (XCom file and/or ``output``), else to stdout."""
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    written: list[str] = []
    targets = ([xcom_path()] if to_xcom else []) + ([Path(output)] if output else [])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(str(target))
    if not targets:
        sys.stdout.write(text)
        sys.stdout.flush()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    batch_sizes = _validate_args(parser, args)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    result, code = run(args, batch_sizes)
    for path in write_result(result, to_xcom=args.xcom, output=args.output):
        log.info("result written to %s", path)
    log.info("status: %s%s", result["status"], f" ({result['reason']})" if result["reason"] else "")
    return code


if __name__ == "__main__":
    sys.exit(main())
