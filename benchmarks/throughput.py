"""Throughput: N ``ci`` pipelines of N services started at once, on the LocalExecutor and on Celery.

    PATH="$PWD/.venv/bin:$PATH" PYTHONPATH=plugins .venv/bin/python benchmarks/throughput.py \\
        [--services 20] [--repeat 1] [--executors local,celery]

For each executor, a real Airflow (PostgreSQL metadata DB, local profile):

* ``local``: ``airflow standalone``, LocalExecutor (``[core] parallelism`` 8);
* ``celery``: the distributed topology of ``docker-compose.yaml`` run natively
  (``AirflowServer(topology="distributed")``): Redis, two schedulers, Celery workers
  ``airflow-worker-1`` and ``-2`` on the default queue (concurrency 2 each, so 4 task slots)
  and the gpu worker, which these pipelines do not use.

Each has ``--services`` no-op services (every stage ``true``) and as many copies of the bare
DAGs with the same tasks and edges as the pull-request pipeline (``BashOperator("true")``, which
runs on a worker like a stage, and ``EmptyOperator``, which the scheduler completes), built by
:mod:`orchestration`. Then, ``--repeat`` times and interleaved so that machine noise hits all
alike: one ``ci`` run of every pipeline triggered at once, then one run of every bare Bash DAG,
then of every bare Empty DAG. Wall time is the batch's first ``queued_at`` to its last
``end_date``, read from the runs themselves.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from orchestration import check_run, free_port, service_names, setup

from delivery.devenv.airflow_server import AirflowServer

TOPOLOGIES = {"local": "standalone", "celery": "distributed"}
KINDS = ("pipelines", "bare_bash", "bare_empty")


def dag_ids(kind: str, count: int) -> list[str]:
    if kind == "pipelines":
        return ["deliver_" + name.replace("-", "_") for name in service_names(count)]
    return [f"{kind}_{n:02d}" for n in range(count)]


def batch(server: AirflowServer, dags: list[str], conf: dict[str, str]) -> float:
    """Trigger one run of each DAG at once, wait for all; seconds from the first queued to the last end."""
    runs = [(dag_id, server.trigger(dag_id, conf=conf)) for dag_id in dags]
    for dag_id, run_id in runs:
        check_run(server, dag_id, run_id, server.wait_run(dag_id, run_id, timeout=3600))
    details = [server.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}") for dag_id, run_id in runs]
    first = min(datetime.fromisoformat(d["queued_at"]) for d in details)
    last = max(datetime.fromisoformat(d["end_date"]) for d in details)
    return (last - first).total_seconds()


def measure(executor: str, *, services: int, repeat: int) -> tuple[dict[str, list[float]], int]:
    """Wall times of each kind of batch, and the number of tasks of a bare DAG."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-throughput-{executor}-"))
    catalog, dags, steps = setup(root, services=services, copies=services)
    server = AirflowServer(
        home=root / "airflow",
        port=free_port(),
        catalog_dir=catalog,
        dags_folder=dags,
        topology=TOPOLOGIES[executor],
    )
    started = time.monotonic()
    server.start(timeout=600)
    print(f"[{executor}] Airflow started in {time.monotonic() - started:.0f}s", flush=True)
    try:
        for kind in KINDS:
            for dag_id in dag_ids(kind, services):
                server.wait_dag(dag_id, timeout=600)
                server.unpause(dag_id)
        results: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(repeat):
            for kind in KINDS:
                conf = {"ref": "main", "pipeline": "ci"} if kind == "pipelines" else {}
                results[kind].append(batch(server, dag_ids(kind, services), conf))
                print(f"[{executor}] {kind}: {results[kind][-1]:.1f}s", flush=True)
        return results, len(steps)
    finally:
        server.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--executors", default="local,celery")
    args = parser.parse_args()
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    unknown = set(executors) - set(TOPOLOGIES)
    if args.services < 2 or unknown:
        parser.error(f"--services must be at least 2; --executors among {sorted(TOPOLOGIES)}")
    rows = []
    tasks = 0
    for executor in executors:
        results, tasks = measure(executor, services=args.services, repeat=args.repeat)
        rows.append((executor, {kind: statistics.median(walls) for kind, walls in results.items()}))
    n = args.services
    print(f"\n## {n} runs at once ({tasks} tasks per bare DAG, median of {args.repeat})\n")
    print("| executor | DAGs | wall s | runs/min | ratio to bare Bash | ratio to bare Empty |")
    print("|---|---|---:|---:|---:|---:|")
    labels = {
        "pipelines": "delivery pipelines, no-op stages (ci)",
        "bare_bash": "bare BashOperator('true')",
        "bare_empty": "bare EmptyOperator",
    }
    for executor, med in rows:
        for kind in KINDS:
            wall = med[kind]
            print(
                f"| {executor} | {n} x {labels[kind]} | {wall:.1f} | {n / wall * 60:.1f} | "
                f"{wall / med['bare_bash']:.2f}x | {wall / med['bare_empty']:.2f}x |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
