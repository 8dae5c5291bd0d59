"""The local platform for end-to-end tests: a real Docker engine, registry, git repos and Airflow.

One Airflow stack for the whole test run, shared by the modules that leave it as it is
(:func:`shared_stacks`: a service of its own per module, so their runs never meet), and one of
its own for each module that kills, restarts or reconfigures it (:func:`local_stack`:
``airflow standalone``, or the distributed topology of ``docker-compose.yaml``). The catalog is
a copy of ``include/catalog-local`` whose services point at bare repos made in a temporary
folder, so the tests never touch a developer's ``.local``. As with ``scripts/run-local.sh
start``, the local monitoring (``delivery.devenv.monitoring``: Prometheus, Alertmanager, the
Pushgateway, demo traffic) starts first, on free ports, and Airflow gets its connections:
production verification is the catalog's PromQL analysis, and Alertmanager's rollback webhook
reaches this Airflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from delivery.devenv.airflow_server import AirflowServer
from delivery.devenv.demo import assemble_service
from delivery.devenv.monitoring import MonitoringStack, airflow_env
from delivery.paths import PROJECT_ROOT
from tests.e2e.nodes import node_hostnames
from tests.helpers import REPARSE_INTERVAL, free_port, git, monitoring_stack
from tests.shared import modules_using, release, shared_resource

DEMO = "visiobook-demo-web"
APPROVAL = "approval.approve_production"
LEAN_SKIPS = ("dependency_audit", "sast", "helm_validate", "coverage")
"""Validate and test stages that tests about faults leave out. test_local_pipeline runs them all and
checks them."""
GATE_SKIPS = (*LEAN_SKIPS, "unit_tests", "integration_tests", "staging_tests")
"""What tests about the approval and what follows it leave out: their runs reach the approval
after the checkout, the trust gate, lint, build, the image and staging's deploy and health check
(about 7 CPU-seconds a run instead of 13 here)."""
VERIFY_INTERVAL = "5s"
"""Between two measurements of a production verification that only good releases reach here (a broken
one fails its health check first): Prometheus scrapes every 2 s, the checks' windows are 30 s."""


@dataclass
class LocalStack:
    airflow: AirflowServer
    service: str
    dag_id: str
    work: Path  # the developer's clone of the service repo
    gitops: Path  # the GitOps bare repo
    catalog: dict  # type: ignore[type-arg]
    slack: object
    flaky_marker: Path
    monitoring: MonitoringStack
    registry: str = "127.0.0.1:5000"
    others: list[LocalStack] = field(default_factory=list)  # more services in the same Airflow (``also``)

    def commit(
        self,
        message: str,
        files: dict[str, str | None],
        *,
        date: str | None = None,
        author: str | None = None,
    ) -> str:
        """Commit ``files`` (None deletes one) and push to main; ``author`` like ``"Alice <alice@x>"``."""
        for name, content in files.items():
            path = self.work / name
            if content is None:
                path.unlink()
            else:
                path.write_text(content)
        git("add", "-A", cwd=self.work)
        env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else {}
        if author:
            name, _, email = author.partition(" <")
            env |= {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">")}
        git("commit", "-q", "-m", message, cwd=self.work, env=env)
        git("push", "-q", "origin", "HEAD:main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def to_approval(self, sha: str, *, conf: dict[str, Any] | None = None) -> str:
        """Trigger a delivery of ``sha`` and wait until its production approval waits for a human."""
        run_id = self.airflow.trigger(self.dag_id, conf={"ref": "main", "sha": sha, **(conf or {})})
        self.airflow.wait_task(self.dag_id, run_id, APPROVAL, states=("awaiting_input",), timeout=420)
        time.sleep(3)  # people answer in seconds, not milliseconds: let the task finish parking itself
        return run_id

    def serving(self, environment: str) -> dict[str, Any]:
        """What the environment's container answers on /health (code, commit, version)."""
        resp = requests.get(f"http://127.0.0.1:{self.port(environment)}/health", timeout=5)
        return {"code": resp.status_code, **resp.json()}

    def slack_texts(self) -> list[str]:
        return [str(m.get("text") or "") for m in self.slack.messages()]  # type: ignore[attr-defined]

    def port(self, environment: str) -> int:
        return int(self.catalog["environments"][environment]["local_port"])

    def gitops_log(self, environment: str) -> list[str]:
        path = f"apps/{self.service}/values-{environment}.yaml"
        out = git("--git-dir", str(self.gitops), "log", "--format=%H", "main", "--", path, cwd=self.gitops)
        return out.splitlines()

    def gitops_trailers(self, revision: str) -> str:
        return git(
            "--git-dir", str(self.gitops), "log", "-1", "--format=%(trailers)", revision, cwd=self.gitops
        )


@dataclass(frozen=True)
class ServiceSpec:
    """One service of a test stack: a copy of ``demo`` with its catalog entry adjusted (see local_stack)."""

    demo: str = DEMO
    overrides: dict[str, Any] | None = None
    skips: tuple[str, ...] = ()
    verify_count: int | None = 3


@dataclass
class _Running:
    """What ``_start`` started: enough to make the tests' view of it and to stop it."""

    root: Path
    airflow: AirflowServer
    monitoring: MonitoringStack
    gitops: Path
    services: list[tuple[str, Path, dict[str, Any]]]  # (name, work tree, catalog entry)

    def stop(self) -> None:
        self.airflow.destroy()
        self.monitoring.stop()
        containers = [
            f"visiobook-{s[0]}-{where}" for s in self.services for where in ("staging", "production")
        ]
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)


