"""Synthetic user traffic for the demo services of the local platform.

    python -m delivery.devenv.traffic --catalog include/catalog-local [--rate 2] [--status FILE]

A verification that reads an error rate and a latency needs requests to measure, and on one
machine nobody else sends any. This sends what a user would, to every environment of every
catalog service that has a ``local_port``: web services get ``GET /``, ``/api/books``, a
search and a book; AI services (``kind: ai``) get ``POST /predict``. ``rate`` requests per
second per environment (a slow release gets fewer: each environment has one client, which
waits for its answer, up to 15 s). A refused connection (nothing deployed yet) is retried
every few seconds. ``SIGHUP`` re-reads the catalog; ``SIGTERM`` stops.

Every 5 s the counts per target (requests, answers by status class, errors) are written to
the ``--status`` JSON file, for ``delivery.devenv.monitoring status`` and the tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from delivery.catalog import Catalog, load_catalog

log = logging.getLogger(__name__)

WEB_REQUESTS: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/", None),
    ("GET", "/api/books", None),
    ("GET", "/api/books?q=hugo", None),
    ("GET", "/api/books/3", None),
)
AI_REQUESTS: tuple[tuple[str, str, Any], ...] = (
    ("POST", "/predict", {"text": "a young wizard and a dragon"}),
    ("POST", "/predict", {"texts": ["robots on a spaceship", "a detective and a murder"]}),
)
REQUEST_TIMEOUT = 15.0
RETRY_REFUSED = 3.0


@dataclass(frozen=True)
class Target:
    service: str
    environment: str
    url: str
    kind: str

    @property
    def key(self) -> str:
        return f"{self.service}/{self.environment}"


@dataclass
class Stats:
    counts: Counter[str] = field(default_factory=Counter)
    last: str = ""


def targets(catalog: Catalog) -> list[Target]:
    """Every (service, environment) with a local port, in catalog order."""
    out = []
    for name, service in sorted(catalog.services.items()):
        for environment in ("staging", "production"):
            env = getattr(service.environments, environment)
            if env.local_port:
                url = f"http://127.0.0.1:{env.local_port}"
                out.append(Target(name, environment, url, service.kind.value))
    return out


def requests_for(target: Target) -> Iterator[tuple[str, str, Any]]:
    """The endless, round-robin sequence of requests a user of ``target`` sends."""
    return itertools.cycle(AI_REQUESTS if target.kind == "ai" else WEB_REQUESTS)


def send_one(session: requests.Session, target: Target, request: tuple[str, str, Any]) -> str:
    """Send one request; returns ``2xx``, ``4xx``, ``5xx``, ``refused`` or ``error``."""
    method, path, body = request
    try:
        resp = session.request(method, target.url + path, json=body, timeout=REQUEST_TIMEOUT)
    except requests.ConnectionError:
        return "refused"
    except requests.RequestException:
        return "error"
    return f"{resp.status_code // 100}xx"


class TrafficGenerator:
    """One client thread per target, each sending ``rate`` requests per second."""

    def __init__(self, *, catalog_dir: Path, rate: float, status_file: Path | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate {rate} should be a positive number of requests per second")
        self.catalog_dir = catalog_dir
        self.rate = rate
        self.status_file = status_file
        self.stats: dict[str, Stats] = {}
        self._threads: dict[Target, tuple[threading.Thread, threading.Event]] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    def _client(self, target: Target, stop: threading.Event) -> None:
        session = requests.Session()
        stats = self.stats[target.key]
        for request in requests_for(target):
            if stop.is_set():
                return
            started = time.monotonic()
            outcome = send_one(session, target, request)
            with self._lock:
                stats.counts[outcome] += 1
                stats.last = outcome
            pause = RETRY_REFUSED if outcome == "refused" else 1.0 / self.rate
            stop.wait(max(0.0, pause - (time.monotonic() - started)))

    def refresh(self) -> None:
        """(Re)read the catalog: start clients for new targets, stop those of removed ones."""
        catalog, issues = load_catalog(self.catalog_dir, strict=False)
        for issue in issues:
            log.warning("catalog: %s", issue)
        with self._refreshing:
            self._apply(set(targets(catalog)))

    def _apply(self, wanted: set[Target]) -> None:
        for target in set(self._threads) - wanted:
            self._threads.pop(target)[1].set()
        for target in wanted - set(self._threads):
            with self._lock:
                self.stats.setdefault(target.key, Stats())
            stop = threading.Event()
            thread = threading.Thread(target=self._client, args=(target, stop), daemon=True, name=target.key)
            self._threads[target] = (thread, stop)
            thread.start()
        log.info("sending %.3g req/s to %s", self.rate, ", ".join(sorted(t.url for t in self._threads)))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {key: {**stats.counts, "last": stats.last} for key, stats in sorted(self.stats.items())}

    def write_status(self) -> None:
        if self.status_file is not None:
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"rate": self.rate, "targets": self.snapshot()}, indent=1))
            tmp.replace(self.status_file)

    def stop(self) -> None:
        self._stopping.set()
        for _thread, stop in self._threads.values():
            stop.set()

    def run_forever(self, *, status_every: float = 5.0) -> None:
        self.refresh()
        while not self._stopping.wait(status_every):
            self.write_status()
        for thread, _stop in list(self._threads.values()):
            thread.join(timeout=REQUEST_TIMEOUT + 1)  # let the requests in flight be counted
        self.write_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second per environment")
    parser.add_argument("--status", type=Path, default=None, help="JSON file of the counts per target")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    generator = TrafficGenerator(catalog_dir=args.catalog, rate=args.rate, status_file=args.status)
    signal.signal(signal.SIGTERM, lambda *_: generator.stop())
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=generator.refresh, daemon=True).start())
    generator.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
