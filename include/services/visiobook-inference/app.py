"""visiobook-inference: the AI inference service, on CPU or GPU.

Standard library only (http.server); the model (model.py + model.json) is a
small deterministic classifier in pure Python, which uses torch on CUDA when
torch is installed and a GPU is visible.

Endpoints
    GET  /health    JSON {status, model_loaded, device, backend, model, version, commit}; 503 when not ready
    POST /predict   {"text": "..."} or {"texts": ["...", ...]} -> label, confidence, scores
    GET  /metrics   Prometheus text format (http_requests_total, http_request_duration_seconds,
                    inference_request_duration_seconds, inference_predictions_total, model_info, app_info)
    GET  /          short JSON description

Configuration (environment)
    HOST, PORT         bind address (default 127.0.0.1) and port (default 8080)
    MODEL_PATH         model file (default: model.json next to this module)
    INFERENCE_DEVICE   auto (default), cpu or cuda
    APP_VERSION        version (default: the VERSION file)
    APP_COMMIT         commit sha (default: GIT_COMMIT, else "unknown")
    DEMO_FAIL_HEALTH   "1": /health answers 503 (deliberately broken release); a BROKEN
                       file next to app.py at build time does the same
    APP_ENVIRONMENT    environment name, matched against the BROKEN_IN/SLOW_IN/ERRORS_IN markers
    MAX_BATCH          largest accepted batch (default 64)

Deliberately bad releases (faults.py): marker files BROKEN / BROKEN_IN (/health answers 503),
SLOW_IN / ERRORS_IN (``production`` or ``production@120s``: every request but /health and
/metrics is slower or answers 500, from start or from that many seconds after start).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import faults
from metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from metrics import Registry
from model import Model, ModelError

SERVICE = "visiobook-inference"
ROOT = Path(__file__).resolve().parent
LOG = logging.getLogger(SERVICE)
ROUTES = ("/", "/health", "/metrics", "/predict", "other")
PROBES = ("/health", "/metrics")  # never slowed down nor failed by SLOW_IN / ERRORS_IN
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
MAX_BODY = 1 << 20


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


class BadRequest(Exception):
    pass


class App:
    def __init__(
        self,
        *,
        version: str,
        commit: str,
        model_path: Path,
        device: str | None = None,
        broken: str | None = None,
        max_batch: int = 64,
        injected: faults.Faults | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.version = version
        self.commit = commit
        self.broken = broken
        self.faults = injected or faults.Faults()
        self.sleep = sleep
        self.max_batch = max_batch
        self.model: Model | None = None
        self.model_error: str | None = None
        self.device = "cpu"
        try:
            self.model = Model.load(model_path, device=device)
            self.device = self.model.device
        except ModelError as err:
            self.model_error = str(err)
            LOG.error("model not loaded: %s", err)
        self.registry = Registry()
        self.requests = self.registry.counter(
            "http_requests_total", "HTTP requests by service, status code and path.", ("service", "code", "path")
        )
        self.duration = self.registry.histogram(
            "http_request_duration_seconds", "HTTP request latency in seconds.", ("service", "path")
        )
        for route in ROUTES:  # the 5xx series exist at 0, so an error ratio is 0 rather than empty
            self.requests.inc(0, service=SERVICE, code="500", path=route)
        self.inference = self.registry.histogram(
            "inference_request_duration_seconds",
            "Model inference time per request in seconds.",
            ("service", "model", "device"),
            buckets=INFERENCE_BUCKETS,
        )
        self.predictions = self.registry.counter(
            "inference_predictions_total", "Predictions by predicted label.", ("service", "label")
        )
        self.registry.gauge("app_info", "Build information.", ("service", "version", "commit")).set(
            1, service=SERVICE, version=version, commit=commit
        )
        model_info = self.registry.gauge("model_info", "Loaded model.", ("service", "model", "version", "device"))
        loaded = self.registry.gauge("model_loaded", "1 when the model is loaded.", ("service",))
        loaded.set(1 if self.model else 0, service=SERVICE)
        if self.model:
            model_info.set(1, service=SERVICE, model=self.model.name, version=self.model.version, device=self.device)

    @staticmethod
    def route_label(path: str) -> str:
        return path if path in ROUTES else "other"

    def handle(self, method: str, path: str, body: bytes = b"") -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0].rstrip("/") or "/"
        if path not in PROBES:
            delay = self.faults.delay()
            if delay:
                self.sleep(delay)
            if self.faults.failing():
                return self._json(500, {"error": "injected failure (ERRORS_IN marker file)"})
        if path == "/predict":
            if method != "POST":
                return self._json(405, {"error": "use POST"})
            try:
                return self._json(200, self.predict(body))
            except BadRequest as err:
                return self._json(400, {"error": str(err)})
        if method not in ("GET", "HEAD"):
            return self._json(405, {"error": "method not allowed"})
        if path == "/health":
            return self._health()
        if path == "/metrics":
            return 200, METRICS_CONTENT_TYPE, self.registry.render().encode()
        if path == "/":
            return self._json(200, {"service": SERVICE, "version": self.version, "endpoints": ["/predict", "/health"]})
        return self._json(404, {"error": "not found", "path": path})

    def predict(self, body: bytes) -> dict[str, Any]:
        if self.model is None:
            raise BadRequest(f"model not loaded: {self.model_error}")
        try:
            payload = json.loads(body or b"null")
        except ValueError as err:
            raise BadRequest(f"invalid JSON: {err}") from err
        if not isinstance(payload, dict):
            raise BadRequest('expected {"text": "..."} or {"texts": [...]}')
        texts = payload.get("texts", [payload["text"]] if "text" in payload else None)
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest('expected {"text": "..."} or {"texts": [...]}')
        if len(texts) > self.max_batch:
            raise BadRequest(f"batch of {len(texts)} exceeds MAX_BATCH={self.max_batch}")
        start = time.perf_counter()
        results = [self.model.predict(text) for text in texts]
        self.inference.observe(
            time.perf_counter() - start, service=SERVICE, model=self.model.name, device=self.device
        )
        for result in results:
            self.predictions.inc(service=SERVICE, label=result["label"])
        response: dict[str, Any] = {
            "model": self.model.name,
            "model_version": self.model.version,
            "device": self.device,
        }
        if "texts" in payload:
            response["predictions"] = results
        else:
            response.update(results[0])
        return response

    def observe(self, *, path: str, code: int, seconds: float) -> None:
        label = self.route_label(path.split("?", 1)[0].rstrip("/") or "/")
        self.requests.inc(service=SERVICE, code=str(code), path=label)
        self.duration.observe(seconds, service=SERVICE, path=label)

    def _health(self) -> tuple[int, str, bytes]:
        body: dict[str, Any] = {
            "status": "ok",
            "service": SERVICE,
            "version": self.version,
            "commit": self.commit,
            "model_loaded": self.model is not None,
            "device": self.device,
            "backend": self.model.backend if self.model else None,
            "model": f"{self.model.name}@{self.model.version}" if self.model else None,
        }
        if self.faults.describe():
            body["faults"] = self.faults.describe()
        if self.model is None:
            body.update(status="failing", reason=f"model not loaded: {self.model_error}")
            return self._json(503, body)
        if self.broken:
            body.update(status="failing", reason=self.broken)
            return self._json(503, body)
        return self._json(200, body)

    @staticmethod
    def _json(code: int, body: object) -> tuple[int, str, bytes]:
        return code, "application/json", json.dumps(body, sort_keys=True).encode()


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"{SERVICE}/{app.version}"
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            start = time.perf_counter()
            body = b""
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                code, ctype, payload = app._json(413, {"error": "request too large"})
                self.close_connection = True
            else:
                if length:
                    body = self.rfile.read(length)
                try:
                    code, ctype, payload = app.handle(method, self.path, body)
                except Exception:  # noqa: BLE001 - answer 500 rather than die
                    LOG.exception("error serving %s", self.path)
                    code, ctype, payload = 500, "application/json", b'{"error": "internal"}'
            # Counted before the answer is sent: a client that has its answer finds it in /metrics.
            app.observe(path=self.path, code=code, seconds=time.perf_counter() - start)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            self._serve("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve("HEAD")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            LOG.info("%s %s", self.address_string(), format % args)

    return Handler


def make_server(app: App, *, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
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
        model_path=Path(os.environ.get("MODEL_PATH", str(ROOT / "model.json"))),
        device=os.environ.get("INFERENCE_DEVICE") or None,
        broken=broken_reason(),
        max_batch=int(os.environ.get("MAX_BATCH", "64")),
        injected=faults.Faults.from_markers(ROOT),
    )
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    server = make_server(app, host=host, port=port)
    signal.signal(signal.SIGTERM, _stop)
    for fault in app.faults.describe():
        LOG.warning("this release is deliberately bad: %s", fault)
    LOG.info(
        "%s %s (commit %s, device %s) listening on %s:%d", SERVICE, app.version, app.commit, app.device, host, port
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
