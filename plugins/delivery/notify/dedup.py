"""Short-lived marks of what was already sent, so that a repeated failure callback posts once.

Airflow may run a task's failure callback twice for one failure: after a heartbeat
timeout the scheduler sends one, then its own executor event produces a "state
mismatch" that sends a second, and the dag-processor runs both, one after the other,
on the same host. A mark is an empty file named after a hash of the key, in
``DELIVERY_NOTIFY_STATE_DIR`` (default: ``delivery-notify-sent`` in the temp
directory), written once the destination accepted the message. It is cheap and
needs no database, Variable or XCom (a callback in the dag-processor cannot write
them). Its limits are accepted: two callbacks running at the same moment, or on two
hosts, may both send; PagerDuty still keeps one incident (dedup key), and a second
Slack or e-mail message is a nuisance, not a loss. Any file-system error means
"not seen": a mark may never stop a notification.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

STATE_DIR_ENV = "DELIVERY_NOTIFY_STATE_DIR"
MAX_TTL_S = 86400.0
"""Marks older than this are deleted whoever wrote them."""


def default_directory() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path(tempfile.gettempdir()) / "delivery-notify-sent")


class SentMarks:
    """Marks that expire after ``ttl_s`` seconds."""

    def __init__(self, *, ttl_s: float, directory: Path | None = None) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be between 0 and {MAX_TTL_S:.0f} seconds, got {ttl_s!r}")
        self.ttl_s = ttl_s
        self.directory = directory or default_directory()

    def _path(self, key: str) -> Path:
        return self.directory / hashlib.sha256(key.encode()).hexdigest()[:40]

    def seen(self, key: str) -> bool:
        try:
            return time.time() - self._path(key).stat().st_mtime < self.ttl_s
        except OSError:
            return False

    def mark(self, key: str) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._path(key).touch()
            self._prune()
        except OSError as err:
            log.debug("could not mark %s as sent: %s", key, err)

    def _prune(self) -> None:
        cutoff = time.time() - MAX_TTL_S
        for entry in os.scandir(self.directory):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:  # another process pruned it first
                continue
