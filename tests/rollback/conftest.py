"""Rollback tests: REAL git bare repos, a REAL Airflow (``airflow standalone``), a REAL Alertmanager.

One Airflow per test run, shared by the modules of this folder and their workers
(tests/shared.py), with its own home, a free port and a catalog copied from
``include/catalog-local`` whose GitOps repo is a bare repo seeded here. Its DAGs folder holds
only the rollback DAGs of that catalog (the same builder the delivery DAG file uses). The sync
step of the local profile runs a real container: the demo web service's image is built once
per run from the local base image and pushed to the local registry (no network needed).

Services of the test catalog (container names ``visiobook-rb-*``, free ports):

* ``rb-web``: manual rollback (deploy A verified, deploy B failed);
* ``rb-db``: rollback of a release carrying a DB migration (HITL restore step);
* ``rb-alert``: the automatic rollback started by Alertmanager.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from delivery.devenv.airflow_server import AirflowServer
from delivery.gitops import GitOpsRepo, ReleaseMetadata
from tests.helpers import REPARSE_INTERVAL, ROOT, free_port
from tests.shared import modules_using, release, shared_resource

FIXTURES = ROOT / "tests" / "fixtures" / "alertmanager"
REGISTRY = "127.0.0.1:5000"
SERVICES = {"rb-web": ["alice", "bob"], "rb-db": ["carol", "dave"], "rb-alert": ["alice", "bob"]}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@visiobook.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@visiobook.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}

DAG_FILE = '''"""Test DAG file: the airflow rollback DAGs of the test catalog (one dag per service)."""

from __future__ import annotations

from delivery.catalog import load_catalog
from delivery.pipeline.factory import DagFactory

_catalog, _ = load_catalog(strict=True)
_factory = DagFactory(catalog=_catalog)
globals().update({s.rollback_dag_id: _factory.build_rollback(s) for s in _catalog.services.values()})
'''


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**GIT_ENV, "HOME": str(cwd or "/tmp")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def fixture_payload(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


@dataclass
class RollbackEnv:
    airflow: AirflowServer
    gitops_bare: Path
    catalog_dir: Path
    image_repository: str  # registry/repository of the demo image
    good_tag: str  # in the registry: the release to restore
    ports: dict[str, int]
    token: str
    tmp: Path

    def repo(self) -> GitOpsRepo:
        return GitOpsRepo(url=str(self.gitops_bare), workdir=self.tmp / "work" / secrets.token_hex(4))

    def values_path(self, service: str, environment: str = "production") -> str:
        return f"apps/{service}/values-{environment}.yaml"

    def deploy(
        self,
        service: str,
        tag: str,
        *,
        verified: bool | None,
        migration: bool = False,
        env: str = "production",
    ) -> str:
        """A release as the delivery pipeline writes it; verified True/False records the verification."""
        repo = self.repo()
        result = repo.deploy(
            environment=env,
            service=service,
            values_path=self.values_path(service, env),
            image_tag=tag,
            image_repository=self.image_repository,
            metadata=ReleaseMetadata(source_sha=tag, run_id=f"seed-{tag[:8]}", migration=migration),
        )
        path = self.values_path(service, env)
        if result.changed:
            release = repo.get_release(
                environment=env, service=service, values_path=path, revision=result.revision
            )
        else:
            # Already deployed: the result names the branch head, which in a GitOps repo shared by
            # several services (and modules running at once) may be another service's commit.
            current = repo.current(environment=env, service=service, values_path=path)
            assert current is not None and current.image_tag == tag, (service, current)
            release = current
        if verified is not None:
            repo.mark_verified(release=release, ok=verified, summary="seeded by the test")
        return release.revision

    def log(self, service: str, environment: str = "production") -> list[dict[str, str]]:
        """``git log`` of the bare repo for one values file, newest first: sha, subject, trailers."""
        out = git(
            "--git-dir",
            str(self.gitops_bare),
            "log",
            "--format=%H%x00%s%x00%(trailers:only=true,unfold=true)%x1e",
            "main",
            "--",
            self.values_path(service, environment),
        )
        commits = []
        for chunk in out.split("\x1e"):
            record = chunk.strip("\n")
            if not record:
                continue
            sha, subject, trailers = record.split("\x00")
            entry = {"sha": sha, "subject": subject}
            for line in trailers.splitlines():
                key, _, value = line.partition(":")
                entry[key.strip()] = value.strip()
            commits.append(entry)
        return commits

    def values(self, service: str, environment: str = "production") -> dict[str, Any]:
        text = git(
            "--git-dir", str(self.gitops_bare), "show", f"main:{self.values_path(service, environment)}"
        )
        return dict(yaml.safe_load(text))

    def tags(self) -> list[str]:
        return git("--git-dir", str(self.gitops_bare), "tag", "--list").split()

    def post_webhook(self, body: dict[str, Any], *, token: str | None = None) -> requests.Response:
        headers = {} if token == "" else {"Authorization": f"Bearer {token or self.token}"}
        return requests.post(
            f"{self.airflow.base_url}/delivery/alertmanager/webhook", json=body, headers=headers, timeout=30
        )

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.airflow.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"])


def _seed_gitops(bare: Path, work: Path) -> None:
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    git("clone", "--quiet", str(bare), str(work))
    git("checkout", "--quiet", "-B", "main", cwd=work)
    for service in SERVICES:
        for env in ("staging", "production"):
            path = work / "apps" / service / f"values-{env}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                f'# {service} {env}\nreplicaCount: 1\nimage:\n  repository: none\n  tag: "initial"\n'
            )
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "seed", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)


def _write_catalog(root: Path, *, gitops: Path, workspaces: Path, ports: dict[str, int]) -> None:
    platform = yaml.safe_load((ROOT / "include" / "catalog-local" / "platform.yaml").read_text())
    platform["platform"]["gitops"]["repo_url"] = str(gitops)
    platform["platform"]["local"]["gitops_repo"] = str(gitops)
    platform["platform"]["local"]["workspace_root"] = str(workspaces)
    (root / "services").mkdir(parents=True)
    (root / "platform.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
    base = yaml.safe_load(
        (ROOT / "include" / "catalog-local" / "services" / "visiobook-demo-web.yaml").read_text()
    )
    for name, approvers in SERVICES.items():
        svc = json.loads(json.dumps(base))
        svc["name"] = name
        svc["approvers"] = approvers
        svc["repo"]["url"] = str(root / f"{name}.git")  # never cloned by a rollback
        svc["image"] = {"repository": f"test/{name}"}
        for env, key in (("staging", f"{name}/staging"), ("production", f"{name}/production")):
            spec = svc["environments"][env]
            spec["values_path"] = f"apps/{name}/values-{env}.yaml"
            spec["argocd_app"] = f"{name}-{env}"
            spec["local_port"] = ports[key]
            spec["url"] = f"http://127.0.0.1:{ports[key]}"
            spec["health_timeout"] = "60s"
        (root / "services" / f"{name}.yaml").write_text(yaml.safe_dump(svc, sort_keys=False))


def build_demo_image() -> tuple[str, str]:
    """(registry/repository, tag) of the demo web service, built from the local base image."""
    from delivery.devenv.demo import assemble_service
    from delivery.devenv.platform import PlatformError, ensure_local_platform
    from delivery.profiles.local.images import build_and_push

    try:
        ensure_local_platform(registry_port=int(REGISTRY.rsplit(":", 1)[1]))
    except PlatformError as err:
        pytest.fail(f"the local platform (Docker engine, registry, base images) could not start:\n{err}")
    tag = "a" * 8 + secrets.token_hex(16)
    repository = f"test/rb-demo-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as tmp:  # the tree its repo holds: own folder + shared tooling
        build_and_push(
            context_dir=assemble_service("visiobook-demo-web", Path(tmp) / "visiobook-demo-web"),
            repository=repository,
            registry=REGISTRY,
            source_sha=tag,
            branch=None,
            build_args={"BASE_IMAGE": "visiobook/python-base:bookworm"},
        )
    return f"{REGISTRY}/{repository}", tag


@pytest.fixture(scope="module")
def rollback_env(request: pytest.FixtureRequest) -> Iterator[RollbackEnv]:
    """The rollback stack, one per test run, shared by the modules of this folder (each has services
    of its own): started by the first module that needs it, stopped once the last one is done
    (tests/shared.py)."""
    info = shared_resource("rollback", _start_rollback_env, stop=stop_rollback_env)
    yield _attach(info)
    release("rollback", request.node.nodeid, modules_using(request.session, "rollback_env"))


def _start_rollback_env(tmp: Path) -> dict[str, Any]:
    """GitOps repo, catalog, DAG file, Airflow, the demo image and the webhook token, in ``tmp``."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1)
    image_build = pool.submit(build_demo_image)  # builds while Airflow starts
    bare = tmp / "gitops.git"
    _seed_gitops(bare, tmp / "seed")
    ports = {f"{name}/{env}": free_port() for name in SERVICES for env in ("staging", "production")}
    catalog_dir = tmp / "catalog"
    _write_catalog(catalog_dir, gitops=bare, workspaces=tmp / "workspaces", ports=ports)
    dags = tmp / "dags"
    dags.mkdir()
    (dags / "rollback_dags.py").write_text(DAG_FILE)
    airflow = AirflowServer(
        home=tmp / "airflow",
        port=free_port(),
        catalog_dir=catalog_dir,
        profile="local",
        reparse_interval=REPARSE_INTERVAL,
        env={
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "TMPDIR": str(tmp),
        },
    )
    token = secrets.token_urlsafe(24)
    try:
        airflow.start()
        image_repository, good_tag = image_build.result(timeout=600)
        airflow.api(
            "POST",
            "/connections",
            json={"connection_id": "alertmanager_webhook", "conn_type": "http", "password": token},
            expect=(201,),
        )
        for name in SERVICES:
            airflow.wait_dag("rollback_" + name.replace("-", "_"))
    except BaseException:
        airflow.destroy()
        _remove_containers()
        raise
    finally:
        pool.shutdown(wait=True)
    return {
        "tmp": str(tmp),
        "port": airflow.port,
        "image_repository": image_repository,
        "good_tag": good_tag,
        "ports": ports,
        "token": token,
    }


