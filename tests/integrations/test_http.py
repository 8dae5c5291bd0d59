"""The HTTP integrations' reading of a connection, on the HTTP provider's hooks, against a real local
HTTP(S) server: base URL, bearer token, headers from extras, retries, and the CA bundle of ``verify``
on both the worker's and the triggerer's hook."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from airflow.sdk import Connection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from delivery.integrations.http import (
    ConnectionHttpAsyncHook,
    ConnectionHttpHook,
    base_url,
    retry_budget,
    transient_retry,
)
from tests.helpers import free_port


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        pytest.param(
            Connection(conn_id="c", conn_type="http", host="prom", port=9090),
            "http://prom:9090",
            id="bare-host",
        ),
        pytest.param(
            Connection(conn_id="c", conn_type="http", host="prom.example.org", schema="https"),
            "https://prom.example.org",
            id="schema-is-the-scheme",
        ),
        pytest.param(
            Connection(conn_id="c", conn_type="http", host="https://example.org/prometheus/", port=8443),
            "https://example.org:8443/prometheus",
            id="url-with-path-and-port",
        ),
        pytest.param(
            Connection(conn_id="c", conn_type="http", host="example.org/sonar", schema="https"),
            "https://example.org/sonar",
            id="host-with-path",
        ),
        pytest.param(
            Connection(conn_id="c", conn_type="http", host="https://example.org:9000", port=8443),
            "https://example.org:9000",
            id="port-in-the-url-wins",
        ),
        pytest.param(
            Connection(conn_id="c", conn_type="http", host="[::1]", port=9090), "http://[::1]:9090", id="ipv6"
        ),
    ],
)
def test_base_url(conn: Connection, expected: str) -> None:
    assert base_url(conn) == expected


def test_base_url_needs_a_host() -> None:
    with pytest.raises(ValueError, match="connection 'nowhere' has no host"):
        base_url(Connection(conn_id="nowhere", conn_type="http"))


def test_retry_budget_counts_attempts_and_waits() -> None:
    assert retry_budget(attempts=3, timeout_s=10) == 30 + 0.5 + 1.0
    assert retry_budget(attempts=1, timeout_s=2) == 2


# -- a real server ---------------------------------------------------------------------------


@dataclass
class Server:
    """Answers every GET with the next scripted status (then 200), records what it received."""

    statuses: list[int] = field(default_factory=list)
    seen: list[dict[str, str]] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None
    scheme: str = "http"

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return int(self.httpd.server_address[1])

    def start(self, tls: ssl.SSLContext | None = None) -> Server:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                status = server.statuses.pop(0) if server.statuses else 200
                body = json.dumps({"status": status, "path": self.path}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server().start()
    yield running
    running.stop()


def _connect(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "http", **fields}))


def _sync_get(conn_id: str, path: str = "/api/x") -> requests.Response:
    hook = ConnectionHttpHook(method="GET", http_conn_id=conn_id)
    response: requests.Response = hook.run_with_advanced_retry(
        transient_retry(wait_s=0.01), endpoint=path, extra_options={"check_response": False, "timeout": 5}
    )
    return response


async def _async_get(conn_id: str, path: str = "/api/x") -> tuple[int, Any]:
    import tenacity

    hook = ConnectionHttpAsyncHook(http_conn_id=conn_id)
    async with hook.session() as http:

        async def attempt() -> Any:
            response = await http.run(endpoint=path, extra_options={"check_response": False, "timeout": 5})
            response.status_code = response.status  # what transient_retry reads from either client
            await response.read()
            return response

        response = await tenacity.AsyncRetrying(**transient_retry(wait_s=0.01))(attempt)
        return response.status, await response.json()


@pytest.mark.parametrize("client", ["sync", "async"])
def test_password_alone_is_a_bearer_token_and_extras_are_headers(
    server: Server, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    _connect(
        monkeypatch,
        "svc",
        host=f"http://127.0.0.1:{server.port}/prefix/",
        password="t0ken",
        extra=json.dumps({"X-Scope-OrgID": "visiobook", "timeout": 5}),
    )
    if client == "sync":
        status = _sync_get("svc").status_code
    else:
        status, _ = asyncio.run(_async_get("svc"))
    assert status == 200
    [request] = server.seen
    assert request["path"] == "/prefix/api/x"  # the base URL's path prefix is kept
    assert request["authorization"] == "Bearer t0ken"
    assert request["x-scope-orgid"] == "visiobook"
    assert "timeout" not in request  # a known extra is an option, not a header


@pytest.mark.parametrize("client", ["sync", "async"])
def test_login_and_password_stay_basic_auth(
    server: Server, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    _connect(monkeypatch, "svc", host="127.0.0.1", port=server.port, login="ci", password="s3cret")
    if client == "sync":
        _sync_get("svc")
    else:
        asyncio.run(_async_get("svc"))
    assert server.seen[0]["authorization"] == "Basic Y2k6czNjcmV0"  # base64("ci:s3cret")


@pytest.mark.parametrize("client", ["sync", "async"])
def test_5xx_is_tried_again_and_4xx_is_not(
    server: Server, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    _connect(monkeypatch, "svc", host="127.0.0.1", port=server.port)
    server.statuses = [503, 502]
    status = _sync_get("svc").status_code if client == "sync" else asyncio.run(_async_get("svc"))[0]
    assert status == 200 and len(server.seen) == 3

    server.seen.clear()
    server.statuses = [503, 503, 503, 503]
    status = _sync_get("svc").status_code if client == "sync" else asyncio.run(_async_get("svc"))[0]
    assert status == 503 and len(server.seen) == 3  # the last answer, after three attempts

    server.seen.clear()
    server.statuses = [404]
    status = _sync_get("svc").status_code if client == "sync" else asyncio.run(_async_get("svc"))[0]
    assert status == 404 and len(server.seen) == 1


@pytest.mark.parametrize("client", ["sync", "async"])
def test_the_earlier_token_extra_is_refused_not_sent_as_a_header(
    server: Server, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    _connect(monkeypatch, "old", host="127.0.0.1", port=server.port, extra=json.dumps({"token": "s3cret"}))
    with pytest.raises(
        ValueError, match="'old': the extra 'token' is not read any more, put the token in the"
    ):
        _sync_get("old") if client == "sync" else asyncio.run(_async_get("old"))
    assert server.seen == []


def test_connection_refused_is_raised_after_the_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    _connect(monkeypatch, "down", host="127.0.0.1", port=free_port())
    hook = ConnectionHttpHook(method="GET", http_conn_id="down")
    with pytest.raises(requests.ConnectionError):
        hook.run_with_advanced_retry(transient_retry(wait_s=0.01), endpoint="/", extra_options={"timeout": 2})
    assert hook._retry_obj.statistics["attempt_number"] == 3


# -- TLS: the CA bundle of the ``verify`` extra, on both hooks ----------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A private CA and a certificate it signed for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "visiobook test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return ca_path, context


@pytest.fixture
def tls_server(tls_files: tuple[Path, ssl.SSLContext]) -> Iterator[Server]:
    running = Server().start(tls=tls_files[1])
    yield running
    running.stop()


@pytest.mark.parametrize("client", ["sync", "async"])
def test_the_ca_bundle_of_verify_is_trusted_by_both_hooks(
    tls_server: Server, tls_files: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    host = f"https://127.0.0.1:{tls_server.port}"
    _connect(monkeypatch, "tls", host=host, extra=json.dumps({"verify": str(tls_files[0])}))
    _connect(monkeypatch, "tls_untrusted", host=host)
    if client == "sync":
        assert _sync_get("tls").status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            _sync_get("tls_untrusted")
    else:
        import aiohttp

        assert asyncio.run(_async_get("tls"))[0] == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            asyncio.run(_async_get("tls_untrusted"))
