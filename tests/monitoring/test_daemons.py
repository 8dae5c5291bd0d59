"""Daemon: start, adopt, restart, stop, with small real processes (no server)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from delivery.devenv.daemons import Daemon, DaemonError
from tests.helpers import free_port

SLEEPER = "import signal, sys, time; signal.signal(signal.SIGHUP, lambda *a: print('reload', flush=True)); time.sleep(120)"


def _daemon(folder: Path, *extra: str, **kwargs: object) -> Daemon:
    # The folder is in the command line: it is the marker that tells our process from a stranger.
    argv = [sys.executable, "-c", SLEEPER, str(folder), *extra]
    return Daemon(name="sleeper", argv=argv, folder=folder, marker=str(folder), **kwargs)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_start_adopt_restart_stop(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    assert daemon.start(timeout=10) == "started"
    pid = daemon.pid()
    assert pid and _alive(pid)
    assert daemon.start(timeout=10) == "adopted"  # same command line: kept, asked to reload
    assert daemon.pid() == pid
    changed = _daemon(tmp_path, "--port=2")
    assert changed.start(timeout=10) == "restarted"
    new_pid = changed.pid()
    assert new_pid and new_pid != pid and not _alive(pid)
    assert changed.stop() is True
    assert not _alive(new_pid) and not changed.pid_file.exists()
    assert changed.stop() is False
    assert "reload" in daemon.log_file.read_text()


def test_a_pid_file_naming_another_program_is_never_trusted(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    tmp_path.joinpath("sleeper.pid").write_text(f"{os.getpid()}\n")  # this test process: not ours
    assert daemon.pid() is None
    assert daemon.stop() is False  # and nothing was signalled: we are still here
    assert daemon.start(timeout=10) == "started"
    assert daemon.pid() not in (None, os.getpid())
    daemon.stop()


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        daemon = _daemon(tmp_path, port=port)
        with pytest.raises(DaemonError, match=f"port {port} on 127.0.0.1 is already in use"):
            daemon.start(timeout=5)
    assert not daemon.pid_file.exists()


def test_a_process_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad flag --x'); sys.exit(3)", str(tmp_path)]
    daemon = Daemon(
        name="quitter", argv=argv, folder=tmp_path, marker=str(tmp_path), ready_url="http://127.0.0.1:9/"
    )
    with pytest.raises(
        DaemonError, match=r"quitter exited during start-up; see .*quitter.log:\nbad flag --x"
    ):
        daemon.start(timeout=10)
