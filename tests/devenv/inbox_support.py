"""The local notification inbox, in the test's process, and the connections the local Airflow gets to it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from delivery.catalog.models import Connections
from delivery.devenv.inbox_server import InboxServer, ensure_certificate
from delivery.devenv.monitoring import inbox_connections
from delivery.devenv.monitoring_config import Layout
from delivery.notification_inbox import InboxEntry, InboxStore
from tests.helpers import free_port

ALERTMANAGER_SENDER = "alertmanager@visiobook.example"  # the shipped alertmanager.yml's smtp_from


@dataclass
class LocalInbox:
    server: InboxServer
    store: InboxStore
    state: Path
    smtp_port: int

    @property
    def endpoints(self) -> dict[str, str]:
        """What ``monitoring start`` writes to ``endpoints.json`` about the inbox."""
        layout = Layout.for_state(self.state)
        return {
            "inbox": self.server.http_url,
            "inbox_tls": self.server.tls_url,
            "inbox_smtp": f"127.0.0.1:{self.smtp_port}",
            "inbox_certificate": str(layout.inbox_certificate[0]),
            "inbox_store": str(self.store.path),
        }

    def airflow_env(self, connections: Connections | None = None) -> dict[str, str]:
        """The notification connections and the inbox store, as :func:`airflow_env` gives them."""
        return inbox_connections(self.state, self.endpoints, connections or Connections())

    def entries(self) -> list[InboxEntry]:
        return self.store.entries(limit=1000)


@contextmanager
def running_inbox(root: Path) -> Iterator[LocalInbox]:
    """An inbox on free loopback ports, with the certificate and store of the state folder ``root/state``."""
    state = root / "state"
    layout = Layout.for_state(state)
    ensure_certificate(*layout.inbox_certificate)
    store = InboxStore(layout.inbox_store)
    smtp_port = free_port()
    server = InboxServer(
        store=store,
        http_port=0,
        tls_port=0,
        smtp_port=smtp_port,
        certificate=layout.inbox_certificate,
        alertmanager_url="http://127.0.0.1:9093",
        alertmanager_sender=ALERTMANAGER_SENDER,
    ).start()
    try:
        yield LocalInbox(server=server, store=store, state=state, smtp_port=smtp_port)
    finally:
        server.stop()
