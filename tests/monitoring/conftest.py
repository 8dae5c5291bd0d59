"""Shared fixtures for the monitoring configuration tests.

The checks run the real tools: ``promtool`` (Debian package ``prometheus``),
``amtool`` and ``prometheus-alertmanager`` (Debian package
``prometheus-alertmanager``). A missing tool fails the test, it does not skip
it: CI installs them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.helpers import ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

REPO_ROOT = ROOT
MONITORING_DIR = REPO_ROOT / "include" / "monitoring"
RULES_DIR = MONITORING_DIR / "prometheus" / "rules"
RULE_TESTS_DIR = Path(__file__).resolve().parent / "rules_tests"


def _require_binary(*names: str, package: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(
        f"{' / '.join(names)} not found on PATH: install the Debian package {package!r} "
        f"(apt-get install -y {package})",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def promtool() -> str:
    return _require_binary("promtool", package="prometheus")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _require_binary("amtool", package="prometheus-alertmanager")


@pytest.fixture(scope="session")
def alertmanager_binary() -> str:
    return _require_binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")


def run_tool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command line tool, capturing its output as text."""
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def run() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_tool


@pytest.fixture(scope="session")
def rule_files() -> list[Path]:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, f"no rule file in {RULES_DIR}"
    return files


@pytest.fixture(scope="session")
def rules(rule_files: list[Path]) -> list[dict[str, Any]]:
    """Every rule of every group of every rule file, with ``_file`` added."""
    out: list[dict[str, Any]] = []
    for path in rule_files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc["groups"]:
            for rule in group["rules"]:
                out.append({**rule, "_file": path.name, "_group": group["name"]})
    return out


@pytest.fixture(scope="session")
def alert_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rules if "alert" in r]


@pytest.fixture(scope="session")
def recorded_names(rules: list[dict[str, Any]]) -> set[str]:
    return {r["record"] for r in rules if "record" in r}
