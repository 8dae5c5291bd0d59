"""Sessions with pid files for the local Airflow: start, adopt after a crash, find leftovers, stop.

Every component we start leads a session of its own (so its pid is also its process group
and session id). Its pid file records the pid and the process's start time, so that after a
crash (``kill -9`` of a process group, a machine crash) a pid that is gone, or that now
belongs to an unrelated process (pids are reused after a reboot), is not taken for ours:
:func:`adoptable` only accepts the same process, still leading its group.

Airflow's task supervisor moves each task into a process group of its own (``setpgid``),
so killing a component's group leaves its tasks running; they stay in the component's
session, though, and Linux does not hand out a pid while a session still uses it as its id.
:func:`leftovers` therefore finds them by session once the leader is dead.
Process titles (``setproctitle``) overwrite ``/proc/<pid>/environ``, so nothing here relies
on the environment of a process.

Linux only (reads ``/proc``), like the rest of the local profile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot: with the pid, it names one process


def stat(pid: int) -> ProcInfo | None:
    """The process, or None when it is gone (a zombie counts as gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return ProcInfo(
        pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]), start=int(fields[19])
    )


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    return pid > 0 and stat(pid) is not None


def _table() -> list[ProcInfo]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := stat(int(entry.name))) is not None:
            found.append(info)
    return found


def session(sid: int) -> list[int]:
    """Live members of the session ``sid`` (its leader included, if alive)."""
    return sorted(info.pid for info in _table() if info.sid == sid)


def record(pid_file: Path, pid: int) -> None:
    info = stat(pid)
    pid_file.write_text(f"{pid} {info.start if info else ''}".rstrip() + "\n")


def read_record(pid_file: Path) -> tuple[int, int | None] | None:
    try:
        fields = pid_file.read_text().split()
        return int(fields[0]), int(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return None


def adoptable(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file`` if that same process still leads its group, else None."""
    rec = read_record(pid_file)
    if rec is None:
        return None
    pid, start = rec
    info = stat(pid)
    if info is None or info.pgid != pid:
        return None
    if start is None:  # a pid file of an older version: trust it only for an Airflow process
        return pid if any("airflow" in arg for arg in cmdline(pid)) else None
    return pid if info.start == start else None


def leftovers(pid_file: Path) -> list[int]:
    """Processes left in the session recorded in ``pid_file`` after its leader died (a crash)."""
    rec = read_record(pid_file)
    if rec is None or alive(rec[0]):
        # Either the leader is alive (adopt it, or it is an unrelated process that got the pid
        # after a reboot), or nothing was recorded.
        return []
    return session(rec[0])


def _wait_gone(pids: Sequence[int], *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def terminate(pids: Sequence[int], *, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``timeout`` seconds."""
    if not pids:
        return
    _signal_all(pids, signal.SIGTERM)
    if not _wait_gone(pids, timeout=timeout):
        _signal_all([p for p in pids if alive(p)], signal.SIGKILL)
        _wait_gone(pids, timeout=10.0)


def stop_sessions(pid_files: Sequence[Path], *, timeout: float = 30.0) -> None:
    """Stop the recorded leaders and every process of their sessions (their tasks too); forget the files."""
    leaders = {pid_file: adoptable(pid_file) for pid_file in pid_files}
    # The leaders first, so that they can stop their own children cleanly; then what is left.
    terminate([pid for pid in leaders.values() if pid], timeout=timeout)
    for pid_file, pid in leaders.items():
        terminate(session(pid) if pid else leftovers(pid_file), timeout=10.0)
        pid_file.unlink(missing_ok=True)


def spawn(
    argv: Sequence[str], *, env: Mapping[str, str], pid_file: Path, log_file: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """Start ``argv`` leading a new session, output appended to ``log_file``, recorded in ``pid_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )
    record(pid_file, proc.pid)
    return proc
