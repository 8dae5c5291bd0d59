"""The configuration of the local monitoring (Prometheus, Alertmanager, Pushgateway), rendered.

Pure functions over the shipped files in ``include/monitoring/``; they read the catalog's
service names and write nothing but the files :func:`write_configs` is asked to write.

**Prometheus** (scrape and rule evaluation every 5 s; the demo containers every 2 s):

* ``visiobook-services``: the demo containers of every environment, found with Docker service
  discovery (the engine lists the running containers labelled ``io.visiobook.managed-by``;
  only catalog services are kept). Each container is on the host network and says its port in
  ``io.visiobook.port``; its ``io.visiobook.service`` and ``io.visiobook.environment`` labels
  become the ``service`` and ``environment`` target labels the rules, the verification
  queries and the rollback webhook rely on. A container that stops leaves the targets: a
  failed release is not scraped. Discovery and scrapes every 2 s: the verification starts
  seconds after a release is healthy, and a rate needs two samples; with 5 s, the first two
  measurements of a first deploy could both find no data (Inconclusive, a human's review).
* ``delivery``: the ``delivery_*`` metrics, pushed by the pipelines to the local Pushgateway
  (``honor_labels``: the pushed ``job`` and ``service`` win).
* ``prometheus``, ``alertmanager``: themselves.
* ``airflow``, only when ``DELIVERY_AIRFLOW_METRICS_TARGET`` names an exporter of Airflow's
  metrics (``host:port``, e.g. a ``statsd_exporter`` fed by Airflow's StatsD; Debian has no
  package for one, so it is opt-in).

Rules: the shipped ``delivery.yml`` and ``gpu.yml``, and ``include/monitoring/local/rules``
(the shipped service alerts with demo timings) instead of the shipped ``services.yml``.

**Alertmanager**: the shipped ``alertmanager.yml`` (same routing tree, grouping, inhibition,
receivers), with the ``delivery-rollback`` webhook pointed at the local Airflow and its bearer
token read from a generated file. Slack, PagerDuty and e-mail cannot be reached from here: they
go to the sinks of :class:`AlertSinks`, an HTTP endpoint taking Slack posts at ``<url>/slack``
and PagerDuty events at ``<url>/pagerduty``, and an SMTP server (``host:port``). The local
monitoring points them at its notification inbox (:mod:`delivery.devenv.inbox_server`);
``DELIVERY_ALERTS_SINK_URL`` and ``DELIVERY_ALERTS_SMTP`` point them elsewhere. Each Slack
receiver posts to ``<url>/slack?receiver=<name>`` so that the inbox can link the receiver's
alerts. With no sink (``AlertSinks()``), those integrations are left out and the receivers
stay, silent (the Alertmanager UI still shows every alert and where it was routed).
"""

from __future__ import annotations

import copy
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from delivery.paths import PROJECT_ROOT

MONITORING_DIR = PROJECT_ROOT / "include" / "monitoring"
SHIPPED_ALERTMANAGER = MONITORING_DIR / "alertmanager" / "alertmanager.yml"
SHIPPED_RULES = tuple(MONITORING_DIR / "prometheus" / "rules" / f"{name}.yml" for name in ("delivery", "gpu"))
LOCAL_RULES_DIR = MONITORING_DIR / "local" / "rules"

ROLLBACK_RECEIVER = "delivery-rollback"
WEBHOOK_PATH = "/delivery/alertmanager/webhook"
SCRAPE_INTERVAL = "5s"
SERVICES_SCRAPE_INTERVAL = "2s"  # the demo containers: see the module doc
CONTAINER_LABEL = "__meta_docker_container_label_io_visiobook_"  # + service, environment, port
MANAGED_BY = "io.visiobook.managed-by=delivery"


@dataclass(frozen=True, kw_only=True)
class Ports:
    """Loopback ports of the monitoring servers (``PROMETHEUS_PORT``... override them)."""

    prometheus: int = 9090
    alertmanager: int = 9093
    pushgateway: int = 9091
    inbox: int = 9095
    """The notification inbox's HTTP endpoints (Slack, Alertmanager's PagerDuty)."""
    inbox_tls: int = 9096
    """Its HTTPS endpoint: PagerDuty Events v2 for the pipeline's client, which takes https only."""
    inbox_smtp: int = 2525

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ports:
        """``PROMETHEUS_PORT``, ``ALERTMANAGER_PORT``, ``PUSHGATEWAY_PORT``, ``INBOX_PORT``,
        ``INBOX_TLS_PORT``, ``INBOX_SMTP_PORT`` override the defaults."""
        env = os.environ if environ is None else environ
        values = {}
        for name in ("prometheus", "alertmanager", "pushgateway", "inbox", "inbox_tls", "inbox_smtp"):
            raw = env.get(f"{name.upper()}_PORT", "").strip()
            if raw:
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise ValueError(f"{name.upper()}_PORT={raw!r} should be a port number (1-65535)")
                values[name] = int(raw)
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class AlertSinks:
    """Where the local Alertmanager's Slack, PagerDuty and e-mail integrations deliver, if anywhere."""

    http_url: str | None = None
    smtp: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AlertSinks:
        env = os.environ if environ is None else environ
        url = env.get("DELIVERY_ALERTS_SINK_URL", "").strip().rstrip("/") or None
        smtp = env.get("DELIVERY_ALERTS_SMTP", "").strip() or None
        if url and not re.match(r"^https?://", url):
            raise ValueError(f"DELIVERY_ALERTS_SINK_URL={url!r} should be an http(s) URL")
        if smtp and not re.match(r"^[\w.-]+:\d+$", smtp):
            raise ValueError(f"DELIVERY_ALERTS_SMTP={smtp!r} should be host:port")
        return cls(http_url=url, smtp=smtp)


