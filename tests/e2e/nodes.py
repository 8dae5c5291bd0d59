"""The distributed stack's components as nodes on one machine: a hostname each, and the loss of one.

In ``docker-compose.yaml`` every component is a container, a host of its own: a task
instance's ``hostname`` names the worker that ran it. Run natively on one machine, they would
all report the machine's name, so :func:`node_hostnames` gives each component its compose
service name (``airflow-worker-1``...) through Airflow's ``[core] hostname_callable``. The
callable lives in the Airflow home's ``config`` folder, which Airflow puts on ``sys.path``
(``airflow/settings.py``, ``prepare_syspath_for_config_and_plugins``); components get their
name from ``DELIVERY_COMPONENT`` (:mod:`delivery.devenv.topology`), other processes (``airflow
db migrate``, the CLI) keep the machine's name.

:func:`kill_node` is the loss of a node: ``kill -9`` of every process of a component,
including what a stage started in a session of its own (``SubprocessHook`` starts the stage's
command with ``start_new_session``), which a ``kill -9`` of the component's process group
would leave running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from delivery.devenv import processes

HOSTNAME_MODULE = "delivery_node_hostname"
_CALLABLE = '''"""[core] hostname_callable of the end-to-end tests: each component is a node of its own."""
import os
import socket


def hostname():
    return os.environ.get("DELIVERY_COMPONENT") or socket.getfqdn()
'''


def node_hostnames(home: Path) -> dict[str, str]:
    """Install the hostname callable in ``home``; the environment that makes Airflow use it."""
    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / f"{HOSTNAME_MODULE}.py").write_text(_CALLABLE)
    return {"AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{HOSTNAME_MODULE}.hostname"}


def _table() -> list[processes.ProcInfo]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := processes.stat(int(entry.name))) is not None:
            found.append(info)
    return found


def node_processes(leader: int) -> set[int]:
    """The session led by ``leader`` and every descendant of it, in whatever session."""
    table = _table()
    found = {info.pid for info in table if info.sid == leader}
    children: dict[int, list[int]] = {}
    for info in table:
        children.setdefault(info.ppid, []).append(info.pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal(pids: Sequence[int] | set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_node(leader: int, *, only_if: Callable[[], bool] | None = None) -> list[int]:
    """``kill -9`` of the whole node led by ``leader``; the pids killed.

    The tree is frozen first (``SIGSTOP``) until no new process appears, so that nothing forks
    or escapes to another parent between listing the processes and killing them. ``only_if`` is
    asked once the node is frozen: if it says no (the stage to interrupt ended before the
    freeze), the node is thawed and nothing is killed (``[]``).
    """
    frozen: set[int] = set()
    while new := node_processes(leader) - frozen:
        _signal(new, signal.SIGSTOP)
        frozen |= new
    if only_if is not None and not only_if():
        _signal(frozen, signal.SIGCONT)
        return []
    _signal(frozen, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while any(processes.alive(pid) for pid in frozen) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sorted(pid for pid in frozen if processes.alive(pid))
    assert not left, f"processes of node {leader} survived kill -9: {left}"
    return sorted(frozen)


def stage_process(service: str, stage: str) -> int | None:
    """The pid of the stage's command runner (``delivery.profiles.local.shell``), if it runs now."""
    for info in _table():
        argv = processes.cmdline(info.pid)
        if "delivery.profiles.local.shell" in argv and argv[-4:] == ["--service", service, "--stage", stage]:
            return info.pid
    return None