def _start(root: Path, specs: Sequence[ServiceSpec], *, slack_url: str, topology: str) -> _Running:
    """Repos, catalog, monitoring and Airflow for ``specs``; each service's DAG parsed and unpaused."""
    # A name of its own per session: containers, registry repos and DAGs never meet another run's.
    names = [f"e2e-{uuid.uuid4().hex[:6]}-{spec.demo.rsplit('-', 1)[-1]}" for spec in specs]
    gitops = _gitops_repo(root, [(name, spec.demo) for name, spec in zip(names, specs, strict=True)])
    catalog_dir = root / "catalog"
    (catalog_dir / "services").mkdir(parents=True)
    platform = yaml.safe_load((PROJECT_ROOT / "include/catalog-local/platform.yaml").read_text())
    platform["platform"]["gitops"]["repo_url"] = str(gitops)
    platform["platform"]["local"]["workspace_root"] = str(root / "workspaces")
    (catalog_dir / "platform.yaml").write_text(yaml.safe_dump(platform))
    services = []
    for name, spec in zip(names, specs, strict=True):
        work, data = _catalog_service(root, catalog_dir, name, spec)
        services.append((name, work, data))
    airflow_port = free_port()
    monitoring = monitoring_stack(root, catalog_dir, airflow_port)
    airflow = AirflowServer(
        home=root / "airflow",
        port=airflow_port,
        catalog_dir=catalog_dir,
        topology=topology,
        reparse_interval=REPARSE_INTERVAL,
    )
    running = _Running(root, airflow, monitoring, gitops, services)
    try:
        monitoring.start()
        airflow.extra_env.update(
            {
                **airflow_env(root / "state", catalog_dir),  # the running monitoring's connections
                # The notification path posts through the Slack Web API (a bot token) to routed
                # channels: here to the stand-in the tests read, instead of the local inbox.
                "AIRFLOW_CONN_SLACK_API": json.dumps(
                    {"conn_type": "slack", "password": "xoxb-e2e", "extra": {"base_url": f"{slack_url}/api/"}}
                ),
                "DELIVERY_CATALOG_STRICT": "1",
                **(node_hostnames(root / "airflow") if topology == "distributed" else {}),
            }
        )
        airflow.start(timeout=300 if topology == "distributed" else 240)
        for name in names:
            dag_id = "deliver_" + name.replace("-", "_")
            airflow.wait_dag(dag_id)
            airflow.unpause(dag_id)
    except BaseException:
        running.stop()
        raise
    return running


def _views(running: _Running, slack: Any, *, per_service_slack: bool = False) -> list[LocalStack]:
    """The tests' view of each service of a running stack."""
    stacks = []
    for index, (name, work, data) in enumerate(running.services):
        stacks.append(
            LocalStack(
                airflow=running.airflow,
                service=name,
                dag_id="deliver_" + name.replace("-", "_"),
                work=work,
                gitops=running.gitops,
                catalog=data,
                slack=_ServiceSlack(slack, name) if per_service_slack else slack,
                flaky_marker=running.root / ("flaky-armed" if not index else f"flaky-armed-{name}"),
                monitoring=running.monitoring,
            )
        )
    return stacks


