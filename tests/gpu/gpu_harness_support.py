"""Helpers of the GPU harness tests: run the harness for real, validate its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from delivery.gpu.harness import load_result_schema
from tests.helpers import ROOT

REPO = ROOT
TESTS_DIR = Path(__file__).resolve().parent
TINY_MODEL = "gpu_tiny_model:build"
TINY_TESTS = f"{sys.executable} -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_tiny_inference.py"


@dataclass(frozen=True)
class HarnessRun:
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any]


def validate(result: dict[str, Any]) -> None:
    """Raise if ``result`` does not follow ``result.schema.json`` (formats checked too)."""
    schema = load_result_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(result)


def harness_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(TESTS_DIR)])
    env.update(extra)
    return env


def run_harness(
    *args: str,
    output: Path | None,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    parse: bool = True,
) -> HarnessRun:
    """``python -m delivery.gpu.harness ARGS`` in a subprocess; the result is read from
    ``output`` when given, else parsed from stdout."""
    argv = [sys.executable, "-m", "delivery.gpu.harness", *args]
    if output is not None:
        argv += ["--output", str(output)]
    proc = subprocess.run(
        argv,
        cwd=REPO,
        env=env or harness_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if not parse:
        return HarnessRun(proc.returncode, proc.stdout, proc.stderr, {})
    text = output.read_text(encoding="utf-8") if output is not None and output.exists() else proc.stdout
    try:
        result = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"harness output is not JSON: {exc}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        ) from exc
    return HarnessRun(proc.returncode, proc.stdout, proc.stderr, result)


def no_gpu_probe(torch_mod: object) -> dict[str, Any]:
    """Stand-in for ``probe_gpu`` on a machine without a usable GPU."""
    return {
        "available": False,
        "source": "none",
        "device_count": 0,
        "devices": [],
        "driver_version": None,
        "cuda_version": None,
        "cuda_driver_version": None,
        "nvml": {"available": False, "reason": "simulated"},
        "reason": "simulated: no GPU on this machine",
    }
