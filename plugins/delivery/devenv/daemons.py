"""Long-running local processes (Prometheus, Alertmanager...): start, adopt, reload, stop.

A :class:`Daemon` runs in its own session (process group), with a pid file, a log file and a
record of the command line it was started with. :meth:`Daemon.start` is idempotent: a
process started earlier with the same command line is adopted (and asked to reload its
configuration), one started with another command line is restarted. A pid file is only
trusted when its process is alive and its command line mentions ``marker`` (our state
folder): a pid reused by another program is never signalled.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from delivery.devenv import processes

log = logging.getLogger(__name__)


class DaemonError(RuntimeError):
    """A daemon could not start or stop; the message says why and where its log is."""


def _reaped(pid: int) -> bool:
    """True when ``pid`` was a finished child of this process (now reaped)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: someone else reaps it
        return False
    return done == pid


def _gone(pid: int) -> bool:
    """True once ``pid`` has finished exiting: reaped, absent, or a zombie."""
    return _reaped(pid) or not processes.alive(pid)


def _cmdline(pid: int) -> str:
    """The live process's command line, "" once it is gone."""
    return " ".join(processes.cmdline(pid)) if processes.alive(pid) else ""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass(kw_only=True)
class Daemon:
    """One process: ``argv`` run in ``folder`` (pid, log and command files named after ``name``)."""

    name: str
    argv: Sequence[str]
    folder: Path
    marker: str
    port: int | None = None
    ready_url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    reloads_on_sighup: bool = True  # False: SIGHUP would kill it (the Pushgateway), adopt as is

    @property
    def pid_file(self) -> Path:
        return self.folder / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def command_file(self) -> Path:
        return self.folder / f"{self.name}.cmd.json"

    def pid(self) -> int | None:
        """The pid of our running process, or None (no pid file, dead, or not ours)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _reaped(pid) or self.marker not in _cmdline(pid):
            return None
        return pid

    def _answers(self) -> bool:
        if self.ready_url is None:
            return True
        try:
            return requests.get(self.ready_url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def ready(self) -> bool:
        return self.pid() is not None and self._answers()

    def start(self, *, timeout: float = 60.0) -> str:
        """Start, or adopt the running process; returns ``started``, ``adopted`` or ``restarted``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        outcome = "started"
        if self.pid() is not None:
            if self._recorded_argv() == list(self.argv):
                self.reload()
                self.wait_ready(timeout=timeout)
                return "adopted"
            log.info("%s runs with another command line; restarting it", self.name)
            self.stop()
            outcome = "restarted"
        if self.port is not None and port_open(self.port):
            raise DaemonError(
                f"{self.name}: port {self.port} on 127.0.0.1 is already in use by another process"
            )
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                list(self.argv),
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.folder,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        self.command_file.write_text(json.dumps(list(self.argv)))
        self.wait_ready(timeout=timeout, proc=proc)
        log.info("%s %s (pid %d)", self.name, outcome, proc.pid)
        return outcome

    def _recorded_argv(self) -> list[str] | None:
        try:
            return list(json.loads(self.command_file.read_text()))
        except (OSError, ValueError):
            return None

    def wait_ready(self, *, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Wait until the ready URL answers 200 (without one: until the process has lived 1 s)."""

        # Our own child is watched through its Popen: a process that was just exec'd shows an
        # empty /proc/<pid>/cmdline for a moment, which pid() cannot tell from a dead one.
        def alive() -> bool:
            return proc.poll() is None if proc is not None else self.pid() is not None

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise DaemonError(
                    f"{self.name} exited during start-up; see {self.log_file}:\n{self.log_tail()}"
                )
            if self.ready_url is None:
                time.sleep(1.0)
                if alive():
                    return
            elif self._answers():
                return
            else:
                time.sleep(0.3)
        raise DaemonError(
            f"{self.name} did not answer {self.ready_url} within {timeout:.0f}s; see {self.log_file}:\n"
            + self.log_tail()
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def reload(self) -> None:
        """SIGHUP: Prometheus, Alertmanager and the traffic generator re-read their configuration."""
        pid = self.pid()
        if pid is not None and self.reloads_on_sighup:
            os.kill(pid, signal.SIGHUP)

    def stop(self, *, timeout: float = 15.0) -> bool:
        """Stop the process and its group; False when it was not running."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return True
            deadline = time.monotonic() + timeout
            # Not "its command line is empty": an exiting process loses it before it is gone.
            while time.monotonic() < deadline:
                if _gone(pid):
                    return True
                time.sleep(0.1)
            log.warning("%s (pid %d) ignored %s", self.name, pid, sig.name)
        return True