def _attach(info: dict[str, Any]) -> RollbackEnv:
    tmp = Path(info["tmp"])
    return RollbackEnv(
        airflow=AirflowServer(home=tmp / "airflow", port=info["port"], catalog_dir=tmp / "catalog"),
        gitops_bare=tmp / "gitops.git",
        catalog_dir=tmp / "catalog",
        image_repository=info["image_repository"],
        good_tag=info["good_tag"],
        ports=info["ports"],
        token=info["token"],
        tmp=tmp,
    )


def stop_rollback_env(info: dict[str, Any]) -> None:
    """Stop the rollback stack (at the run's end, :func:`tests.shared.stop_all`)."""
    try:
        _attach(info).airflow.destroy()
    finally:
        _remove_containers()


def _remove_containers() -> None:
    from delivery.profiles.local.containers import stop_release

    for name in SERVICES:
        for environment in ("staging", "production"):
            try:
                stop_release(service=name, environment=environment, remove=True, stop_timeout=1)
            except Exception as exc:  # cleanup must not hide the test result
                print(f"could not remove the container of {name} {environment}: {exc}")


@dataclass
class Alertmanager:
    url: str
    process: subprocess.Popen[bytes]

    def fire(
        self, labels: dict[str, str], annotations: dict[str, str], *, ends_at: str | None = None
    ) -> None:
        alert: dict[str, Any] = {"labels": labels, "annotations": annotations}
        if ends_at:
            alert["endsAt"] = ends_at
        resp = requests.post(f"{self.url}/api/v2/alerts", json=[alert], timeout=10)
        assert resp.status_code == 200, resp.text

    def webhook_notifications(self) -> float:
        """Notifications Alertmanager sent through webhook integrations (its own metric)."""
        total = 0.0
        for line in requests.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith("alertmanager_notifications_total{") and 'integration="webhook"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def alertmanager(
    rollback_env: RollbackEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Alertmanager]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager not found: apt-get install -y prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("alertmanager")
    token_file = tmp / "delivery-webhook-token"
    token_file.write_text(rollback_env.token)  # no trailing newline
    token_file.chmod(0o600)
    config = {
        "route": {
            "receiver": "delivery-rollback",
            "group_by": ["alertname", "service", "environment"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "2s",
        },
        "receivers": [
            {
                "name": "delivery-rollback",
                "webhook_configs": [
                    {
                        "url": f"{rollback_env.airflow.base_url}/delivery/alertmanager/webhook",
                        "send_resolved": True,  # the plugin must ignore them (production sends none)
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
                        },
                    }
                ],
            }
        ],
    }
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "alertmanager.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'alertmanager.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            f"--storage.path={tmp / 'data'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp / "alertmanager.log").read_text()
            time.sleep(0.2)
        yield Alertmanager(url=url, process=process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