@contextlib.contextmanager
def local_stack(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    demo: str = DEMO,
    overrides: dict[str, Any] | None = None,
    topology: str = "standalone",
    also: Sequence[str] = (),
    skips: tuple[str, ...] = (),
    verify_count: int | None = 3,
) -> Iterator[LocalStack]:
    """A real Airflow of its own with one service copied from a demo service (catalog ``overrides``
    applied), and the local monitoring (Prometheus, Alertmanager, Pushgateway, inbox) it verifies
    against. For modules that kill, restart or reconfigure their stack; the others share one
    (:func:`shared_stacks`).

    ``also`` adds services copied from more demo services to the same Airflow and GitOps repo
    (``LocalStack.others``, in that order); ``topology="distributed"`` runs the Celery
    deployment, each component named as its own host (:mod:`tests.e2e.nodes`). ``skips`` turns
    off stages that its tests never look at (:data:`LEAN_SKIPS`, :data:`GATE_SKIPS`), for
    modules about the gate, the deploy and faults. ``stages`` in ``overrides`` replaces the
    demo's stages one by one, the other keys as a whole.

    The production verification measures ``verify_count`` times, :data:`VERIFY_INTERVAL` apart
    (10 s for 3, where the demo catalog's 5 take 40 s); ``None`` keeps the demo's 5, 10 s apart,
    which a release that is bad from its start needs: the first measurements' 30 s windows still
    hold the previous release's requests, and only the later ones see the new release alone.
    """
    from tests.standins.slack_server import SlackStandIn

    specs = [ServiceSpec(d, overrides, skips, verify_count) for d in (demo, *also)]
    slack = SlackStandIn().start()
    try:
        running = _start(tmp_path_factory.mktemp("stack"), specs, slack_url=slack.url, topology=topology)
        try:
            stacks = _views(running, slack)
            stacks[0].others = stacks[1:]
            yield stacks[0]
        finally:
            running.stop()
    finally:
        slack.stop()


# -- one stack shared by the modules that leave it as it is --------------------------------------


def _inference_on_a_shared_machine() -> dict[str, Any]:
    """The inference demo's GPU section with its latency budgets at 5 s instead of 0.5 s.

    On this stack its CPU-path benchmark shares 2 cores with three other modules' pipelines: a
    p95 over the demo's 500 ms says how busy the machine was, not how good the model is. The
    budget gate's decisions are tested in tests/gpu/test_gpu_gate.py; here, that it runs and
    names the device it used.
    """
    entry = yaml.safe_load(
        (PROJECT_ROOT / "include/catalog-local/services/visiobook-inference.yaml").read_text()
    )
    gpu = entry["gpu"]
    gpu["budgets"]["max_p95_latency_ms"] = 5000
    gpu["inference_latency_budget_ms"] = 5000
    return {"gpu": gpu}


SHARED_SERVICES: dict[str, ServiceSpec] = {
    "pipeline": ServiceSpec(),  # test_local_pipeline: every stage, checked
    "gate": ServiceSpec(
        overrides={"migrations": True, "break_glass_approvers": ["oncall"]}, skips=GATE_SKIPS
    ),
    # The slow release of test_faults must fail its verification: the demo's 5 measurements.
    "faults": ServiceSpec(skips=GATE_SKIPS, verify_count=None),
    "ai": ServiceSpec(demo="visiobook-inference", overrides=_inference_on_a_shared_machine()),
}
"""The shared stack's services, one per module that uses it: their runs never meet."""


class _ServiceSlack:
    """The Slack messages about one service (their title names it), from a stand-in shared by several."""

    def __init__(self, slack: Any, service: str) -> None:
        self._slack, self._service = slack, service

    def messages(self) -> list[dict[str, Any]]:
        return [m for m in self._slack.messages() if self._service in str(m.get("text") or "")]

    def delivered(self) -> list[dict[str, Any]]:
        return [m for m in self._slack.delivered() if self._service in str(m.get("text") or "")]


@pytest.fixture(scope="module")
def shared_stacks(local_platform: None, request: pytest.FixtureRequest) -> Iterator[dict[str, LocalStack]]:
    """One Airflow stack for the whole test run, with a service per module in SHARED_SERVICES.

    Started by the first module that needs it, stopped once the last one is done (:mod:`tests.shared`).
    """
    from tests.standins.slack_server import RemoteSlack

    info = shared_resource("stack", _start_shared, stop=stop_shared_stack)
    running = _attach(info)
    views = _views(running, RemoteSlack(info["slack_url"]), per_service_slack=True)
    yield dict(zip(SHARED_SERVICES, views, strict=True))
    release("stack", request.node.nodeid, modules_using(request.session, "shared_stacks"))


