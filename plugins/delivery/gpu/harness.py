"""GPU test harness: the GPU stage's checks, run inside the stage's container.

Run it as ``python -m delivery.gpu.harness --model module:factory [options]``.
It needs torch and the service code only (never Airflow); ``pynvml``
(``nvidia-ml-py``) is optional and adds the driver version and the health
sampling (utilisation, temperature).

What it checks, in order:

1. GPU availability (NVML and ``torch.cuda``): device name, total memory,
   driver version, CUDA version, device count.
2. Device policy (below): run on CUDA, on the CPU, or stop as skipped/failed.
3. Model loading: ``factory()`` must return a ``torch.nn.Module``; load time.
4. Inference correctness (``--tests``): the service's own test command, run as a
   subprocess; exit code and summary line.
5. Performance at each ``--batch-sizes``: ``--warmup`` untimed calls, then
   ``--iterations`` timed calls: ``torch.cuda.Event`` pairs (synchronised after
   every call) on CUDA, ``time.perf_counter`` on the CPU. Latency p50/p95/p99
   use :func:`percentile` (linear interpolation, numpy's default ``linear``);
   throughput is ``batch_size * iterations / wall time of the timed loop``.
6. Memory: ``torch.cuda.max_memory_allocated/max_memory_reserved`` (peaks reset
   before loading and before each batch size) on CUDA; the process's peak RSS
   (``resource.getrusage``, not resettable) on the CPU. ``memory.peak_mb`` is
   the number budgets apply to: peak reserved on CUDA, peak RSS on the CPU.
7. Health: a background thread samples utilisation and temperature through
   NVML every ``--health-interval-ms`` while the benchmarks run; on the CPU or
   without NVML it records ``available: false`` and the reason.

Device policy. A run *requires a GPU* with ``--require-gpu`` or
``--device cuda``. When no usable GPU is found:

* ``--on-missing-gpu`` (default ``fail``) sets the status of a run that needed
  one: ``fail`` -> status ``failed``, exit 1; ``skip`` -> status ``skipped``,
  reason ``no GPU: ...``, exit 0. A run that required a GPU and had none is
  therefore never ``passed``.
* ``--allow-cpu`` only decides whether the model is still exercised on the CPU
  (``"device": "cpu"``, ``"gpu_checked": false``). For a GPU-required run the
  status stays as ``--on-missing-gpu`` says (a hard failure on the CPU path
  still makes it ``failed``). With ``--device auto --no-require-gpu
  --allow-cpu`` a CPU run is a normal run that can pass; ``--device cpu`` is
  the same, even where a GPU exists.
* ``--device auto`` without ``--allow-cpu`` and without a GPU behaves like a
  GPU-required run: nothing passes silently.

Output: ONE JSON document, to the XCom file with ``--xcom``
(``/airflow/xcom/return.json``, the KubernetesPodOperator sidecar's path, or
``$DELIVERY_XCOM_PATH``), to ``--output FILE``, or to stdout when neither is
given. Logs go to stderr. Exit status: 0 for ``passed`` and ``skipped``, 1 for
``failed`` (model load error, failed tests, CUDA error, missing GPU with
``--on-missing-gpu fail``), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType, TracebackType

    import torch

__all__ = [
    "DEFAULT_XCOM_PATH",
    "PERCENTILE_METHOD",
    "RESULT_SCHEMA_PATH",
    "SCHEMA_VERSION",
    "XCOM_PATH_ENV",
    "HealthSampler",
    "build_parser",
    "load_object",
    "load_result_schema",
    "main",
    "percentile",
    "run",
    "summarize_latencies",
    "xcom_path",
]

log = logging.getLogger("delivery.gpu.harness")

SCHEMA_VERSION = "1.0"
DEFAULT_XCOM_PATH = "/airflow/xcom/return.json"
XCOM_PATH_ENV = "DELIVERY_XCOM_PATH"
RESULT_SCHEMA_PATH = Path(__file__).with_name("result.schema.json")
PERCENTILE_METHOD = "linear"
DEVICE_ENV = "DELIVERY_GPU_DEVICE"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_MIB = 1024 * 1024
_OUTPUT_TAIL_CHARS = 4000


# --------------------------------------------------------------------------- pure helpers


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation.

    Same as numpy's default (``method="linear"``, Hyndman & Fan type 7): sort
    the ``n`` values, take the rank ``r = (n - 1) * q / 100`` and interpolate
    between the values at ``floor(r)`` and ``ceil(r)``. For ``[10, 20, 30, 40,
    50]``: p50 = 30, p95 = 40 + 0.8 * 10 = 48, p99 = 40 + 0.96 * 10 = 49.6.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(float(v) for v in values)
    if any(math.isnan(v) for v in ordered):
        raise ValueError("percentile of a sequence holding NaN")
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def summarize_latencies(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (see :func:`percentile`), mean, min and max of latencies in ms."""
    if not samples_ms:
        raise ValueError("no latency samples")
    return {
        "p50": percentile(samples_ms, 50),
        "p95": percentile(samples_ms, 95),
        "p99": percentile(samples_ms, 99),
        "mean": sum(samples_ms) / len(samples_ms),
        "min": float(min(samples_ms)),
        "max": float(max(samples_ms)),
    }


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,8,32"`` (commas and/or spaces) -> ``[1, 8, 32]``; sizes must be positive."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts:
        raise ValueError("no batch size given")
    sizes: list[int] = []
    for part in parts:
        try:
            size = int(part)
        except ValueError:
            raise ValueError(f"batch size {part!r} is not an integer") from None
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        if size not in sizes:
            sizes.append(size)
    return sizes


