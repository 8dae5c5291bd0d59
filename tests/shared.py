"""What one test run's pytest processes share: started once by the first that needs it, stopped at the end.

Under pytest-xdist each worker is a process of its own, and a ``scope="session"`` fixture runs
once per worker. A resource that costs an Airflow stack's start is shared instead: the first
process that needs it starts it under a lock and writes what attaching to it takes into the
run's shared folder (``$DELIVERY_E2E_SHARED_DIR``, made by tests/conftest.py); the others wait
on the lock, then attach. It outlives the worker that started it: the process that runs the
session stops every shared resource once all tests are done (:func:`stop_all`, called from
tests/conftest.py), whichever worker started it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, SHARED_DIR_ENV

Info = dict[str, Any]


def shared_folder() -> Path:
    return Path(os.environ[SHARED_DIR_ENV])


def shared_resource(name: str, start: Callable[[Path], Info], *, stop: Callable[[Info], None]) -> Info:
    """The resource ``name`` of this test run: started by ``start(folder)`` the first time.

    ``start`` gets a new folder of its own and returns what attaching to the resource (and
    ``stop``) needs, as JSON; it stops what it started if it fails. ``stop`` must be a
    module-level function: the session's process imports it by name to stop the resource at
    the end. If the start failed, every test that asks for the resource fails with its error.
    """
    import pytest

    from delivery.gitops.locks import file_lock

    shared = shared_folder()
    record = shared / f"{name}.json"
    with file_lock(shared / f"{name}.lock", timeout_s=None, what=f"the shared {name}"):
        if not record.exists():
            folder = shared / name
            folder.mkdir()
            try:
                info = start(folder)
            except (Exception, pytest.fail.Exception):  # pytest.fail: a missing platform, say
                data: Info = {"error": traceback.format_exc()}
            else:
                data = {"info": info, "stop": f"{_module_name(stop)}:{stop.__qualname__}"}
            record.write_text(json.dumps(data))
    data = json.loads(record.read_text())
    if "error" in data:
        pytest.fail(f"the shared {name} could not start:\n{data['error']}")
    return dict(data["info"])


def _module_name(function: Callable[..., Any]) -> str:
    """The dotted name that imports ``function``'s module from the project root: pytest may have
    imported a conftest under another name (``conftest``), which the session's process cannot."""
    path = Path(inspect.getfile(function)).resolve().with_suffix("")
    return ".".join(path.relative_to(ROOT).parts)


def stop_all(shared: Path) -> list[str]:
    """Stop every resource started under ``shared``; the errors, one line each (a stop never hides another)."""
    errors = []
    for record in sorted(shared.glob("*.json")):
        data = json.loads(record.read_text())
        if "stop" not in data:
            continue
        module, _, function = data["stop"].partition(":")
        try:
            getattr(importlib.import_module(module), function)(data["info"])
        except Exception as exc:
            errors.append(f"{record.stem}: {type(exc).__name__}: {exc}")
    return errors