def _start_shared(root: Path) -> dict[str, Any]:
    """Start the shared stack in ``root``: what attaching to it and stopping it need."""
    url_file = root / "slack.url"
    slack = subprocess.Popen(  # its own process: the worker that starts it may finish first
        [sys.executable, "-m", "tests.standins.slack_server", str(url_file)],
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not url_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        slack_url = url_file.read_text()
        running = _start(root, list(SHARED_SERVICES.values()), slack_url=slack_url, topology="standalone")
    except BaseException:
        slack.terminate()
        raise
    return {
        "root": str(root),
        "slack_pid": slack.pid,
        "slack_url": slack_url,
        "airflow_port": running.airflow.port,
        "monitoring_ports": dataclasses.asdict(running.monitoring.ports),
        "gitops": str(running.gitops),
        "services": [{"name": n, "work": str(w), "catalog": d} for n, w, d in running.services],
    }


def _attach(info: dict[str, Any]) -> _Running:
    """The running shared stack that ``info`` (from ``_start_shared``) describes."""
    root = Path(info["root"])
    airflow = AirflowServer(home=root / "airflow", port=info["airflow_port"], catalog_dir=root / "catalog")
    monitoring = monitoring_stack(root, root / "catalog", info["airflow_port"], info["monitoring_ports"])
    services = [(s["name"], Path(s["work"]), s["catalog"]) for s in info["services"]]
    return _Running(root, airflow, monitoring, Path(info["gitops"]), services)


def stop_shared_stack(info: dict[str, Any]) -> None:
    """Stop the shared stack that ``info`` describes (at the run's end, :func:`tests.shared.stop_all`)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(info["slack_pid"]), signal.SIGTERM)
    _attach(info).stop()


@pytest.fixture(scope="module")
def stack(shared_stacks: dict[str, LocalStack]) -> LocalStack:
    return shared_stacks["pipeline"]


def _catalog_service(
    root: Path, catalog_dir: Path, service: str, spec: ServiceSpec
) -> tuple[Path, dict[str, Any]]:
    """The service's repo (the demo service under a test name) and its catalog entry; (work tree, entry)."""
    demo = spec.demo
    assemble_service(demo, root / "services-src" / service)
    bare, work = _service_repo(root, service)
    data = yaml.safe_load((PROJECT_ROOT / "include/catalog-local/services" / f"{demo}.yaml").read_text())
    data["name"] = service
    data["repo"]["url"] = str(bare)
    data["repo"]["full_name"] = f"visiobook/{service}"
    data["image"]["repository"] = f"e2e/{service}"
    data["approval_timeout"] = "40s"
    for env in ("staging", "production"):
        if demo == DEMO:  # a broken release's health gate gives up after 20 s, not 60 s: the demo web
            data["environments"][env]["health_timeout"] = "20s"  # container is up in a second or two
        data["environments"][env]["local_port"] = free_port()
        data["environments"][env]["url"] = f"http://127.0.0.1:{data['environments'][env]['local_port']}"
        data["environments"][env]["values_path"] = f"apps/{service}/values-{env}.yaml"
        data["environments"][env]["argocd_app"] = f"{service}-{env}"
    verify = data["environments"]["production"].get("verify")
    if verify and spec.verify_count:
        verify.update(count=spec.verify_count, interval=VERIFY_INTERVAL)
    overrides = dict(spec.overrides or {})
    data["stages"] = {**data.get("stages", {}), **overrides.pop("stages", {})}  # stage by stage
    data["stages"] |= {stage: {"enabled": False} for stage in spec.skips}
    data.update(overrides)
    (catalog_dir / "services" / f"{service}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return work, data


def _service_repo(root: Path, service: str) -> tuple[Path, Path]:
    bare = root / "repos" / f"{service}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "--initial-branch=main", str(bare), cwd=root)
    work = root / "src" / service
    shutil.copytree(
        root / "services-src" / service, work, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    git("init", "-q", "--initial-branch=main", cwd=work)
    git("remote", "add", "origin", str(bare), cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "initial import", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return bare, work


def _gitops_repo(root: Path, services: list[tuple[str, str]]) -> Path:
    """The GitOps bare repo, seeded with the values of each (service, demo it copies)."""
    bare = root / "gitops.git"
    git("init", "-q", "--bare", "--initial-branch=main", str(bare), cwd=root)
    work = root / "gitops-work"
    git("clone", "-q", str(bare), str(work), cwd=root)
    git("checkout", "-q", "-B", "main", cwd=work)
    for service, demo in services:
        for env in ("staging", "production"):
            src = PROJECT_ROOT / "include" / "services" / demo / "deploy" / f"values-{env}.yaml"
            dest = work / "apps" / service / f"values-{env}.yaml"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(src.read_text().replace(f"visiobook/{demo}", f"e2e/{service}"))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "seed", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return bare