@dataclass(frozen=True)
class Layout:
    """Every file of the local monitoring, under ``<state>/monitoring``."""

    root: Path

    @classmethod
    def for_state(cls, state: Path) -> Layout:
        return cls(Path(state).resolve() / "monitoring")

    @property
    def prometheus_config(self) -> Path:
        return self.root / "prometheus" / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus" / "data"

    @property
    def alertmanager_config(self) -> Path:
        return self.root / "alertmanager" / "alertmanager.yml"

    @property
    def alertmanager_data(self) -> Path:
        return self.root / "alertmanager" / "data"

    @property
    def pushgateway_file(self) -> Path:
        return self.root / "pushgateway" / "metrics.store"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def token_file(self) -> Path:
        return self.secrets / "delivery-webhook-token"

    @property
    def inbox_store(self) -> Path:
        """The notification inbox (SQLite), read by the page in the Airflow UI."""
        return self.root / "inbox" / "notifications.sqlite3"

    @property
    def inbox_certificate(self) -> tuple[Path, Path]:
        """The inbox's TLS certificate (public: the PagerDuty connection trusts it) and key."""
        return self.root / "inbox" / "tls.pem", self.secrets / "inbox-tls.key"

    @property
    def endpoints_file(self) -> Path:
        return self.root / "endpoints.json"

    @property
    def run(self) -> Path:
        """Pid, command and log files of the processes."""
        return self.root / "run"


def _static(job: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"job_name": job, **extra, "static_configs": [{"targets": [target]}]}


def services_job(services: Iterable[str], *, docker_host: str) -> dict[str, Any]:
    """The scrape job of the demo containers (Docker discovery, catalog services only)."""
    keep = "|".join(re.escape(name) for name in sorted(services))
    return {
        "job_name": "visiobook-services",
        "metrics_path": "/metrics",
        "scrape_interval": SERVICES_SCRAPE_INTERVAL,
        "scrape_timeout": SERVICES_SCRAPE_INTERVAL,
        "docker_sd_configs": [
            {
                "host": docker_host,
                "refresh_interval": SERVICES_SCRAPE_INTERVAL,
                "host_networking_host": "127.0.0.1",
                "filters": [{"name": "label", "values": [MANAGED_BY]}],
            }
        ],
        "relabel_configs": [
            {"source_labels": [f"{CONTAINER_LABEL}service"], "regex": keep, "action": "keep"},
            {
                "source_labels": [f"{CONTAINER_LABEL}port"],
                "regex": r"(\d+)",
                "target_label": "__address__",
                "replacement": "127.0.0.1:$1",
            },
            {"source_labels": [f"{CONTAINER_LABEL}service"], "target_label": "service"},
            {"source_labels": [f"{CONTAINER_LABEL}environment"], "target_label": "environment"},
            {
                "source_labels": ["__meta_docker_container_name"],
                "regex": "/?(.+)",
                "target_label": "container",
            },
        ],
    }


def prometheus_config(
    *, ports: Ports, services: Iterable[str], docker_host: str, airflow_metrics: str | None = None
) -> dict[str, Any]:
    """The local Prometheus configuration (see the module doc)."""
    jobs = [
        _static("prometheus", f"127.0.0.1:{ports.prometheus}"),
        _static("alertmanager", f"127.0.0.1:{ports.alertmanager}"),
        _static("delivery", f"127.0.0.1:{ports.pushgateway}", honor_labels=True),
    ]
    if airflow_metrics:
        jobs.append(_static("airflow", airflow_metrics))
    names = list(services)
    if names:
        jobs.append(services_job(names, docker_host=docker_host))
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": "4s",
            "evaluation_interval": SCRAPE_INTERVAL,
            "external_labels": {"platform": "visiobook-local"},
        },
        "rule_files": [str(path) for path in SHIPPED_RULES] + [str(LOCAL_RULES_DIR / "*.yml")],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports.alertmanager}"]}]}]
        },
        "scrape_configs": jobs,
    }


