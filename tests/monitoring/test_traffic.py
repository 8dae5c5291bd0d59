"""The demo traffic: what it sends, to whom, and how it counts answers (a local HTTP server stands in
for a demo container; no container runs)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from delivery.catalog import load_catalog
from delivery.devenv.traffic import TrafficGenerator, targets
from tests.helpers import ROOT, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

LOCAL_CATALOG = ROOT / "include" / "catalog-local"


class _App(BaseHTTPRequestHandler):
    """Answers like a demo release: 200, or 500 for user requests once ``failing`` is set."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        server: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server.seen.append((self.command, self.path, json.loads(body) if body else None))
        code = 500 if server.failing else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def app() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    server.seen = []  # type: ignore[attr-defined]
    server.failing = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _catalog(tmp_path: Path, ports: dict[tuple[str, str], int]) -> Path:
    folder = tmp_path / "catalog"
    shutil.copytree(LOCAL_CATALOG, folder)
    for (service, environment), port in ports.items():
        path = folder / "services" / f"{service}.yaml"
        data = yaml.safe_load(path.read_text())
        data["environments"][environment]["local_port"] = port
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def test_every_environment_with_a_local_port_gets_traffic() -> None:
    catalog, _ = load_catalog(LOCAL_CATALOG)
    found = {(t.service, t.environment): (t.url, t.kind) for t in targets(catalog)}
    assert found == {
        ("visiobook-demo-web", "staging"): ("http://127.0.0.1:18081", "web"),
        ("visiobook-demo-web", "production"): ("http://127.0.0.1:18091", "web"),
        ("visiobook-inference", "staging"): ("http://127.0.0.1:18083", "ai"),
        ("visiobook-inference", "production"): ("http://127.0.0.1:18093", "ai"),
    }


def test_requests_like_a_user_and_counts_the_answers(tmp_path: Path, app: ThreadingHTTPServer) -> None:
    server: Any = app
    web, ai = server.server_address[1], free_port()  # nothing listens on the AI port
    dead = {(s, e): free_port() for s in ("visiobook-demo-web", "visiobook-inference") for e in ("staging",)}
    catalog = _catalog(tmp_path, {**dead, ("visiobook-demo-web", "production"): web})
    catalog_ai = catalog / "services" / "visiobook-inference.yaml"
    data = yaml.safe_load(catalog_ai.read_text())
    data["environments"]["production"]["local_port"] = ai
    catalog_ai.write_text(yaml.safe_dump(data, sort_keys=False))

    status = tmp_path / "traffic.json"
    generator = TrafficGenerator(catalog_dir=catalog, rate=20, status_file=status)
    runner = threading.Thread(target=generator.run_forever, kwargs={"status_every": 0.2}, daemon=True)
    runner.start()
    try:
        time.sleep(1.0)
        server.failing = True
        time.sleep(0.6)
    finally:
        generator.stop()
        runner.join(timeout=20)
    assert not runner.is_alive()

    paths = [(method, path) for method, path, _ in server.seen]
    assert {
        ("GET", "/"),
        ("GET", "/api/books"),
        ("GET", "/api/books?q=hugo"),
        ("GET", "/api/books/3"),
    } <= set(paths)
    assert 15 <= len(paths) <= 40  # about 20 per second
    counts = json.loads(status.read_text())["targets"]
    web_counts = counts["visiobook-demo-web/production"]
    assert web_counts["2xx"] >= 10 and web_counts["5xx"] >= 3
    assert web_counts["2xx"] + web_counts["5xx"] == len(paths)
    assert web_counts["last"] == "5xx"
    assert counts["visiobook-inference/production"] == {"refused": 1, "last": "refused"}  # retried every 3 s


def test_inference_gets_predictions_to_make(tmp_path: Path, app: ThreadingHTTPServer) -> None:
    server: Any = app
    catalog = _catalog(
        tmp_path,
        {
            ("visiobook-demo-web", "staging"): free_port(),
            ("visiobook-demo-web", "production"): free_port(),
            ("visiobook-inference", "staging"): free_port(),
            ("visiobook-inference", "production"): server.server_address[1],
        },
    )
    generator = TrafficGenerator(catalog_dir=catalog, rate=20)
    runner = threading.Thread(target=generator.run_forever, kwargs={"status_every": 0.2}, daemon=True)
    runner.start()
    time.sleep(0.5)
    generator.stop()
    runner.join(timeout=20)
    methods = {(method, path) for method, path, _ in server.seen}
    assert methods == {("POST", "/predict")}
    bodies = [body for _, _, body in server.seen]
    assert {"text": "a young wizard and a dragon"} in bodies


def test_rate_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rate 0 should be a positive number"):
        TrafficGenerator(catalog_dir=tmp_path, rate=0)
