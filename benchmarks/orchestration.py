"""Orchestration overhead and waiting cost, on a real Airflow (standalone, local profile).

    PYTHONPATH=plugins .venv/bin/python benchmarks/orchestration.py [--runs 3] [--parked 200] [--breakdown]

1. **Overhead.** The delivery pipeline of a service whose every stage is a
   no-op (``true``), run as a pull-request pipeline (``pipeline: ci``), against
   a bare DAG of **the same tasks, edges and trigger rules**, built from the
   pipeline's own plan, in the same Airflow: every task a
   ``BashOperator("true")`` (which, like a stage, runs on a worker), except the
   release gate, the pipeline's own ``ShortCircuitOperator`` answering "no" as
   it does for ``ci``, so that the same tasks run and the same tasks are
   skipped (image, deploys, rollback; the end-of-run tasks run on both sides).
   A third DAG, of ``EmptyOperator`` s (the scheduler completes them, no
   worker) and the same gate, shows the scheduling floor. Wall time from trigger to the end of the run, one warm-up
   run of each first, then ``--runs`` interleaved runs; medians.
   ``--breakdown`` adds, per task, the median time on a worker (start to end)
   and the DAG-file parse the task process did first (Airflow's
   ``Worker startup parse complete`` log line), pipeline against bare.
2. **Waiting cost.** ``--parked`` runs of a DAG parked at the pipeline's
   approval operator (``ApprovalOperator``, HITL). Reports the worker slots
   they hold (default pool: running/queued/deferred) and the triggerer's load.

The server runs with Python's bytecode cache on, as any deployment does
(a ``PYTHONDONTWRITEBYTECODE`` of the calling shell is not passed on): without
it every task process would compile the plugin's modules again.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from delivery.devenv.airflow_server import AirflowServer
from delivery.paths import PROJECT_ROOT

BARE_DAGS = '''
"""Bare airflow DAGs for the orchestration benchmark: the ci pipeline's tasks, edges and trigger rules."""
from contextlib import nullcontext
from datetime import datetime, timedelta
from airflow.sdk import DAG, TaskGroup
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.operators.python import ShortCircuitOperator

STEPS = json.loads(STEPS_JSON)  # [task_id, group, name, trigger_rule, [upstream]]

for kind in ("empty", "bash"):
    for copy in range(COPIES):
        dag_id = f"bare_{kind}" if COPIES == 1 else f"bare_{kind}_{copy:02d}"
        with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            groups, tasks = {}, {}
            for task_id, group, name, rule, upstream in STEPS:
                if group and group not in groups:
                    groups[group] = TaskGroup(group_id=group)
                with groups[group] if group else nullcontext():
                    if task_id == GATE:  # the ci pipeline stops here: the release gate's own short circuit
                        task = ShortCircuitOperator(task_id=name, python_callable=lambda: False, ignore_downstream_trigger_rules=False)
                    elif kind == "empty":
                        task = EmptyOperator(task_id=name, trigger_rule=rule)
                    else:
                        task = BashOperator(task_id=name, bash_command="true", trigger_rule=rule)
                tasks[task_id] = task
                for up in upstream:
                    tasks[up] >> task
        globals()[dag.dag_id] = dag

with DAG(dag_id="parked_approval", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1000) as parked:
    ApprovalOperator(task_id="approve", subject="parked", assigned_users=[{"id": "alice", "name": "alice"}],
                     response_timeout=timedelta(hours=1), defaults=["Reject"])
