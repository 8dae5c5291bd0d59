"""Orchestration overhead and waiting cost, on a real Airflow (standalone, local profile).

    PYTHONPATH=plugins .venv/bin/python benchmarks/orchestration.py [--runs 3] [--parked 50]

1. **Overhead.** The delivery pipeline of a service whose every stage is a
   no-op (``true``), run as a pull-request pipeline (``pipeline: ci``: checkout,
   validate, build and test, release gate), against two bare DAGs with the same
   number of tasks and the same edges, in the same Airflow: ``EmptyOperator``s
   (which the scheduler completes without a worker) and ``BashOperator("true")``
   (which, like a stage, runs on a worker). Wall time from trigger to the end
   of the run; ratio and seconds per task.
2. **Waiting cost.** ``--parked`` runs of a DAG parked at the pipeline's
   approval operator (``ApprovalOperator``, HITL). Reports the worker slots
   they hold (default pool: running/queued/deferred) and the triggerer's load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from delivery.devenv.airflow_server import AirflowServer
from delivery.paths import PROJECT_ROOT

BARE_DAGS = '''
"""Bare airflow DAGs for the orchestration benchmark (same edges as the ci pipeline)."""
from datetime import datetime, timedelta
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator

EDGES = json.loads(EDGES_JSON)

for kind in ("empty", "bash"):
    for copy in range(COPIES):
        dag_id = f"bare_{kind}" if COPIES == 1 else f"bare_{kind}_{copy:02d}"
        with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            tasks = {}
            for task_id in TASKS:
                safe = task_id.replace(".", "__")
                tasks[task_id] = EmptyOperator(task_id=safe) if kind == "empty" else BashOperator(task_id=safe, bash_command="true")
            for up, down in EDGES:
                tasks[up] >> tasks[down]
        globals()[dag.dag_id] = dag

with DAG(dag_id="parked_approval", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1000) as parked:
    ApprovalOperator(task_id="approve", subject="parked", assigned_users=[{"id": "alice", "name": "alice"}],
                     response_timeout=timedelta(hours=1), defaults=["Reject"])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(*args: str, cwd: Path) -> None:
    env = {
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@x",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@x",
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def service_names(count: int) -> list[str]:
    """The no-op services of :func:`setup`: ``noop``, or ``noop-00``... when there are several."""
    return ["noop"] if count == 1 else [f"noop-{n:02d}" for n in range(count)]


def setup(
    root: Path, *, services: int = 1, copies: int = 1
) -> tuple[Path, Path, list[str], list[tuple[str, str]]]:
    """``services`` no-op services (:func:`service_names`) and ``copies`` of each bare DAG
    (``bare_empty``/``bare_bash``, or ``bare_empty_00``... when there are several)."""
    from delivery.catalog import load_catalog
    from delivery.pipeline.plan import build_plan

    repo = root / "noop.git"
    work = root / "noop"
    work.mkdir()
    (work / "README").write_text("no-op service\n")
    git("init", "-q", "--initial-branch=main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "init", cwd=work)
    git("clone", "-q", "--bare", str(work), str(repo), cwd=root)
    catalog = root / "catalog"
    (catalog / "services").mkdir(parents=True)
    platform = yaml.safe_load((PROJECT_ROOT / "include/catalog-local/platform.yaml").read_text())
    platform["platform"]["local"]["workspace_root"] = str(root / "workspaces")
    (catalog / "platform.yaml").write_text(yaml.safe_dump(platform))
    stages = {
        s: {"command": "true"}
        for s in (
            "lint",
            "dependency_audit",
            "sast",
            "helm_validate",
            "build",
            "unit_tests",
            "integration_tests",
            "coverage",
        )
    }
    stages["dast"] = {"enabled": False}
    for name in service_names(services):
        service = {
            "name": name,
            "kind": "api",
            "toolchain": "python",
            "repo": {"url": str(repo)},
            "image": {"repository": f"bench/{name}"},
            "stages": stages,
            "approvers": ["alice"],
            "environments": {
                env: {
                    "namespace": env,
                    "url": "http://127.0.0.1:1",
                    "values_path": f"apps/{name}/{env}.yaml",
                    "argocd_app": f"{name}-{env}",
                }
                for env in ("staging", "production")
            },
        }
        (catalog / "services" / f"{name}.yaml").write_text(yaml.safe_dump(service))
    cat, _ = load_catalog(catalog)
    plan = build_plan(cat.service(service_names(services)[0]))
    ci_groups = ("validate", "build_and_test")
    tasks = [s.task_id for s in plan.steps if s.group in ci_groups]
    edges = [(u, d) for (u, d) in plan.edges() if u in tasks and d in tasks]
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(PROJECT_ROOT / "dags" / "delivery_pipelines.py", dags)
    (dags / "bare_dags.py").write_text(
        "import json\n"
        + f"TASKS = {tasks!r}\nEDGES_JSON = {json.dumps(json.dumps(edges))}\nCOPIES = {copies}\n"
        + BARE_DAGS
    )
    return catalog, dags, tasks, edges


def timed_run(server: AirflowServer, dag_id: str, conf: dict) -> float:  # type: ignore[type-arg]
    start = time.monotonic()
    run_id = server.trigger(dag_id, conf=conf)
    state = server.wait_run(dag_id, run_id, timeout=600)
    elapsed = time.monotonic() - start
    check_run(server, dag_id, run_id, state)
    return elapsed


def check_run(server: AirflowServer, dag_id: str, run_id: str, state: str) -> None:
    """Stop the benchmark if a run did not do its work (a pipeline ends with notify.outcome's state)."""
    if dag_id.startswith("deliver_"):
        states = server.task_states(dag_id, run_id)
        failed = {t: s for t, s in states.items() if s == "failed" and t != "notify.outcome"}
        if failed:
            raise SystemExit(f"{dag_id} failed: {failed}")
    elif state != "success":
        raise SystemExit(f"{dag_id} ended {state}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parked", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    catalog, dags, tasks, _ = setup(root)
    server = AirflowServer(home=root / "airflow", port=free_port(), catalog_dir=catalog, dags_folder=dags)
    server.start()
    try:
        for dag in ("deliver_noop", "bare_empty", "bare_bash", "parked_approval"):
            server.wait_dag(dag)
            server.unpause(dag)
        results: dict[str, list[float]] = {"deliver_noop": [], "bare_empty": [], "bare_bash": []}
        for _ in range(args.runs):  # interleaved, so machine noise hits all three alike
            results["deliver_noop"].append(
                timed_run(server, "deliver_noop", {"ref": "main", "pipeline": "ci"})
            )
            results["bare_empty"].append(timed_run(server, "bare_empty", {}))
            results["bare_bash"].append(timed_run(server, "bare_bash", {}))
        n = len(tasks)
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"## Orchestration overhead ({n} tasks, median of {args.runs} runs, same Airflow)\n")
        print("| DAG | wall s | s per task | ratio to EmptyOperator | ratio to BashOperator |")
        print("|---|---:|---:|---:|---:|")
        for key, label in (
            ("deliver_noop", "delivery pipeline, no-op stages (ci)"),
            ("bare_bash", "bare BashOperator('true')"),
            ("bare_empty", "bare EmptyOperator"),
        ):
            print(
                f"| {label} | {med[key]:.1f} | {med[key] / n:.2f} | {med[key] / med['bare_empty']:.2f}x | {med[key] / med['bare_bash']:.2f}x |"
            )

        # Waiting cost: park runs at the approval.
        run_ids = [server.trigger("parked_approval", conf={}) for _ in range(args.parked)]
        deadline = time.monotonic() + 600
        waiting = 0
        while time.monotonic() < deadline:
            waiting = sum(
                server.task_states("parked_approval", r).get("approve") == "awaiting_input" for r in run_ids
            )
            if waiting == len(run_ids):
                break
            time.sleep(3)
        pool = server.api("GET", "/pools/default_pool")
        health = server.api("GET", "/monitor/health")
        print(f"\n## Waiting cost ({args.parked} runs parked at the approval)\n")
        print("| runs awaiting input | worker slots running | queued | deferred (triggerer) | open slots |")
        print("|---:|---:|---:|---:|---:|")
        print(
            f"| {waiting} | {pool['running_slots']} | {pool['queued_slots']} | {pool['deferred_slots']} | {pool['open_slots']} of {pool['slots']} |"
        )
        print(
            f"\nTriggerer: {health.get('triggerer', {}).get('status')}; the HITL wait is a task state, not a trigger."
        )
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
