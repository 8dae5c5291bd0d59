"""Deliberate faults, for pipeline demos and tests: a release that is broken, slow or erroring.

Each fault is a marker file committed next to app.py (the Dockerfile copies it into the
image), so a fault ships like any other change and only the environments it names see it:

    BROKEN        /health answers 503 everywhere (the health gate fails the deploy)
    BROKEN_IN     /health answers 503 in the listed environments (config drift)
    SLOW_IN       user requests take SLOW_SECONDS longer in the listed environments
    ERRORS_IN     user requests answer 500 in the listed environments

BROKEN_IN lists environment names. SLOW_IN and ERRORS_IN entries are ``ENV`` (from the start)
or ``ENV@DELAY`` (``production@120``, ``production@120s``, ``production@2m``): the fault starts
DELAY after the process started, so the release passes its health check and verification,
then degrades. Entries are separated by spaces or new lines; ``#`` starts a comment.

"User requests" are every request but /health and /metrics: a slow or erroring release is up
(its health gate passes) and still scraped; only its metrics show that it is bad.
The environment variable DEMO_FAIL_HEALTH=1 acts like BROKEN.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

TRUTHY = {"1", "true", "yes", "on"}
SLOW_SECONDS = 4.0  # above the 3 s p95 of the P1 latency alert, far above the 0.5 s verification budget
_ENTRY = re.compile(r"^([A-Za-z0-9_.-]+)(?:@(\d+(?:\.\d+)?)(s|m)?)?$")


class MarkerError(ValueError):
    """A marker file holds an entry that is not ``ENV`` or ``ENV@DELAY``."""


def _entries(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [word for line in lines for word in line.split("#", 1)[0].split()]


def start_delay(path: Path, environment: str) -> float | None:
    """Seconds after start at which the fault of marker ``path`` begins in ``environment``, or None."""
    if not environment or not path.exists():
        return None
    delays = []
    for entry in _entries(path):
        match = _ENTRY.match(entry)
        if not match:
            raise MarkerError(f"{path.name}: entry {entry!r} should be ENV or ENV@DELAY (production@120s)")
        name, amount, unit = match.groups()
        if name == environment:
            delays.append(float(amount or 0) * (60 if unit == "m" else 1))
    return min(delays) if delays else None


def broken_reason(root: Path, environ: dict[str, str] | None = None) -> str | None:
    """Why /health must answer 503 (BROKEN, BROKEN_IN, DEMO_FAIL_HEALTH), or None."""
    env = os.environ if environ is None else environ
    if env.get("DEMO_FAIL_HEALTH", "").strip().lower() in TRUTHY:
        return "DEMO_FAIL_HEALTH is set"
    if (root / "BROKEN").exists():
        return "release built with a BROKEN marker file"
    environment = env.get("APP_ENVIRONMENT", "")
    broken_in = root / "BROKEN_IN"
    if environment and broken_in.exists() and environment in _entries(broken_in):
        return f"release is broken in {environment} (BROKEN_IN marker file)"
    return None


class Faults:
    """The SLOW_IN / ERRORS_IN faults of one process, switched on by time since start."""

    def __init__(
        self,
        *,
        slow_after: float | None = None,
        errors_after: float | None = None,
        slow_seconds: float = SLOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slow_after = slow_after
        self.errors_after = errors_after
        self.slow_seconds = slow_seconds
        self.clock = clock
        self.started = clock()

    @classmethod
    def from_markers(cls, root: Path, environ: dict[str, str] | None = None) -> Faults:
        env = os.environ if environ is None else environ
        environment = env.get("APP_ENVIRONMENT", "")
        return cls(
            slow_after=start_delay(root / "SLOW_IN", environment),
            errors_after=start_delay(root / "ERRORS_IN", environment),
        )

    def _active(self, after: float | None) -> bool:
        return after is not None and self.clock() - self.started >= after

    def delay(self) -> float:
        """Extra seconds a user request takes now."""
        return self.slow_seconds if self._active(self.slow_after) else 0.0

    def failing(self) -> bool:
        """True when user requests must answer 500 now."""
        return self._active(self.errors_after)

    def describe(self) -> list[str]:
        """The configured faults, for /health and the start-up log."""
        out = []
        if self.slow_after is not None:
            out.append(f"slow (+{self.slow_seconds:g}s) from {self.slow_after:g}s after start (SLOW_IN)")
        if self.errors_after is not None:
            out.append(f"HTTP 500 from {self.errors_after:g}s after start (ERRORS_IN)")
        return out
