"""GPU health sampled in a background thread while the benchmarks run (section 7 of the harness)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .common import MIB, rounded

if TYPE_CHECKING:
    from types import ModuleType, TracebackType

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
            return {"mean": rounded(sum(values) / len(values), 2), "max": rounded(max(values), 2)}

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


def nvml_reader(nvml: ModuleType, torch_mod: ModuleType, device_index: int) -> Callable[[], HealthReading]:
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
            "memory_used_mb": memory.used / MIB,
        }

    return read
