"""visiobook-demo-web: a small, real web service for the delivery pipelines.

Standard library only (http.server), so it runs on a base image that has
python3 and nothing else.

Endpoints
    GET /              HTML page that shows the version and commit
    GET /health        JSON {status, version, commit, service}; 503 when broken
    GET /metrics       Prometheus text format
    GET /api/books     JSON list of books (``?q=`` filters on title/author)
    GET /api/books/ID  one book, 404 when unknown

Configuration (environment)
    HOST               bind address (default 127.0.0.1; the Helm chart sets 0.0.0.0)
    PORT               port (default 8000)
    APP_VERSION        version (default: the VERSION file next to this module)
    APP_COMMIT         commit sha (default: GIT_COMMIT, else "unknown")
    DEMO_FAIL_HEALTH   "1"/"true": /health answers 503 (a deliberately broken release)
    APP_ENVIRONMENT    environment name, matched against the BROKEN_IN/SLOW_IN/ERRORS_IN markers
    LOG_LEVEL          access log level (default INFO)

Deliberately bad releases for pipeline demos and tests (faults.py): a marker file
committed next to app.py. ``BROKEN`` (or ``BROKEN_IN`` listing environments, or
``DEMO_FAIL_HEALTH=1``) makes /health answer 503, which the health gate catches.
``SLOW_IN`` and ``ERRORS_IN`` (``production``, or ``production@120s`` to start two
minutes after start) make the user requests slow or answer 500 while /health stays
200: the release is up but bad, which only the metric analysis and the alerts catch.
"""

from __future__ import annotations

import html
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import faults
from metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from metrics import Registry

SERVICE = "visiobook-demo-web"
ROOT = Path(__file__).resolve().parent
LOG = logging.getLogger(SERVICE)

BOOKS = (
    {"id": 1, "title": "Le Petit Prince", "author": "Antoine de Saint-Exupery", "year": 1943},
    {"id": 2, "title": "Les Miserables", "author": "Victor Hugo", "year": 1862},
    {"id": 3, "title": "Vingt mille lieues sous les mers", "author": "Jules Verne", "year": 1870},
    {"id": 4, "title": "L'Etranger", "author": "Albert Camus", "year": 1942},
    {"id": 5, "title": "Madame Bovary", "author": "Gustave Flaubert", "year": 1857},
)

ROUTES = ("/", "/health", "/metrics", "/api/books", "/api/books/{id}", "other")
PROBES = ("/health", "/metrics")  # never slowed down nor failed by SLOW_IN / ERRORS_IN


