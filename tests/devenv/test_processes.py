"""Pid files that survive a crash: only the very process recorded is adopted; what a dead leader left is found."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from delivery.devenv import processes
from delivery.devenv.postgres import port_in_use
from delivery.devenv.topology import Standalone
from tests.helpers import free_port

# A leader that starts a child in a process group of its own, as Airflow's task supervisor does.
LEADER_WITH_TASK = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "120"], process_group=0)
print(child.pid, flush=True)
time.sleep(120)
"""


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_a_spawned_leader_is_adoptable_and_stops_with_its_session(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "leader.pid"
    log = tmp_path / "leader.log"
    proc = processes.spawn(
        [sys.executable, "-c", LEADER_WITH_TASK],
        env=os.environ,
        pid_file=pid_file,
        log_file=log,
        cwd=tmp_path,
    )
    _wait_for(lambda: log.read_text().strip())
    child = int(log.read_text().split()[0])
    assert processes.adoptable(pid_file) == proc.pid
    assert processes.session(proc.pid) == sorted([proc.pid, child])
    assert processes.leftovers(pid_file) == []

    processes.stop_sessions([pid_file], timeout=5)

    proc.wait(timeout=5)
    assert not processes.alive(child)
    assert not pid_file.exists()


def test_a_task_left_by_a_killed_group_is_a_leftover(tmp_path: Path) -> None:
    pid_file = tmp_path / "leader.pid"
    log = tmp_path / "leader.log"
    proc = processes.spawn(
        [sys.executable, "-c", LEADER_WITH_TASK],
        env=os.environ,
        pid_file=pid_file,
        log_file=log,
        cwd=tmp_path,
    )
    _wait_for(lambda: log.read_text().strip())
    child = int(log.read_text().split()[0])
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the crash: the group dies, the task in its own group does not
        proc.wait(timeout=5)
        assert processes.alive(child)
        assert processes.adoptable(pid_file) is None
        assert processes.leftovers(pid_file) == [child]
    finally:
        processes.stop_sessions([pid_file], timeout=5)
    assert not processes.alive(child)


def test_a_pid_reused_by_another_process_is_not_adopted(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        pid_file = tmp_path / "stale.pid"
        pid_file.write_text(f"{other.pid} 1\n")  # same pid, another start time: a reboot reused it
        assert processes.adoptable(pid_file) is None
        assert processes.leftovers(pid_file) == []  # and it is not ours to kill
        pid_file.write_text(
            f"{other.pid}\n"
        )  # an older pid file without a start time: not an Airflow process
        assert processes.adoptable(pid_file) is None
    finally:
        other.kill()
        other.wait()
    assert processes.alive(other.pid) is False


def test_a_dead_pid_is_neither_adopted_nor_searched(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file = tmp_path / "gone.pid"
    pid_file.write_text(f"{gone.pid} 12345\n")
    assert processes.adoptable(pid_file) is None
    assert processes.leftovers(pid_file) == []
    assert processes.adoptable(tmp_path / "missing.pid") is None
    (tmp_path / "garbage.pid").write_text("not a pid\n")
    assert processes.read_record(tmp_path / "garbage.pid") is None


# A leader whose child serves a port, as ``airflow standalone``'s api-server does.
LEADER_WITH_SERVER = """
import socket, subprocess, sys, time
port = int(sys.argv[1])
server = "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(); time.sleep(120)" % port
subprocess.Popen([sys.executable, "-c", server])
time.sleep(120)
"""


def test_a_server_left_by_a_killed_leader_is_stopped_before_its_port_is_judged(tmp_path: Path) -> None:
    port = free_port()
    standalone = Standalone(home=tmp_path)
    proc = processes.spawn(
        [sys.executable, "-c", LEADER_WITH_SERVER, str(port)],
        env=os.environ,
        pid_file=standalone.pid_file,
        log_file=tmp_path / "leader.log",
        cwd=tmp_path,
    )
    try:
        _wait_for(lambda: port_in_use(port))
        os.kill(proc.pid, signal.SIGKILL)  # the leader only: its api-server lives on, holding the port
        proc.wait(timeout=5)
        assert port_in_use(port)

        standalone.clear()

        assert not port_in_use(port)
        assert processes.leftovers(standalone.pid_file) == []
    finally:
        processes.stop_sessions([standalone.pid_file], timeout=5)
