"""The local monitoring for real: Prometheus, Alertmanager, the Pushgateway, demo traffic and Airflow.

One stack per module, started by ``delivery.devenv.monitoring`` (as ``scripts/run-local.sh
start`` does) on free ports, with a catalog of one test service and an Airflow that gets its
connections from ``airflow_env``. The long test walks the monitoring half of the pipeline:

1. a release of the demo web service with ``ERRORS_IN: production@90s`` (it answers 500 to
   user requests 90 s after it starts) runs in production; its GitOps history says the release
   before it passed verification;
2. Prometheus finds its container and scrapes it; the production verification the factory
   builds for it (the catalog's PromQL checks) passes;
3. once the release degrades, the same verification fails on the error rate;
4. the local alert rule fires, Alertmanager calls the project's receiver in Airflow with the
   generated bearer token, exactly one ``rollback_<service>`` run starts, and production then
   serves the previous verified release; the alert resolves;
5. the notification inbox holds what production would have paged about: the alert's P1 page
   and its resolution (Alertmanager's PagerDuty and Slack receivers), and the rollback run's
   own message (the pipeline's provider hooks, with the connections Airflow got).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from airflow.sdk.exceptions import TaskDeferred

from delivery.catalog import load_catalog
from delivery.devenv.airflow_server import AirflowError, AirflowServer
from delivery.devenv.demo import assemble_service
from delivery.devenv.monitoring import MonitoringStack, airflow_env
from delivery.devenv.monitoring_config import AlertSinks
from delivery.gitops import GitOpsRepo, ReleaseMetadata
from delivery.notification_inbox import EntryStatus, InboxEntry, InboxStore, Source
from delivery.pipeline import task_ids as ids
from delivery.pipeline.factory import DagFactory
from delivery.verification.analysis import VerificationFailed
from tests.helpers import REPARSE_INTERVAL, ROOT, free_port, git, monitoring_stack

pytestmark = [pytest.mark.e2e, pytest.mark.duration(325)]

DEMO = "visiobook-demo-web"
REGISTRY = "127.0.0.1:5000"
DEGRADE_AFTER = 90  # seconds after start: the verification (about a minute) passes first


@dataclass
class Env:
    root: Path
    service: str
    catalog: Path
    stack: MonitoringStack
    airflow: AirflowServer
    gitops: Path
    images: dict[str, tuple[str, str]]  # good / degrading -> (registry/repository, tag)

    @property
    def prometheus(self) -> str:
        return self.stack.endpoints.prometheus

    def production_port(self) -> int:
        data = yaml.safe_load((self.catalog / "services" / f"{self.service}.yaml").read_text())
        return int(data["environments"]["production"]["local_port"])

    def query(self, promql: str) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=10)
        resp.raise_for_status()
        return list(resp.json()["data"]["result"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.airflow.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 50})["dag_runs"])


def wait_for(
    condition: Callable[[], Any],
    what: str,
    *,
    timeout: float,
    every: float = 2.0,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """The first truthy value of ``condition``; a server too busy to answer in time counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (requests.RequestException, AirflowError) as err:
            print(f"waiting for {what}: {err}")
            result = None
        if result:
            return result
        time.sleep(every)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{diagnose()}" if diagnose else "")
    )


# -- the stack --------------------------------------------------------------------------------


