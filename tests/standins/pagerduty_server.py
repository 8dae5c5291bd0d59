"""A PagerDuty Events API v2 stand-in on 127.0.0.1, over HTTPS.

``POST /v2/enqueue`` validates the event like PagerDuty does (routing key,
``event_action``, a ``payload`` with ``summary``/``source``/``severity`` for a
trigger, a ``dedup_key`` for acknowledge/resolve) and answers ``202
{"status": "success", "message": "Event processed", "dedup_key": ...}``.
Incidents are deduplicated by ``dedup_key`` as PagerDuty does: a trigger for
an open incident adds nothing, a resolve closes it.

Failures follow the documented response codes
(https://developer.pagerduty.com/docs/events-api-v2-overview#response-codes--retry-logic):
``fail_next(n, 429)`` answers ``429`` "throttle event" (too many events: retry later),
other statuses ``{"status": "error"}``; ``hang_next(n)`` holds requests without an
answer until ``stop``, like a dropped connection.

The ``pagerduty`` client accepts only ``https://`` base URLs, so the stand-in
serves TLS with a self-signed certificate for 127.0.0.1 (``ca_file``); point
``SSL_CERT_FILE`` at it for the client to trust it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SEVERITIES = ("critical", "error", "warning", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pagerduty-standin")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "pagerduty-standin.pem", directory / "pagerduty-standin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class PagerDutyStandIn:
    events: list[dict[str, Any]] = field(default_factory=list)
    incidents: dict[str, str] = field(default_factory=dict)
    """dedup_key -> "triggered" | "acknowledged" | "resolved"."""
    failures_left: int = 0
    failure_status: int = 500
    hangs_left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None
    ca_file: Path | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"https://{host}:{port}"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self.lock:
            self.failures_left, self.failure_status = count, status

    def hang_next(self, count: int) -> None:
        with self.lock:
            self.hangs_left = count

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("_accepted")]

    def start(self) -> PagerDutyStandIn:
        standin = self
        self._tmp = tempfile.TemporaryDirectory(prefix="pagerduty-standin-")
        cert, key = self_signed_certificate(Path(self._tmp.name))
        self.ca_file = cert

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v2/enqueue":
                    self._send(404, {"status": "not found"})
                    return
                try:
                    event = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"status": "invalid event", "message": "Event object is invalid"})
                    return
                with standin.lock:
                    standin.events.append(event)
                    hanging = standin.hangs_left > 0
                    failing = not hanging and standin.failures_left > 0
                    if hanging:
                        standin.hangs_left -= 1
                    elif failing:
                        standin.failures_left -= 1
                if hanging:
                    standin.released.wait()
                    return
                if failing and standin.failure_status == 429:
                    self._send(429, {"status": "throttle event", "message": "Too many events; retry later"})
                    return
                if failing:
                    self._send(standin.failure_status, {"status": "error"})
                    return
                errors = validate(event)
                if errors:
                    self._send(
                        400,
                        {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
                    )
                    return
                key = event.get("dedup_key") or uuid.uuid4().hex
                with standin.lock:
                    event["_accepted"] = True
                    action = event["event_action"]
                    state = standin.incidents.get(key)
                    if action == "trigger" and state in (None, "resolved"):
                        standin.incidents[key] = "triggered"
                    elif action == "acknowledge" and state == "triggered":
                        standin.incidents[key] = "acknowledged"
                    elif action == "resolve" and state in ("triggered", "acknowledged"):
                        standin.incidents[key] = "resolved"
                self._send(202, {"status": "success", "message": "Event processed", "dedup_key": key})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()


def validate(event: dict[str, Any]) -> list[str]:
    """The checks PagerDuty's Events API v2 makes (the ones that matter here)."""
    errors = []
    if not isinstance(event.get("routing_key"), str) or len(event["routing_key"]) != 32:
        errors.append("'routing_key' must be a 32 character string")
    action = event.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    key = event.get("dedup_key")
    if key is not None and (not isinstance(key, str) or len(key) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not key:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if action == "trigger":
        payload = event.get("payload") or {}
        for name in ("summary", "source"):
            if not payload.get(name):
                errors.append(f"'payload.{name}' is missing or blank")
        if payload.get("severity") not in SEVERITIES:
            errors.append("'payload.severity' is invalid")
        if len(str(payload.get("summary", ""))) > 1024:
            errors.append("'payload.summary' is longer than 1024 characters")
    return errors
