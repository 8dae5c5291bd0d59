"""A tiny real Prometheus exporter for tests, whose error ratio and latency the test controls.

It serves ``GET /metrics`` on ``127.0.0.1`` (ephemeral port) in the Prometheus text format
(0.0.4), written by hand so that no client library is needed:

* ``http_requests_total{service, code}``: a counter of simulated requests, ``code`` "200" or
  "500";
* ``http_request_duration_seconds{service}``: a histogram of their latencies.

A background thread simulates ``requests_per_second`` requests per service; a fraction
``error_fraction`` of them fail with code 500, and all of them take ``latency`` seconds. The test
changes both at runtime with :meth:`MetricsExporter.set_service`. Usage::

    with MetricsExporter() as exporter:
        exporter.set_service("catalog", error_fraction=0.5, latency=0.1)
        ... scrape exporter.metrics_url ...
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DEFAULT_BUCKETS", "MetricsExporter"]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(kw_only=True)
class _ServiceState:
    error_fraction: float = 0.0
    latency: float = 0.05
    requests: int = 0
    errors: int = 0
    # Fractional requests/errors carried to the next tick, so that rates are exact on average.
    pending_requests: float = 0.0
    pending_errors: float = 0.0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(DEFAULT_BUCKETS))
    duration_sum: float = 0.0


class MetricsExporter:
    """Serve simulated HTTP-server metrics for one or more services (see the module doc).

    :param requests_per_second: simulated traffic per service.
    :param tick: seconds between two simulation steps of the background thread.
    """

    def __init__(self, *, requests_per_second: float = 50.0, tick: float = 0.1) -> None:
        self.requests_per_second = requests_per_second
        self.tick = tick
        self._services: dict[str, _ServiceState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.scrapes = 0

    # -- control ------------------------------------------------------------------------------

    def set_service(
        self, service: str, *, error_fraction: float | None = None, latency: float | None = None
    ) -> None:
        """Add a service or change its error fraction (0..1) and latency (seconds)."""
        if error_fraction is not None and not 0.0 <= error_fraction <= 1.0:
            raise ValueError(f'error_fraction "{error_fraction}" should be between 0 and 1')
        if latency is not None and latency < 0:
            raise ValueError(f'latency "{latency}" should be >= 0')
        with self._lock:
            state = self._services.setdefault(service, _ServiceState())
            if error_fraction is not None:
                state.error_fraction = error_fraction
            if latency is not None:
                state.latency = latency

    def set_error_fraction(self, service: str, fraction: float) -> None:
        self.set_service(service, error_fraction=fraction)

    def set_latency(self, service: str, seconds: float) -> None:
        self.set_service(service, latency=seconds)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("exporter not started")
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        """``host:port``, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}/metrics"

    def start(self) -> MetricsExporter:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] == "/metrics":
                    body = exporter.render().encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                elif self.path == "/":
                    body = b"test exporter: see /metrics\n"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                else:
                    body = b"not found\n"
                    self.send_response(404)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._stop.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="exporter-http",
                daemon=True,
            ),
            threading.Thread(target=self._simulate, name="exporter-traffic", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- simulation and exposition ------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Simulate ``seconds`` of traffic now (the background thread calls it every tick)."""
        with self._lock:
            for state in self._services.values():
                state.pending_requests += self.requests_per_second * seconds
                new = int(state.pending_requests)
                state.pending_requests -= new
                if not new:
                    continue
                state.pending_errors += new * state.error_fraction
                errors = min(new, int(state.pending_errors))
                state.pending_errors -= errors
                state.requests += new
                state.errors += errors
                index = bisect.bisect_left(DEFAULT_BUCKETS, state.latency)
                if index < len(DEFAULT_BUCKETS):
                    state.bucket_counts[index] += new
                state.duration_sum += new * state.latency

    def _simulate(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            self.advance(now - last)
            last = now

    def render(self) -> str:
        """The current metrics in the Prometheus text format."""
        lines = [
            "# HELP http_requests_total Simulated HTTP requests.",
            "# TYPE http_requests_total counter",
        ]
        with self._lock:
            services = sorted(self._services.items())
            for name, state in services:
                lines.append(
                    f'http_requests_total{{service="{name}",code="200"}} {state.requests - state.errors}'
                )
                lines.append(f'http_requests_total{{service="{name}",code="500"}} {state.errors}')
            lines += [
                "# HELP http_request_duration_seconds Simulated HTTP request latency.",
                "# TYPE http_request_duration_seconds histogram",
            ]
            for name, state in services:
                cumulative = 0
                for bound, count in zip(DEFAULT_BUCKETS, state.bucket_counts, strict=True):
                    cumulative += count
                    lines.append(
                        f'http_request_duration_seconds_bucket{{service="{name}",le="{bound}"}} {cumulative}'
                    )
                lines.append(
                    f'http_request_duration_seconds_bucket{{service="{name}",le="+Inf"}} {state.requests}'
                )
                lines.append(f'http_request_duration_seconds_sum{{service="{name}"}} {state.duration_sum}')
                lines.append(f'http_request_duration_seconds_count{{service="{name}"}} {state.requests}')
            self.scrapes += 1
        return "\n".join(lines) + "\n"
