"""A SonarQube Web API stand-in on 127.0.0.1: ``api/ce/component`` and ``api/qualitygates/project_status``.

Shapes follow SonarQube's documented responses. ``queue_polls`` makes the
analysis look queued for that many polls; ``gate`` is the project status. ``unavailable`` answers
that many requests with 503, as SonarQube's web server does while it is not fully up (starting,
or in safe mode during a database migration: ``api/system/status`` says ``STARTING`` or
``DB_MIGRATION_NEEDED``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class SonarStandIn:
    token: str = "sonar-token"
    gate: dict[str, Any] = field(default_factory=lambda: {"status": "OK", "conditions": []})
    queue_polls: int = 0
    analysis_status: str = "SUCCESS"
    unavailable: int = 0
    requests: list[tuple[str, dict[str, list[str]], str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> SonarStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                standin.requests.append((url.path, query, self.headers.get("Authorization", "")))
                if standin.unavailable > 0:
                    standin.unavailable -= 1
                    return self._send(503, {"errors": [{"msg": "SonarQube is under maintenance"}]})
                if self.headers.get("Authorization") != f"Bearer {standin.token}":
                    return self._send(401, {"errors": [{"msg": "Authentication required"}]})
                if url.path == "/api/ce/component":
                    queue = []
                    if standin.queue_polls > 0:
                        standin.queue_polls -= 1
                        queue = [{"id": "AX1", "type": "REPORT", "status": "IN_PROGRESS"}]
                    current = {"id": "AX0", "type": "REPORT", "status": standin.analysis_status}
                    if standin.analysis_status == "FAILED":
                        current["errorMessage"] = "Analysis report could not be processed"
                    return self._send(200, {"queue": queue, "current": current})
                if url.path == "/api/qualitygates/project_status":
                    return self._send(200, {"projectStatus": standin.gate})
                return self._send(404, {"errors": [{"msg": "Unknown url"}]})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
