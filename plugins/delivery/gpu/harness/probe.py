"""GPU availability: NVML (``pynvml``, optional) and ``torch.cuda`` (sections 1-2 of the harness)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .common import MIB, rounded

if TYPE_CHECKING:
    from types import ModuleType


def import_nvml() -> tuple[ModuleType | None, str | None]:
    """``(pynvml, None)`` once initialised, or ``(None, reason)``."""
    try:
        import pynvml  # noqa: PLC0415 optional (nvidia-ml-py): its absence is reported
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
                "total_memory_mb": rounded(memory.total / MIB, 1),
            }
        )
    info["devices"] = devices
    return info


def probe_gpu(torch_mod: ModuleType) -> dict[str, Any]:
    """What GPU this process can use; ``available`` means torch can run on CUDA."""
    nvml, nvml_reason = import_nvml()
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
                    "total_memory_mb": rounded(props.total_memory / MIB, 1),
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
