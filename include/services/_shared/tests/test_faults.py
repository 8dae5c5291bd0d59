"""Unit tests of the fault markers (faults.py). Run: python3 -m unittest"""

from __future__ import annotations

import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faults  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MarkerTest(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name)

    def marker(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return path

    def test_start_delay_per_environment(self) -> None:
        path = self.marker("ERRORS_IN", "staging\nproduction@2m  # two minutes after start\n")
        self.assertEqual(faults.start_delay(path, "staging"), 0.0)
        self.assertEqual(faults.start_delay(path, "production"), 120.0)
        self.assertIsNone(faults.start_delay(path, "dev"))
        self.assertIsNone(faults.start_delay(path, ""))
        self.assertIsNone(faults.start_delay(self.root / "SLOW_IN", "production"))

    def test_delay_units_and_earliest_entry(self) -> None:
        path = self.marker("SLOW_IN", "production@90s production@30 production@1.5m")
        self.assertEqual(faults.start_delay(path, "production"), 30.0)

    def test_bad_entry_is_refused_with_the_file_name(self) -> None:
        path = self.marker("SLOW_IN", "production@soon")
        with self.assertRaisesRegex(faults.MarkerError, r"SLOW_IN: entry 'production@soon'"):
            faults.start_delay(path, "production")

    def test_broken_reasons(self) -> None:
        self.assertIsNone(faults.broken_reason(self.root, {}))
        self.assertIn("DEMO_FAIL_HEALTH", faults.broken_reason(self.root, {"DEMO_FAIL_HEALTH": "yes"}) or "")
        self.marker("BROKEN_IN", "production")
        self.assertIsNone(faults.broken_reason(self.root, {"APP_ENVIRONMENT": "staging"}))
        self.assertIn("BROKEN_IN", faults.broken_reason(self.root, {"APP_ENVIRONMENT": "production"}) or "")
        self.marker("BROKEN", "")
        self.assertIn("BROKEN marker", faults.broken_reason(self.root, {"APP_ENVIRONMENT": "staging"}) or "")

    def test_from_markers_reads_the_environment(self) -> None:
        self.marker("SLOW_IN", "production@10")
        self.marker("ERRORS_IN", "staging")
        prod = faults.Faults.from_markers(self.root, {"APP_ENVIRONMENT": "production"})
        self.assertEqual((prod.slow_after, prod.errors_after), (10.0, None))
        staging = faults.Faults.from_markers(self.root, {"APP_ENVIRONMENT": "staging"})
        self.assertEqual((staging.slow_after, staging.errors_after), (None, 0.0))


class FaultsTest(unittest.TestCase):
    def test_faults_switch_on_after_their_delay(self) -> None:
        clock = Clock()
        injected = faults.Faults(slow_after=60, errors_after=120, slow_seconds=4, clock=clock)
        self.assertEqual((injected.delay(), injected.failing()), (0.0, False))
        clock.now += 60
        self.assertEqual((injected.delay(), injected.failing()), (4, False))
        clock.now += 60
        self.assertEqual((injected.delay(), injected.failing()), (4, True))
        self.assertEqual(
            injected.describe(),
            ["slow (+4s) from 60s after start (SLOW_IN)", "HTTP 500 from 120s after start (ERRORS_IN)"],
        )

    def test_no_marker_no_fault(self) -> None:
        injected = faults.Faults()
        self.assertEqual((injected.delay(), injected.failing(), injected.describe()), (0.0, False, []))


if __name__ == "__main__":
    unittest.main()
