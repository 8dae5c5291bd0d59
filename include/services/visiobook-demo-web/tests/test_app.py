"""Unit tests: routing, health, metrics, configuration. Run: python3 -m unittest"""

from __future__ import annotations

import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import app  # noqa: E402
import faults  # noqa: E402
from metrics import Registry  # noqa: E402


class ConfigTest(unittest.TestCase):
    def test_version_from_env_wins(self) -> None:
        self.assertEqual(app.read_version(environ={"APP_VERSION": "9.9.9"}), "9.9.9")

    def test_version_from_file(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "VERSION").write_text("2.0.1\n")
            self.assertEqual(app.read_version(Path(tmp), environ={}), "2.0.1")
            self.assertEqual(app.read_version(Path(tmp, "missing"), environ={}), "0.0.0-dev")

    def test_commit(self) -> None:
        self.assertEqual(app.read_commit(environ={"APP_COMMIT": "abc"}), "abc")
        self.assertEqual(app.read_commit(environ={"GIT_COMMIT": "def"}), "def")
        self.assertEqual(app.read_commit(environ={}), "unknown")

    def test_broken_by_env_or_file(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            self.assertIsNone(app.broken_reason(root, environ={}))
            self.assertIn("DEMO_FAIL_HEALTH", app.broken_reason(root, environ={"DEMO_FAIL_HEALTH": "1"}) or "")
            self.assertIsNone(app.broken_reason(root, environ={"DEMO_FAIL_HEALTH": "0"}))
            (root / "BROKEN").touch()
            self.assertIn("BROKEN", app.broken_reason(root, environ={}) or "")


class RoutingTest(unittest.TestCase):
    def setUp(self) -> None:
        self.app = app.App(version="1.2.3", commit="c0ffee")

    def test_index_shows_version(self) -> None:
        code, ctype, body = self.app.handle("GET", "/")
        self.assertEqual(code, 200)
        self.assertIn("text/html", ctype)
        self.assertIn(b"version 1.2.3", body)

    def test_health_ok(self) -> None:
        code, _, body = self.app.handle("GET", "/health")
        data = json.loads(body)
        self.assertEqual(code, 200)
        self.assertEqual((data["status"], data["version"], data["commit"]), ("ok", "1.2.3", "c0ffee"))

    def test_health_broken(self) -> None:
        broken = app.App(version="1.2.3", commit="c0ffee", broken="test")
        code, _, body = broken.handle("GET", "/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["status"], "failing")

    def test_books(self) -> None:
        code, _, body = self.app.handle("GET", "/api/books")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["count"], len(app.BOOKS))
        _, _, body = self.app.handle("GET", "/api/books?q=hugo")
        self.assertEqual([b["id"] for b in json.loads(body)["books"]], [2])
        code, _, body = self.app.handle("GET", "/api/books/3")
        self.assertEqual((code, json.loads(body)["author"]), (200, "Jules Verne"))
        self.assertEqual(self.app.handle("GET", "/api/books/99")[0], 404)

    def test_unknown_and_method(self) -> None:
        self.assertEqual(self.app.handle("GET", "/nope")[0], 404)
        self.assertEqual(self.app.handle("DELETE", "/")[0], 405)

    def test_route_labels_bound_cardinality(self) -> None:
        self.assertEqual(app.App.route_label("/api/books/7"), "/api/books/{id}")
        self.assertEqual(app.App.route_label("/random/123"), "other")

    def test_metrics_text(self) -> None:
        self.app.observe(target="/health", code=200, seconds=0.003)
        self.app.observe(target="/x", code=404, seconds=0.2)
        code, ctype, body = self.app.handle("GET", "/metrics")
        text = body.decode()
        self.assertEqual(code, 200)
        self.assertIn("version=0.0.4", ctype)
        self.assertIn('http_requests_total{service="visiobook-demo-web",code="200",path="/health"} 1', text)
        self.assertIn('http_requests_total{service="visiobook-demo-web",code="404",path="other"} 1', text)
        self.assertIn(
            'http_request_duration_seconds_bucket{service="visiobook-demo-web",path="/health",le="0.005"} 1', text
        )
        self.assertIn(
            'http_request_duration_seconds_bucket{service="visiobook-demo-web",path="other",le="+Inf"} 1', text
        )
        self.assertIn('app_info{service="visiobook-demo-web",version="1.2.3",commit="c0ffee"} 1', text)
        self.assertIn("# TYPE http_request_duration_seconds histogram", text)


class InjectedFaultsTest(unittest.TestCase):
    """SLOW_IN / ERRORS_IN: user requests degrade, /health and /metrics do not."""

    def make(self, **kwargs: float) -> tuple[app.App, list[float]]:
        slept: list[float] = []
        injected = faults.Faults(**kwargs, clock=lambda: 0.0)
        return app.App(version="1.2.3", commit="c0ffee", injected=injected, sleep=slept.append), slept

    def test_erroring_release_fails_user_requests_only(self) -> None:
        application, _ = self.make(errors_after=0)
        self.assertEqual(application.handle("GET", "/api/books")[0], 500)
        self.assertEqual(application.handle("GET", "/")[0], 500)
        code, _, body = application.handle("GET", "/health")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["faults"], ["HTTP 500 from 0s after start (ERRORS_IN)"])
        self.assertEqual(application.handle("GET", "/metrics")[0], 200)

    def test_slow_release_sleeps_on_user_requests_only(self) -> None:
        application, slept = self.make(slow_after=0, slow_seconds=4)
        self.assertEqual(application.handle("GET", "/api/books")[0], 200)
        application.handle("GET", "/health")
        application.handle("GET", "/metrics")
        self.assertEqual(slept, [4])

    def test_not_yet_degraded(self) -> None:
        application, slept = self.make(slow_after=60, errors_after=60)
        self.assertEqual(application.handle("GET", "/api/books")[0], 200)
        self.assertEqual(slept, [])

    def test_markers_in_the_image_select_the_environment(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "ERRORS_IN").write_text("production@120s\n")
            injected = faults.Faults.from_markers(Path(tmp), {"APP_ENVIRONMENT": "production"})
        self.assertEqual(injected.errors_after, 120.0)

    def test_error_series_exist_before_any_error(self) -> None:
        text = app.App(version="1", commit="c").handle("GET", "/metrics")[2].decode()
        self.assertIn('http_requests_total{service="visiobook-demo-web",code="500",path="/api/books"} 0', text)


class MetricsTest(unittest.TestCase):
    def test_label_mismatch_rejected(self) -> None:
        counter = Registry().counter("x_total", "x", ("a",))
        with self.assertRaises(ValueError):
            counter.inc(b="1")
        with self.assertRaises(ValueError):
            counter.inc(-1, a="1")

    def test_escaping_and_values(self) -> None:
        reg = Registry()
        counter = reg.counter("x_total", "x", ("a",))
        counter.inc(2, a='q"uote')
        hist = reg.histogram("h_seconds", "h", buckets=(1.0,))
        hist.observe(0.5)
        hist.observe(3)
        self.assertEqual(counter.value(a='q"uote'), 2)
        self.assertEqual(hist.count(), 2)
        text = reg.render()
        self.assertIn('x_total{a="q\\"uote"} 2', text)
        self.assertIn('h_seconds_bucket{le="1"} 1', text)
        self.assertIn("h_seconds_sum 3.5", text)


if __name__ == "__main__":
    unittest.main()