def _integrations(config: dict[str, Any], *, layout: Layout, sinks: AlertSinks) -> None:
    """Point Slack, PagerDuty and e-mail at the sinks, or leave them out."""
    glob = config.setdefault("global", {})
    for key in ("slack_api_url_file", "smtp_auth_username", "smtp_auth_password_file"):
        glob.pop(key, None)  # the shipped secret files live on the production host only
    if sinks.http_url:
        glob["slack_api_url_file"] = str(layout.secrets / "slack-webhook-url")
    if sinks.smtp:
        glob.update(smtp_smarthost=sinks.smtp, smtp_require_tls=False)
    for receiver in config["receivers"]:
        for pagerduty in receiver.get("pagerduty_configs", []):
            pagerduty["url"] = f"{sinks.http_url}/pagerduty"
            pagerduty["routing_key_file"] = str(layout.secrets / "pagerduty-routing-key")
        for slack in receiver.get("slack_configs", []) if sinks.http_url else []:
            slack["api_url"] = f"{sinks.http_url}/slack?{urlencode({'receiver': receiver['name']})}"
        if not sinks.http_url:
            receiver.pop("slack_configs", None)
            receiver.pop("pagerduty_configs", None)
        if not sinks.smtp:
            receiver.pop("email_configs", None)


def alertmanager_sender(shipped: Mapping[str, Any] | None = None) -> str | None:
    """The envelope sender of Alertmanager's e-mails (the shipped ``global.smtp_from``)."""
    if shipped is None:
        shipped = yaml.safe_load(SHIPPED_ALERTMANAGER.read_text(encoding="utf-8"))
    sender = (shipped.get("global") or {}).get("smtp_from")
    return str(sender) if sender else None


def alertmanager_config(
    *, layout: Layout, airflow_url: str, sinks: AlertSinks, shipped: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The shipped Alertmanager configuration, wired to the local Airflow (see the module doc)."""
    if shipped is None:
        shipped = yaml.safe_load(SHIPPED_ALERTMANAGER.read_text(encoding="utf-8"))
    config = copy.deepcopy(dict(shipped))
    hooks = [
        hook
        for receiver in config.get("receivers", [])
        if receiver.get("name") == ROLLBACK_RECEIVER
        for hook in receiver.get("webhook_configs", [])
    ]
    if len(hooks) != 1:
        raise ValueError(
            f"{SHIPPED_ALERTMANAGER}: expected one webhook in receiver {ROLLBACK_RECEIVER!r}, found {len(hooks)}"
        )
    hooks[0]["url"] = airflow_url.rstrip("/") + WEBHOOK_PATH
    hooks[0]["http_config"] = {
        "authorization": {"type": "Bearer", "credentials_file": str(layout.token_file)}
    }
    _integrations(config, layout=layout, sinks=sinks)
    return config


def _write_secret(path: Path, content: str) -> None:
    """Write ``content`` with no trailing newline, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(content)
    path.chmod(0o600)


def _kept_secret(path: Path, make: Callable[[], str], *, valid: Callable[[str], bool] = bool) -> str:
    """The secret in ``path``, generated once with ``make`` and kept (0600) while ``valid``."""
    if not path.is_file() or not valid(path.read_text().strip()):
        _write_secret(path, make())
    return path.read_text().strip()


def webhook_token(layout: Layout) -> str:
    """The bearer token shared by Alertmanager and Airflow, generated once and kept (0600)."""
    return _kept_secret(layout.token_file, lambda: secrets.token_urlsafe(32))


def pagerduty_routing_key(layout: Layout) -> str:
    """The local PagerDuty routing key (32 characters, as PagerDuty's): Alertmanager's and Airflow's."""
    path = layout.secrets / "pagerduty-routing-key"
    return _kept_secret(path, lambda: secrets.token_hex(16), valid=lambda key: len(key) == 32)


def slack_bot_token(layout: Layout) -> str:
    """The bot token of the local ``slack_api`` connection (the inbox only checks that one is sent)."""
    return _kept_secret(layout.secrets / "slack-bot-token", lambda: f"xoxb-local-{secrets.token_hex(12)}")


def write_configs(
    *,
    layout: Layout,
    ports: Ports,
    services: Iterable[str],
    airflow_url: str,
    sinks: AlertSinks,
    docker_host: str,
    airflow_metrics: str | None = None,
) -> None:
    """Write the Prometheus and Alertmanager configurations and the secret files they read."""
    webhook_token(layout)
    if sinks.http_url:
        _write_secret(layout.secrets / "slack-webhook-url", f"{sinks.http_url}/slack")
        pagerduty_routing_key(layout)
    header = "# Generated by delivery.devenv.monitoring from include/monitoring; edits are overwritten.\n"
    prometheus = prometheus_config(
        ports=ports, services=services, docker_host=docker_host, airflow_metrics=airflow_metrics
    )
    alertmanager = alertmanager_config(layout=layout, airflow_url=airflow_url, sinks=sinks)
    for path, config in ((layout.prometheus_config, prometheus), (layout.alertmanager_config, alertmanager)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
