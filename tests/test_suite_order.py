"""The suite's own scheduling: the longest test files start first, each file's tests in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import pytest_collection_modifyitems


@dataclass
class _Item:
    nodeid: str
    seconds: float | None = None

    def get_closest_marker(self, name: str) -> Any:
        return pytest.mark.duration(self.seconds).mark if name == "duration" and self.seconds else None


def test_longest_files_first_and_each_file_in_order() -> None:
    items: list[Any] = [
        _Item("tests/a.py::one"),
        _Item("tests/b.py::one", 120),
        _Item("tests/b.py::two", 120),
        _Item("tests/c.py::one"),
        _Item("tests/d.py::one", 450),
        _Item("tests/d.py::two", 450),
        _Item("tests/d.py::three", 450),
    ]
    pytest_collection_modifyitems(items)
    assert [i.nodeid for i in items] == [
        "tests/d.py::one",
        "tests/d.py::two",
        "tests/d.py::three",
        "tests/b.py::one",
        "tests/b.py::two",
        "tests/a.py::one",
        "tests/c.py::one",
    ]


def test_the_long_modules_carry_their_duration(request: pytest.FixtureRequest) -> None:
    """Every module that starts an Airflow stack says how long it takes, or it could start last."""
    session = request.session
    stacks = {
        "tests/e2e/test_local_pipeline.py",
        "tests/e2e/test_production_gate.py",
        "tests/e2e/test_faults.py",
        "tests/e2e/test_crashes.py",
        "tests/e2e/test_distributed_pipelines.py",
        "tests/monitoring/test_local_stack.py",
        "tests/devenv/test_airflow_restart.py",
    }
    marked = {
        item.nodeid.split("::", 1)[0]
        for item in session.items
        if item.get_closest_marker("duration") is not None
    }
    collected = {item.nodeid.split("::", 1)[0] for item in session.items}
    assert stacks & collected <= marked
