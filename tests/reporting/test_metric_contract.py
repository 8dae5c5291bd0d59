"""Every ``delivery_*`` metric that a shipped alert rule or dashboard panel reads is pushed, with a
value, by the code a pipeline runs: the callables and notifiers of the DAGs the factory builds from
the catalog, run with the context Airflow gives them, pushing to a real Pushgateway."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from airflow.sdk import DAG

from delivery.catalog import load_catalog
from delivery.pipeline import task_ids as ids
from delivery.pipeline.factory import DagFactory
from delivery.reporting import metrics
from delivery.reporting.notifiers import ApprovalPendingNotifier
from tests.helpers import ROOT
from tests.reporting.conftest import Gateway

pytestmark = pytest.mark.e2e

MONITORING = ROOT / "include" / "monitoring"
SERVICE = "visiobook-api"
SHA = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_METRIC = re.compile(r"\bdelivery_[a-z0-9_]+")


def names_read_by_monitoring() -> set[str]:
    """The ``delivery_*`` series named in the rules' expressions and the dashboard's queries."""
    queries: list[str] = []
    for path in sorted((MONITORING / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            queries += [rule["expr"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana" / "delivery-dashboard.json").read_text())

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            panels(panel.get("panels", []))
            queries.extend(target.get("expr", "") for target in panel.get("targets", []))

    panels(dashboard["panels"])
    queries += [str(variable.get("definition", "")) for variable in dashboard["templating"]["list"]]
    return {name for query in queries for name in _METRIC.findall(query)}


def test_the_monitoring_reads_the_delivery_metrics() -> None:
    names = names_read_by_monitoring()
    assert "delivery_approvals_pending" in names  # an alert rule and two panels
    assert {re.sub(r"_(bucket|sum|count)$", "", name) for name in names} <= set(metrics.METRIC_NAMES)


@dataclass
class Ti:
    """What the steps read from ``context["ti"]``: the run's task states and XComs."""

    dag_id: str
    run_id: str
    states: dict[str, str] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)
    task_id: str = "notify.summary"
    try_number: int = 1
    map_index: int = -1

    @property
    def log_url(self) -> str:
        return f"http://localhost:8080/dags/{self.dag_id}/runs/{self.run_id}"

    def get_task_states(self, *, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {run_ids[0]: dict(self.states)}

    def xcom_pull(self, task_ids: str | None = None, **_: Any) -> Any:
        return self.xcoms.get(task_ids or "")

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def _context(dag: DAG, run_id: str, *, started: datetime, **ti: Any) -> dict[str, Any]:
    task_instance = Ti(dag_id=dag.dag_id, run_id=run_id, **ti)
    dag_run = SimpleNamespace(
        dag_id=dag.dag_id,
        run_id=run_id,
        run_type="manual",
        start_date=started,
        conf={"commit_time": (started - timedelta(minutes=30)).isoformat()},
    )
    return {
        "ti": task_instance,
        "task_instance": task_instance,
        "run_id": run_id,
        "dag_run": dag_run,
        "dag": dag,
    }


def _python(dag: DAG, task_id: str, context: dict[str, Any], **call: Any) -> Any:
    task = dag.get_task(task_id)
    return task.python_callable(**task.op_kwargs, **call, **context)  # type: ignore[attr-defined]


def _deployed_run(dag: DAG, gateway: Gateway) -> None:
    """A run that deploys to staging then production, approved by a human, verified."""
    now = datetime.now(UTC)
    context = _context(dag, "manual__deployed", started=now - timedelta(minutes=40))
    _python(dag, ids.CHECKOUT, context, params={"sha": SHA, "ref": SHA})

    approval = dag.get_task(ids.APPROVE_PRODUCTION)
    for notifier in approval.notifiers:  # type: ignore[attr-defined]  # what HITLOperator.execute calls
        notifier(context)
    assert gateway.total("delivery_approvals_pending", service=SERVICE, run_id="manual__deployed") == 1
    callbacks = approval.on_success_callback  # answered (or timed out to Reject): the task succeeds
    assert isinstance(callbacks, list) and any(isinstance(c, ApprovalPendingNotifier) for c in callbacks)
    for callback in callbacks:
        callback(context)
    assert gateway.total("delivery_approvals_pending", service=SERVICE, run_id="manual__deployed") == 0

    ti: Ti = context["ti"]
    ti.states = {ids.CHECKOUT: "success", ids.APPROVE_PRODUCTION: "success", ids.PRODUCTION_COMMIT: "success"}
    for env in ("staging", "production"):
        ti.states[f"deploy_{env}.health_check"] = "success"
        ti.xcoms[f"deploy_{env}.gitops_commit"] = {"committed_at": (now - timedelta(minutes=5)).isoformat()}
        ti.xcoms[f"deploy_{env}.health_check"] = {"healthy_at": (now - timedelta(minutes=3)).isoformat()}
    ti.states[ids.VERIFY] = "success"
    ti.xcoms[ids.CHECKOUT] = {"sha": SHA}
    ti.xcoms[ids.APPROVE_PRODUCTION] = {"chosen_options": ["Approve"], "responded_by_user": {"id": "alice"}}
    ti.xcoms[ids.VERIFY] = {"decision": "promote"}
    assert _python(dag, ids.SUMMARY, context)["outcome"] == "deployed"


def _rolled_back_run(dag: DAG) -> None:
    """A run whose production deploy failed and was rolled back in the pipeline."""
    context = _context(dag, "manual__rolled_back", started=datetime.now(UTC) - timedelta(minutes=20))
    _python(dag, ids.CHECKOUT, context, params={"sha": SHA, "ref": SHA})
    ti: Ti = context["ti"]
    ti.states = {
        ids.APPROVE_PRODUCTION: "success",
        ids.PRODUCTION_COMMIT: "success",
        "deploy_production.health_check": "failed",
        ids.ROLLBACK_PLAN: "success",
        ids.ROLLBACK_HEALTH: "success",
    }
    ti.xcoms[ids.CHECKOUT] = {"sha": SHA}
    assert _python(dag, ids.SUMMARY, context)["outcome"] == "rolled_back"


def test_every_metric_the_monitoring_reads_is_pushed_by_the_pipeline(pushgateway: Gateway) -> None:
    catalog, _ = load_catalog()
    dag = DagFactory(catalog=catalog).build(catalog.service(SERVICE))

    _deployed_run(dag, pushgateway)
    _rolled_back_run(dag)

    pushed = {name for name, labels, _ in pushgateway.series() if labels.get("service") == SERVICE}
    read = names_read_by_monitoring()
    assert read <= pushed, f"read by the monitoring, never pushed: {sorted(read - pushed)}"
    for name in read - {"delivery_approvals_pending"}:  # the gauge is checked while the approval waits
        value = pushgateway.total(name, service=SERVICE)
        assert value > 0, f"{name} is only ever pushed at 0"

    prod = {"service": SERVICE, "environment": "production"}
    assert pushgateway.total("delivery_deploy_total", **prod, result="success") == 1
    assert pushgateway.total("delivery_deploy_total", **prod, result="failed") == 1
    assert pushgateway.total("delivery_rollback_total", **prod, result="success") == 1
    assert pushgateway.total("delivery_approval_total", service=SERVICE, result="approved") == 2  # both runs
    assert pushgateway.total("delivery_deploy_duration_seconds_sum", **prod) == 120  # commit to healthy
    assert pushgateway.total("delivery_lead_time_seconds_sum", service=SERVICE) == pytest.approx(
        (30 + 40 - 3) * 60, abs=1
    )  # commit_time (conf) to production healthy


def test_a_rollback_dag_run_counts_its_rollback(pushgateway: Gateway) -> None:
    catalog, _ = load_catalog()
    dag = DagFactory(catalog=catalog).build_rollback(catalog.service(SERVICE))
    context = _context(dag, "alertmanager__abc", started=datetime.now(UTC))
    ti: Ti = context["ti"]
    ti.states = {ids.RB_IDENTIFY: "success", ids.RB_REVERT: "success", ids.RB_HEALTH_CHECK: "failed"}
    ti.xcoms[ids.RB_IDENTIFY] = {"environment": "staging", "reason": "alert"}
    context["params"] = {"environment": "staging"}
    assert _python(dag, ids.RB_NOTIFY, context)["outcome"] == "rollback_failed"
    assert (
        pushgateway.total(
            "delivery_rollback_total",
            service=SERVICE,
            environment="staging",
            result="failed",
            dag_id=dag.dag_id,
        )
        == 1
    )
