"""Helpers shared by the tests: the project root, free ports, git with a fixed identity, stopping a
process, the local monitoring of a test stack."""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from delivery.devenv.monitoring import MonitoringStack

ROOT = Path(__file__).resolve().parents[1]

SHARED_DIR_ENV = "DELIVERY_E2E_SHARED_DIR"
"""Where the end-to-end stack shared by several modules lives: one folder per test run
(tests/conftest.py makes it and hands it to the xdist workers; tests/e2e/conftest.py uses it)."""

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Dev",
    "GIT_AUTHOR_EMAIL": "dev@visiobook.invalid",
    "GIT_COMMITTER_NAME": "Dev",
    "GIT_COMMITTER_EMAIL": "dev@visiobook.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}


# Below Linux's ephemeral range (32768-60999 by default): the kernel never gives one of these ports to
# an outgoing connection, so a port chosen now is still free when a server binds it minutes later,
# whatever the other test workers connect to in between. Each pytest-xdist worker draws from a slice
# of its own, and never hands out the same port twice, so two servers of a run never pick one port.
_PORTS = range(20000, 32768)
_SLICES = 8
_handed_out: set[int] = set()


def _my_ports() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % _SLICES if worker.isdigit() else 0
    size = len(_PORTS) // _SLICES
    return range(_PORTS.start + index * size, _PORTS.start + (index + 1) * size)


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, outside the ephemeral range, never returned before."""
    ports = _my_ports()
    for _ in range(500):
        port = random.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found in {ports.start}-{ports.stop - 1}")


# A test stack's catalog and DAG files are written before it starts and never change while it runs:
# each component's start parses them, and a parse every 30 s (the local default) cost an idle stack
# about 5 CPU-seconds a minute, a quarter of the suite's CPU over its stacks' lifetimes.
REPARSE_INTERVAL = 3600


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run git with a fixed identity and no user config; the output without its trailing newline."""
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**GIT_IDENTITY, "HOME": str(cwd or "/tmp"), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.rstrip("\n")


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 15) -> None:
    """Terminate a server a test started; kill it if it does not stop within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def monitoring_stack(
    root: Path, catalog_dir: Path, airflow_port: int, ports: dict[str, int] | None = None
) -> MonitoringStack:
    """The local monitoring of a test stack (Prometheus, Alertmanager, Pushgateway, inbox, traffic)
    on free ports (or ``ports``: a running one's, to stop it), not started yet."""
    from delivery.devenv.monitoring import MonitoringStack  # the monitoring's modules: e2e tests only
    from delivery.devenv.monitoring_config import AlertSinks, Ports

    monitoring = MonitoringStack(
        state=root / "state",
        catalog_dir=catalog_dir,
        airflow_url=f"http://127.0.0.1:{airflow_port}",
        ports=Ports(**(ports or {f.name: free_port() for f in dataclasses.fields(Ports)})),
        sinks=AlertSinks(),
        traffic_rps=4,
    )
    return monitoring
