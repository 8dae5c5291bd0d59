"""A real Alertmanager, on loopback, running a rendered copy of alertmanager.yml.

Only what cannot run here is redirected: the Slack, PagerDuty and rollback
webhook URLs point at a local HTTP recorder, the SMTP relay at a local fake, the
secret files at temporary files, and the group timings are shortened. The
routing tree and the inhibition rules are the real ones.
"""

from __future__ import annotations

import base64
import json
import socket
import socketserver
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.helpers import ROOT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ALERTMANAGER_CONFIG = ROOT / "include/monitoring/alertmanager/alertmanager.yml"

SLACK_URL_SECRET = "slack-webhook"
PAGERDUTY_KEY = "test-routing-key"
SMTP_PASSWORD = "test-smtp-password"
WEBHOOK_TOKEN = "test-webhook-token"

pytestmark = pytest.mark.e2e


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(  # type: ignore[attr-defined]
            {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
        )
        status = 202 if self.path == "/pagerduty" else 200
        payload = b'{"status":"success","message":"Event processed"}' if status == 202 else b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FakeSMTP(socketserver.StreamRequestHandler):
    """Just enough ESMTP for Alertmanager: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT."""

    def _reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        envelope: dict[str, Any] = {"auth": None, "rcpt": [], "data": ""}
        self._reply("220 127.0.0.1 ESMTP test")
        while line := self.rfile.readline().decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self._reply("250-127.0.0.1")
                self._reply("250 AUTH PLAIN")
            elif verb == "AUTH":
                envelope["auth"] = base64.b64decode(line.split(" ")[2]).decode()
                self._reply("235 2.7.0 Authentication successful")
            elif verb == "RCPT":
                envelope["rcpt"].append(line)
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while (data := self.rfile.readline().decode()).rstrip("\r\n") != ".":
                    lines.append(data)
                envelope["data"] = "".join(lines)
                self.server.messages.append(envelope)  # type: ignore[attr-defined]
                self._reply("250 OK")
            elif verb == "QUIT":
                self._reply("221 Bye")
                return
            else:
                self._reply("250 OK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_sink() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []  # type: ignore[attr-defined]
    yield from (server for _ in _serve(server))


@pytest.fixture
def smtp_sink() -> Iterator[socketserver.ThreadingTCPServer]:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _FakeSMTP)
    server.daemon_threads = True
    server.messages = []  # type: ignore[attr-defined]
    yield from (server for _ in _serve(server))


def _render(tmp_path: Path, http_port: int, smtp_port: int) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    files = {
        "slack-webhook-url": f"http://127.0.0.1:{http_port}/{SLACK_URL_SECRET}",
        "pagerduty-routing-key": PAGERDUTY_KEY,
        "smtp-password": SMTP_PASSWORD,
        "delivery-webhook-token": WEBHOOK_TOKEN,
    }
    for name, content in files.items():
        # No trailing newline: Alertmanager 0.25 sends the SMTP password file verbatim.
        (secrets / name).write_text(content, encoding="utf-8")

    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    text = text.replace("/etc/alertmanager/secrets/", f"{secrets}/")
    text = text.replace(
        "http://127.0.0.1:8080/delivery/alertmanager/webhook",
        f"http://127.0.0.1:{http_port}/delivery/alertmanager/webhook",
    )
    config = yaml.safe_load(text)
    config["global"]["smtp_smarthost"] = f"127.0.0.1:{smtp_port}"
    config["global"]["smtp_require_tls"] = False
    for receiver in config["receivers"]:
        for pagerduty in receiver.get("pagerduty_configs", []):
            pagerduty["url"] = f"http://127.0.0.1:{http_port}/pagerduty"

    def fast(route: dict[str, Any]) -> None:
        route["group_wait"] = "1s"
        route["group_interval"] = "1s"
        for child in route.get("routes", []):
            fast(child)

    fast(config["route"])
    rendered = yaml.safe_dump(config, sort_keys=False)
    assert "/etc/alertmanager" not in rendered
    path = tmp_path / "alertmanager.yml"
    path.write_text(rendered, encoding="utf-8")
    return path


@pytest.fixture
def alertmanager(
    alertmanager_binary: str,
    tmp_path: Path,
    http_sink: ThreadingHTTPServer,
    smtp_sink: socketserver.ThreadingTCPServer,
) -> Iterator[str]:
    config = _render(tmp_path, http_sink.server_address[1], smtp_sink.server_address[1])
    port = _free_port()
    log = (tmp_path / "alertmanager.log").open("w")
    process = subprocess.Popen(
        [
            alertmanager_binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _get(f"{url}/-/ready") is not None, "Alertmanager ready", tmp_path)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read()
    except (urllib.error.URLError, ConnectionError):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def _post_alerts(url: str, alerts: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _wait_for(condition: Callable[[], bool], what: str, tmp_path: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    log = tmp_path / "alertmanager.log"
    tail = log.read_text(encoding="utf-8")[-3000:] if log.exists() else ""
    pytest.fail(f"timed out waiting for {what}; Alertmanager log:\n{tail}")


def _alert(name: str, severity: str, service: str, environment: str, **extra: str) -> dict[str, Any]:
    return {
        "labels": {
            "alertname": name,
            "severity": severity,
            "service": service,
            "environment": environment,
            **extra,
        },
        "annotations": {"summary": f"{name} on {service}", "description": "test", "runbook_url": "https://x"},
        "startsAt": datetime.now(UTC).isoformat(),
    }


def _alertnames(body: dict[str, Any]) -> set[str]:
    return {a["labels"]["alertname"] for a in body["alerts"]}


def test_routing_inhibition_and_secrets(
    alertmanager: str,
    http_sink: ThreadingHTTPServer,
    smtp_sink: socketserver.ThreadingTCPServer,
    tmp_path: Path,
) -> None:
    requests: list[dict[str, Any]] = http_sink.requests  # type: ignore[attr-defined]
    messages: list[dict[str, Any]] = smtp_sink.messages  # type: ignore[attr-defined]
    service_down = _alert("ServiceDown", "P1", "api", "production", rollback="auto")
    _post_alerts(
        alertmanager,
        [
            service_down,
            # Inhibited by ServiceDown (same service and environment) and by the P1.
            _alert("HTTPErrorRateCritical", "P1", "api", "production", rollback="auto"),
            _alert("HTTPErrorRateHigh", "P2", "api", "production"),
            # Not inhibited: another environment, another service.
            _alert("ServiceInstanceDown", "P3", "api", "staging"),
            _alert("DeployFailed", "P2", "web", "staging"),
        ],
    )

    def by_path(path: str) -> list[dict[str, Any]]:
        return [r for r in requests if r["path"] == path]

    def slack(channel: str) -> list[dict[str, Any]]:
        return [r["json"] for r in by_path(f"/{SLACK_URL_SECRET}") if r["json"].get("channel") == channel]

    _wait_for(
        lambda: bool(
            by_path("/delivery/alertmanager/webhook")
            and by_path("/pagerduty")
            and slack("#critical-alerts")
            and slack("#alerts")
            and slack("#monitoring")
            and messages
        ),
        "a notification on every channel",
        tmp_path,
    )
    time.sleep(1.5)  # let any wrongly routed notification arrive too

    # Rollback webhook: only ServiceDown, with the bearer token read from its file.
    webhooks = by_path("/delivery/alertmanager/webhook")
    assert all(w["headers"]["Authorization"] == f"Bearer {WEBHOOK_TOKEN}" for w in webhooks)
    assert {name for w in webhooks for name in _alertnames(w["json"])} == {"ServiceDown"}
    first = webhooks[0]["json"]
    assert first["receiver"] == "delivery-rollback"
    assert first["status"] == "firing"
    assert first["groupLabels"] == {"alertname": "ServiceDown", "service": "api", "environment": "production"}

    # PagerDuty: only the P1 that is not inhibited, with the routing key from its file.
    pages = [r["json"] for r in by_path("/pagerduty")]
    assert {p["routing_key"] for p in pages} == {PAGERDUTY_KEY}
    assert {p["payload"]["summary"] for p in pages} == {"[P1] ServiceDown on api (production)"}

    # Slack: one channel per severity, nothing about the inhibited alerts.
    slack_text = json.dumps(by_path(f"/{SLACK_URL_SECRET}"))
    assert "HTTPErrorRate" not in slack_text
    assert "ServiceDown" in json.dumps(slack("#critical-alerts"))
    assert "DeployFailed" in json.dumps(slack("#alerts"))
    assert "ServiceInstanceDown" in json.dumps(slack("#monitoring"))
    assert "DeployFailed" not in json.dumps(slack("#critical-alerts") + slack("#monitoring"))

    # E-mail: the P2 only, authenticated with the password from its file.
    assert all(m["auth"] == f"\0alertmanager@visiobook.example\0{SMTP_PASSWORD}" for m in messages), messages
    assert all(m["rcpt"] == ["RCPT TO:<dev-team@visiobook.example>"] for m in messages)
    assert all("DeployFailed" in m["data"] and "HTTPErrorRate" not in m["data"] for m in messages)

    # The API reports the two api/production error-rate alerts as inhibited.
    alerts = _get(f"{alertmanager}/api/v2/alerts")
    inhibited = {a["labels"]["alertname"] for a in alerts if a["status"]["inhibitedBy"]}
    assert inhibited == {"HTTPErrorRateCritical", "HTTPErrorRateHigh"}

    # Resolving ServiceDown notifies Slack, but never the rollback webhook.
    _post_alerts(alertmanager, [{**service_down, "endsAt": datetime.now(UTC).isoformat()}])
    _wait_for(
        lambda: any(m["attachments"][0]["title"].startswith("[RESOLVED]") for m in slack("#critical-alerts")),
        "the resolved notification in #critical-alerts",
        tmp_path,
    )
    time.sleep(1.5)
    assert all(
        a["status"] == "firing"
        for w in by_path("/delivery/alertmanager/webhook")
        for a in w["json"]["alerts"]
    )
