"""The monitoring half of the local platform: Prometheus, Alertmanager, a Pushgateway, demo traffic.

    python -m delivery.devenv.monitoring start [--state .local] [--catalog include/catalog-local]
                                               [--airflow-url http://127.0.0.1:8080]
    python -m delivery.devenv.monitoring stop|status|urls [--state .local]

``start`` renders the configuration (:mod:`delivery.devenv.monitoring_config`), checks it with
``promtool`` and ``amtool``, and starts, on 127.0.0.1, each in its own process group with a pid
file and a log under ``<state>/monitoring/run``:

* the **Pushgateway** (Debian ``prometheus-pushgateway``), where the pipelines push their
  ``delivery_*`` metrics (persisted in ``<state>/monitoring/pushgateway``);
* **Alertmanager** (Debian ``prometheus-alertmanager``) with the shipped routing tree, its
  rollback webhook calling the local Airflow with a generated bearer token;
* **Prometheus** (Debian ``prometheus``): the demo containers of every environment, the
  delivery metrics, the local alert rules; data in ``<state>/monitoring/prometheus/data``;
* **demo traffic** (:mod:`delivery.devenv.traffic`): a few requests per second to every
  environment, standing in for users, so that error rates and latencies mean something;
* the **notification inbox** (:mod:`delivery.devenv.inbox_server`): Slack, PagerDuty and SMTP
  endpoints that record what the pipelines and Alertmanager's receivers send
  (``<state>/monitoring/inbox``), listed in the Airflow UI under *Browse > Notifications*.

It is idempotent: a server already started from the same state folder is adopted and
reloads its configuration (SIGHUP); one started with other settings (a port) is restarted.
``stop`` stops them all. Ports: ``PROMETHEUS_PORT`` (9090), ``ALERTMANAGER_PORT`` (9093),
``PUSHGATEWAY_PORT`` (9091), ``INBOX_PORT`` (9095), ``INBOX_TLS_PORT`` (9096),
``INBOX_SMTP_PORT`` (2525); ``DELIVERY_DEMO_TRAFFIC_RPS`` (2; 0 turns the traffic off).

:func:`airflow_env` gives the Airflow processes what they need to use all this: the
Prometheus connection of the verification, the bearer token of the Alertmanager webhook,
the Slack, PagerDuty and SMTP connections of the notifications, pointed at the inbox (all
as ``AIRFLOW_CONN_*`` variables named after the catalog's connection ids), the inbox store
and the Pushgateway as the metrics backend.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from delivery.catalog import load_catalog
from delivery.catalog.models import Connections
from delivery.devenv.daemons import Daemon, DaemonError
from delivery.devenv.inbox_server import SLACK_API_PATH, ensure_certificate
from delivery.devenv.monitoring_config import (
    AlertSinks,
    Layout,
    Ports,
    alertmanager_sender,
    pagerduty_routing_key,
    slack_bot_token,
    webhook_token,
    write_configs,
)
from delivery.notification_inbox import INBOX_ENV
from delivery.paths import PROJECT_ROOT

log = logging.getLogger(__name__)

DEFAULT_CATALOG = PROJECT_ROOT / "include" / "catalog-local"
DEFAULT_AIRFLOW_URL = "http://127.0.0.1:8080"
DEFAULT_TRAFFIC_RPS = 2.0
BINARIES = {
    "prometheus": (("prometheus",), "prometheus"),
    "promtool": (("promtool",), "prometheus"),
    "alertmanager": (("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager"),
    "amtool": (("amtool",), "prometheus-alertmanager"),
    "pushgateway": (("prometheus-pushgateway", "pushgateway"), "prometheus-pushgateway"),
}


class MonitoringError(RuntimeError):
    """The local monitoring could not be set up; the message says what to do."""


def binary(tool: str, *, required: bool = True) -> str:
    """The path of ``tool``; a missing one is an error naming its package, unless not ``required``."""
    names, package = BINARIES[tool]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    if not required:
        return names[0]
    raise MonitoringError(f"{' / '.join(names)} not found: install the Debian package {package!r}")


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    """Where the servers answer (written to ``endpoints.json`` for :func:`airflow_env`)."""

    prometheus: str
    alertmanager: str
    pushgateway: str
    airflow: str
    traffic_rps: float
    inbox: str = ""
    """HTTP endpoints of the notification inbox (Slack Web API under ``/slack/api/``)."""
    inbox_tls: str = ""
    """HTTPS base URL of its PagerDuty Events v2 endpoint."""
    inbox_smtp: str = ""
    """``host:port`` of its SMTP server."""
    inbox_certificate: str = ""
    inbox_store: str = ""


class MonitoringStack:
    """The local monitoring servers of one state folder."""

    def __init__(
        self,
        *,
        state: Path,
        catalog_dir: Path = DEFAULT_CATALOG,
        airflow_url: str = DEFAULT_AIRFLOW_URL,
        ports: Ports | None = None,
        sinks: AlertSinks | None = None,
        traffic_rps: float | None = None,
    ) -> None:
        self.layout = Layout.for_state(state)
        self.catalog_dir = Path(catalog_dir).resolve()
        self.airflow_url = airflow_url.rstrip("/")
        self.ports = ports or Ports.from_env()
        rps = os.environ.get("DELIVERY_DEMO_TRAFFIC_RPS", "") if traffic_rps is None else traffic_rps
        self.traffic_rps = float(rps) if str(rps).strip() else DEFAULT_TRAFFIC_RPS
        # Alertmanager's Slack, PagerDuty and e-mail go to the inbox, unless sent elsewhere.
        wanted = AlertSinks.from_env() if sinks is None else sinks
        inbox = self.endpoints
        self.sinks = AlertSinks(
            http_url=wanted.http_url or f"{inbox.inbox}/alertmanager", smtp=wanted.smtp or inbox.inbox_smtp
        )

    @property
    def endpoints(self) -> Endpoints:
        ports = self.ports
        return Endpoints(
            prometheus=f"http://127.0.0.1:{ports.prometheus}",
            alertmanager=f"http://127.0.0.1:{ports.alertmanager}",
            pushgateway=f"http://127.0.0.1:{ports.pushgateway}",
            airflow=self.airflow_url,
            traffic_rps=self.traffic_rps,
            inbox=f"http://127.0.0.1:{ports.inbox}",
            inbox_tls=f"https://127.0.0.1:{ports.inbox_tls}",
            inbox_smtp=f"127.0.0.1:{ports.inbox_smtp}",
            inbox_certificate=str(self.layout.inbox_certificate[0]),
            inbox_store=str(self.layout.inbox_store),
        )

    def _inbox(self, run: Path, marker: str, alertmanager_from: str | None) -> Daemon:
        """The notification inbox: Slack, PagerDuty and SMTP endpoints that record (see the module doc)."""
        lay, ports = self.layout, self.ports
        certificate, key = lay.inbox_certificate
        argv = [
            sys.executable,
            "-m",
            "delivery.devenv.inbox_server",
            f"--store={lay.inbox_store}",
            f"--http-port={ports.inbox}",
            f"--tls-port={ports.inbox_tls}",
            f"--smtp-port={ports.inbox_smtp}",
            f"--certificate={certificate}",
            f"--key={key}",
            f"--alertmanager-url=http://127.0.0.1:{ports.alertmanager}",
        ]
        if alertmanager_from:
            argv.append(f"--alertmanager-sender={alertmanager_from}")
        return Daemon(
            name="inbox",
            argv=argv,
            folder=run,
            marker=marker,
            port=ports.inbox,
            ready_url=f"http://127.0.0.1:{ports.inbox}/-/ready",
            env={"PYTHONPATH": str(PROJECT_ROOT / "plugins")},
            reloads_on_sighup=False,  # nothing to reload: adopted as is
        )

    def daemons(self, *, to_start: bool = False) -> dict[str, Daemon]:
        """The processes, in start order; ``to_start``: their programs must be installed."""
        lay, ports, run, marker = self.layout, self.ports, self.layout.run, str(self.layout.root)

        def program(tool: str) -> str:
            return binary(tool, required=to_start)

        def server(name: str, port: int, argv: list[str]) -> Daemon:
            ready = f"http://127.0.0.1:{port}/-/ready"
            return Daemon(
                name=name,
                argv=argv,
                folder=run,
                marker=marker,
                port=port,
                ready_url=ready,
                reloads_on_sighup=name != "pushgateway",  # it has no configuration to reload
            )

        daemons = {
            "inbox": self._inbox(run, marker, alertmanager_sender()),
            "pushgateway": server(
                "pushgateway",
                ports.pushgateway,
                [
                    program("pushgateway"),
                    f"--web.listen-address=127.0.0.1:{ports.pushgateway}",
                    f"--persistence.file={lay.pushgateway_file}",
                    "--persistence.interval=30s",
                ],
            ),
            "alertmanager": server(
                "alertmanager",
                ports.alertmanager,
                [
                    program("alertmanager"),
                    f"--config.file={lay.alertmanager_config}",
                    f"--storage.path={lay.alertmanager_data}",
                    f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
                    # Links in its notifications (PagerDuty's client_url, the e-mails) lead here.
                    f"--web.external-url=http://127.0.0.1:{ports.alertmanager}",
                    "--cluster.listen-address=",  # one instance: no gossip port
                ],
            ),
            "prometheus": server(
                "prometheus",
                ports.prometheus,
                [
                    program("prometheus"),
                    f"--config.file={lay.prometheus_config}",
                    f"--storage.tsdb.path={lay.prometheus_data}",
                    "--storage.tsdb.retention.time=7d",
                    f"--web.listen-address=127.0.0.1:{ports.prometheus}",
                ],
            ),
        }
        daemons["traffic"] = Daemon(
            name="traffic",
            argv=[
                sys.executable,
                "-m",
                "delivery.devenv.traffic",
                f"--catalog={self.catalog_dir}",
                f"--rate={self.traffic_rps:g}",
                f"--status={run / 'traffic.json'}",
            ],
            folder=run,
            marker=marker,
            env={"PYTHONPATH": str(PROJECT_ROOT / "plugins")},
        )
        return daemons

    def render(self) -> None:
        """Write the configurations, then check them with promtool and amtool."""
        catalog, issues = load_catalog(self.catalog_dir, strict=False)
        for issue in issues:
            log.warning("catalog: %s", issue)
        for folder in (self.layout.prometheus_data, self.layout.alertmanager_data, self.layout.run):
            folder.mkdir(parents=True, exist_ok=True)
        ensure_certificate(*self.layout.inbox_certificate)
        self.layout.pushgateway_file.parent.mkdir(parents=True, exist_ok=True)
        write_configs(
            layout=self.layout,
            ports=self.ports,
            services=sorted(catalog.services),
            airflow_url=self.airflow_url,
            sinks=self.sinks,
            docker_host=os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock",
            airflow_metrics=os.environ.get("DELIVERY_AIRFLOW_METRICS_TARGET") or None,
        )
        for argv in (
            [binary("promtool"), "check", "config", str(self.layout.prometheus_config)],
            [binary("amtool"), "check-config", str(self.layout.alertmanager_config)],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if proc.returncode != 0:
                raise MonitoringError(f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}")

    def start(self, *, timeout: float = 60.0) -> dict[str, str]:
        """Render, then start or adopt every process; returns what happened to each."""
        self.render()
        outcomes: dict[str, str] = {}
        traffic = self.traffic_rps > 0
        for name, daemon in self.daemons(to_start=True).items():
            if name == "traffic" and not traffic:
                outcomes[name] = "stopped (off)" if daemon.stop() else "off"
                continue
            try:
                outcomes[name] = daemon.start(timeout=timeout)
            except DaemonError as err:
                hint = f" (another port: {name.upper()}_PORT)" if daemon.port else ""
                raise MonitoringError(f"{err}{hint}") from err
        self.write_endpoints()
        return outcomes

    def write_endpoints(self) -> None:
        """Record where the servers answer, for :func:`airflow_env` and :func:`banner`."""
        self.layout.endpoints_file.write_text(json.dumps(asdict(self.endpoints), indent=2))

    def stop(self) -> dict[str, bool]:
        """Stop every process started from this state folder (True: it was running)."""
        stopped = {name: daemon.stop() for name, daemon in reversed(self.daemons().items())}
        self.layout.endpoints_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: ("ready" if daemon.ready() else "running" if daemon.pid() else "stopped")
            for name, daemon in self.daemons().items()
        }
        status_file = self.layout.run / "traffic.json"
        if out["traffic"] != "stopped" and status_file.is_file():
            out["traffic_counts"] = json.loads(status_file.read_text()).get("targets", {})
        return out


def read_endpoints(state: Path) -> dict[str, Any] | None:
    """What the last ``start`` of this state folder wrote, or None when it is not running."""
    try:
        return dict(json.loads(Layout.for_state(state).endpoints_file.read_text()))
    except (OSError, ValueError):
        return None


def airflow_env(state: Path, catalog_dir: Path | None = None) -> dict[str, str]:
    """Environment for the Airflow processes: connections to this monitoring, the metrics backend.

    Empty when the monitoring of ``state`` was never started (Airflow then runs without it).
    """
    endpoints = read_endpoints(state)
    if endpoints is None:
        return {}
    prometheus = str(endpoints["prometheus"]).rsplit(":", 1)
    connections = load_catalog(catalog_dir or DEFAULT_CATALOG, strict=False)[0].platform.connections
    prometheus_conn = {
        "conn_type": "http",
        "host": prometheus[0].removeprefix("http://"),
        "port": int(prometheus[1]),
        "schema": "http",
        "description": "The local Prometheus (delivery.devenv.monitoring)",
    }
    webhook_conn = {
        "conn_type": "http",
        "password": webhook_token(Layout.for_state(state)),
        "description": "Bearer token of the local Alertmanager's rollback webhook",
    }
    return {
        f"AIRFLOW_CONN_{connections.prometheus.upper()}": json.dumps(prometheus_conn),
        f"AIRFLOW_CONN_{connections.alertmanager_webhook.upper()}": json.dumps(webhook_conn),
        **inbox_connections(state, endpoints, connections),
        "DELIVERY_METRICS_BACKEND": "pushgateway",
        "DELIVERY_METRICS_URL": str(endpoints["pushgateway"]),
    }


def inbox_connections(state: Path, endpoints: dict[str, Any], connections: Connections) -> dict[str, str]:
    """The notification connections, pointed at the inbox, and the inbox store (empty without an inbox).

    Every destination of the notification path is configured: Slack's Web API (a local bot
    token), PagerDuty Events v2 (the local routing key; the inbox's certificate trusted by
    this connection only) and SMTP (no TLS on loopback).
    """
    if not endpoints.get("inbox"):  # written by a start from before the inbox
        return {}
    layout = Layout.for_state(state)
    smtp_host, smtp_port = str(endpoints["inbox_smtp"]).rsplit(":", 1)
    slack = {
        "conn_type": "slack",
        "password": slack_bot_token(layout),
        "extra": {"base_url": f"{endpoints['inbox']}{SLACK_API_PATH.removesuffix('chat.postMessage')}"},
        "description": "Slack Web API of the local notification inbox",
    }
    pagerduty = {
        "conn_type": "pagerduty_events",
        "password": pagerduty_routing_key(layout),
        "extra": {
            "events_base_url": str(endpoints["inbox_tls"]),  # RegionalPagerdutyEventsHook's extras
            "events_ca_file": str(endpoints["inbox_certificate"]),
        },
        "description": "PagerDuty Events v2 of the local notification inbox",
    }
    smtp_extra = {
        "disable_tls": True,
        "disable_ssl": True,
        "from_email": "delivery@visiobook.io",
        "timeout": 10,
    }
    smtp = {
        "conn_type": "smtp",
        "host": smtp_host,
        "port": int(smtp_port),
        "extra": smtp_extra,  # plain SMTP on loopback; the providers' sender
        "description": "SMTP server of the local notification inbox",
    }
    return {
        f"AIRFLOW_CONN_{connections.slack_api.upper()}": json.dumps(slack),
        f"AIRFLOW_CONN_{connections.pagerduty.upper()}": json.dumps(pagerduty),
        f"AIRFLOW_CONN_{connections.smtp.upper()}": json.dumps(smtp),
        INBOX_ENV: str(endpoints["inbox_store"]),
    }


def banner(state: Path) -> str:
    """Lines for the start banner: where to watch."""
    endpoints = read_endpoints(state)
    if endpoints is None:
        return "Monitoring is not running (python -m delivery.devenv.monitoring start)."
    rps = endpoints.get("traffic_rps") or 0
    traffic = f"{rps:g} req/s per environment" if rps else "off (DELIVERY_DEMO_TRAFFIC_RPS=0)"
    return "\n".join(
        [
            "Monitoring:",
            f"  Prometheus     {endpoints['prometheus']}/alerts   (targets: /targets)",
            f"  Alertmanager   {endpoints['alertmanager']}/#/alerts",
            f"  Pushgateway    {endpoints['pushgateway']}   (delivery_* metrics of the pipelines)",
            f"  demo traffic   {traffic}",
            f"  notifications  {endpoints['airflow']}/delivery/notifications/   (the Slack, PagerDuty and "
            "e-mail messages, received by the local inbox)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "urls"])
    parser.add_argument("--state", type=Path, default=Path(os.environ.get("DELIVERY_STATE_DIR") or ".local"))
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--airflow-url", default=DEFAULT_AIRFLOW_URL)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    stack = MonitoringStack(state=args.state, catalog_dir=args.catalog, airflow_url=args.airflow_url)
    try:
        if args.command == "start":
            for name, outcome in stack.start().items():
                print(f"{name}: {outcome}", file=sys.stderr)
            print(banner(args.state))
        elif args.command == "stop":
            for name, was_running in stack.stop().items():
                print(f"{name}: {'stopped' if was_running else 'not running'}")
        elif args.command == "status":
            print(json.dumps(stack.status(), indent=2))
        else:
            print(banner(args.state))
    except (MonitoringError, ValueError) as err:
        print(f"monitoring: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
