"""The test run's shared resources: started once, attached to by the others, stopped after the last user."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests import shared
from tests.helpers import ROOT, SHARED_DIR_ENV

STARTS: list[Path] = []


def record_stop(info: dict[str, Any]) -> None:
    Path(info["stopped"]).write_text("stopped")


def _start(folder: Path) -> dict[str, Any]:
    STARTS.append(folder)
    return {"stopped": str(folder.parent / "stopped.txt")}


def test_started_once_and_stopped_by_the_sessions_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path))
    STARTS.clear()
    first = shared.shared_resource("thing", _start, stop=record_stop)
    second = shared.shared_resource("thing", _start, stop=record_stop)
    assert first == second and len(STARTS) == 1
    assert json.loads((tmp_path / "thing.json").read_text())["stop"] == "tests.test_shared:record_stop"

    assert shared.stop_all(tmp_path) == []
    assert (tmp_path / "stopped.txt").read_text() == "stopped"


def test_a_conftest_imported_as_conftest_is_named_from_the_project_root() -> None:
    """pytest may import tests/e2e/conftest.py as ``conftest``: the recorded name must still import."""
    spec = importlib.util.spec_from_file_location("conftest", ROOT / "tests" / "e2e" / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.stop_shared_stack.__module__ == "conftest"
    assert shared._module_name(module.stop_shared_stack) == "tests.e2e.conftest"


def test_a_failed_start_fails_every_test_that_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path))

    def broken(folder: Path) -> dict[str, Any]:
        raise RuntimeError("no Docker engine")

    for _ in range(2):
        with pytest.raises(pytest.fail.Exception, match="no Docker engine"):
            shared.shared_resource("broken", broken, stop=record_stop)
    assert shared.stop_all(tmp_path) == []


def test_stopped_once_its_last_user_is_done_and_started_again_if_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path))
    STARTS.clear()
    users = ["tests/a.py", "tests/b.py"]
    stopped = tmp_path / "stopped.txt"
    shared.shared_resource("thing", _start, stop=record_stop)

    assert shared.release("thing", "tests/a.py", users) is False
    assert shared.release("thing", "tests/a.py", users) is False  # the same user twice is still one
    assert not stopped.exists()
    assert shared.release("thing", "tests/b.py", users) is True
    assert stopped.read_text() == "stopped"

    stopped.unlink()
    assert shared.stop_all(tmp_path) == [] and not stopped.exists(), "stopped once, not again at the end"
    shared.shared_resource("thing", _start, stop=record_stop)  # a user the run did not foresee
    assert len(STARTS) == 2 and STARTS[0] != STARTS[1]
    assert shared.stop_all(tmp_path) == [] and stopped.read_text() == "stopped"


def test_the_users_are_the_files_whose_tests_ask_for_the_fixture() -> None:
    class Item:
        def __init__(self, nodeid: str, fixturenames: list[str]) -> None:
            self.nodeid, self.fixturenames = nodeid, fixturenames

    class Session:
        items = [
            Item("tests/e2e/test_a.py::one", ["gate", "shared_stacks"]),
            Item("tests/e2e/test_a.py::two", ["gate", "shared_stacks"]),
            Item("tests/e2e/test_b.py::one", ["tmp_path"]),
            Item("tests/e2e/test_c.py::one", ["stack", "shared_stacks"]),
        ]

    assert shared.modules_using(Session(), "shared_stacks") == ["tests/e2e/test_a.py", "tests/e2e/test_c.py"]