def load_object(spec: str) -> Any:
    """Import ``"package.module:attribute[.attribute]"`` and return the attribute."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"invalid import spec {spec!r}: expected 'module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def xcom_path() -> Path:
    """Where ``--xcom`` writes: ``$DELIVERY_XCOM_PATH`` or the sidecar's file."""
    return Path(os.environ.get(XCOM_PATH_ENV) or DEFAULT_XCOM_PATH)


def load_result_schema() -> dict[str, Any]:
    """The JSON Schema of the harness result (``result.schema.json``)."""
    schema: dict[str, Any] = json.loads(RESULT_SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def _tail(text: str, limit: int = _OUTPUT_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


# --------------------------------------------------------------------------- NVML


def _import_nvml() -> tuple[ModuleType | None, str | None]:
    """``(pynvml, None)`` once initialised, or ``(None, reason)``."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml (nvidia-ml-py) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML init failed: {exc}"
    return pynvml, None


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_info(nvml: ModuleType) -> dict[str, Any]:
    info: dict[str, Any] = {"device_count": int(nvml.nvmlDeviceGetCount())}
    with contextlib.suppress(Exception):
        info["driver_version"] = _decode(nvml.nvmlSystemGetDriverVersion())
    with contextlib.suppress(Exception):
        version = int(nvml.nvmlSystemGetCudaDriverVersion())
        info["cuda_driver_version"] = f"{version // 1000}.{(version % 1000) // 10}"
    devices = []
    for index in range(info["device_count"]):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        devices.append(
            {
                "index": index,
                "name": _decode(nvml.nvmlDeviceGetName(handle)),
                "total_memory_mb": _round(memory.total / _MIB, 1),
            }
        )
    info["devices"] = devices
    return info


def probe_gpu(torch_mod: ModuleType) -> dict[str, Any]:
    """What GPU this process can use; ``available`` means torch can run on CUDA."""
    nvml, nvml_reason = _import_nvml()
    nvml_info: dict[str, Any] = {}
    if nvml is not None:
        try:
            nvml_info = _nvml_info(nvml)
        except Exception as exc:
            nvml_reason = f"NVML query failed: {exc}"
    gpu: dict[str, Any] = {
        "available": False,
        "source": "none",
        "device_count": 0,
        "devices": [],
        "driver_version": nvml_info.get("driver_version"),
        "cuda_version": torch_mod.version.cuda,
        "cuda_driver_version": nvml_info.get("cuda_driver_version"),
        "nvml": {"available": nvml is not None and bool(nvml_info), "reason": nvml_reason},
        "reason": None,
    }
    try:
        cuda_ok = bool(torch_mod.cuda.is_available())
    except Exception as exc:
        cuda_ok = False
        gpu["reason"] = f"torch.cuda.is_available() raised: {exc}"
    if cuda_ok:
        count = int(torch_mod.cuda.device_count())
        devices = []
        for index in range(count):
            props = torch_mod.cuda.get_device_properties(index)
            devices.append(
                {
                    "index": index,
                    "name": str(props.name),
                    "total_memory_mb": _round(props.total_memory / _MIB, 1),
                }
            )
        gpu.update(
            available=count > 0,
            source="nvml+torch" if nvml_info else "torch",
            device_count=count,
            devices=devices,
        )
        if count == 0:
            gpu["reason"] = "torch.cuda reports no device"
    elif gpu["reason"] is None:
        if torch_mod.version.cuda is None:
            why = f"torch {torch_mod.__version__} is a CPU-only build"
        else:
            why = "torch.cuda.is_available() is False (no device, driver or CUDA_VISIBLE_DEVICES hides it)"
        if nvml_info.get("device_count"):
            why += f"; NVML sees {nvml_info['device_count']} GPU(s)"
            gpu.update(source="nvml", device_count=nvml_info["device_count"], devices=nvml_info["devices"])
        gpu["reason"] = why
    return gpu


# --------------------------------------------------------------------------- health sampling

HealthReading = Mapping[str, float | None]


class HealthSampler:
    """Calls ``read()`` every ``interval_ms`` in a daemon thread until stopped.

    ``read`` returns e.g. ``{"utilization_pct": 87, "temperature_c": 64,
    "memory_used_mb": 5120}``; one sample is taken at start and one at stop, so
    even a short run has readings. Errors of ``read`` are counted, not raised.
    """

    def __init__(self, *, read: Callable[[], HealthReading], interval_ms: int, source: str) -> None:
        if interval_ms < 1:
            raise ValueError("interval_ms must be >= 1")
        self._read = read
        self._interval_s = interval_ms / 1000.0
        self.interval_ms = interval_ms
        self.source = source
        self.samples: list[dict[str, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        try:
            reading = self._read()
        except Exception as exc:
            with self._lock:
                self.errors.append(str(exc))
            return
        clean = {k: float(v) for k, v in reading.items() if v is not None}
        with self._lock:
            self.samples.append(clean)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def start(self) -> HealthSampler:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="gpu-health-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 10 * self._interval_s))
        self._sample()
        return self.summary()

    def __enter__(self) -> HealthSampler:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            samples = list(self.samples)
            errors = list(self.errors)

        def stats(key: str) -> dict[str, float] | None:
            values = [s[key] for s in samples if key in s]
            if not values:
                return None
            return {"mean": _round(sum(values) / len(values), 2), "max": _round(max(values), 2)}

        available = bool(samples)
        why_not = f"no health sample could be read: {errors[0] if errors else 'none taken'}"
        return {
            "available": available,
            "source": self.source if available else None,
            "reason": None if available else why_not,
            "interval_ms": self.interval_ms,
            "samples": len(samples),
            "errors": len(errors),
            "utilization_pct": stats("utilization_pct"),
            "temperature_c": stats("temperature_c"),
            "memory_used_mb": stats("memory_used_mb"),
        }


def unavailable_health(reason: str, *, interval_ms: int) -> dict[str, Any]:
    """The ``health`` section when nothing can be sampled (CPU run, no NVML)."""
    return {
        "available": False,
        "source": None,
        "reason": reason,
        "interval_ms": interval_ms,
        "samples": 0,
        "errors": 0,
        "utilization_pct": None,
        "temperature_c": None,
        "memory_used_mb": None,
    }


def _nvml_reader(nvml: ModuleType, torch_mod: ModuleType, device_index: int) -> Callable[[], HealthReading]:
    """NVML reader for torch's device ``device_index`` (matched by UUID, NVML ignores
    ``CUDA_VISIBLE_DEVICES``), falling back to the same index."""
    handle = None
    with contextlib.suppress(Exception):
        uuid = str(torch_mod.cuda.get_device_properties(device_index).uuid)
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    if handle is None:
        handle = nvml.nvmlDeviceGetHandleByIndex(device_index)

    def read() -> HealthReading:
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return {
            "utilization_pct": float(rates.gpu),
            "temperature_c": float(temperature),
            "memory_used_mb": memory.used / _MIB,
        }

    return read


# --------------------------------------------------------------------------- model and inputs


def _to_device(value: Any, device: torch.device) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_to_device(v, device) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _call_model(model: Callable[..., Any], inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def resolve_input_fn(*, model: Any, model_spec: str, input_spec: str | None) -> Callable[[int], Any]:
    """``--input``, else ``model.example_input``, else ``example_input`` in the factory's module."""
    fn: Any
    if input_spec:
        fn = load_object(input_spec)
    elif callable(getattr(model, "example_input", None)):
        fn = model.example_input
    else:
        module = importlib.import_module(model_spec.partition(":")[0])
        fn = getattr(module, "example_input", None)
    if not callable(fn):
        raise ValueError(
            "no example input: pass --input module:fn, or define example_input(batch_size) "
            f"on the model or in the module of {model_spec!r}"
        )
    return fn


# --------------------------------------------------------------------------- memory


def _rss_peak_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def _cuda_peaks_mb(torch_mod: ModuleType, device: torch.device) -> tuple[float, float]:
    return (
        torch_mod.cuda.max_memory_allocated(device) / _MIB,
        torch_mod.cuda.max_memory_reserved(device) / _MIB,
    )


# --------------------------------------------------------------------------- stages


def run_service_tests(*, command: str, cwd: str | None, timeout_s: float, device: str) -> dict[str, Any]:
    """Run the service's test command (split with shlex, no shell) and record its outcome."""
    argv = shlex.split(command)
    env = {**os.environ, DEVICE_ENV: device}
    started = time.perf_counter()
    log.info("running service tests: %s", command)
    timed_out = False
    exit_code: int | None
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        output, exit_code = proc.stdout or "", proc.returncode
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        exit_code, timed_out = None, True
    except OSError as exc:
        output, exit_code = f"cannot run {argv[0] if argv else command!r}: {exc}", 127
    duration = time.perf_counter() - started
    sys.stderr.write(output)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    if timed_out:
        summary = f"timed out after {timeout_s:g} s" + (f" ({summary})" if summary else "")
    return {
        "command": command,
        "exit_code": exit_code,
        "passed": exit_code == 0,
        "timed_out": timed_out,
        "duration_s": _round(duration, 3),
        "summary": summary,
        "output_tail": _tail(output),
    }


def run_benchmark(
    *,
    torch_mod: ModuleType,
    model: Callable[..., Any],
    input_fn: Callable[[int], Any],
    batch_size: int,
    warmup: int,
    iterations: int,
    device: torch.device,
) -> dict[str, Any]:
    """Warm-up, then ``iterations`` timed calls at ``batch_size``."""
    cuda = device.type == "cuda"
    inputs = _to_device(input_fn(batch_size), device)
    if cuda:
        torch_mod.cuda.synchronize(device)
        torch_mod.cuda.reset_peak_memory_stats(device)
    samples: list[float] = []
    with torch_mod.inference_mode():
        for _ in range(warmup):
            _call_model(model, inputs)
        if cuda:
            torch_mod.cuda.synchronize(device)
        loop_started = time.perf_counter()
        for _ in range(iterations):
            if cuda:
                start = torch_mod.cuda.Event(enable_timing=True)
                end = torch_mod.cuda.Event(enable_timing=True)
                start.record()
                _call_model(model, inputs)
                end.record()
                end.synchronize()
                samples.append(float(start.elapsed_time(end)))
            else:
                t0 = time.perf_counter()
                _call_model(model, inputs)
                samples.append((time.perf_counter() - t0) * 1000.0)
        if cuda:
            torch_mod.cuda.synchronize(device)
        wall_s = time.perf_counter() - loop_started
    latency = {k: _round(v) for k, v in summarize_latencies(samples).items()}
    entry: dict[str, Any] = {
        "batch_size": batch_size,
        "warmup": warmup,
        "iterations": iterations,
        "timer": "cuda_event" if cuda else "perf_counter",
        "latency_ms": latency,
        "wall_s": _round(wall_s),
        "throughput_per_s": _round(batch_size * iterations / wall_s if wall_s > 0 else 0.0, 3),
    }
    if cuda:
        allocated, reserved = _cuda_peaks_mb(torch_mod, device)
        entry["memory"] = {"peak_allocated_mb": _round(allocated, 2), "peak_reserved_mb": _round(reserved, 2)}
    else:
        entry["memory"] = {"peak_rss_mb": _round(_rss_peak_mb(), 2)}
    return entry


# --------------------------------------------------------------------------- orchestration


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
        self.result: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": "failed",
            "reason": None,
            "errors": [],
            "notes": [],
            "service": args.service,
            "started_at": _now(),
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
            entry["detail"] = _tail(detail)
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
        result["finished_at"] = _now()
        result["duration_s"] = _round(time.perf_counter() - self.started, 3)
        return result, EXIT_FAILED if status == "failed" else EXIT_OK


def run(args: argparse.Namespace, batch_sizes: list[int]) -> tuple[dict[str, Any], int]:
    """Run every check; return the result document and the exit status."""
    state = _Run(args, batch_sizes)
    try:
        return _run(state)
    except Exception as exc:  # never leave without a result document
        state.error("harness", f"unexpected {type(exc).__name__}: {exc}", detail=traceback.format_exc())
        return state.finish()


def _run(state: _Run) -> tuple[dict[str, Any], int]:
    args, result = state.args, state.result
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*NumPy.*")
            import torch
    except Exception as exc:
        state.error("torch", f"cannot import torch: {exc}")
        return state.finish()
    result["torch_version"] = str(torch.__version__)
    result["host"]["torch"] = str(torch.__version__)

    # 1-2. GPU availability and device policy.
    gpu = probe_gpu(torch)
    result["gpu"] = gpu
    log.info("GPU: available=%s count=%s %s", gpu["available"], gpu["device_count"], gpu["reason"] or "")
    missing_status: str | None = None
    missing_reason: str | None = None
    if args.device == "cpu":
        device = torch.device("cpu")
        if gpu["available"]:
            state.note("--device cpu: the GPU present is not used")
    elif gpu["available"]:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:
        missing_reason = f"no GPU: {gpu['reason']}"
        if state.gpu_required or not args.allow_cpu:
            missing_status = "skipped" if args.on_missing_gpu == "skip" else "failed"
            if missing_status == "failed":
                state.error("gpu", missing_reason)
            if not args.allow_cpu:
                return state.finish(missing_status, missing_reason)
            state.note(f"{missing_reason}; --allow-cpu: checks run on the CPU, status stays {missing_status}")
        else:
            state.note(f"{missing_reason}; --allow-cpu: running on the CPU")
            missing_reason = None
        device = torch.device("cpu")
    cuda = device.type == "cuda"
    result["device"] = device.type
    result["gpu_checked"] = cuda

    # 3. Model loading.
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        factory = load_object(args.model)
        t0 = time.perf_counter()
        model = factory()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{args.model} returned {type(model).__name__}, not a torch.nn.Module")
        model = model.to(device).eval()
        if cuda:
            torch.cuda.synchronize(device)
        load_time = time.perf_counter() - t0
        input_fn = resolve_input_fn(model=model, model_spec=args.model, input_spec=args.input_spec)
    except Exception as exc:
        state.error("model_load", f"{type(exc).__name__}: {exc}", detail=traceback.format_exc())
        return state.finish(missing_status, missing_reason)
    result["model"].update(
        loaded=True,
        load_time_s=_round(load_time),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    load_peaks = _cuda_peaks_mb(torch, device) if cuda else None
    log.info("model %s loaded in %.3f s on %s", args.model, load_time, device)

    # 4. Inference correctness: the service's own tests.
    if args.tests:
        tests = run_service_tests(
            command=args.tests, cwd=args.tests_cwd, timeout_s=args.tests_timeout, device=device.type
        )
        result["tests"] = tests
        if not tests["passed"]:
            state.error("tests", f"service tests failed (exit {tests['exit_code']}): {tests['summary']}")

    # 5-7. Benchmarks with the health sampler running.
    sampler: HealthSampler | None = None
    if cuda:
        nvml, nvml_reason = _import_nvml()
        if nvml is None:
            result["health"] = unavailable_health(str(nvml_reason), interval_ms=args.health_interval_ms)
        else:
            try:
                reader = _nvml_reader(nvml, torch, device.index or 0)
                sampler = HealthSampler(read=reader, interval_ms=args.health_interval_ms, source="nvml")
            except Exception as exc:
                result["health"] = unavailable_health(
                    f"NVML handle failed: {exc}", interval_ms=args.health_interval_ms
                )
    else:
        result["health"] = unavailable_health(
            "running on the CPU: no GPU utilisation or temperature to sample",
            interval_ms=args.health_interval_ms,
        )
    if sampler is not None:
        sampler.start()
    try:
        for batch_size in state.batch_sizes:
            try:
                entry = run_benchmark(
                    torch_mod=torch,
                    model=model,
                    input_fn=input_fn,
                    batch_size=batch_size,
                    warmup=args.warmup,
                    iterations=args.iterations,
                    device=device,
                )
            except Exception as exc:  # CUDA errors, OOM, shape errors
                stage = "cuda" if cuda and "cuda" in f"{type(exc).__name__} {exc}".lower() else "benchmark"
                state.error(
                    stage, f"batch {batch_size}: {type(exc).__name__}: {exc}", detail=traceback.format_exc()
                )
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
            result["benchmarks"].append(entry)
    finally:
        if sampler is not None:
            result["health"] = sampler.stop()

    # Memory summary: what budgets apply to.
    if cuda:
        peaks = [_cuda_peaks_mb(torch, device)] if load_peaks is None else [load_peaks]
        peaks += [
            (b["memory"]["peak_allocated_mb"], b["memory"]["peak_reserved_mb"]) for b in result["benchmarks"]
        ]
        allocated = max(p[0] for p in peaks)
        reserved = max(p[1] for p in peaks)
        result["memory"] = {
            "source": "torch.cuda",
            "peak_mb": _round(reserved, 2),
            "peak_metric": "max_memory_reserved",
            "peak_allocated_mb": _round(allocated, 2),
            "peak_reserved_mb": _round(reserved, 2),
            "peak_rss_mb": _round(_rss_peak_mb(), 2),
        }
    else:
        rss = _rss_peak_mb()
        result["memory"] = {
            "source": "getrusage",
            "peak_mb": _round(rss, 2),
            "peak_metric": "ru_maxrss",
            "peak_allocated_mb": None,
            "peak_reserved_mb": None,
            "peak_rss_mb": _round(rss, 2),
        }
    return state.finish(missing_status, missing_reason)


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
