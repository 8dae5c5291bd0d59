"""What every part of the harness shares: constants, the result's small helpers, imports by name.

Standard library only, like the whole harness (``datetime.timezone.utc`` rather than
``datetime.UTC``: GPU images may run Python 3.10).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger("delivery.gpu.harness")

SCHEMA_VERSION = "1.0"
DEFAULT_XCOM_PATH = "/airflow/xcom/return.json"
XCOM_PATH_ENV = "DELIVERY_XCOM_PATH"
RESULT_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "result.schema.json"
PERCENTILE_METHOD = "linear"
DEVICE_ENV = "DELIVERY_GPU_DEVICE"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

MIB = 1024 * 1024
OUTPUT_TAIL_CHARS = 4000


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


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: UP017 (3.10)


def rounded(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]
