"""A Slack stand-in on 127.0.0.1: incoming webhooks and ``chat.postMessage``.

It speaks the shapes the Slack SDK expects: a webhook answers ``200 ok`` (text),
the Web API answers ``{"ok": true, ...}``. Every request is recorded.
``fail_next(n, status)`` makes the next ``n`` requests fail, to prove that a
broken Slack never changes a pipeline's result.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass
class SlackRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class SlackStandIn:
    requests: list[SlackRequest] = field(default_factory=list)
    failures_left: int = 0
    failure_status: int = 500
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/services/T0000/B0000/XXXXXXXX"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self.lock:
            self.failures_left = count
            self.failure_status = status

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.body for r in self.requests]

    def start(self) -> SlackStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                ctype = self.headers.get("Content-Type", "")
                if "json" in ctype:
                    body = json.loads(raw or "{}")
                else:
                    body = {k: v[0] for k, v in parse_qs(raw).items()}
                with standin.lock:
                    standin.requests.append(SlackRequest(self.path, dict(self.headers), body))
                    failing = standin.failures_left > 0
                    if failing:
                        standin.failures_left -= 1
                if failing:
                    self._send(standin.failure_status, "text/plain", b"internal_error")
                elif self.path.startswith("/services/"):
                    self._send(200, "text/plain", b"ok")
                elif self.path.startswith("/api/chat.postMessage"):
                    reply = {
                        "ok": True,
                        "channel": body.get("channel"),
                        "ts": "1700000000.000100",
                        "message": body,
                    }
                    self._send(200, "application/json", json.dumps(reply).encode())
                else:
                    self._send(404, "application/json", b'{"ok": false, "error": "unknown_method"}')

            def _send(self, status: int, ctype: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
