"""CPU cost of one real delivery: the demo service's pipeline on the running local stack.

    bash scripts/run-local.sh start
    PYTHONPATH=plugins .venv/bin/python benchmarks/pipeline_cpu.py [--runs 1]

Triggers ``deliver_visiobook_demo_web`` (ref ``main``), answers its production approval as
``alice`` as soon as it waits, and waits for the run to end: the whole pipeline, with its
image build, staging and production containers and the Prometheus verification. Reports, per
run, the wall time and the CPU seconds the whole machine spent meanwhile (``/proc/stat``: every
process, the stack's daemons included), so run it on an otherwise idle machine and compare two
versions of the project with the same command, one right after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from delivery.devenv.airflow_server import AirflowServer
from delivery.paths import PROJECT_ROOT

DAG = "deliver_visiobook_demo_web"
APPROVAL = "approval.approve_production"


def busy_seconds() -> float:
    """CPU seconds the machine has spent outside idle and iowait since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def one_run(server: AirflowServer) -> tuple[str, float, float]:
    started, cpu = time.monotonic(), busy_seconds()
    run_id = server.trigger(DAG, conf={"ref": "main"})
    server.wait_task(DAG, run_id, APPROVAL, states=("awaiting_input",), timeout=900)
    server.respond(DAG, run_id, APPROVAL, option="Approve", user="alice")
    state = server.wait_run(DAG, run_id, timeout=900)
    return state, time.monotonic() - started, busy_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--home", type=Path, default=PROJECT_ROOT / ".local" / "airflow")
    args = parser.parse_args()
    users = json.loads((args.home / "passwords.json").read_text())
    server = AirflowServer(home=args.home, users=users)
    server.unpause(DAG)
    for number in range(1, args.runs + 1):
        state, wall, cpu = one_run(server)
        print(f"run {number}: {state}, wall {wall:.1f} s, machine CPU {cpu:.1f} s")


if __name__ == "__main__":
    main()
