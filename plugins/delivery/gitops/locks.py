"""Exclusive ``fcntl`` locks on lock files, shared by the GitOps clone, the mirrors and the workspaces.

A lock file may be removed by whoever holds it (a workspace cleanup removes
the workspace, then its lock file). A process that opened the old file before
it was removed would otherwise "hold" a lock nobody else sees, so after
``flock`` succeeds the lock is only kept if the path still names the locked
file; otherwise it is taken again on the new file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from typing import TYPE_CHECKING

from delivery.gitops.errors import GitOpsLockTimeoutError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["file_lock"]

_POLL_S = 0.02


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def file_lock(path: Path, *, timeout_s: float | None, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed).

    ``timeout_s`` None waits for ever; ``0`` tries once. When the lock cannot be
    had in time, :class:`GitOpsLockTimeoutError` says that ``what`` stayed locked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not _try_lock(fd):
                if deadline is not None and time.monotonic() >= deadline:
                    raise GitOpsLockTimeoutError(f"{what} stayed locked for {timeout_s:.0f}s")
                time.sleep(_POLL_S)
            if _still_named(fd, path):
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
            fcntl.flock(fd, fcntl.LOCK_UN)  # removed while we waited: lock the new file
        finally:
            os.close(fd)