'''

NOOP_STAGES = (
    "lint",
    "dependency_audit",
    "sast",
    "helm_validate",
    "build",
    "unit_tests",
    "integration_tests",
    "coverage",
)
PARSE_LINE = re.compile(r"Worker startup parse complete.*?dag_file_parse_ms\W+(\d+)")


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


def write_catalog(root: Path, repo: Path, names: list[str]) -> Path:
    """A local catalog of no-op services (``names``): every stage is ``true``."""
    catalog = root / "catalog"
    (catalog / "services").mkdir(parents=True)
    platform = yaml.safe_load((PROJECT_ROOT / "include/catalog-local/platform.yaml").read_text())
    platform["platform"]["local"]["workspace_root"] = str(root / "workspaces")
    (catalog / "platform.yaml").write_text(yaml.safe_dump(platform))
    stages: dict[str, Any] = {s: {"command": "true"} for s in NOOP_STAGES}
    stages["integration_tests"]["services"] = []  # no throwaway PostgreSQL: a no-op stage, not a workload
    stages["dast"] = {"enabled": False}
    for name in names:
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
    return catalog


def _rule(rule: Any) -> str:
    return str(getattr(rule, "value", rule))


def setup(root: Path, *, services: int = 1, copies: int = 1) -> tuple[Path, Path, list[list[Any]]]:
    """The service repository, a catalog of ``services`` no-op services (:func:`service_names`) and a
    DAG folder: the factory's DAG file and ``copies`` of each bare DAG (``bare_bash``/``bare_empty``,
    or ``bare_bash_00``... when there are several). Returns the catalog, the folder and the steps."""
    from delivery.catalog import load_catalog
    from delivery.pipeline.factory import DagFactory
    from delivery.pipeline.plan import build_plan
    from delivery.profiles.local.profile import LocalProfile

    repo = root / "noop.git"
    work = root / "noop"
    work.mkdir()
    (work / "README").write_text("no-op service\n")
    git("init", "-q", "--initial-branch=main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "init", cwd=work)
    git("clone", "-q", "--bare", str(work), str(repo), cwd=root)
    names = service_names(services)
    catalog = write_catalog(root, repo, names)
    cat, _ = load_catalog(catalog)
    plan = build_plan(cat.service(names[0]))
    built = DagFactory(catalog=cat, profile=LocalProfile()).build(cat.service(names[0])).task_dict
    steps = [  # the plan's order and groups, the built DAG's trigger rules and edges
        [
            s.task_id,
            s.group,
            s.name,
            _rule(built[s.task_id].trigger_rule),
            sorted(built[s.task_id].upstream_task_ids),
        ]
        for s in plan.steps
    ]
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(PROJECT_ROOT / "dags" / "delivery_pipelines.py", dags)
    gate = next(s.task_id for s in plan.steps if s.name == "release_gate")
    (dags / "bare_dags.py").write_text(
        "import json\n"
        + f"GATE = {gate!r}\nSTEPS_JSON = {json.dumps(json.dumps(steps))}\nCOPIES = {copies}\n"
        + BARE_DAGS
    )
    return catalog, dags, steps


def timed_run(server: AirflowServer, dag_id: str, conf: dict[str, Any]) -> tuple[str, float]:
    start = time.monotonic()
    run_id = server.trigger(dag_id, conf=conf)
    state = server.wait_run(dag_id, run_id, timeout=600)
    elapsed = time.monotonic() - start
    check_run(server, dag_id, run_id, state)
    return run_id, elapsed


def check_run(server: AirflowServer, dag_id: str, run_id: str, state: str) -> None:
    """Stop the benchmark if a run did not do its work (a pipeline ends with notify.outcome's state)."""
    if dag_id.startswith("deliver_"):
        states = server.task_states(dag_id, run_id)
        failed = {t: s for t, s in states.items() if s in ("failed", "upstream_failed")}
        if failed:
            raise SystemExit(f"{dag_id} failed: {failed}")
    elif state != "success":
        raise SystemExit(f"{dag_id} ended {state}: {server.task_states(dag_id, run_id)}")


def task_times(server: AirflowServer, dag_id: str, run_id: str) -> dict[str, tuple[str, float, int | None]]:
    """task id -> (state, seconds on a worker, DAG-file parse ms from its log)."""
    data = server.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 200})
    out = {}
    for ti in data["task_instances"]:
        log = (
            server.home
            / "logs"
            / f"dag_id={dag_id}"
            / f"run_id={run_id}"
            / f"task_id={ti['task_id']}"
            / f"attempt={max(ti['try_number'], 1)}.log"
        )
        match = PARSE_LINE.search(log.read_text(errors="replace")) if log.is_file() else None
        out[ti["task_id"]] = (ti["state"], float(ti["duration"] or 0.0), int(match[1]) if match else None)
    return out


def _median(values: list[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def print_breakdown(
    runs: dict[str, list[dict[str, tuple[str, float, int | None]]]], order: list[str]
) -> None:
    print("\n### Per task (median over the timed runs)\n")
    print("| task | state | worker s pipeline | worker s bare | parse ms pipeline | parse ms bare |")
    print("|---|---|---:|---:|---:|---:|")
    totals = {"p": 0.0, "b": 0.0}
    for task_id in order:
        pipe = [r[task_id] for r in runs["deliver_noop"] if task_id in r]
        bare = [r[task_id] for r in runs["bare_bash"] if task_id in r]
        if not pipe or all(t[0] == "skipped" and t[1] == 0 for t in pipe + bare):
            continue
        values = [
            _median([t[1] for t in pipe]),
            _median([t[1] for t in bare]),
            _median([t[2] for t in pipe]),
            _median([t[2] for t in bare]),
        ]
        totals["p"] += values[0] or 0.0
        totals["b"] += values[1] or 0.0
        cells = " | ".join(
            "-" if v is None else f"{v:.2f}" if i < 2 else f"{v:.0f}" for i, v in enumerate(values)
        )
        print(f"| {task_id} | {pipe[-1][0]} | {cells} |")
    print(f"| **total on workers** | | {totals['p']:.2f} | {totals['b']:.2f} | | |")


def overhead(server: AirflowServer, args: argparse.Namespace, steps: list[list[Any]]) -> None:
    dags = {"deliver_noop": {"ref": "main", "pipeline": "ci"}, "bare_bash": {}, "bare_empty": {}}
    for dag_id, conf in dags.items():  # warm-up: git mirror, bytecode caches, pools
        timed_run(server, dag_id, conf)
    walls: dict[str, list[float]] = {k: [] for k in dags}
    tasks: dict[str, list[dict[str, tuple[str, float, int | None]]]] = {k: [] for k in dags}
    for _ in range(args.runs):  # interleaved, so machine noise hits all three alike
        for dag_id, conf in dags.items():
            run_id, elapsed = timed_run(server, dag_id, conf)
            walls[dag_id].append(elapsed)
            tasks[dag_id].append(task_times(server, dag_id, run_id))
    ran = {t for t, (state, _, _) in tasks["deliver_noop"][-1].items() if state == "success"}
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(
        f"## Orchestration overhead ({len(steps)} tasks, {len(ran)} of them run in a ci run, "
        f"median of {args.runs} runs, same Airflow)\n"
    )
    print("| DAG | wall s | runs (s) | ratio to BashOperator | ratio to EmptyOperator |")
    print("|---|---:|---|---:|---:|")
    for key, label in (
        ("deliver_noop", "delivery pipeline, no-op stages (ci)"),
        ("bare_bash", "bare BashOperator('true'), same tasks and edges"),
        ("bare_empty", "bare EmptyOperator, same tasks and edges"),
    ):
        runs = ", ".join(f"{v:.1f}" for v in walls[key])
        print(
            f"| {label} | {med[key]:.1f} | {runs} | {med[key] / med['bare_bash']:.2f}x | "
            f"{med[key] / med['bare_empty']:.2f}x |"
        )
    if args.breakdown:
        print_breakdown(tasks, [s[0] for s in steps])


def waiting_cost(server: AirflowServer, parked: int) -> None:
    run_ids = [server.trigger("parked_approval", conf={}) for _ in range(parked)]
    deadline = time.monotonic() + 900
    waiting = 0
    while time.monotonic() < deadline:
        data = server.api(
            "GET",
            "/dags/parked_approval/dagRuns/~/taskInstances",
            params={"limit": 1, "task_id": "approve", "state": "awaiting_input"},
        )
        waiting = int(data["total_entries"])
        if waiting >= len(run_ids):
            break
        time.sleep(5)
    time.sleep(5)  # let the executor report the parked tasks' processes as finished
    pool = server.api("GET", "/pools/default_pool")
    health = server.api("GET", "/monitor/health")
    print(f"\n## Waiting cost ({parked} runs parked at the approval)\n")
    print("| runs awaiting input | worker slots running | queued | deferred (triggerer) | open slots |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {waiting} | {pool['running_slots']} | {pool['queued_slots']} | {pool['deferred_slots']} | "
        f"{pool['open_slots']} of {pool['slots']} |"
    )
    print(
        f"\nTriggerer: {health.get('triggerer', {}).get('status')}; the HITL wait is a task state, not a trigger."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parked", type=int, default=200)
    parser.add_argument("--breakdown", action="store_true", help="per-task worker and parse times")
    parser.add_argument("--keep", action="store_true", help="keep the Airflow home (logs) for inspection")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    catalog, dags, steps = setup(root)
    server = AirflowServer(
        home=root / "airflow",
        port=free_port(),
        catalog_dir=catalog,
        dags_folder=dags,
        env={"PYTHONDONTWRITEBYTECODE": ""},  # an empty value turns it off
    )
    server.start()
    try:
        for dag in ("deliver_noop", "bare_empty", "bare_bash", "parked_approval"):
            server.wait_dag(dag)
            server.unpause(dag)
        overhead(server, args, steps)
        if args.parked:
            waiting_cost(server, args.parked)
    finally:
        if args.keep:
            server.stop()
            print(f"\nAirflow home kept in {server.home}")
        else:
            server.destroy()
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