def _catalog(root: Path, service: str, gitops: Path) -> Path:
    folder = root / "catalog"
    (folder / "services").mkdir(parents=True)
    platform = yaml.safe_load((ROOT / "include/catalog-local/platform.yaml").read_text())
    platform["platform"]["gitops"]["repo_url"] = str(gitops)
    platform["platform"]["local"].update(
        gitops_repo=str(gitops), workspace_root=str(root / "workspaces"), repos_root=str(root / "repos")
    )
    (folder / "platform.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
    data = yaml.safe_load((ROOT / "include/catalog-local/services" / f"{DEMO}.yaml").read_text())
    data.pop("schedule", None)
    data.update(name=service, image={"repository": f"test/{service}"})
    data["repo"].update(url=str(root / "repos" / f"{service}.git"), full_name=f"visiobook/{service}")
    for environment, spec in data["environments"].items():
        spec.update(
            local_port=free_port(),
            values_path=f"apps/{service}/values-{environment}.yaml",
            argocd_app=f"{service}-{environment}",
        )
        spec["url"] = f"http://127.0.0.1:{spec['local_port']}"
    (folder / "services" / f"{service}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _gitops(root: Path, service: str) -> Path:
    bare, work = root / "gitops.git", root / "gitops-seed"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    git("clone", "--quiet", str(bare), str(work))
    git("checkout", "--quiet", "-B", "main", cwd=work)
    for environment in ("staging", "production"):
        dest = work / "apps" / service / f"values-{environment}.yaml"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "include/services" / DEMO / "deploy" / f"values-{environment}.yaml", dest)
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "seed", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return bare


def _images(root: Path, service: str) -> dict[str, tuple[str, str]]:
    """Two releases of the demo web service: a good one, and one that degrades after a while."""
    from delivery.profiles.local.images import build_and_push

    images = {}
    for name, marker in (("good", None), ("degrading", f"production@{DEGRADE_AFTER}s\n")):
        src = assemble_service(DEMO, root / "src" / name)
        if marker:
            (src / "ERRORS_IN").write_text(marker)
        tag = secrets.token_hex(20)
        ref = build_and_push(
            context_dir=src,
            repository=f"test/{service}",
            registry=REGISTRY,
            source_sha=tag,
            branch=None,
            build_args={"BASE_IMAGE": "visiobook/python-base:bookworm"},
        )
        images[name] = (f"{REGISTRY}/{ref.repository}", tag)
    return images


@pytest.fixture(scope="module")
def env(local_platform: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("monitoring")
    service = f"mon-{secrets.token_hex(3)}-web"
    gitops = _gitops(root, service)
    catalog = _catalog(root, service, gitops)
    pool = ThreadPoolExecutor(max_workers=1)
    images = pool.submit(_images, root, service)  # built while the servers start
    airflow_port = free_port()
    stack = monitoring_stack(root, catalog, airflow_port)
    airflow: AirflowServer | None = None
    try:
        stack.start()
        # As scripts/run-local.sh does: Airflow starts after the monitoring, with its connections.
        airflow = AirflowServer(
            home=root / "airflow",
            port=airflow_port,
            catalog_dir=catalog,
            reparse_interval=REPARSE_INTERVAL,
            env={**airflow_env(root / "state", catalog), "DELIVERY_CATALOG_STRICT": "1"},
        )
        airflow.start()
        airflow.wait_dag("rollback_" + service.replace("-", "_"))
        yield Env(root, service, catalog, stack, airflow, gitops, images.result(timeout=900))
    finally:
        pool.shutdown(wait=True)
        if airflow is not None:
            airflow.destroy()
        stack.stop()
        _remove_containers(service)


def _remove_containers(service: str) -> None:
    """The test's containers and its images in the local engine (each one a full copy with the vfs driver)."""
    import docker

    from delivery.profiles.local.containers import stop_release

    for environment in ("staging", "production"):
        stop_release(service=service, environment=environment, remove=True, stop_timeout=1)
    client = docker.from_env(timeout=120)
    for image in client.images.list(name=f"{REGISTRY}/test/{service}"):
        client.images.remove(image.id, force=True)


# -- the servers -------------------------------------------------------------------------------


def test_servers_answer_and_a_second_start_adopts_them(env: Env) -> None:
    for url in (
        env.stack.endpoints.prometheus,
        env.stack.endpoints.alertmanager,
        env.stack.endpoints.pushgateway,
    ):
        assert requests.get(f"{url}/-/ready", timeout=5).status_code == 200, url
    pids = {name: daemon.pid() for name, daemon in env.stack.daemons().items()}
    assert all(pids.values()), pids
    again = MonitoringStack(
        state=env.root / "state",
        catalog_dir=env.catalog,
        airflow_url=env.stack.airflow_url,
        ports=env.stack.ports,
        sinks=AlertSinks(),
        traffic_rps=4,
    )
    assert again.start() == dict.fromkeys(pids, "adopted")
    assert {name: daemon.pid() for name, daemon in again.daemons().items()} == pids
    assert again.status() | {"traffic_counts": None} == {
        **dict.fromkeys(pids, "ready"),
        "traffic_counts": None,
    }


def test_prometheus_runs_the_local_rules_and_its_targets_are_up(env: Env) -> None:
    groups = requests.get(f"{env.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    files = {(group["name"], Path(group["file"]).name, group["interval"]) for group in groups}
    assert ("visiobook-services-http", "services.yml", 5) in files
    assert str(ROOT / "include/monitoring/local/rules/services.yml") in {g["file"] for g in groups}
    assert {Path(g["file"]).name for g in groups} == {"services.yml", "delivery.yml", "gpu.yml"}

    def infrastructure_up() -> bool:
        targets = requests.get(f"{env.prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health == {"prometheus": "up", "alertmanager": "up", "delivery": "up"}

    wait_for(infrastructure_up, "Prometheus, Alertmanager and the Pushgateway scraped", timeout=30)


def test_the_delivery_metrics_reach_prometheus_through_the_pushgateway(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from delivery.reporting import metrics

    for name, value in airflow_env(env.root / "state", env.catalog).items():
        monkeypatch.setenv(name, value)  # what the Airflow tasks get
    run = metrics.Run(service=env.service, dag_id=f"deliver_{env.service}", run_id="manual__metrics")
    outcome = metrics.RunOutcome(
        deploys=(metrics.Deploy(environment="staging", result="success", duration_s=42),)
    )
    assert metrics.record_run(run, outcome)
    query = f'delivery_deploy_total{{service="{env.service}",environment="staging",result="success"}} == 1'
    found = wait_for(lambda: env.query(query), "the pushed deploy counter in Prometheus", timeout=30)
    assert found[0]["metric"]["job"] == "delivery"


# -- the monitoring half of a release ----------------------------------------------------------


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event
    raise AssertionError("the trigger fired no event")


def _verify_production(env: Env) -> dict[str, Any]:
    """Run ``verify_production.verify`` as the factory builds it: deferred, its trigger, then resumed."""
    catalog, _ = load_catalog(env.catalog)
    operator: Any = DagFactory(catalog=catalog).build(catalog.services[env.service]).get_task(ids.VERIFY)
    try:
        operator.execute(context={})
    except TaskDeferred as deferred:
        event = asyncio.run(_first_event(deferred.trigger))
        return dict(operator.execute_complete(context={}, event=event.payload))
    raise AssertionError(f"{ids.VERIFY} did not defer its analysis")


def _release(env: Env, name: str, *, verified: bool | None) -> GitOpsRepo:
    """Record release ``name`` in the GitOps history of production, as the pipeline does."""
    repo = GitOpsRepo(url=str(env.gitops), workdir=env.root / "gitops-work")
    values_path = f"apps/{env.service}/values-production.yaml"
    repository, tag = env.images[name]
    result = repo.deploy(
        environment="production",
        service=env.service,
        values_path=values_path,
        image_tag=tag,
        image_repository=repository,
        metadata=ReleaseMetadata(source_sha=tag, run_id=f"test-{name}"),
    )
    if verified is not None:
        release = repo.get_release(
            environment="production", service=env.service, values_path=values_path, revision=result.revision
        )
        repo.mark_verified(release=release, ok=verified, summary=f"{name}: verification seen by the test")
    return repo


def _scraped(env: Env) -> None:
    selector = f'service="{env.service}",environment="production"'
    (up,) = wait_for(
        lambda: env.query(f"up{{{selector}}} == 1"), "the production container scraped", timeout=60
    )
    assert up["metric"]["job"] == "visiobook-services"
    assert up["metric"]["container"] == f"visiobook-{env.service}-production"
    assert up["metric"]["instance"] == f"127.0.0.1:{env.production_port()}"
    wait_for(
        lambda: env.query(f'sum(rate(http_requests_total{{{selector},path="/api/books"}}[30s])) > 0'),
        "the demo traffic measured",
        timeout=60,
    )
    assert env.query(f'http_requests_total{{{selector},code="500",path="/api/books"}} == 0')


def _webhook_notifications(env: Env) -> dict[str, float]:
    text = requests.get(f"{env.stack.endpoints.alertmanager}/metrics", timeout=10).text
    out = {"sent": 0.0, "failed": 0.0}
    for line in text.splitlines():
        if 'integration="webhook"' in line and line.startswith("alertmanager_notifications_total{"):
            out["sent"] += float(line.rsplit(" ", 1)[1])
        if 'integration="webhook"' in line and line.startswith("alertmanager_notifications_failed_total{"):
            out["failed"] += float(line.rsplit(" ", 1)[1])
    return out


def _finished(env: Env, dag_id: str, run_id: str) -> str | None:
    state = env.airflow.run_state(dag_id, run_id)
    return state if state in ("success", "failed") else None


def _alert_trail(env: Env) -> str:
    """Where the alert got to: Prometheus, Alertmanager, the webhook, Airflow."""
    parts = []
    for what, call in (
        ("Prometheus alerts", lambda: requests.get(f"{env.prometheus}/api/v1/alerts", timeout=10).json()),
        (
            "Alertmanager alerts",
            lambda: requests.get(f"{env.stack.endpoints.alertmanager}/api/v2/alerts", timeout=10).json(),
        ),
        ("webhook notifications", lambda: _webhook_notifications(env)),
        ("rollback runs", lambda: env.runs("rollback_" + env.service.replace("-", "_"))),
    ):
        try:
            parts.append(f"{what}: {json.dumps(call())[:3000]}")
        except (requests.RequestException, AirflowError, ValueError) as err:
            parts.append(f"{what}: unavailable ({err})")
    parts.append("Alertmanager log:\n" + env.stack.daemons()["alertmanager"].log_tail(30))
    return "\n".join(parts)


def test_a_release_that_degrades_after_verification_is_rolled_back_by_its_alert(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from delivery.profiles.local.containers import run_release

    for name, value in airflow_env(env.root / "state", env.catalog).items():
        monkeypatch.setenv(name, value)  # the verification reads the same connection as Airflow's tasks
    _release(env, "good", verified=True)
    repo = _release(env, "degrading", verified=None)
    run_release(
        service=env.service,
        environment="production",
        image=":".join(env.images["degrading"]),
        port=env.production_port(),
    )
    started = time.monotonic()
    _scraped(env)

    passed = _verify_production(env)  # before it degrades
    assert (passed["decision"], passed["phase"], passed["measurements"]) == ("promote", "Successful", 5), (
        passed
    )
    assert passed["checks"]["error_rate"]["values"] == [0.0] * 5
    assert time.monotonic() - started < DEGRADE_AFTER, "the verification ended after the release degraded"
    values_path = f"apps/{env.service}/values-production.yaml"
    current = repo.history(environment="production", service=env.service, values_path=values_path)[0]
    repo.mark_verified(release=current, ok=True, summary="passed in the test")  # the pipeline's record step

    time.sleep(max(0.0, DEGRADE_AFTER + 5 - (time.monotonic() - started)))
    with pytest.raises(VerificationFailed, match=r"error_rate \[max 0\.02\] failed") as failed:
        _verify_production(env)
    assert "latency_p95 [" not in str(failed.value)

    dag_id = "rollback_" + env.service.replace("-", "_")
    (run,) = wait_for(
        lambda: env.runs(dag_id),
        "the rollback started by the alert",
        timeout=300,
        every=5,
        diagnose=lambda: _alert_trail(env),
    )
    assert run["dag_run_id"].startswith("alert__")
    assert (run["conf"]["alert"]["alertname"], run["conf"]["environment"]) == (
        "HTTPErrorRateCritical",
        "production",
    )
    assert run["conf"]["alert"]["rollback"] == "auto"
    state = wait_for(
        lambda: _finished(env, dag_id, run["dag_run_id"]), "the rollback run to finish", timeout=400, every=5
    )
    assert state == "success", env.airflow.task_states(dag_id, run["dag_run_id"])

    # Production serves the previous verified release again, as the GitOps history says.
    base = f"http://127.0.0.1:{env.production_port()}"
    assert requests.get(f"{base}/health", timeout=5).json()["commit"] == env.images["good"][1]
    assert requests.get(f"{base}/api/books", timeout=5).status_code == 200
    history = repo.history(environment="production", service=env.service, values_path=values_path)
    assert history[0].image_tag == env.images["good"][1]
    assert "HTTPErrorRateCritical" in git("--git-dir", str(env.gitops), "log", "-1", "--format=%B", "main")

    # The alert resolves once the error rate is gone; it started one rollback, through the token.
    firing = f'ALERTS{{alertname="HTTPErrorRateCritical",service="{env.service}",alertstate="firing"}}'
    wait_for(
        lambda: not env.query(firing),
        "the alert to resolve",
        timeout=240,
        every=5,
        diagnose=lambda: _alert_trail(env),
    )
    assert len(env.runs(dag_id)) == 1
    notifications = _webhook_notifications(env)
    assert notifications["sent"] >= 1 and notifications["failed"] == 0, notifications
    _paged_and_resolved_in_the_inbox(env)


def _paged_and_resolved_in_the_inbox(env: Env) -> None:
    """The alert's P1 page, its resolution and the rollback's own message, in the notification inbox."""
    inbox = InboxStore(env.stack.layout.inbox_store)

    def alerted(kind: str, destination: str, title_start: str = "") -> list[InboxEntry]:
        return [
            e
            for e in inbox.entries(limit=1000)
            if (e.source, e.kind, e.destination) == (Source.ALERTMANAGER, kind, destination)
            and "HTTPErrorRateCritical" in e.title
            and e.title.startswith(title_start)
        ]

    def diagnose() -> str:
        return json.dumps([e.as_dict() for e in inbox.entries(limit=50)])[:4000] + "\n" + _alert_trail(env)

    pages = alerted("pagerduty", "trigger")
    assert pages and pages[-1].severity == "P1", diagnose()
    assert pages[-1].title == f"[P1] HTTPErrorRateCritical on {env.service} (production)"
    assert alerted("slack", "#critical-alerts", "[FIRING] P1"), diagnose()
    # Resolved alerts are sent at the group's next interval (1 min for P1 routes).
    resolves = wait_for(
        lambda: alerted("pagerduty", "resolve"),
        "the resolve of the page",
        timeout=180,
        every=5,
        diagnose=diagnose,
    )
    assert resolves[0].detail["dedup_key"] == pages[-1].detail["dedup_key"]
    wait_for(
        lambda: alerted("slack", "#critical-alerts", "[RESOLVED] P1"),
        "the [RESOLVED] post",
        timeout=60,
        every=5,
        diagnose=diagnose,
    )
    restored = [
        e
        for e in inbox.entries(limit=1000)
        if e.source is Source.PIPELINE
        and e.kind == "slack"
        and e.title == f"[P3] {env.service}: rolled back to the previous stable version; service restored"
    ]
    assert restored and restored[0].destination == "#monitoring", diagnose()
    assert all(e.status is EntryStatus.RECEIVED for e in inbox.entries(limit=1000)), diagnose()


# -- stop --------------------------------------------------------------------------------------


def test_stop_stops_every_process(env: Env) -> None:
    from delivery.devenv.daemons import port_open

    daemons = env.stack.daemons()
    pids = {name: daemon.pid() for name, daemon in daemons.items()}
    assert all(pids.values()), pids
    assert env.stack.stop() == dict.fromkeys(reversed(list(daemons)), True)
    ports = env.stack.ports
    assert not any(
        port_open(p)
        for p in (
            ports.prometheus,
            ports.alertmanager,
            ports.pushgateway,
            ports.inbox,
            ports.inbox_tls,
            ports.inbox_smtp,
        )
    )
    assert all(not Path(f"/proc/{pid}").exists() or daemons[name].pid() is None for name, pid in pids.items())
    assert {k: v for k, v in env.stack.status().items() if k != "traffic_counts"} == dict.fromkeys(
        daemons, "stopped"
    )
    assert airflow_env(env.root / "state", env.catalog) == {}
    assert json.loads((env.root / "state/monitoring/run/traffic.json").read_text())["targets"]
