"""DAG-file parse time: the catalog factory against hand-written DAGs, same operators, same run.

    PYTHONPATH=plugins .venv/bin/python benchmarks/parse_time.py [--sizes 10,100,500] [--repeat 3] \
        [--baseline-src DIR]

For each size N it writes a catalog of N web services (copies of visiobook-web)
and parses, in a fresh interpreter each time (as the dag-processor does):

* the factory's DAG file (``dags/delivery_pipelines.py``) over that catalog;
* a hand-written DAG file building the same 2N DAGs (delivery and rollback) with
  the same operator classes (``benchmarks/handwritten_dag.py``), no catalog, no
  validation.

The hand-written DAGs have the factory's tasks, edges, trigger rules and trigger
forms (the same ``Param`` s: Airflow deep-copies a DAG's form into every task, so
a smaller form would make the baseline cheaper for a reason that has nothing to
do with the factory).

Each parse is timed inside the child around ``DagBag`` filling (interpreter
start-up excluded), in wall time and in CPU time of the process (steadier on a
shared machine); after one warm-up parse of each side (bytecode caches written,
as a deployment has them), the median of ``--repeat`` interleaved runs is
reported with the ratios and milliseconds per DAG. ``--baseline-src`` also
parses the factory of another checkout of the project (an earlier commit,
``git archive <commit> | tar -x -C <dir>``), interleaved in the same run. The
child also checks that the parse opened no network socket and read no Variable
(both would be bugs at parse time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, socket, sys, time
    opened = []
    _orig = socket.socket.connect
    def _connect(self, addr):
        opened.append(str(addr))
        return _orig(self, addr)
    socket.socket.connect = _connect
    import airflow.models.variable as variable_module
    reads = []
    _get = variable_module.Variable.get
    def _variable_get(*a, **k):
        reads.append(a)
        return _get(*a, **k)
    variable_module.Variable.get = staticmethod(_variable_get)
    from airflow.dag_processing.dagbag import DagBag
    t0, c0 = time.perf_counter(), time.process_time()
    bag = DagBag(dag_folder=sys.argv[1])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"seconds": elapsed, "cpu": cpu, "dags": len(bag.dags), "tasks": sum(len(d.tasks) for d in bag.dags.values()),
                      "errors": {k: v[:300] for k, v in bag.import_errors.items()}, "sockets": opened, "variables": len(reads)}))
    """
)


def make_catalog(folder: Path, size: int) -> None:
    shutil.copy(ROOT / "include/catalog/platform.yaml", folder / "platform.yaml")
    (folder / "services").mkdir()
    template = yaml.safe_load((ROOT / "include/catalog/services/visiobook-web.yaml").read_text())
    for i in range(size):
        name = f"svc-{i:04d}"
        data = json.loads(json.dumps(template))
        data["name"] = name
        data.pop("schedule", None)  # one delivery DAG and one rollback DAG per service, on both sides
        data["sonar_project_key"] = name
        for env in ("staging", "production"):
            data["environments"][env]["argocd_app"] = f"{name}-{env}"
            data["environments"][env]["local_port"] = 20000 + 2 * i + (env == "production")
        (folder / "services" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def make_handwritten(folder: Path, size: int) -> Path:
    path = folder / "handwritten_dags.py"
    path.write_text(
        '"""Hand-written airflow DAG file (benchmark baseline)."""\n'
        f"import sys\nsys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "from handwritten_dag import build, build_rollback\n"
        f"for i in range({size}):\n"
        "    for dag in (build(f'svc-{i:04d}'), build_rollback(f'svc-{i:04d}')):\n"
        "        globals()[dag.dag_id] = dag\n"
    )
    return path


def parse(dag_file: Path, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(dag_file)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(sides: dict[str, tuple[Path, dict[str, str]]], repeat: int) -> dict[str, list[dict[str, Any]]]:
    """Parse every side once to warm up, then ``repeat`` times interleaved; the results per side."""
    for dag_file, env in sides.values():
        parse(dag_file, env)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(repeat):  # interleaved, so drift hits every side alike
        for name, (dag_file, env) in sides.items():
            result = parse(dag_file, env)
            if result["errors"] or result["sockets"] or result["variables"]:
                raise SystemExit(f"{name}: {json.dumps(result, indent=2)}")
            results[name].append(result)
    return results


def row(size: int, results: dict[str, list[dict[str, Any]]]) -> str:
    def med(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in results[name])

    dags = int(results["factory"][0]["dags"])
    cells = [
        str(size),
        str(results["factory"][0]["tasks"]),
        str(results["hand"][0]["tasks"]),
        f"{med('factory', 'seconds'):.2f}",
        f"{med('hand', 'seconds'):.2f}",
        f"{med('factory', 'seconds') / med('hand', 'seconds'):.2f}x",
        f"{med('factory', 'cpu'):.2f}",
        f"{med('hand', 'cpu'):.2f}",
        f"**{med('factory', 'cpu') / med('hand', 'cpu'):.2f}x**",
        f"{1000 * med('factory', 'cpu') / dags:.1f}",
        f"{1000 * med('hand', 'cpu') / dags:.1f}",
    ]
    if "baseline" in results:
        cells += [f"{med('baseline', 'cpu'):.2f}", f"{med('baseline', 'cpu') / med('hand', 'cpu'):.2f}x"]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="another checkout whose factory is measured too")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    home = Path(tempfile.mkdtemp(prefix="bench-airflow-"))
    base_env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PYTHONDONTWRITEBYTECODE": "",  # bytecode caches on, as in a deployment (an empty value turns it off)
        "DELIVERY_PROFILE": "kubernetes",
        "DELIVERY_CATALOG_STRICT": "1",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "0",  # 500 services take longer than the 30 s default
    }
    header = "| services | factory tasks | hand-written tasks | factory s | hand-written s | ratio (wall) "
    header += (
        "| factory CPU s | hand-written CPU s | ratio (CPU) | factory CPU ms/DAG | hand-written CPU ms/DAG |"
    )
    if args.baseline_src:
        header += " baseline factory CPU s | baseline ratio (CPU) |"
    rows = []
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench-{size}-"))
        (work / "catalog").mkdir()
        make_catalog(work / "catalog", size)
        env = {**base_env, "DELIVERY_CATALOG_DIR": str(work / "catalog")}
        sides = {
            "factory": (ROOT / "dags" / "delivery_pipelines.py", env),
            "hand": (make_handwritten(work, size), env),
        }
        if args.baseline_src:
            baseline_env = {**env, "PYTHONPATH": str(args.baseline_src.resolve() / "plugins")}
            sides["baseline"] = (args.baseline_src.resolve() / "dags" / "delivery_pipelines.py", baseline_env)
        rows.append(row(size, measure(sides, args.repeat)))
        shutil.rmtree(work, ignore_errors=True)
    print(header)
    print("|" + "---:|" * header.count(" |"))
    print("\n".join(rows))
    print("\nNo parse opened a socket or read a Variable.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
