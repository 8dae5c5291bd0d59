"""The local platform for end-to-end tests: a real Docker engine, registry, git repos and Airflow.

One Airflow per test module (``airflow standalone``, or the distributed topology of
``docker-compose.yaml``); the catalog is a copy of ``include/catalog-local``
whose services point at bare repos made in a temporary folder, so the tests
never touch a developer's ``.local``. As with ``scripts/run-local.sh start``, the
local monitoring (``delivery.devenv.monitoring``: Prometheus, Alertmanager, the
Pushgateway, demo traffic) starts first, on free ports, and Airflow gets its
connections: production verification is the catalog's PromQL analysis, and
Alertmanager's rollback webhook reaches this Airflow.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
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
from tests.helpers import free_port, git, monitoring_stack

DEMO = "visiobook-demo-web"
APPROVAL = "approval.approve_production"
LEAN_SKIPS = ("dependency_audit", "sast", "helm_validate", "coverage")
"""Stages a ``lean`` service leaves out. test_local_pipeline runs them all and checks them."""


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


@contextlib.contextmanager
def local_stack(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    demo: str = DEMO,
    overrides: dict[str, Any] | None = None,
    topology: str = "standalone",
    also: Sequence[str] = (),
    lean: bool = False,
    verify_count: int | None = 3,
) -> Iterator[LocalStack]:
    """A real Airflow with one service copied from a demo service (catalog ``overrides`` applied),
    and the local monitoring (Prometheus, Alertmanager, Pushgateway, inbox) it verifies against.

    ``also`` adds services copied from more demo services to the same Airflow and GitOps repo
    (``LocalStack.others``, in that order); ``topology="distributed"`` runs the Celery
    deployment, each component named as its own host (:mod:`tests.e2e.nodes`). ``lean`` turns
    off the validate and test stages that its tests never look at (:data:`LEAN_SKIPS`), for
    modules about the gate, the deploy and faults. ``stages`` in ``overrides`` replaces the
    demo's stages one by one, the other keys as a whole.

    The production verification measures ``verify_count`` times, 10 s apart (20 s for 3, where
    the demo catalog's 5 take 40 s); ``None`` keeps the demo's 5, which a release that is bad from
    its start needs: the first measurements' 30 s windows still hold the previous release's
    requests, and only the later ones see the new release alone.
    """
    from tests.standins.slack_server import SlackStandIn

    root = tmp_path_factory.mktemp("stack")
    # A name of its own per session: containers, registry repos and DAGs never meet another run's.
    demos = [demo, *also]
    names = [f"e2e-{uuid.uuid4().hex[:6]}-{d.rsplit('-', 1)[-1]}" for d in demos]
    gitops = _gitops_repo(root, list(zip(names, demos, strict=True)))
    catalog_dir = root / "catalog"
    (catalog_dir / "services").mkdir(parents=True)
    platform = yaml.safe_load((PROJECT_ROOT / "include/catalog-local/platform.yaml").read_text())
    platform["platform"]["gitops"]["repo_url"] = str(gitops)
    platform["platform"]["local"]["workspace_root"] = str(root / "workspaces")
    (catalog_dir / "platform.yaml").write_text(yaml.safe_dump(platform))
    services = [
        _catalog_service(root, catalog_dir, name, d, overrides, lean=lean, verify_count=verify_count)
        for name, d in zip(names, demos, strict=True)
    ]

    slack = SlackStandIn().start()
    airflow_port = free_port()
    monitoring = monitoring_stack(root, catalog_dir, airflow_port)
    monitoring.start()
    env = {
        **airflow_env(root / "state", catalog_dir),
        # The notification path posts through the Slack Web API (a bot token) to routed channels:
        # here to the stand-in the tests read, instead of the local inbox.
        "AIRFLOW_CONN_SLACK_API": json.dumps(
            {"conn_type": "slack", "password": "xoxb-e2e", "extra": {"base_url": f"{slack.url}/api/"}}
        ),
        "DELIVERY_CATALOG_STRICT": "1",
    }
    if topology == "distributed":
        env |= node_hostnames(root / "airflow")
    airflow = AirflowServer(
        home=root / "airflow", port=airflow_port, catalog_dir=catalog_dir, env=env, topology=topology
    )
    try:
        airflow.start(timeout=300 if topology == "distributed" else 240)
        stacks: list[LocalStack] = []
        for name, (work, data) in zip(names, services, strict=True):
            dag_id = "deliver_" + name.replace("-", "_")
            airflow.wait_dag(dag_id)
            airflow.unpause(dag_id)
            marker = root / ("flaky-armed" if not stacks else f"flaky-armed-{name}")
            stacks.append(
                LocalStack(
                    airflow=airflow,
                    service=name,
                    dag_id=dag_id,
                    work=work,
                    gitops=gitops,
                    catalog=data,
                    slack=slack,
                    flaky_marker=marker,
                    monitoring=monitoring,
                )
            )
        stacks[0].others = stacks[1:]
        yield stacks[0]
    finally:
        airflow.destroy()
        monitoring.stop()
        slack.stop()
        containers = [f"visiobook-{name}-{where}" for name in names for where in ("staging", "production")]
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)


@pytest.fixture(scope="module")
def stack(local_platform: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(tmp_path_factory) as built:
        yield built


def _catalog_service(
    root: Path,
    catalog_dir: Path,
    service: str,
    demo: str,
    overrides: dict[str, Any] | None,
    *,
    lean: bool,
    verify_count: int | None,
) -> tuple[Path, dict[str, Any]]:
    """The service's repo (the demo service under a test name) and its catalog entry; (work tree, entry)."""
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
    if verify and verify_count:
        verify["count"] = verify_count
    overrides = dict(overrides or {})
    data["stages"] = {**data.get("stages", {}), **overrides.pop("stages", {})}  # stage by stage
    if lean:
        data["stages"] |= {stage: {"enabled": False} for stage in LEAN_SKIPS}
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
