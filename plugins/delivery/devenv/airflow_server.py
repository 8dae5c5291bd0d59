"""Run a real Airflow 3 (``airflow standalone``) for the local profile and the end-to-end tests.

``airflow standalone`` starts the api-server, scheduler, dag-processor and
triggerer. It is started in its own session, so :meth:`AirflowServer.stop`
kills the whole process group and leaves no orphans. Users and passwords are
ours (SimpleAuthManager's passwords file), not generated ones, so tests and
people know them.

    python -m delivery.devenv.airflow_server start --home .local/airflow --port 8080
    python -m delivery.devenv.airflow_server stop --home .local/airflow
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from delivery.devenv.monitoring import airflow_env as monitoring_env
from delivery.paths import PROJECT_ROOT


class AirflowError(RuntimeError):
    pass


class AirflowServer:
    """One Airflow home, its standalone process group, and a small REST client."""

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
        postgres: bool = True,
    ) -> None:
        self.home = Path(home).resolve()
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.extra_env = dict(env or {})
        self.catalog_dir = catalog_dir
        self.profile = profile
        self.dags_folder = dags_folder or PROJECT_ROOT / "dags"
        self.postgres = postgres
        self._pg_port_file = self.home / "postgres.port"
        self.passwords_file = self.home / "passwords.json"
        self.users = dict(users) if users else self._load_or_create_users()
        self._tokens: dict[str, tuple[str, float]] = {}

    # -- lifecycle ------------------------------------------------------------------

    def _load_or_create_users(self) -> dict[str, str]:
        if self.passwords_file.is_file():
            return dict(json.loads(self.passwords_file.read_text()))
        users = {
            "admin": "",
            "alice": "",
            "bob": "",
            "carol": "",
            "dave": "",
            "erin": "",
            "frank": "",
            "mallory": "",
        }
        return {name: secrets.token_urlsafe(12) for name in users}

    def environment(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        roles = ",".join(f"{name}:{'admin' if name == 'admin' else 'user'}" for name in self.users)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
        env = {
            **inherited,
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
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "DELIVERY_PROFILE": self.profile,
            "PYTHONPATH": str(PROJECT_ROOT / "plugins"),
        }
        if self.catalog_dir is not None:
            env["DELIVERY_CATALOG_DIR"] = str(self.catalog_dir)
        env.update(self.extra_env)
        return env

    def _cluster(self) -> Any:
        from delivery.devenv.postgres import PostgresCluster

        port = int(self._pg_port_file.read_text()) if self._pg_port_file.is_file() else None
        folder = self.home / "postgres"
        if os.geteuid() == 0:
            # The server runs as the postgres user, who must reach the folder: keep it out of
            # private (0700) parents such as a test's tmp path, in /var/tmp which survives reboots.
            key = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
            folder = Path("/var/tmp") / f"delivery-airflow-postgres-{key}"
        cluster = PostgresCluster(folder=folder, port=port, user="airflow")
        self._pg_port_file.write_text(str(cluster.port))
        return cluster

    def database_url(self) -> str:
        """PostgreSQL where available (backfills need it), else SQLite."""
        if self.postgres and self._pg_port_file.is_file():
            return f"postgresql+psycopg2://airflow@127.0.0.1:{self._pg_port_file.read_text().strip()}/airflow"
        return f"sqlite:///{self.home}/airflow.db"

    @property
    def pid_file(self) -> Path:
        return self.home / "standalone.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "standalone.log"

    def running(self) -> bool:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def start(self, *, timeout: float = 240.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.passwords_file.write_text(json.dumps(self.users, indent=2))
        self.passwords_file.chmod(0o600)
        if self.running():
            self.wait_healthy(timeout=timeout)
            return
        if self.postgres:
            from delivery.devenv.postgres import PostgresError

            try:
                cluster = self._cluster().start()
                cluster.create_database("airflow")
            except PostgresError as exc:
                print(
                    f"PostgreSQL unavailable ({exc}); using SQLite, which cannot run backfills",
                    file=sys.stderr,
                )
                self._pg_port_file.unlink(missing_ok=True)
                self.postgres = False
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.home,
        )
        self.pid_file.write_text(str(proc.pid))
        try:
            self.wait_healthy(timeout=timeout, proc=proc)
        except AirflowError:
            self.stop()
            raise

    def wait_healthy(self, *, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AirflowError(f"airflow standalone exited with {proc.returncode}; see {self.log_file}")
            try:
                resp = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=3)
                body = resp.json()
                states = {k: (v or {}).get("status") for k, v in body.items()}
                if (
                    resp.ok
                    and states.get("metadatabase") == "healthy"
                    and states.get("scheduler") == "healthy"
                    and states.get("triggerer") == "healthy"
                    and states.get("dag_processor") == "healthy"
                ):
                    return
                last = str(states)
            except (requests.RequestException, ValueError) as exc:
                last = str(exc)
            time.sleep(1)
        raise AirflowError(
            f"Airflow at {self.base_url} not healthy after {timeout:.0f}s ({last}); see {self.log_file}"
        )

    def stop(self, *, timeout: float = 30.0) -> None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            pid = 0
        for sig in (signal.SIGTERM, signal.SIGKILL) if pid else ():
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                continue
            break
        self.pid_file.unlink(missing_ok=True)
        if self.postgres and self._pg_port_file.is_file():
            self._cluster().stop()

    def destroy(self) -> None:
        """Stop, and delete the metadata database (for throwaway Airflows such as tests)."""
        self.stop()
        if self._pg_port_file.is_file():
            cluster = self._cluster()
            self._pg_port_file.unlink(missing_ok=True)
            if cluster.folder != self.home / "postgres":
                import shutil

                shutil.rmtree(cluster.folder, ignore_errors=True)

    # -- REST ---------------------------------------------------------------------

    def token(self, user: str = "admin") -> str:
        cached = self._tokens.get(user)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        resp = requests.post(
            f"{self.base_url}/auth/token", json={"username": user, "password": self.users[user]}, timeout=10
        )
        if resp.status_code not in (200, 201):
            raise AirflowError(f"login of {user!r} failed: {resp.status_code} {resp.text[:200]}")
        token = str(resp.json()["access_token"])
        self._tokens[user] = (token, time.monotonic() + 600)
        return token

    def api(
        self, method: str, path: str, *, user: str = "admin", expect: tuple[int, ...] = (200,), **kwargs: Any
    ) -> Any:
        resp = requests.request(
            method,
            f"{self.base_url}/api/v2{path}",
            headers={"Authorization": f"Bearer {self.token(user)}"},
            timeout=30,
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
        while time.monotonic() < deadline:
            state = self.task_states(dag_id, run_id).get(task_id) or ""
            if state in states:
                return state
            if self.run_state(dag_id, run_id) in ("success", "failed"):
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
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        return self.api(
            "PATCH",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
            json={"chosen_options": [option], "params_input": {}},
            user=user,
            expect=expect,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--home", type=Path, default=PROJECT_ROOT / ".local" / "airflow")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--catalog", type=Path, default=PROJECT_ROOT / "include" / "catalog-local")
    args = parser.parse_args(argv)
    state = Path(os.environ.get("DELIVERY_STATE_DIR") or args.home.parent)
    server = AirflowServer(
        home=args.home,
        port=args.port,
        catalog_dir=args.catalog,
        # Connections to the local Prometheus and the Alertmanager webhook's token, the Pushgateway
        # as metrics backend: empty unless `delivery.devenv.monitoring start` ran for this state.
        env=monitoring_env(state, args.catalog),
    )
    if args.command == "stop":
        server.stop()
        print("Airflow stopped")
        return 0
    if args.command == "status":
        print("running" if server.running() else "stopped")
        return 0 if server.running() else 1
    server.start()
    for dag in ("deliver_visiobook_demo_web", "deliver_visiobook_inference"):
        server.wait_dag(dag)
        server.unpause(dag)
    print(json.dumps({"url": server.base_url, "users": server.users}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
