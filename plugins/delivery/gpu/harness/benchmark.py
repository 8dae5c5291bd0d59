"""Model inputs, the service's tests, timed inference and memory (sections 3-6 of the harness)."""

from __future__ import annotations

import importlib
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .common import DEVICE_ENV, MIB, load_object, log, rounded, tail

if TYPE_CHECKING:
    from types import ModuleType

    import torch

PERCENTILE_METHOD = "linear"
"""numpy's name for the method of :func:`percentile` (``statistics.quantiles``'s ``inclusive``)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``: ``statistics.quantiles(method="inclusive")``.

    That is numpy's default (``method="linear"``, Hyndman & Fan type 7): sort the ``n`` values,
    take the rank ``r = (n - 1) * q / 100`` and interpolate between the values at ``floor(r)``
    and ``ceil(r)``. For ``[10, 20, 30, 40, 50]``: p50 = 30, p95 = 40 + 0.8 * 10 = 48,
    p99 = 40 + 0.96 * 10 = 49.6. ``q`` is read exactly (``Fraction(str(q))``): the cut point
    ``k/n`` of ``quantiles(n=...)`` is the percentile itself.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    data = sorted(float(v) for v in values)
    if any(math.isnan(v) for v in data):
        raise ValueError("percentile of a sequence holding NaN")
    share = Fraction(str(q)) / 100
    if share == 0:
        return data[0]
    if share == 1 or len(data) == 1:  # quantiles() needs two values before Python 3.13
        return data[-1]
    return statistics.quantiles(data, n=share.denominator, method="inclusive")[share.numerator - 1]


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


# --------------------------------------------------------------------------- model and inputs


def _to_device(value: Any, device: torch.device) -> Any:
    import torch  # noqa: PLC0415 torch: the harness is also imported without it (delivery.gpu.health)

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


def rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def cuda_peaks_mb(torch_mod: ModuleType, device: torch.device) -> tuple[float, float]:
    return (
        torch_mod.cuda.max_memory_allocated(device) / MIB,
        torch_mod.cuda.max_memory_reserved(device) / MIB,
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
        "duration_s": rounded(duration, 3),
        "summary": summary,
        "output_tail": tail(output),
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
    latency = {k: rounded(v) for k, v in summarize_latencies(samples).items()}
    entry: dict[str, Any] = {
        "batch_size": batch_size,
        "warmup": warmup,
        "iterations": iterations,
        "timer": "cuda_event" if cuda else "perf_counter",
        "latency_ms": latency,
        "wall_s": rounded(wall_s),
        "throughput_per_s": rounded(batch_size * iterations / wall_s if wall_s > 0 else 0.0, 3),
    }
    if cuda:
        allocated, reserved = cuda_peaks_mb(torch_mod, device)
        entry["memory"] = {
            "peak_allocated_mb": rounded(allocated, 2),
            "peak_reserved_mb": rounded(reserved, 2),
        }
    else:
        entry["memory"] = {"peak_rss_mb": rounded(rss_peak_mb(), 2)}
    return entry
