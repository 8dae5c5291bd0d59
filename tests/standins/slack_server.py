"""A Slack stand-in on 127.0.0.1: the Web API's ``chat.postMessage`` and incoming webhooks.

It answers the way Slack does, as documented:

* ``POST /api/chat.postMessage`` (https://api.slack.com/methods/chat.postMessage):
  errors are HTTP 200 with ``{"ok": false, "error": ...}``: ``not_authed`` without a
  token, ``invalid_auth`` with a token Slack does not know (when ``token`` is set),
  ``channel_not_found`` for a channel the bot cannot see (when ``channels`` is set),
  ``no_text`` without ``text``, ``blocks`` or ``attachments``. Success is
  ``{"ok": true, "channel": ..., "ts": ..., "message": ...}``.
* ``POST /services/T.../B.../X...`` (https://api.slack.com/messaging/webhooks):
  ``200 ok`` as text/plain.
* Rate limits (https://api.slack.com/apis/rate-limits): HTTP 429 with ``Retry-After``.
  ``fail_next(n, status)`` makes the next ``n`` requests fail with ``status`` (429 gets
  the header and ``{"ok": false, "error": "ratelimited"}``; other statuses a text body,
  like Slack's own 5xx pages).
* ``hang_next(n)`` holds the next ``n`` requests without an answer (until ``stop``),
  like a network path that drops packets: only the client's timeout ends them.

Every request is recorded; ``delivered()`` lists what Slack accepted. Run as a program
(``python -m tests.standins.slack_server URL_FILE``) it serves until terminated, for a stack that
outlives the test process which started it; :class:`RemoteSlack` reads what it recorded
(``GET /_standin/requests``, not a Slack method).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.request import urlopen


@dataclass
class SlackRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    accepted: bool = False


@dataclass
class SlackStandIn:
    requests: list[SlackRequest] = field(default_factory=list)
    failures_left: int = 0
    failure_status: int = 500
    hangs_left: int = 0
    token: str | None = None
    """The only bot token accepted; None accepts any token."""
    channels: set[str] | None = None
    """The channels the bot can post to; None accepts any channel."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)
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

    def hang_next(self, count: int) -> None:
        with self.lock:
            self.hangs_left = count

    def messages(self) -> list[dict[str, Any]]:
        """The bodies of every request, accepted or not."""
        with self.lock:
            return [r.body for r in self.requests]

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies of the messages Slack accepted."""
        with self.lock:
            return [r.body for r in self.requests if r.accepted]

    def _api_error(self, headers: dict[str, str], body: dict[str, Any]) -> str | None:
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
            return "not_authed"
        if self.token is not None and auth.removeprefix("Bearer ").strip() != self.token:
            return "invalid_auth"
        if self.channels is not None and body.get("channel") not in self.channels:
            return "channel_not_found"
        if not (body.get("text") or body.get("blocks") or body.get("attachments")):
            return "no_text"
        return None

    def start(self) -> SlackStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/_standin/requests":
                    self._send(404, "application/json", b'{"ok": false, "error": "unknown_method"}')
                    return
                with standin.lock:
                    recorded = [{"body": r.body, "accepted": r.accepted} for r in standin.requests]
                self._send(200, "application/json", json.dumps(recorded).encode())

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                ctype = self.headers.get("Content-Type", "")
                if "json" in ctype:
                    body = json.loads(raw or "{}")
                else:
                    body = {k: v[0] for k, v in parse_qs(raw).items()}
                request = SlackRequest(self.path, dict(self.headers), body)
                with standin.lock:
                    standin.requests.append(request)
                    hanging = standin.hangs_left > 0
                    failing = not hanging and standin.failures_left > 0
                    if hanging:
                        standin.hangs_left -= 1
                    elif failing:
                        standin.failures_left -= 1
                if hanging:
                    standin.released.wait()
                    return
                if failing:
                    self._fail(standin.failure_status)
                elif self.path.startswith("/services/"):
                    request.accepted = True
                    self._send(200, "text/plain", b"ok")
                elif self.path.startswith("/api/chat.postMessage"):
                    self._post_message(request)
                else:
                    self._send(404, "application/json", b'{"ok": false, "error": "unknown_method"}')

            def _post_message(self, request: SlackRequest) -> None:
                error = standin._api_error(request.headers, request.body)
                if error:
                    self._send(200, "application/json", json.dumps({"ok": False, "error": error}).encode())
                    return
                request.accepted = True
                reply = {
                    "ok": True,
                    "channel": request.body.get("channel"),
                    "ts": "1700000000.000100",
                    "message": request.body,
                }
                self._send(200, "application/json", json.dumps(reply).encode())

            def _fail(self, status: int) -> None:
                if status == 429:
                    body = b'{"ok": false, "error": "ratelimited"}'
                    self._send(429, "application/json", body, extra={"Retry-After": "1"})
                else:
                    self._send(status, "text/plain", b"internal_error")

            def _send(
                self, status: int, ctype: str, payload: bytes, extra: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass(frozen=True)
class RemoteSlack:
    """What a stand-in running in another process recorded (``messages``, ``delivered``)."""

    url: str

    def _recorded(self) -> list[dict[str, Any]]:
        with urlopen(f"{self.url}/_standin/requests", timeout=30) as resp:
            return list(json.loads(resp.read()))

    def messages(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self._recorded()]

    def delivered(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self._recorded() if r["accepted"]]


def main(url_file: str) -> None:
    """Serve until SIGTERM; the URL is written to ``url_file`` once the stand-in listens."""
    standin = SlackStandIn().start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    Path(url_file).write_text(standin.url)
    stopped.wait()
    standin.stop()


if __name__ == "__main__":
    main(sys.argv[1])
