"""Alertmanager routing, inhibition and secrets, checked with amtool."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.helpers import ROOT

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator

    Run = Callable[..., subprocess.CompletedProcess[str]]

REPO_ROOT = ROOT
ALERTMANAGER_CONFIG = REPO_ROOT / "include" / "monitoring" / "alertmanager" / "alertmanager.yml"
SECRETS_DIR = "/etc/alertmanager/secrets/"
ROLLBACK_WEBHOOK_URL = "http://127.0.0.1:8080/delivery/alertmanager/webhook"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _receiver(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in config["receivers"] if r["name"] == name)


def test_amtool_check_config(amtool: str, run: Run) -> None:
    result = run(amtool, "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert " - 2 inhibit rules" in result.stdout
    assert " - 6 receivers" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        pytest.param(
            ["severity=P1", "service=api", "environment=production"],
            ["pagerduty-critical", "slack-critical-alerts"],
            id="P1",
        ),
        pytest.param(
            ["severity=P1", "service=api", "environment=production", "rollback=auto"],
            ["delivery-rollback", "pagerduty-critical", "slack-critical-alerts"],
            id="P1-rollback",
        ),
        pytest.param(
            ["severity=P2", "service=api", "environment=staging"],
            ["slack-alerts", "email-dev-team"],
            id="P2",
        ),
        pytest.param(
            ["severity=P2", "service=api", "environment=staging", "rollback=manual"],
            ["slack-alerts", "email-dev-team"],
            id="P2-rollback-not-auto",
        ),
        pytest.param(["severity=P3", "service=api"], ["slack-monitoring"], id="P3"),
        pytest.param(
            ["severity=P3", "service=api", "rollback=auto"],
            ["delivery-rollback", "slack-monitoring"],
            id="P3-rollback",
        ),
        pytest.param(["service=api"], ["slack-alerts"], id="no-severity"),
        pytest.param(["severity=critical", "service=api"], ["slack-alerts"], id="unknown-severity"),
    ],
)
def test_amtool_routes(amtool: str, run: Run, labels: list[str], receivers: list[str]) -> None:
    result = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().split(",") == receivers


def test_grouping_and_timing(config: dict[str, Any]) -> None:
    route = config["route"]
    assert route["group_by"] == ["alertname", "service", "environment"]
    assert {"group_wait", "group_interval", "repeat_interval"} <= set(route)
    # P1 notifies faster than the default.
    p1 = [r for r in route["routes"] if 'severity="P1"' in r.get("matchers", [])]
    assert p1
    assert all(r["group_wait"] == "10s" for r in p1)


def test_every_notifier_sends_resolved_except_the_rollback_webhook(config: dict[str, Any]) -> None:
    seen = 0
    for receiver in config["receivers"]:
        for key, notifiers in receiver.items():
            if not key.endswith("_configs"):
                continue
            for notifier in notifiers:
                seen += 1
                expected = receiver["name"] != "delivery-rollback"
                assert notifier.get("send_resolved") is expected, (receiver["name"], key)
    assert seen == 6


def test_severity_channels(config: dict[str, Any]) -> None:
    channels = {
        name: _receiver(config, name)["slack_configs"][0]["channel"]
        for name in ("slack-critical-alerts", "slack-alerts", "slack-monitoring")
    }
    assert channels == {
        "slack-critical-alerts": "#critical-alerts",
        "slack-alerts": "#alerts",
        "slack-monitoring": "#monitoring",
    }
    assert "pagerduty_configs" in _receiver(config, "pagerduty-critical")
    assert _receiver(config, "email-dev-team")["email_configs"][0]["to"]


def test_rollback_webhook(config: dict[str, Any]) -> None:
    rollback_route = config["route"]["routes"][0]
    assert rollback_route["receiver"] == "delivery-rollback"
    assert rollback_route["matchers"] == ['rollback="auto"']
    assert rollback_route["continue"] is True
    (webhook,) = _receiver(config, "delivery-rollback")["webhook_configs"]
    assert webhook["url"] == ROLLBACK_WEBHOOK_URL
    authorization = webhook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    assert authorization["credentials_file"] == f"{SECRETS_DIR}delivery-webhook-token"
    assert "credentials" not in authorization


def test_no_secret_in_the_config(config: dict[str, Any]) -> None:
    inline_secret_keys = {
        "api_url",
        "slack_api_url",
        "routing_key",
        "service_key",
        "auth_password",
        "smtp_auth_password",
        "auth_secret",
        "smtp_auth_secret",
        "credentials",
        "password",
        "bearer_token",
    }
    file_fields = {}
    for path, value in _walk(config):
        key = path.rsplit(".", 1)[-1]
        assert key not in inline_secret_keys, f"inline secret at {path}"
        if key.endswith("_file"):
            file_fields[path] = value
    assert all(v.startswith(SECRETS_DIR) for v in file_fields.values()), file_fields
    assert {path.rsplit(".", 1)[-1] for path in file_fields} == {
        "slack_api_url_file",
        "smtp_auth_password_file",
        "routing_key_file",
        "credentials_file",
    }
    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    assert "hooks.slack.com" not in text
    assert "events.pagerduty.com" not in text


def test_inhibition(config: dict[str, Any], alert_rules: list[dict[str, Any]]) -> None:
    by_source = {tuple(rule["source_matchers"]): rule for rule in config["inhibit_rules"]}
    p1 = by_source[('severity="P1"',)]
    assert p1["target_matchers"] == ['severity=~"P2|P3"']
    assert p1["equal"] == ["service", "environment"]

    down = by_source[('alertname="ServiceDown"',)]
    assert down["equal"] == ["service", "environment"]
    (target,) = down["target_matchers"]
    match = re.fullmatch(r'alertname=~"(.+)"', target)
    assert match, target
    pattern = re.compile(match.group(1))
    alert_names = {rule["alert"] for rule in alert_rules}
    inhibited = {name for name in alert_names if pattern.fullmatch(name)}
    assert inhibited == {
        "HTTPErrorRateCritical",
        "HTTPErrorRateHigh",
        "HTTPLatencyP95Critical",
        "HTTPLatencyP95High",
        "InferenceLatencyP95Critical",
        "InferenceLatencyP95High",
        "ServiceInstanceDown",
    }
    # Every alternative of the regex names a real alert (catches a rename).
    for alternative in match.group(1).split("|"):
        assert any(re.fullmatch(alternative, name) for name in alert_names), alternative
