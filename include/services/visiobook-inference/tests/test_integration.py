"""Integration tests: the real HTTP server, in a thread and as a process."""

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


def call(url: str, payload: object | None = None) -> tuple[int, dict]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class InProcessTest(unittest.TestCase):
    def test_predict_over_http(self) -> None:
        application = app.App(version="0.3.0", commit="abc", model_path=ROOT / "model.json", device="cpu")
        server = app.make_server(application, host="127.0.0.1", port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        self.assertEqual(call(base + "/health")[1]["model_loaded"], True)
        code, body = call(base + "/predict", {"text": "spaceship robots"})
        self.assertEqual((code, body["label"], body["device"]), (200, "science_fiction", "cpu"))
        self.assertEqual(call(base + "/predict", {"bad": 1})[0], 400)
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        self.assertIn('http_requests_total{service="visiobook-inference",code="200",path="/predict"} 1', text)
        self.assertIn("inference_request_duration_seconds_bucket", text)


class ProcessTest(unittest.TestCase):
    def test_server_process(self) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DEMO_FAIL_HEALTH", "APP_VERSION")}
        env.update(HOST="127.0.0.1", PORT=str(port), APP_COMMIT="feedbeef", INFERENCE_DEVICE="cpu", LOG_LEVEL="WARNING")
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (proc.terminate(), proc.wait(10), proc.stderr and proc.stderr.close()))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                code, health = call(base + "/health")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.fail("server did not start")
                time.sleep(0.05)
        self.assertEqual((code, health["commit"], health["device"]), (200, "feedbeef", "cpu"))
        code, body = call(base + "/predict", {"texts": ["dragon magic", "police detective"]})
        self.assertEqual([p["label"] for p in body["predictions"]], ["fantasy", "mystery"])


if __name__ == "__main__":
    unittest.main()
