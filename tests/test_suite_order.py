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


class _Config:
    def __init__(self, dist: str) -> None:
        self.dist = dist
        self.option = type("Option", (), {"loadscopereorder": False})()  # --no-loadscope-reorder

    def getoption(self, name: str) -> str:
        assert name == "dist"
        return self.dist

    def getvalue(self, name: str) -> list[str]:
        assert name == "tx"
        return ["1*popen"]


class _Node:
    """A worker as the scheduler sees it: the test indexes it was sent."""

    shutting_down = False

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.shut = False

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.sent += indexes

    def shutdown(self) -> None:
        self.shut = self.shutting_down = True


def test_a_worker_gets_its_next_file_only_as_its_current_files_last_test_starts() -> None:
    from tests.conftest import pytest_xdist_make_scheduler

    assert pytest_xdist_make_scheduler(_Config("load"), None) is None  # other modes: xdist's own
    scheduler = pytest_xdist_make_scheduler(_Config("loadfile"), None)
    collection = ["m.py::long", "m.py::a", "m.py::b", "m.py::c", "next.py::x", "last.py::y"]
    node = _Node()
    scheduler.add_node(node)
    scheduler.add_node_collection(node, collection)
    scheduler.schedule()
    assert node.sent == [0, 1, 2, 3]  # one file (xdist's own sends a second when it has four tests)

    for done in (0, 1):
        scheduler.mark_test_complete(node, done)
    assert node.sent == [0, 1, 2, 3], "two tests of m.py left: next.py must not wait behind them"
    scheduler.mark_test_complete(node, 2)  # m.py::c, its last, can only start once a next test is known
    assert node.sent == [0, 1, 2, 3, 4]
    scheduler.mark_test_complete(node, 3)
    assert node.sent == [0, 1, 2, 3, 4, 5]
    scheduler.mark_test_complete(node, 4)
    assert node.shut
