"""The local notification inbox: Slack, PagerDuty and SMTP endpoints that only record what they get.

    python -m delivery.devenv.inbox_server --store <db> --http-port 9095 --tls-port 9096
        --smtp-port 2525 --certificate <pem> --key <pem> [--alertmanager-url URL]
        [--alertmanager-sender ADDRESS]

Started with the local monitoring (:mod:`delivery.devenv.monitoring`, one more daemon), on
127.0.0.1 only. The real clients send here what production would send to Slack, PagerDuty
and the mail server, through their own code paths:

* HTTP (``--http-port``):
  ``POST /slack/api/chat.postMessage``: the pipeline's Slack Web API calls (the ``slack_api``
  connection's ``base_url``), answered like Slack: ``{"ok": true, ...}``, or HTTP 200 with
  ``{"ok": false, "error": ...}`` (``not_authed``, ``channel_not_found``, ``no_text``);
  ``POST /alertmanager/slack[?receiver=<name>]``: Alertmanager's ``slack_configs``
  (incoming-webhook style, answered ``200 ok`` as text);
  ``POST /alertmanager/pagerduty``: Alertmanager's ``pagerduty_configs``;
  ``GET /-/ready``.
* HTTPS (``--tls-port``): ``POST /v2/enqueue``, the pipeline's PagerDuty Events v2 client,
  which only takes ``https://`` base URLs (its connection trusts the certificate through its
  extra ``events_ca_file``). PagerDuty's answers: ``202`` with the dedup key, ``400`` for an
  invalid event.
* SMTP (``--smtp-port``, aiosmtpd): the pipeline's SMTP hook and Alertmanager's
  ``email_configs``; a mail whose envelope sender is ``--alertmanager-sender`` is Alertmanager's.

Each message becomes one entry of the inbox store (:mod:`delivery.notification_inbox`); the
page in the Airflow UI lists them. Nothing is forwarded, nothing is executed, no token or
routing key is kept. A message that cannot be recorded is refused (HTTP 503, SMTP 451), so
its sender retries and reports it rather than believing it delivered.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import os
import signal
import sqlite3
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from delivery.devenv.inbox_messages import (
    email_message,
    pagerduty_errors,
    pagerduty_message,
    slack_api_errors,
    slack_api_message,
    slack_webhook_message,
)
from delivery.notification_inbox import InboxEntry, InboxStore, Source

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_BODY = 1024 * 1024
CERTIFICATE_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=7)
SLACK_API_PATH = "/slack/api/chat.postMessage"
SLACK_WEBHOOK_PATH = "/alertmanager/slack"
PAGERDUTY_PATH = "/v2/enqueue"
ALERTMANAGER_PAGERDUTY_PATH = "/alertmanager/pagerduty"


# -- TLS -----------------------------------------------------------------------------------


def _certificate_fresh(cert: Path, key: Path) -> bool:
    from cryptography import x509  # noqa: PLC0415 cryptography: only when the monitoring starts

    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return False
    return key.is_file() and loaded.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE


def ensure_certificate(cert: Path, key: Path) -> bool:
    """A self-signed certificate for 127.0.0.1 (and its key, 0600), kept while valid; True if made now.

    It is its own authority: the PagerDuty connection trusts exactly it (``events_ca_file``).
    """
    if _certificate_fresh(cert, key):
        return False
    from cryptography import x509  # noqa: PLC0415 cryptography: only when the monitoring starts
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 cryptography: only when the monitoring starts
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 cryptography: only when the monitoring starts
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 cryptography: only when the monitoring starts

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Visiobook local notification inbox")])
    now = dt.datetime.now(dt.UTC)
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "crl_sign"), False
    )
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, encipher_only=False, decipher_only=False, **usage
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
        .sign(private, hashes.SHA256())
    )
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    return True


# -- HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data: dict[str, Any]) -> Answer:
        return cls(status=status, body=json.dumps(data).encode())


class NotRecorded(Exception):
    """The store refused the entry: the sender must not believe it delivered."""


class _HttpServer(ThreadingHTTPServer):
    """One listener; with ``tls``, each connection's handshake runs in its own thread."""

    daemon_threads = True

    def __init__(
        self, port: int, handler: type[BaseHTTPRequestHandler], *, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__((HOST, port), handler)
        self.tls = tls

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(30)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as err:
                log.info("TLS handshake with %s failed: %s", client_address, err)
                return
        super().finish_request(request, client_address)


class InboxServer:
    """The three listeners of one inbox store (threads; :meth:`stop` ends them)."""

    def __init__(
        self,
        *,
        store: InboxStore,
        http_port: int,
        smtp_port: int,
        tls_port: int | None = None,
        certificate: tuple[Path, Path] | None = None,
        alertmanager_url: str | None = None,
        alertmanager_sender: str | None = None,
    ) -> None:
        if tls_port is not None and certificate is None:
            raise ValueError("tls_port needs a certificate (certificate and key PEM files)")
        self.store = store
        self.ports = {"http": http_port, "tls": tls_port, "smtp": smtp_port}
        self.certificate = certificate
        self.alertmanager_url = alertmanager_url
        self.alertmanager_sender = alertmanager_sender
        self._servers: list[_HttpServer] = []
        self._smtp: Any = None

    # -- recording ---------------------------------------------------------------------

    def record(self, entry: InboxEntry) -> None:
        try:
            entry_id = self.store.add(entry)
        except (OSError, sqlite3.Error) as err:
            log.error("could not record a %s message in %s: %s", entry.kind, self.store.path, err)
            raise NotRecorded(str(err)) from None
        log.info("#%d %s %s %s: %s", entry_id, entry.source.value, entry.kind, entry.destination, entry.title)

    def answer(self, path: str, query: str, headers: Any, raw: bytes) -> Answer:
        """What the endpoint of ``path`` answers to ``raw`` (and records it when it is valid)."""
        routes: dict[str, Callable[[Any, str, Any], Answer]] = {
            SLACK_API_PATH: self._slack_api,
            SLACK_WEBHOOK_PATH: self._slack_webhook,
            PAGERDUTY_PATH: lambda b, q, h: self._pagerduty(b, Source.PIPELINE),
            ALERTMANAGER_PAGERDUTY_PATH: lambda b, q, h: self._pagerduty(b, Source.ALERTMANAGER),
        }
        route = routes.get(path)
        if route is None:
            return Answer.json(404, {"error": "unknown endpoint", "path": path[:200]})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        try:
            return route(body, query, headers)
        except NotRecorded:
            return Answer.json(503, {"ok": False, "error": "the local inbox could not record the message"})

    def _slack_api(self, body: Any, query: str, headers: Any) -> Answer:
        if not isinstance(body, dict):
            return Answer.json(200, {"ok": False, "error": "invalid_json"})
        error = slack_api_errors(body, authorization=headers.get("Authorization", ""))
        if error:
            return Answer.json(200, {"ok": False, "error": error})
        self.record(slack_api_message(body))
        ts = f"{time.time():.6f}"
        message = {
            "type": "message",
            "text": body.get("text", ""),
            "username": body.get("username"),
            "ts": ts,
        }
        return Answer.json(200, {"ok": True, "channel": body["channel"], "ts": ts, "message": message})

    def _slack_webhook(self, body: Any, query: str, headers: Any) -> Answer:
        # Incoming webhooks answer in text/plain: https://api.slack.com/messaging/webhooks#handling_errors
        if not isinstance(body, dict):
            return Answer(status=400, body=b"invalid_payload", content_type="text/plain")
        if not (body.get("text") or body.get("attachments") or body.get("blocks")):
            return Answer(status=400, body=b"no_text", content_type="text/plain")
        receiver = next(iter(parse_qs(query).get("receiver") or []), None)
        self.record(slack_webhook_message(body, receiver=receiver, alertmanager_url=self.alertmanager_url))
        return Answer(status=200, body=b"ok", content_type="text/plain")

    def _pagerduty(self, event: Any, source: Source) -> Answer:
        errors = pagerduty_errors(event)
        if errors:
            return Answer.json(
                400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            )
        key = str(event.get("dedup_key") or uuid.uuid4().hex)
        self.record(pagerduty_message(event, source=source, dedup_key=key))
        return Answer.json(202, {"status": "success", "message": "Event processed", "dedup_key": key})

    # -- servers -----------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 30
            server_version = "VisiobookLocalInbox/1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

            def do_GET(self) -> None:
                ready = urlsplit(self.path).path == "/-/ready"
                self._send(
                    Answer(
                        status=200 if ready else 404, body=b"ok" if ready else b"", content_type="text/plain"
                    )
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self.close_connection = True
                    self._send(Answer.json(413, {"error": f"body over {MAX_BODY} bytes"}))
                    return
                url = urlsplit(self.path)
                self._send(inbox.answer(url.path, url.query, self.headers, self.rfile.read(length)))

            def _send(self, answer: Answer) -> None:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

        return Handler

    def _smtp_handler(self) -> Any:
        inbox = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                try:
                    entry = email_message(
                        mail_from=str(envelope.mail_from or ""),
                        rcpt_tos=[str(r) for r in envelope.rcpt_tos],
                        content=bytes(envelope.original_content or envelope.content or b""),
                        alertmanager_sender=inbox.alertmanager_sender,
                    )
                    inbox.record(entry)
                except NotRecorded:
                    return "451 4.3.0 The local inbox could not record the message, try again later"
                return "250 Message accepted for delivery"

        return Handler()

    def start(self) -> InboxServer:
        """Bind every listener, then serve: the ready URL answers only once all three listen."""
        from aiosmtpd.controller import Controller  # noqa: PLC0415 the SMTP server: only in the inbox's process

        handler = self._handler()
        try:
            self._servers.append(_HttpServer(int(self.ports["http"] or 0), handler, tls=None))
            if self.ports["tls"] is not None and self.certificate is not None:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(*self.certificate)
                self._servers.append(_HttpServer(int(self.ports["tls"]), handler, tls=context))
            smtp = Controller(
                self._smtp_handler(),
                hostname=HOST,
                port=int(self.ports["smtp"] or 0),
                data_size_limit=MAX_BODY,
            )
            smtp.start()
        except BaseException:
            for server in self._servers:
                server.server_close()
            self._servers.clear()
            raise
        self._smtp = smtp
        for server in self._servers:
            threading.Thread(  # a short poll: stop() returns within 50 ms
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="inbox-http", daemon=True
            ).start()
        return self

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self._servers[0].server_address[1]}"

    @property
    def tls_url(self) -> str:
        return f"https://{HOST}:{self._servers[1].server_address[1]}"

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--certificate", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--alertmanager-url")
    parser.add_argument("--alertmanager-sender")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    server = InboxServer(
        store=InboxStore(args.store),
        http_port=args.http_port,
        tls_port=args.tls_port,
        smtp_port=args.smtp_port,
        certificate=(args.certificate, args.key),
        alertmanager_url=args.alertmanager_url,
        alertmanager_sender=args.alertmanager_sender,
    )
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        server.start()
    except OSError as err:
        log.error("the inbox could not listen: %s", err)
        return 1
    log.info("inbox ready: %s, %s, smtp %s:%s", server.http_url, server.tls_url, HOST, args.smtp_port)
    stopping.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
