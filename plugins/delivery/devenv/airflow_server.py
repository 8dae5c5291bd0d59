"""Run a real Airflow 3 for the local profile and the end-to-end tests: standalone or distributed.

``standalone`` is ``airflow standalone`` (api-server, scheduler, dag-processor and
triggerer under one parent, LocalExecutor). ``distributed`` is the topology of
``docker-compose.yaml`` run natively: Redis, the api-server, two schedulers, the
dag-processor, the triggerer and Celery workers (see :mod:`delivery.devenv.topology`).
Both use the same metadata database, a PostgreSQL cluster that requires a password, and
the same REST helpers.

:meth:`AirflowServer.start` is safe after a crash: it adopts the PostgreSQL server and the
Airflow processes that are still running, cleanly restarts the rest, and kills orphans.
It never falls back to SQLite: SQLite is used only when asked for (``database="sqlite"``,
``--database sqlite`` or ``DELIVERY_AIRFLOW_DB=sqlite``). Users and passwords are ours
(SimpleAuthManager's passwords file), so tests and people know them; the database and
broker passwords are generated and kept beside them in ``secrets.json`` (0600).

    python -m delivery.devenv.airflow_server start --home .local/airflow --port 8080 [--distributed]
    python -m delivery.devenv.airflow_server status --home .local/airflow
    python -m delivery.devenv.airflow_server stop --home .local/airflow
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from delivery.catalog import load_catalog
from delivery.cli import deploy_pools
from delivery.devenv.monitoring import airflow_env as monitoring_env
from delivery.devenv.postgres import PostgresCluster, PostgresError, port_in_use
from delivery.devenv.redis import RedisError
from delivery.devenv.settings import SHARED_WITH_STANDALONE, common_settings
from delivery.devenv.topology import Distributed, Standalone, Topology, TopologyError
from delivery.paths import PROJECT_ROOT

DATABASES = ("postgresql", "sqlite")
TOPOLOGIES = ("standalone", "distributed")
USERS = ("admin", "alice", "bob", "carol", "dave", "erin", "frank", "mallory", "oncall")
API_USER = "delivery-bot"
ROLES = {"admin": "admin", API_USER: "viewer"}


class AirflowError(RuntimeError):
    pass


def _private_json(path: Path, data: Mapping[str, str]) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(dict(data), indent=2))


def _request(method: str, url: str, *, attempts: int, **kwargs: Any) -> requests.Response:
    """One HTTP request, sent up to ``attempts`` times while it times out or cannot connect (a busy
    machine): only for requests that change nothing when repeated."""
    for attempt in range(1, attempts):
        try:
            return requests.request(method, url, **kwargs)
        except (requests.Timeout, requests.ConnectionError):
            time.sleep(2 * attempt)
    return requests.request(method, url, **kwargs)


class AirflowServer:
    """One Airflow home, its processes (standalone or distributed), and a small REST client."""

    def __init__(
        self,
        *,
        home: Path,
        port: int = 8080,
        users: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        catalog_dir: Path | None = None,
        profile: str = "local",
        dags_folder: Path | None = None,
        database: str = "postgresql",
        topology: str | None = None,
        reparse_interval: int = 30,
    ) -> None:
        """``reparse_interval``: seconds between two parses of a DAG file, and so of the catalog it
        reads (a new file is parsed at once). Airflow's default, 30, shows a catalog edit within
        half a minute; each parse costs about a CPU-second, so a stack whose catalog never
        changes while it runs (a test's) can parse once."""
        if database not in DATABASES:
            raise AirflowError(f"database must be one of {DATABASES}, not {database!r}")
        self.home = Path(home).resolve()
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.extra_env = dict(env or {})
        self.catalog_dir = catalog_dir
        self.profile = profile
        self.dags_folder = dags_folder or PROJECT_ROOT / "dags"
        self.database = database
        self.reparse_interval = reparse_interval
        self._pg_port_file = self.home / "postgres.port"
        self._topology_file = self.home / "topology"
        self.passwords_file = self.home / "passwords.json"
        self.secrets_file = self.home / "secrets.json"
        self.users = dict(users) if users else self._load_or_create_users()
        # The read-only account the pipeline reads approvals and the audit log with (connection airflow_api).
        self.users.setdefault(API_USER, secrets.token_urlsafe(16))
        self._tokens: dict[str, tuple[str, float]] = {}
        if topology is None and self._topology_file.is_file():
            topology = self._topology_file.read_text().strip()
        self.topology_name = topology or "standalone"
        if self.topology_name not in TOPOLOGIES:
            raise AirflowError(f"topology must be one of {TOPOLOGIES}, not {self.topology_name!r}")
        if self.topology_name == "distributed" and database != "postgresql":
            raise AirflowError("the distributed topology needs PostgreSQL (Celery workers share it)")

    # -- configuration --------------------------------------------------------------

    def _load_or_create_users(self) -> dict[str, str]:
        """The users' passwords: kept ones, and a new password for a user added since they were made."""
        kept = dict(json.loads(self.passwords_file.read_text())) if self.passwords_file.is_file() else {}
        return {**{name: secrets.token_urlsafe(12) for name in USERS if name not in kept}, **kept}

    def _secret(self, name: str) -> str:
        """A generated password kept in secrets.json (0600), beside the Airflow users' passwords."""
        stored = json.loads(self.secrets_file.read_text()) if self.secrets_file.is_file() else {}
        if name not in stored:
            self.home.mkdir(parents=True, exist_ok=True)
            stored[name] = secrets.token_urlsafe(24)
            _private_json(self.secrets_file, stored)
        return str(stored[name])

    def _topology(self) -> Topology:
        if self.topology_name == "distributed":
            return Distributed(
                home=self.home, redis_password=self._secret("redis"), database_url=self.database_url()
            )
        return Standalone(home=self.home)

    def environment(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        roles = ",".join(f"{name}:{ROLES.get(name, 'user')}" for name in self.users)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
        common = common_settings()
        shared = {key: common[key] for key in SHARED_WITH_STANDALONE}
        env = {
            **inherited,
            **shared,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url(),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": roles,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # Every parse is a process importing the DAG file: at 10 s, the dag-processor used
            # about a tenth of a core per stack, idle or not; at 30 s, about 5 CPU-seconds a minute.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(self.reparse_interval),
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "DELIVERY_PROFILE": self.profile,
            "AIRFLOW_CONN_AIRFLOW_API": json.dumps(
                {
                    "conn_type": "http",
                    "host": self.base_url,
                    "login": API_USER,
                    "password": self.users[API_USER],
                }
            ),
            "PYTHONPATH": str(PROJECT_ROOT / "plugins"),
        }
        if self.catalog_dir is not None:
            env["DELIVERY_CATALOG_DIR"] = str(self.catalog_dir)
        env.update(self._topology().environment())
        env.update(self.extra_env)
        return env

    # -- the metadata database -------------------------------------------------------

    def _cluster_folder(self) -> Path:
        if os.geteuid() == 0:
            # The server runs as the postgres user, who must reach the folder: keep it out of
            # private (0700) parents such as a test's tmp path, in /var/tmp which survives reboots.
            key = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
            return Path("/var/tmp") / f"delivery-airflow-postgres-{key}"
        return self.home / "postgres"

    def _cluster(self) -> PostgresCluster:
        port = int(self._pg_port_file.read_text()) if self._pg_port_file.is_file() else None
        return PostgresCluster(
            folder=self._cluster_folder(), port=port, user="airflow", password=self._secret("postgres")
        )

    def _start_database(self) -> None:
        last = self.home / "database"
        if last.is_file() and last.read_text().strip() != self.database:
            print(
                f"[airflow] metadata database: {self.database} (this home used {last.read_text().strip()} "
                "before; its run history stays there)",
                file=sys.stderr,
            )
        if self.database == "postgresql":
            try:
                cluster = self._cluster().start()
                self._pg_port_file.write_text(str(cluster.port))
                cluster.create_database("airflow")
            except PostgresError as exc:
                raise AirflowError(
                    f"the metadata database (PostgreSQL) cannot start: {exc}. Fix that and start again, or "
                    "ask for SQLite explicitly (--database sqlite or DELIVERY_AIRFLOW_DB=sqlite), which "
                    "cannot run backfills and starts with an empty history"
                ) from exc
        last.write_text(self.database)

    def database_url(self) -> str:
        """The metadata database: our PostgreSQL (with its password), or SQLite only when asked for."""
        if self.database == "sqlite":
            return f"sqlite:///{self.home}/airflow.db"
        if not self._pg_port_file.is_file():
            raise AirflowError(f"PostgreSQL of {self.home} is not started yet (start() first)")
        password = quote(self._secret("postgres"), safe="")
        port = self._pg_port_file.read_text().strip()
        return f"postgresql+psycopg2://airflow:{password}@127.0.0.1:{port}/airflow"

    # -- lifecycle ------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.home / "standalone.pid"

    @property
    def log_file(self) -> Path:
        if self.topology_name == "distributed":
            return self.home / "logs" / "stack"
        return self.home / "standalone.log"

    def components(self) -> dict[str, int]:
        """Pid of each running component (each leads its own process group), and of PostgreSQL."""
        pids = self._topology().pids() if self._pg_port_file.is_file() or self.database == "sqlite" else {}
        if self.database == "postgresql" and self._pg_port_file.is_file():
            pid = self._cluster().server_pid()
            if pid:
                pids["postgres"] = pid
        return pids

    def health(self) -> dict[str, str]:
        """Health of the components the api-server's monitor does not show one by one (distributed)."""
        return self._topology().health(self.environment())

    def running(self) -> bool:
        return bool({k: v for k, v in self.components().items() if k not in ("postgres", "redis")})

    def start(self, *, timeout: float = 240.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        _private_json(self.passwords_file, self.users)
        self._start_database()
        self._topology_file.write_text(self.topology_name)
        env = self.environment()
        topology = self._topology()
        serving = {"airflow-apiserver", "airflow-standalone"} & set(topology.pids())
        if not serving:
            # After a crash, an api-server of ours may outlive its leader (or still be dying):
            # stop it before taking the port for another program's.
            topology.clear()
        if not serving and port_in_use(self.port):
            raise AirflowError(f"port {self.port} is in use by another program: choose another (--port)")
        try:
            procs = topology.start(env)
        except (TopologyError, RedisError) as exc:
            raise AirflowError(str(exc)) from exc
        try:
            self.wait_healthy(timeout=timeout if procs else min(timeout, 90.0), procs=procs, env=env)
        except AirflowError as exc:
            if procs:
                self.stop()
                raise
            print(f"[airflow] adopted processes are not healthy ({exc}); restarting them", file=sys.stderr)
            topology.stop()
            procs = topology.start(env)
            try:
                self.wait_healthy(timeout=timeout, procs=procs, env=env)
            except AirflowError:
                self.stop()
                raise
        self.ensure_pools()

    def ensure_pools(self) -> None:
        """Create (or fix) the one-slot deploy pools of the catalog; idempotent."""
        catalog, _ = load_catalog(self.catalog_dir, strict=False)
        entities = [{"name": name, **spec} for name, spec in deploy_pools(catalog).items()]
        if entities:
            self.api(
                "PATCH",
                "/pools",
                json={
                    "actions": [
                        {"action": "create", "action_on_existence": "overwrite", "entities": entities}
                    ]
                },
            )

    def _monitor(self) -> str | None:
        try:
            resp = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=3)
            states = {k: (v or {}).get("status") for k, v in resp.json().items()}
        except (requests.RequestException, ValueError) as exc:
            return str(exc)
        wanted = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        if resp.ok and all(states.get(name) == "healthy" for name in wanted):
            return None
        return str(states)

    def wait_healthy(
        self,
        *,
        timeout: float,
        procs: list[subprocess.Popen[bytes]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        topology = self._topology()
        env = env or self.environment()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for proc in procs or ():
                if proc.poll() is not None:
                    raise AirflowError(
                        f"{' '.join(str(a) for a in proc.args[:4])} exited with {proc.returncode}; "  # type: ignore[index]
                        f"see {self.log_file}"
                    )
            last = self._monitor() or topology.check(env) or ""
            if not last:
                return
            time.sleep(1)
        raise AirflowError(
            f"Airflow at {self.base_url} not healthy after {timeout:.0f}s ({last}); see {self.log_file}"
        )

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop every process of this Airflow (both topologies, and orphans), then PostgreSQL."""
        Standalone(home=self.home).stop()
        if (self.home / "run").is_dir() and (self.database == "sqlite" or self._pg_port_file.is_file()):
            Distributed(
                home=self.home, redis_password=self._secret("redis"), database_url=self.database_url()
            ).stop()
        if self.database == "postgresql" and self._pg_port_file.is_file():
            self._cluster().stop()

    def destroy(self) -> None:
        """Stop, and delete the metadata database (for throwaway Airflows such as tests)."""
        self.stop()
        self._pg_port_file.unlink(missing_ok=True)
        folder = self._cluster_folder()
        if folder != self.home / "postgres":
            shutil.rmtree(folder, ignore_errors=True)

    # -- REST ---------------------------------------------------------------------

    def token(self, user: str = "admin") -> str:
        cached = self._tokens.get(user)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        resp = _request(  # a login changes nothing: on a busy machine, ask again
            "POST",
            f"{self.base_url}/auth/token",
            attempts=3,
            json={"username": user, "password": self.users[user]},
            timeout=30,
        )
        if resp.status_code not in (200, 201):
            raise AirflowError(f"login of {user!r} failed: {resp.status_code} {resp.text[:200]}")
        token = str(resp.json()["access_token"])
        self._tokens[user] = (token, time.monotonic() + 600)
        return token

    def api(
        self, method: str, path: str, *, user: str = "admin", expect: tuple[int, ...] = (200,), **kwargs: Any
    ) -> Any:
        """One REST call; a read (GET) that times out on a busy machine is tried again, twice."""
        resp = _request(
            method,
            f"{self.base_url}/api/v2{path}",
            attempts=3 if method.upper() == "GET" else 1,
            headers={"Authorization": f"Bearer {self.token(user)}"},
            timeout=60,
            **kwargs,
        )
        if resp.status_code not in expect:
            raise AirflowError(f"{method} {path} as {user}: {resp.status_code} {resp.text[:500]}")
        return resp.json() if resp.content else None

    def wait_dag(self, dag_id: str, *, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = requests.get(
                f"{self.base_url}/api/v2/dags/{dag_id}",
                headers={"Authorization": f"Bearer {self.token()}"},
                timeout=10,
            )
            if resp.status_code == 200:
                return
            time.sleep(2)
        errors = self.api("GET", "/importErrors")
        raise AirflowError(f"DAG {dag_id} not parsed after {timeout:.0f}s; import errors: {errors}")

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(
        self, dag_id: str, *, conf: Mapping[str, Any], run_id: str | None = None, user: str = "admin"
    ) -> str:
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf)}
        if run_id:
            body["dag_run_id"] = run_id
        return str(self.api("POST", f"/dags/{dag_id}/dagRuns", json=body, user=user)["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        data = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 200})
        return {ti["task_id"]: ti["state"] for ti in data["task_instances"]}

    def wait_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        states: tuple[str, ...] = ("success", "failed"),
        timeout: float = 600.0,
    ) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in states:
                return state
            time.sleep(2)
        raise AirflowError(
            f"run {dag_id}/{run_id} still {state!r} after {timeout:.0f}s: {self.task_states(dag_id, run_id)}"
        )

    def wait_task(
        self, dag_id: str, run_id: str, task_id: str, *, states: tuple[str, ...], timeout: float = 600.0
    ) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        for poll in itertools.count():
            if time.monotonic() >= deadline:
                break
            # One task instance, not the run's list: a third of the api-server's CPU per poll.
            state = str(self.api("GET", path, expect=(200, 404)).get("state") or "")
            if state in states:
                return state
            if poll % 3 == 2 and self.run_state(dag_id, run_id) in ("success", "failed"):
                break
            time.sleep(2)
        raise AirflowError(
            f"task {task_id} of {dag_id}/{run_id} is {state!r}, not {states}: {self.task_states(dag_id, run_id)}"
        )

    def hitl(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(
            self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails")
        )

    def respond(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        *,
        option: str,
        user: str,
        params_input: Mapping[str, Any] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        return self.api(
            "PATCH",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
            json={"chosen_options": [option], "params_input": dict(params_input or {})},
            user=user,
            expect=expect,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--home", type=Path, default=PROJECT_ROOT / ".local" / "airflow")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--catalog", type=Path, default=PROJECT_ROOT / "include" / "catalog-local")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="the docker-compose.yaml topology, natively: Redis, two schedulers, Celery workers",
    )
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default=os.environ.get("DELIVERY_AIRFLOW_DB") or "postgresql",
        help="metadata database (default: postgresql, or $DELIVERY_AIRFLOW_DB)",
    )
    args = parser.parse_args(argv)
    topology = "distributed" if args.distributed else ("standalone" if args.command == "start" else None)
    state = Path(os.environ.get("DELIVERY_STATE_DIR") or args.home.parent)
    try:
        server = AirflowServer(
            home=args.home,
            port=args.port,
            catalog_dir=args.catalog,
            database=args.database,
            topology=topology,
            # Connections to the local Prometheus and the Alertmanager webhook's token, the Pushgateway
            # as metrics backend: empty unless `delivery.devenv.monitoring start` ran for this state.
            env=monitoring_env(state, args.catalog),
        )
        if args.command == "stop":
            server.stop()
            print("Airflow stopped")
            return 0
        if args.command == "status":
            pids = server.components()
            print(json.dumps({"topology": server.topology_name, "pids": pids}))
            return 0 if server.running() else 1
        server.start()
        for dag in ("deliver_visiobook_demo_web", "deliver_visiobook_inference"):
            server.wait_dag(dag)
            server.unpause(dag)
    except AirflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "url": server.base_url,
                "users": server.users,
                "topology": server.topology_name,
                "pids": server.components(),
                "logs": str(server.log_file),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
