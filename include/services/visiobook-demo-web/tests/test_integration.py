"""Integration test: start the real server on a free port and talk HTTP to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import app  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class ServerTest(unittest.TestCase):
    def start(self, **env: str) -> str:
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if k not in ("DEMO_FAIL_HEALTH", "APP_VERSION")}
        full_env.update(HOST="127.0.0.1", PORT=str(port), APP_COMMIT="feedbeef", **env)
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            finally:
                if proc.stderr:
                    proc.stderr.close()

        self.addCleanup(stop)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.fail(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return base
            except OSError:
                time.sleep(0.05)
        self.fail("server did not listen within 10 s")

    def test_serves_health_pages_and_metrics(self) -> None:
        base = self.start()
        code, body = get(base + "/health")
        health = json.loads(body)
        self.assertEqual(code, 200)
        self.assertEqual(health["status"], "ok")
        self.assertEqual(health["commit"], "feedbeef")
        self.assertEqual(health["version"], (ROOT / "VERSION").read_text().strip())
        code, body = get(base + "/")
        self.assertEqual(code, 200)
        self.assertIn(health["version"].encode(), body)
        code, body = get(base + "/api/books")
        self.assertEqual((code, json.loads(body)["count"]), (200, 5))
        code, body = get(base + "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'http_requests_total{service="visiobook-demo-web",code="200",path="/health"} 1', body)

    def test_broken_release_fails_health(self) -> None:
        base = self.start(DEMO_FAIL_HEALTH="1")
        code, body = get(base + "/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["status"], "failing")
        self.assertEqual(get(base + "/")[0], 200)


class InProcessServerTest(unittest.TestCase):
    """The same HTTP handler, served from a thread (so coverage sees it)."""

    def test_handler(self) -> None:
        server = app.make_server(app.App(version="3.0.0", commit="abc"), host="127.0.0.1", port=0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        self.assertEqual(json.loads(get(base + "/health")[1])["version"], "3.0.0")
        self.assertEqual(get(base + "/api/books/1")[0], 200)
        self.assertEqual(get(base + "/missing")[0], 404)
        request = urllib.request.Request(base + "/health", method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as resp:
            self.assertEqual((resp.status, resp.read()), (200, b""))
        request = urllib.request.Request(base + "/api/books", data=b"{}", method="POST")
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            urllib.request.urlopen(request, timeout=5)
        self.assertEqual(ctx.exception.code, 405)
        # The server counts a request after answering it: poll briefly instead of racing it.
        deadline = time.monotonic() + 5
        metrics = ""
        while 'code="405",path="/api/books"' not in metrics and time.monotonic() < deadline:
            metrics = get(base + "/metrics")[1].decode()
            time.sleep(0.05)
        self.assertIn('code="405",path="/api/books"', metrics)


if __name__ == "__main__":
    unittest.main()
