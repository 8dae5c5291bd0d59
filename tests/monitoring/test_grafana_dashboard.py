"""The Grafana delivery dashboard: structure, datasources, and the metric contract."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.helpers import ROOT

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    Run = Callable[..., subprocess.CompletedProcess[str]]

MONITORING_DIR = ROOT / "include" / "monitoring"
DASHBOARD = MONITORING_DIR / "grafana" / "delivery-dashboard.json"
README = MONITORING_DIR / "README.md"
DCGM_METRICS = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_NOT_METRICS |= {"and", "or", "unless", "inf", "nan"}
# Grafana variables, replaced by values promtool accepts.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d", "$service": ".*"}
_GRAFANA_VARIABLES["$environment"] = ".*"


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in _NOT_METRICS:
            names.add(match.group(0))
    return names


def _contract() -> dict[str, str]:
    """Metric name -> type, from the tables of include/monitoring/README.md."""
    rows = re.findall(
        r"^\| `([A-Za-z_:][\w:]*)` \| (counter|gauge|histogram|summary) \|", README.read_text(), re.M
    )
    return dict(rows)


def _allowed_names(recorded: set[str]) -> set[str]:
    allowed = set(recorded)
    for name, kind in _contract().items():
        allowed.add(name)
        if kind == "histogram":
            allowed |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "summary":
            allowed |= {f"{name}_sum", f"{name}_count"}
    return allowed


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, service) (rate(foo_seconds_bucket{service=~"$service"}'
        "[$__rate_interval]))) / on (service) group_left (env) bar:ratio offset 15m > bool 1e3"
    )
    assert metric_names(expr) == {"foo_seconds_bucket", "bar:ratio"}
    assert metric_names('sum(increase(x_total{result="failed"}[1h])) or vector(0)') == {"x_total"}


def test_contract_table() -> None:
    contract = _contract()
    assert {
        "delivery_deploy_total": "counter",
        "delivery_deploy_duration_seconds": "histogram",
        "delivery_rollback_total": "counter",
        "delivery_approval_total": "counter",
        "delivery_approvals_pending": "gauge",
        "delivery_lead_time_seconds": "histogram",
        "delivery_pipeline_runs_total": "counter",
        "delivery_pipeline_duration_seconds": "histogram",
        "http_requests_total": "counter",
        "http_request_duration_seconds": "histogram",
        "inference_request_duration_seconds": "histogram",
    }.items() <= contract.items()
    assert set(contract) >= DCGM_METRICS


def test_dashboard_header(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "visiobook-delivery"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"service", "environment"} <= set(variables)
    for name in ("service", "environment"):
        assert variables[name]["datasource"] == DATASOURCE
        query = re.fullmatch(r"label_values\((\w+), (\w+)\)", variables[name]["query"]["query"])
        assert query, variables[name]["query"]
        assert query.group(1) in _contract()
        assert query.group(2) == name


def test_every_panel_has_a_datasource_and_targets(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    assert len(panels) >= 20
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_exprs_use_only_contract_and_recorded_metrics(
    dashboard: dict[str, Any], recorded_names: set[str]
) -> None:
    allowed = _allowed_names(recorded_names)
    used: set[str] = set()
    for expr in _exprs(dashboard):
        names = metric_names(expr)
        assert names, expr
        assert names <= allowed, f"unknown metric(s) {sorted(names - allowed)} in {expr}"
        used |= names
    # The dashboard covers every delivery metric of the contract and the GPU.
    delivery = {name for name in _contract() if name.startswith("delivery_")}
    used_bases = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert delivery <= used_bases, sorted(delivery - used_bases)
    assert used & DCGM_METRICS


def test_recorded_series_used_by_the_dashboard_exist(
    dashboard: dict[str, Any], recorded_names: set[str]
) -> None:
    used = {name for expr in _exprs(dashboard) for name in metric_names(expr) if ":" in name}
    assert used
    assert used <= recorded_names


def test_exprs_are_valid_promql(dashboard: dict[str, Any], promtool: str, run: Run, tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(_exprs(dashboard)):
        promql = expr
        for variable, value in _GRAFANA_VARIABLES.items():
            promql = promql.replace(variable, value)
        assert "$" not in promql, expr
        rules.append({"record": f"dashboard:expr_{i}", "expr": promql})
    rule_file = tmp_path / "dashboard.yml"
    rule_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = run(promtool, "check", "rules", "--lint=none", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr
