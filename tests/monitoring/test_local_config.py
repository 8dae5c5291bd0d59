"""The local monitoring's configuration, as rendered for `scripts/run-local.sh start` (no server runs).

Checked with the real tools: promtool (config, rules, rule unit tests and the catalog's
verification queries against series shaped like the local scrape), amtool (the rendered
Alertmanager configuration); and with the real readers of what Airflow gets: Airflow's own
connection parser, the Prometheus hook's settings and the Alertmanager receiver's token check.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from delivery.catalog import load_catalog
from delivery.catalog.fields import parse_duration as _parse_duration
from delivery.catalog.models import render_query
from delivery.devenv.monitoring import MonitoringStack, airflow_env, banner
from delivery.devenv.monitoring_config import (
    LOCAL_RULES_DIR,
    SCRAPE_INTERVAL,
    SERVICES_SCRAPE_INTERVAL,
    SHIPPED_ALERTMANAGER,
    AlertSinks,
    Ports,
    alertmanager_config,
)
from delivery.notification_inbox import INBOX_ENV
from tests.helpers import ROOT


def parse_duration(value: str) -> float:
    """Seconds of a catalog duration."""
    return _parse_duration(value).total_seconds()


if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    Run = Callable[..., subprocess.CompletedProcess[str]]

LOCAL_CATALOG = ROOT / "include" / "catalog-local"
SHIPPED_SERVICES_RULES = ROOT / "include" / "monitoring" / "prometheus" / "rules" / "services.yml"
LOCAL_RULES = LOCAL_RULES_DIR / "services.yml"
AIRFLOW_URL = "http://127.0.0.1:18080"


def _stack(tmp_path: Path, sinks: AlertSinks | None = None) -> MonitoringStack:
    return MonitoringStack(
        state=tmp_path / "state",
        catalog_dir=LOCAL_CATALOG,
        airflow_url=AIRFLOW_URL,
        ports=Ports(
            prometheus=19090,
            alertmanager=19093,
            pushgateway=19091,
            inbox=19095,
            inbox_tls=19096,
            inbox_smtp=12525,
        ),
        sinks=sinks or AlertSinks(),  # empty: the inbox, whatever the environment says
        traffic_rps=2,
    )


@pytest.fixture
def rendered(tmp_path: Path) -> MonitoringStack:
    stack = _stack(tmp_path)
    stack.render()  # also runs promtool check config and amtool check-config
    return stack


def _alerts(path: Path) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule}


# -- rules -------------------------------------------------------------------------------


def test_local_rules_pass_promtool_lint(promtool: str, run: Run) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", LOCAL_RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_rules_unit_tests(promtool: str, run: Run) -> None:
    folder = Path(__file__).parent / "rules_tests" / "local"
    result = run(promtool, "test", "rules", "services_test.yml", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_alerts_are_the_shipped_ones_with_demo_timings() -> None:
    shipped, local = _alerts(SHIPPED_SERVICES_RULES), _alerts(LOCAL_RULES)
    assert set(local) == set(shipped)
    for name, rule in local.items():
        # Same labels, so the same Alertmanager routes (P1 pages, rollback="auto" rolls back).
        assert rule["labels"] == shipped[name]["labels"], name
        # Same thresholds.
        thresholds = re.findall(r"[<>]=?\s*([0-9.]+)", rule["expr"])
        assert thresholds == re.findall(r"[<>]=?\s*([0-9.]+)", shipped[name]["expr"]), name
        # Faster: a demo release that degrades is rolled back within about a minute.
        assert parse_duration(rule["for"]) <= parse_duration(shipped[name]["for"]), name
        assert parse_duration(rule["for"]) <= 60, name


# -- Prometheus --------------------------------------------------------------------------


def test_prometheus_config_loads_the_local_rules_not_the_shipped_service_rules(
    rendered: MonitoringStack, promtool: str, run: Run
) -> None:
    result = run(promtool, "check", "config", rendered.layout.prometheus_config)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = re.findall(r"Checking (\S+)", result.stdout)
    assert str(LOCAL_RULES) in checked
    assert any(path.endswith("prometheus/rules/delivery.yml") for path in checked)
    assert any(path.endswith("prometheus/rules/gpu.yml") for path in checked)
    assert str(SHIPPED_SERVICES_RULES) not in checked


def test_prometheus_scrapes_loopback_and_the_catalog_services(rendered: MonitoringStack) -> None:
    config = yaml.safe_load(rendered.layout.prometheus_config.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "alertmanager", "delivery", "visiobook-services"}
    assert jobs["delivery"]["static_configs"][0]["targets"] == ["127.0.0.1:19091"]
    assert jobs["delivery"]["honor_labels"] is True
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    services = jobs["visiobook-services"]
    keep = next(r for r in services["relabel_configs"] if r.get("action") == "keep")["regex"]
    assert re.fullmatch(keep, "visiobook-demo-web") and re.fullmatch(keep, "visiobook-inference")
    assert not re.fullmatch(keep, "e2e-123456-web")  # another catalog's containers on a shared engine
    targets = {r["target_label"] for r in services["relabel_configs"] if "target_label" in r}
    assert {"service", "environment", "__address__"} <= targets
    # A new release is discovered and scraped within seconds: its first measurements have data.
    assert services["scrape_interval"] == services["docker_sd_configs"][0]["refresh_interval"] == "2s"


def test_airflow_metrics_are_scraped_when_an_exporter_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIVERY_AIRFLOW_METRICS_TARGET", "127.0.0.1:9102")
    stack = _stack(tmp_path)
    stack.render()
    config = yaml.safe_load(stack.layout.prometheus_config.read_text())
    airflow = next(job for job in config["scrape_configs"] if job["job_name"] == "airflow")
    assert airflow["static_configs"][0]["targets"] == ["127.0.0.1:9102"]


def test_verification_windows_fit_the_scrape_interval() -> None:
    """Each window holds several scrapes, and each measurement sees new ones."""
    scrape = parse_duration(SERVICES_SCRAPE_INTERVAL)
    catalog, _ = load_catalog(LOCAL_CATALOG)
    for name, service in catalog.services.items():
        verify = service.environments.production.verify
        assert verify is not None and verify.checks, f"{name}: production has no PromQL verification"
        assert verify.interval.total_seconds() >= 2 * scrape, name
        for check in verify.checks:
            windows = [parse_duration(w) for w in re.findall(r"\[(\d+[smh])\]", check.query)]
            assert windows and all(w >= 4 * scrape for w in windows), (name, check.name)


# -- the catalog's verification queries, evaluated by promtool ---------------------------


def _series(env: str, code: str, path: str, values: str) -> dict[str, str]:
    labels = f'service="visiobook-demo-web", environment="{env}", job="visiobook-services"'
    return {"series": f'http_requests_total{{{labels}, code="{code}", path="{path}"}}', "values": values}


def _buckets(env: str, counts: dict[str, str]) -> list[dict[str, str]]:
    labels = f'service="visiobook-demo-web", environment="{env}", path="/api/books"'
    return [
        {"series": f'http_request_duration_seconds_bucket{{{labels}, le="{le}"}}', "values": values}
        for le, values in counts.items()
    ]


RELEASES = {
    # 2 user requests/s answered fast, a scrape of /metrics every 5 s; staging errs (must not count).
    "healthy": [
        _series("production", "200", "/api/books", "0+10x12"),
        _series("production", "500", "/api/books", "0x12"),
        _series("production", "200", "/metrics", "0+1x12"),
        _series("staging", "500", "/api/books", "0+10x12"),
        *_buckets("production", {"0.005": "0+11x12", "0.5": "0+11x12", "2.5": "0+11x12", "+Inf": "0+11x12"}),
        *_buckets("staging", {"0.005": "0x12", "0.5": "0x12", "2.5": "0x12", "+Inf": "0+10x12"}),
    ],
    # ERRORS_IN: the user requests answer 500.
    "erroring": [
        _series("production", "500", "/api/books", "0+10x12"),
        _series("production", "200", "/metrics", "0+1x12"),
        *_buckets("production", {"0.005": "0+11x12", "0.5": "0+11x12", "2.5": "0+11x12", "+Inf": "0+11x12"}),
    ],
    # SLOW_IN: a user request takes 4 s (one client: 1 every 4 s).
    "slow": [
        _series("production", "200", "/api/books", "0+1.25x12"),
        _series("production", "500", "/api/books", "0x12"),
        _series("production", "200", "/metrics", "0+1x12"),
        *_buckets("production", {"0.005": "0+1x12", "0.5": "0+1x12", "2.5": "0+1x12", "+Inf": "0+2.25x12"}),
    ],
}
VERDICTS = {  # release -> check -> the check fails (value above its max)
    "healthy": {"error_rate": 0, "latency_p95": 0},
    "erroring": {"error_rate": 1, "latency_p95": 0},
    "slow": {"error_rate": 0, "latency_p95": 1},
}


def test_verification_queries_judge_releases_as_scraped_here(tmp_path: Path, promtool: str, run: Run) -> None:
    catalog, _ = load_catalog(LOCAL_CATALOG)
    service = catalog.services["visiobook-demo-web"]
    verify = service.environments.production.verify
    assert verify is not None
    variables = {"service": service.name, "environment": "production", "namespace": "visiobook-production"}
    tests = []
    for release, series in RELEASES.items():
        checks = [
            {
                "expr": f"({render_query(check.query, variables)}) > bool {check.max}",
                "eval_time": "55s",
                "exp_samples": [{"labels": "{}", "value": VERDICTS[release][check.name]}],
            }
            for check in verify.checks
        ]
        tests.append({"interval": SCRAPE_INTERVAL, "input_series": series, "promql_expr_test": checks})
    (tmp_path / "verify_test.yml").write_text(
        yaml.safe_dump(
            # promtool loads the input series one evaluation interval at a time
            {"rule_files": [], "evaluation_interval": SCRAPE_INTERVAL, "tests": tests}
        )
    )
    result = run(promtool, "test", "rules", "verify_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Alertmanager ------------------------------------------------------------------------


def test_alertmanager_keeps_the_shipped_routing_tree(
    rendered: MonitoringStack, amtool: str, run: Run
) -> None:
    text = rendered.layout.alertmanager_config.read_text()
    result = run(amtool, "check-config", rendered.layout.alertmanager_config)
    assert result.returncode == 0, result.stdout + result.stderr
    config, shipped = yaml.safe_load(text), yaml.safe_load(SHIPPED_ALERTMANAGER.read_text())
    assert config["route"] == shipped["route"]
    assert config["inhibit_rules"] == shipped["inhibit_rules"]
    assert [r["name"] for r in config["receivers"]] == [r["name"] for r in shipped["receivers"]]
    assert "/etc/alertmanager" not in text
    # Each receiver keeps its integrations: Slack, PagerDuty and e-mail go to the local inbox.
    integrations = {r["name"]: sorted(set(r) - {"name"}) for r in config["receivers"]}
    assert integrations == {r["name"]: sorted(set(r) - {"name"}) for r in shipped["receivers"]}
    receivers = {r["name"]: r for r in config["receivers"]}
    for name in ("slack-critical-alerts", "slack-alerts", "slack-monitoring"):
        (slack,) = receivers[name]["slack_configs"]
        assert slack["api_url"] == f"http://127.0.0.1:19095/alertmanager/slack?receiver={name}"
    (pagerduty,) = receivers["pagerduty-critical"]["pagerduty_configs"]
    assert pagerduty["url"] == "http://127.0.0.1:19095/alertmanager/pagerduty"
    routing_key = Path(pagerduty["routing_key_file"]).read_text()
    assert len(routing_key) == 32 and routing_key == routing_key.strip()  # PagerDuty's shape, sent verbatim
    assert (config["global"]["smtp_smarthost"], config["global"]["smtp_require_tls"]) == (
        "127.0.0.1:12525",
        False,
    )
    assert "smtp_auth_password_file" not in config["global"]


def test_without_sinks_the_integrations_are_left_out(rendered: MonitoringStack) -> None:
    config = alertmanager_config(layout=rendered.layout, airflow_url=AIRFLOW_URL, sinks=AlertSinks())
    integrations = {r["name"]: sorted(set(r) - {"name"}) for r in config["receivers"]}
    assert integrations.pop("delivery-rollback") == ["webhook_configs"]
    assert all(keys == [] for keys in integrations.values()), integrations


def test_the_inbox_starts_first_and_alertmanager_links_to_itself(rendered: MonitoringStack) -> None:
    daemons = rendered.daemons()
    assert next(iter(daemons)) == "inbox"
    inbox = daemons["inbox"]
    assert (inbox.port, inbox.ready_url, inbox.reloads_on_sighup) == (
        19095,
        "http://127.0.0.1:19095/-/ready",
        False,
    )
    argv = " ".join(inbox.argv)
    for expected in (
        f"--store={rendered.layout.inbox_store}",
        "--http-port=19095",
        "--tls-port=19096",
        "--smtp-port=12525",
        "--alertmanager-url=http://127.0.0.1:19093",
        "--alertmanager-sender=alertmanager@visiobook.example",
    ):
        assert expected in argv
    assert str(rendered.layout.root) in argv  # its pid file is trusted by this marker only
    assert "--web.external-url=http://127.0.0.1:19093" in daemons["alertmanager"].argv
    certificate, key = rendered.layout.inbox_certificate
    assert certificate.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_the_rollback_webhook_calls_the_local_airflow_with_a_generated_token(
    rendered: MonitoringStack,
) -> None:
    config = yaml.safe_load(rendered.layout.alertmanager_config.read_text())
    receiver = next(r for r in config["receivers"] if r["name"] == "delivery-rollback")
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == f"{AIRFLOW_URL}/delivery/alertmanager/webhook"
    assert hook["send_resolved"] is False
    token_file = Path(hook["http_config"]["authorization"]["credentials_file"])
    assert token_file == rendered.layout.token_file
    token = token_file.read_text()
    assert len(token) >= 40 and token == token.strip()  # no trailing newline: sent verbatim
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    rendered.render()
    assert token_file.read_text() == token  # kept across starts: Airflow and Alertmanager agree


def test_alerts_go_to_the_sinks_when_there_are_some(tmp_path: Path, amtool: str, run: Run) -> None:
    stack = _stack(tmp_path, AlertSinks(http_url="http://127.0.0.1:18999/inbox", smtp="127.0.0.1:2525"))
    stack.render()
    assert run(amtool, "check-config", stack.layout.alertmanager_config).returncode == 0
    config = yaml.safe_load(stack.layout.alertmanager_config.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert (
        receivers["pagerduty-critical"]["pagerduty_configs"][0]["url"]
        == "http://127.0.0.1:18999/inbox/pagerduty"
    )
    assert receivers["slack-alerts"]["slack_configs"][0]["channel"] == "#alerts"
    assert receivers["email-dev-team"]["email_configs"][0]["to"] == "dev-team@visiobook.example"
    slack_url = Path(config["global"]["slack_api_url_file"]).read_text()
    assert slack_url == "http://127.0.0.1:18999/inbox/slack"
    assert (
        receivers["slack-alerts"]["slack_configs"][0]["api_url"]
        == "http://127.0.0.1:18999/inbox/slack?receiver=slack-alerts"
    )
    assert (config["global"]["smtp_smarthost"], config["global"]["smtp_require_tls"]) == (
        "127.0.0.1:2525",
        False,
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"PROMETHEUS_PORT": "ninety"}, "PROMETHEUS_PORT='ninety' should be a port", id="port"),
        pytest.param(
            {"INBOX_SMTP_PORT": "70000"}, "INBOX_SMTP_PORT='70000' should be a port", id="inbox-port"
        ),
        pytest.param({"DELIVERY_ALERTS_SINK_URL": "inbox"}, "should be an http", id="sink"),
        pytest.param({"DELIVERY_ALERTS_SMTP": "mail"}, "should be host:port", id="smtp"),
    ],
)
def test_bad_settings_are_refused_by_name(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ports.from_env(environ)
        AlertSinks.from_env(environ)


# -- what Airflow gets -------------------------------------------------------------------


def test_airflow_env_is_empty_until_the_monitoring_started(tmp_path: Path) -> None:
    assert airflow_env(tmp_path / "state", LOCAL_CATALOG) == {}
    assert "not running" in banner(tmp_path / "state")


def test_airflow_env_gives_the_verification_and_the_receiver_what_they_read(
    rendered: MonitoringStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.models.connection import Connection

    from delivery.integrations.http import base_url
    from delivery.web import alertmanager
    from delivery.web.inbound import Refused, check_bearer

    rendered.write_endpoints()
    state = rendered.layout.root.parent
    env = airflow_env(state, LOCAL_CATALOG)
    assert env["DELIVERY_METRICS_BACKEND"] == "pushgateway"
    assert env["DELIVERY_METRICS_URL"] == "http://127.0.0.1:19091"
    prometheus = Connection.from_json(env["AIRFLOW_CONN_PROMETHEUS_DEFAULT"], conn_id="prometheus_default")
    assert base_url(prometheus) == "http://127.0.0.1:19090"

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DELIVERY_CATALOG_DIR", str(LOCAL_CATALOG))
    alertmanager.TOKEN.clear()
    token = rendered.layout.token_file.read_text()
    expected = alertmanager.TOKEN.get()  # what the receiver reads from the connection
    check_bearer(f"Bearer {token}", expected, what="Alertmanager webhook")  # what Alertmanager sends passes
    with pytest.raises(Refused) as denied:
        check_bearer(f"Bearer {token[:-1]}x", expected, what="Alertmanager webhook")
    assert denied.value.code == 401
    alertmanager.TOKEN.clear()

    lines = banner(state)
    assert "http://127.0.0.1:19090" in lines and "http://127.0.0.1:19093" in lines
    assert f"{AIRFLOW_URL}/delivery/notifications/" in lines
    assert token not in json.dumps(env["AIRFLOW_CONN_PROMETHEUS_DEFAULT"]) + lines


def test_airflow_env_configures_every_notification_destination_at_the_inbox(
    rendered: MonitoringStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.models.connection import Connection

    from delivery.notify.providers import PROVIDERS, RegionalPagerdutyEventsHook
    from delivery.notify.routing import Destination, DestinationKind

    rendered.write_endpoints()
    state = rendered.layout.root.parent
    env = airflow_env(state, LOCAL_CATALOG)
    assert env[INBOX_ENV] == str(rendered.layout.inbox_store)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    slack = Connection.from_json(env["AIRFLOW_CONN_SLACK_API"], conn_id="slack_api")
    assert slack.extra_dejson["base_url"] == "http://127.0.0.1:19095/slack/api/"
    assert slack.password and slack.password.startswith("xoxb-")
    smtp = Connection.from_json(env["AIRFLOW_CONN_SMTP_DEFAULT"], conn_id="smtp_default")
    assert (smtp.host, smtp.port, smtp.extra_dejson["disable_tls"]) == ("127.0.0.1", 12525, True)
    hook = RegionalPagerdutyEventsHook(pagerduty_events_conn_id="pagerduty_default")
    assert (hook.events_base_url, hook.events_ca_file) == (
        "https://127.0.0.1:19096",
        str(rendered.layout.inbox_certificate[0]),
    )
    # The same routing key as Alertmanager's: both page the same (local) PagerDuty service.
    assert hook.integration_key == (rendered.layout.secrets / "pagerduty-routing-key").read_text()
    for kind, target in (("slack", "#alerts"), ("pagerduty", "events-v2"), ("email", "oncall@visiobook.io")):
        conn_id = {"slack": "slack_api", "pagerduty": "pagerduty_default", "email": "smtp_default"}[kind]
        PROVIDERS[DestinationKind(kind)].check(
            Destination(kind=DestinationKind(kind), target=target, conn_id=conn_id)
        )
