"""Prometheus configuration and alert rules, checked and unit-tested with promtool."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
import yaml

from tests.helpers import ROOT

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    Run = Callable[..., subprocess.CompletedProcess[str]]

REPO_ROOT = ROOT
PROMETHEUS_DIR = REPO_ROOT / "include" / "monitoring" / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = Path(__file__).resolve().parent / "rules_tests"

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*_test.yml"))
SEVERITIES = {"P1", "P2", "P3"}


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_rule_and_test_files_exist() -> None:
    assert {p.name for p in RULE_FILES} >= {"services.yml", "gpu.yml", "delivery.yml"}
    # One promtool unit-test file per rule file.
    assert {p.name.removesuffix("_test.yml") for p in RULE_TEST_FILES} == {p.stem for p in RULE_FILES}


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=_ids(RULE_FILES))
def test_promtool_check_rules(promtool: str, run: Run, rule_file: Path) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config_loads_every_rule_file(promtool: str, run: Run) -> None:
    result = run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    for rule_file in RULE_FILES:
        assert f"Checking {rule_file.relative_to(PROMETHEUS_DIR)}" in result.stdout


def test_prometheus_config_scrapes_loopback_only() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    targets += [
        target
        for am in config["alerting"]["alertmanagers"]
        for static in am["static_configs"]
        for target in static["targets"]
    ]
    assert targets
    assert all(t.startswith("127.0.0.1:") for t in targets), targets
    # Service targets carry the labels the alerts and the rollback webhook rely on.
    services = next(j for j in config["scrape_configs"] if j["job_name"] == "visiobook-services")
    for static in services["static_configs"]:
        assert {"service", "environment"} <= set(static["labels"]), static


@pytest.mark.parametrize("test_file", RULE_TEST_FILES, ids=_ids(RULE_TEST_FILES))
def test_promtool_rule_unit_tests(promtool: str, run: Run, test_file: Path) -> None:
    result = run(promtool, "test", "rules", test_file.name, cwd=test_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_where_it_fires(alert_rules: list[dict[str, Any]]) -> None:
    fired: set[str] = set()
    for test_file in RULE_TEST_FILES:
        doc = yaml.safe_load(test_file.read_text(encoding="utf-8"))
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert {r["alert"] for r in alert_rules} - fired == set()


def test_alert_labels_and_annotations(alert_rules: list[dict[str, Any]]) -> None:
    assert alert_rules
    for rule in alert_rules:
        name, labels = rule["alert"], rule.get("labels", {})
        assert labels.get("severity") in SEVERITIES, f"{name}: severity {labels.get('severity')!r}"
        # `service` comes from the series, never from a constant in the rule.
        assert "service" not in labels, f"{name} sets service statically"
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        assert annotations["runbook_url"].startswith("https://"), name
        assert annotations["runbook_url"].endswith(f"/{name}"), name
        if "rollback" in labels:
            assert labels["rollback"] == "auto", name
            assert labels["severity"] == "P1", f"{name}: only P1 alerts may roll back automatically"


def test_rollback_alerts_never_trigger_a_rollback(alert_rules: list[dict[str, Any]]) -> None:
    rollback_alerts = [r for r in alert_rules if r["alert"] in {"RollbackFailed", "ServiceRolledBack"}]
    assert len(rollback_alerts) == 2
    assert all("rollback" not in r.get("labels", {}) for r in rollback_alerts)


def test_automatic_rollback_alerts() -> None:
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in RULE_FILES]
    auto = {
        rule["alert"]
        for doc in docs
        for group in doc["groups"]
        for rule in group["rules"]
        if rule.get("labels", {}).get("rollback") == "auto"
    }
    assert auto == {
        "ServiceDown",
        "HTTPErrorRateCritical",
        "HTTPLatencyP95Critical",
        "InferenceLatencyP95Critical",
    }


def test_aggregations_in_alerts_keep_service(alert_rules: list[dict[str, Any]]) -> None:
    """An aggregation that drops ``service`` would leave the alert unroutable."""
    for rule in alert_rules:
        for group_labels in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in group_labels.split(",")}
            assert "service" in labels, f"{rule['alert']}: by ({group_labels}) drops service"
        assert not re.search(r"\bwithout\s*\([^)]*\bservice\b", rule["expr"]), rule["alert"]


def _copy_for_mutation(tmp_path: Path) -> tuple[Path, Path]:
    """Copy rules and their unit tests into tmp_path, keeping their relative layout."""
    rules_copy = tmp_path / RULES_DIR.relative_to(REPO_ROOT)
    tests_copy = tmp_path / RULE_TESTS_DIR.relative_to(REPO_ROOT)
    shutil.copytree(RULES_DIR, rules_copy)
    shutil.copytree(RULE_TESTS_DIR, tests_copy)
    return rules_copy, tests_copy


def _mutate_rule(path: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    matches = [
        rule
        for group in doc["groups"]
        for rule in group["rules"]
        if name in (rule.get("alert"), rule.get("record"))
    ]
    assert len(matches) == 1, name
    change(matches[0])
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _set_severity(rule: dict[str, Any]) -> None:
    rule["labels"]["severity"] = "P2"


def _drop_service(rule: dict[str, Any]) -> None:
    rule["expr"] = rule["expr"].replace("sum by (service, environment)", "sum by (environment)")


def _raise_threshold(rule: dict[str, Any]) -> None:
    rule["expr"] = rule["expr"].replace("> 90", "> 99")


def _no_exported_container(rule: dict[str, Any]) -> None:
    rule["expr"] = rule["expr"].replace(
        '"service", "exported_container", "container"', '"service", "container"'
    )


class Mutation(NamedTuple):
    """A break in one rule, and the unit-test check that must catch it."""

    rule_file: str
    rule: str
    change: Callable[[dict[str, Any]], None]
    failing_check: str


MUTATIONS = [
    pytest.param(
        Mutation("services.yml", "ServiceDown", _set_severity, "ServiceDown"),
        id="wrong-severity",
    ),
    pytest.param(
        Mutation("services.yml", "service:http_requests:rate5m", _drop_service, "HTTPErrorRateCritical"),
        id="service-label-dropped",
    ),
    pytest.param(
        Mutation("gpu.yml", "GPUTemperatureCritical", _raise_threshold, "GPUTemperatureCritical"),
        id="gpu-threshold",
    ),
    pytest.param(
        Mutation(
            "gpu.yml",
            "gpu:dcgm_gpu_temp_celsius:service",
            _no_exported_container,
            "gpu:dcgm_gpu_temp_celsius:service",
        ),
        id="gpu-service-mapping",
    ),
]


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_unit_tests_catch_a_broken_rule(promtool: str, run: Run, tmp_path: Path, mutation: Mutation) -> None:
    rules_copy, tests_copy = _copy_for_mutation(tmp_path)
    _mutate_rule(rules_copy / mutation.rule_file, mutation.rule, mutation.change)
    test_file = f"{Path(mutation.rule_file).stem}_test.yml"
    result = run(promtool, "test", "rules", test_file, cwd=tests_copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "FAILED" in output
    assert mutation.failing_check in output