def read_version(root: Path = ROOT, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if env.get("APP_VERSION"):
        return env["APP_VERSION"].strip()
    try:
        return (root / "VERSION").read_text(encoding="utf-8").strip() or "0.0.0-dev"
    except OSError:
        return "0.0.0-dev"


def read_commit(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return (env.get("APP_COMMIT") or env.get("GIT_COMMIT") or "unknown").strip()


def broken_reason(root: Path = ROOT, environ: dict[str, str] | None = None) -> str | None:
    """Why this release is deliberately broken, or None when it is not (see faults.py)."""
    return faults.broken_reason(root, environ)


class App:
    """Routing and metrics, independent of the HTTP server (easy to unit-test)."""

    def __init__(
        self,
        *,
        version: str,
        commit: str,
        broken: str | None = None,
        injected: faults.Faults | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.version = version
        self.commit = commit
        self.broken = broken
        self.faults = injected or faults.Faults()
        self.sleep = sleep
        self.started = time.time()
        self.registry = Registry()
        self.requests = self.registry.counter(
            "http_requests_total", "HTTP requests by service, status code and path.", ("service", "code", "path")
        )
        self.duration = self.registry.histogram(
            "http_request_duration_seconds", "HTTP request latency in seconds.", ("service", "path")
        )
        for route in ROUTES:  # the 5xx series exist at 0, so an error ratio is 0 rather than empty
            self.requests.inc(0, service=SERVICE, code="500", path=route)
        info = self.registry.gauge("app_info", "Build information.", ("service", "version", "commit"))
        info.set(1, service=SERVICE, version=version, commit=commit)
        start = self.registry.gauge("process_start_time_seconds", "Start time since the epoch.")
        start.set(self.started)

    @staticmethod
    def route_label(path: str) -> str:
        if path in ("/", "/health", "/metrics", "/api/books"):
            return path
        if path.startswith("/api/books/"):
            return "/api/books/{id}"
        return "other"

    def handle(self, method: str, target: str) -> tuple[int, str, bytes]:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        if method not in ("GET", "HEAD"):
            return self._json(405, {"error": "method not allowed"})
        if path not in PROBES:
            delay = self.faults.delay()
            if delay:
                self.sleep(delay)
            if self.faults.failing():
                return self._json(500, {"error": "injected failure (ERRORS_IN marker file)"})
        if path == "/":
            return 200, "text/html; charset=utf-8", self._index().encode()
        if path == "/health":
            return self._health()
        if path == "/metrics":
            return 200, METRICS_CONTENT_TYPE, self.registry.render().encode()
        if path == "/api/books":
            query = parse_qs(parts.query).get("q", [""])[0].lower()
            books = [b for b in BOOKS if query in str(b["title"]).lower() or query in str(b["author"]).lower()]
            return self._json(200, {"books": books, "count": len(books), "version": self.version})
        if path.startswith("/api/books/"):
            ident = path.rsplit("/", 1)[1]
            for book in BOOKS:
                if str(book["id"]) == ident:
                    return self._json(200, book)
            return self._json(404, {"error": f"no book {ident}"})
        return self._json(404, {"error": "not found", "path": path})

    def observe(self, *, target: str, code: int, seconds: float) -> None:
        label = self.route_label(urlsplit(target).path.rstrip("/") or "/")
        self.requests.inc(service=SERVICE, code=str(code), path=label)
        self.duration.observe(seconds, service=SERVICE, path=label)

    def _health(self) -> tuple[int, str, bytes]:
        body = {
            "status": "ok",
            "service": SERVICE,
            "version": self.version,
            "commit": self.commit,
            "uptime_seconds": round(time.time() - self.started, 3),
        }
        if self.faults.describe():
            body["faults"] = self.faults.describe()
        if self.broken:
            body.update(status="failing", reason=self.broken)
            return self._json(503, body)
        return self._json(200, body)

    def _index(self) -> str:
        version = html.escape(self.version)
        commit = html.escape(self.commit[:12])
        rows = "".join(
            f"<li>{html.escape(str(b['title']))} &mdash; {html.escape(str(b['author']))}</li>" for b in BOOKS
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Visiobook {version}</title></head><body>"
            f"<h1>Visiobook</h1><p class='version'>version {version} (commit {commit})</p>"
            f"<ul>{rows}</ul></body></html>"
        )

    @staticmethod
    def _json(code: int, body: object) -> tuple[int, str, bytes]:
        return code, "application/json", json.dumps(body, sort_keys=True).encode()


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"{SERVICE}/{app.version}"
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            start = time.perf_counter()
            try:
                code, ctype, body = app.handle(method, self.path)
            except Exception:  # noqa: BLE001 - a demo server answers 500 rather than dying
                LOG.exception("error serving %s", self.path)
                code, ctype, body = 500, "application/json", b'{"error": "internal"}'
            # Counted before the answer is sent: a client that has its answer finds it in /metrics.
            app.observe(target=self.path, code=code, seconds=time.perf_counter() - start)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            self._serve("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve("HEAD")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            LOG.info("%s %s", self.address_string(), format % args)

    return Handler


def make_server(app: App, *, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    return server


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    app = App(
        version=read_version(),
        commit=read_commit(),
        broken=broken_reason(),
        injected=faults.Faults.from_markers(ROOT),
    )
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    server = make_server(app, host=host, port=port)
    # As PID 1 in a container, SIGTERM is ignored unless handled: handle it so
    # `docker stop` is quick and clean.
    signal.signal(signal.SIGTERM, _stop)
    LOG.info("%s %s (commit %s) listening on %s:%d", SERVICE, app.version, app.commit, host, port)
    if app.broken:
        LOG.warning("this release is deliberately broken: %s", app.broken)
    for fault in app.faults.describe():
        LOG.warning("this release is deliberately bad: %s", fault)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
