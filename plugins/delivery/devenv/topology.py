"""The processes of the local Airflow: ``airflow standalone``, or the distributed (Celery) deployment.

Each component leads a session of its own with a pid file; a start adopts the components
that are still running after a crash, stops what a dead component left behind (its tasks),
and starts the rest (see :mod:`delivery.devenv.processes`).

The distributed deployment runs :data:`delivery.devenv.settings.COMPONENTS` natively on
one machine, as ``docker-compose.yaml`` does in containers: Redis as the broker, the
api-server, two schedulers, the dag-processor, the triggerer and the Celery workers.
Differences that one machine imposes: each scheduler serves its health check on a port of
its own on 127.0.0.1; workers get distinct Celery node names; workers and the triggerer do
not serve logs over HTTP (that server binds every interface, and all components share one
log folder here, which the api-server reads directly).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import requests
from kombu.exceptions import KombuError

from delivery.devenv import processes
from delivery.devenv.postgres import free_port
from delivery.devenv.redis import RedisServer
from delivery.devenv.settings import COMPONENTS, Component, common_settings

COMPONENT_VAR = "DELIVERY_COMPONENT"


class TopologyError(RuntimeError):
    pass


class Topology(Protocol):
    name: str

    def environment(self) -> dict[str, str]: ...

    def start(self, env: Mapping[str, str]) -> list[subprocess.Popen[bytes]]: ...

    def check(self, env: Mapping[str, str]) -> str | None: ...

    def clear(self) -> None:
        """Stop what dead components left behind; the running ones are left alone."""

    def health(self, env: Mapping[str, str]) -> dict[str, str]: ...

    def pids(self) -> dict[str, int]: ...

    def stop(self) -> None: ...


def clear_leftovers(pid_files: list[Path]) -> None:
    """Stop what dead components left behind (their tasks, after a ``kill -9`` of their group)."""
    stray = sorted({pid for pid_file in pid_files for pid in processes.leftovers(pid_file)})
    if stray:
        print(f"[airflow] stopping {len(stray)} process(es) left by a crash: {stray}", flush=True)
        processes.terminate(stray, timeout=10.0)


class Standalone:
    """``airflow standalone``: api-server, scheduler, dag-processor and triggerer under one parent."""

    name = "standalone"

    def __init__(self, *, home: Path) -> None:
        self.home = home
        self.pid_file = home / "standalone.pid"
        self.log_file = home / "standalone.log"

    def environment(self) -> dict[str, str]:
        return {}

    def pids(self) -> dict[str, int]:
        pid = processes.adoptable(self.pid_file)
        return {"airflow-standalone": pid} if pid else {}

    def clear(self) -> None:
        if not processes.adoptable(self.pid_file):
            clear_leftovers([self.pid_file])

    def start(self, env: Mapping[str, str]) -> list[subprocess.Popen[bytes]]:
        if processes.adoptable(self.pid_file):
            return []
        self.clear()
        airflow = str(Path(env["PATH"].split(":")[0]) / "airflow")
        return [
            processes.spawn(
                [airflow, "standalone"],
                env=env,
                pid_file=self.pid_file,
                log_file=self.log_file,
                cwd=self.home,
            )
        ]

    def check(self, env: Mapping[str, str]) -> str | None:
        return None

    def health(self, env: Mapping[str, str]) -> dict[str, str]:
        return {}

    def stop(self) -> None:
        processes.stop_sessions([self.pid_file])


class Distributed:
    """The components of ``docker-compose.yaml``, each a native process group with a pid file."""

    name = "distributed"

    def __init__(self, *, home: Path, redis_password: str, database_url: str) -> None:
        self.home = home
        self.run_dir = home / "run"
        self.log_dir = home / "logs" / "stack"
        self.database_url = database_url
        port_file = home / "redis.port"
        if not port_file.is_file():
            port_file.write_text(str(free_port()))
        self.redis = RedisServer(
            folder=home / "redis", port=int(port_file.read_text()), password=redis_password
        )

    def environment(self) -> dict[str, str]:
        return {
            **common_settings(),
            "AIRFLOW__CELERY__BROKER_URL": self.redis.url(),
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.database_url,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        }

    def _pid_file(self, component: Component) -> Path:
        return self.run_dir / f"{component.name}.pid"

    def _port(self, component: Component) -> int:
        """The health-check port of a scheduler, kept so that an adopted one can still be checked."""
        port_file = self.run_dir / f"{component.name}.port"
        if not port_file.is_file():
            port_file.write_text(str(free_port()))
        return int(port_file.read_text())

    def pids(self) -> dict[str, int]:
        found = {c.name: processes.adoptable(self._pid_file(c)) for c in COMPONENTS}
        found["redis"] = self.redis.pid()
        return {name: pid for name, pid in found.items() if pid}

    def _argv(self, component: Component, env: Mapping[str, str]) -> list[str]:
        argv = [str(Path(env["PATH"].split(":")[0]) / "airflow"), *component.command]
        if component.kind == "celery-worker":
            argv += ["--celery-hostname", f"{component.name}@%h", "--skip-serve-logs"]
        elif component.kind == "triggerer":
            argv += ["--skip-serve-logs"]
        return argv

    def _spawn(self, component: Component, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        own = {**env, COMPONENT_VAR: component.name}
        if component.kind == "scheduler":
            own["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"] = str(self._port(component))
        return processes.spawn(
            self._argv(component, env),
            env=own,
            pid_file=self._pid_file(component),
            log_file=self.log_dir / f"{component.name}.log",
            cwd=self.home,
        )

    def clear(self) -> None:
        running = self.pids()
        clear_leftovers([self._pid_file(c) for c in COMPONENTS if c.name not in running])

    def start(self, env: Mapping[str, str]) -> list[subprocess.Popen[bytes]]:
        running = self.pids()
        self.clear()
        self.redis.start({**env, COMPONENT_VAR: "redis"})
        missing = [c for c in COMPONENTS if c.name not in running]
        if not missing:
            return []
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # One migration before any component starts: it also writes airflow.cfg once, with the
        # fernet key, JWT secret and api secret key that every component must share.
        migrate = subprocess.run(
            [str(Path(env["PATH"].split(":")[0]) / "airflow"), "db", "migrate"],
            env=dict(env),
            capture_output=True,
            text=True,
            check=False,
            cwd=self.home,
        )
        if migrate.returncode != 0:
            raise TopologyError(f"airflow db migrate failed: {migrate.stderr.strip()[-2000:]}")
        return [self._spawn(component, env) for component in missing]

    def _celery_workers(self, env: Mapping[str, str]) -> dict[str, set[str]]:
        """Each Celery worker that answers on the broker, with the queues it consumes.

        The question ``airflow celery list-workers`` asks (``inspect().active_queues()``), asked
        here directly: that command starts Airflow for it, about 4 CPU-seconds a call, and
        :meth:`AirflowServer.wait_healthy` asks once a second until every worker answers.
        """
        from celery import Celery  # noqa: PLC0415 the distributed topology only

        app = Celery(broker=env["AIRFLOW__CELERY__BROKER_URL"], set_as_current=False)
        try:
            answers = app.control.inspect(timeout=2.0).active_queues() or {}
        except (OSError, KombuError):  # the broker is down or refuses us: no worker answers
            return {}
        finally:
            app.close()
        return {
            str(name).split("@")[0]: {str(queue["name"]) for queue in queues if "name" in queue}
            for name, queues in answers.items()
        }

    def health(self, env: Mapping[str, str]) -> dict[str, str]:
        """Each scheduler's own health check, and each Celery worker's answer and queues."""
        states: dict[str, str] = {}
        for component in COMPONENTS:
            if component.kind == "scheduler":
                url = f"http://127.0.0.1:{self._port(component)}/health"
                try:
                    ok = requests.get(url, timeout=3).status_code == 200
                except requests.RequestException:
                    ok = False
                states[component.name] = "healthy" if ok else "unhealthy"
        workers = self._celery_workers(env)
        for component in COMPONENTS:
            if component.kind == "celery-worker":
                queues = workers.get(component.name)
                healthy = queues is not None and queues == set(component.queues)
                states[component.name] = "healthy" if healthy else f"unhealthy (queues: {queues})"
        return states

    def check(self, env: Mapping[str, str]) -> str | None:
        bad = {name: state for name, state in self.health(env).items() if state != "healthy"}
        return None if not bad else str(bad)

    def stop(self) -> None:
        processes.stop_sessions([self._pid_file(c) for c in reversed(COMPONENTS)])
        self.redis.stop()
