"""What one test run's pytest processes share: started once by the first that needs it, stopped at the end.

Under pytest-xdist each worker is a process of its own, and a ``scope="session"`` fixture runs
once per worker. A resource that costs an Airflow stack's start is shared instead: the first
process that needs it starts it under a lock and writes what attaching to it takes into the
run's shared folder (``$DELIVERY_E2E_SHARED_DIR``, made by tests/conftest.py); the others wait
on the lock, then attach. It outlives the worker that started it, and stops once the last test
module that uses it is done (:func:`release`): an idle Airflow stack costs a few CPU-seconds a
minute that the modules still running need. Whatever is still running when the session ends
(a run interrupted, a module that never got to release it) is stopped by the process that runs
the session (:func:`stop_all`, called from tests/conftest.py), whichever worker started it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import tempfile
import traceback
from collections.abc import Callable, Collection
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
        if not record.exists() or json.loads(record.read_text()).get("released"):
            folder = shared / name
            if folder.exists():  # a released resource, asked for again: a new start in a new folder
                folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared))
            else:
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


def modules_using(session: Any, fixture: str) -> list[str]:
    """The test files of this run (after selection) with a test that asks for ``fixture``."""
    return sorted(
        {
            item.nodeid.split("::", 1)[0]
            for item in session.items
            if fixture in getattr(item, "fixturenames", ())
        }
    )


def release(name: str, user: str, users: Collection[str]) -> bool:
    """``user`` (a test file) is done with the resource ``name``: stop it once every one of ``users``
    is. Under pytest-xdist every worker collects the whole run, so each knows the same ``users``.
    True when this call stopped it."""
    from delivery.gitops.locks import file_lock

    shared = shared_folder()
    record = shared / f"{name}.json"
    with file_lock(shared / f"{name}.lock", timeout_s=None, what=f"the shared {name}"):
        if not record.exists():
            return False
        data = json.loads(record.read_text())
        done = sorted({*data.get("done", []), user})
        data["done"] = done
        last = "stop" in data and not data.get("released") and set(done) >= set(users)
        if last:
            _stop(data)
            data["released"] = True
        record.write_text(json.dumps(data))
    return last


def _stop(data: Info) -> None:
    module, _, function = data["stop"].partition(":")
    getattr(importlib.import_module(module), function)(data["info"])


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
        if "stop" not in data or data.get("released"):
            continue
        try:
            _stop(data)
        except Exception as exc:
            errors.append(f"{record.stem}: {type(exc).__name__}: {exc}")
    return errors
