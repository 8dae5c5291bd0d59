"""DAG-file parse time: the catalog factory against hand-written DAGs, same operators, same run.

    PYTHONPATH=plugins .venv/bin/python benchmarks/parse_time.py [--sizes 10,100,500] [--repeat 3]

For each size N it writes a catalog of N web services (copies of visiobook-web)
and parses, in a fresh interpreter each time (as the dag-processor does):

* the factory's DAG file (``dags/delivery_pipelines.py``) over that catalog;
* a hand-written DAG file building the same 2N DAGs (delivery and rollback) with
  the same operator classes (``benchmarks/handwritten_dag.py``), no catalog, no
  validation.

Each parse is timed inside the child around ``DagBag`` filling (interpreter
start-up excluded); the median of ``--repeat`` runs is reported with the ratio
and milliseconds per DAG. The child also checks that the parse opened no
network socket and read no Variable (both would be bugs at parse time).
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
    t0 = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    elapsed = time.perf_counter() - t0
    print(json.dumps({"seconds": elapsed, "dags": len(bag.dags), "tasks": sum(len(d.tasks) for d in bag.dags.values()),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    home = Path(tempfile.mkdtemp(prefix="bench-airflow-"))
    base_env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "DELIVERY_PROFILE": "kubernetes",
        "DELIVERY_CATALOG_STRICT": "1",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "0",  # 500 services take longer than the 30 s default
    }
    rows = []
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench-{size}-"))
        (work / "catalog").mkdir()
        make_catalog(work / "catalog", size)
        hand = make_handwritten(work, size)
        env = {**base_env, "DELIVERY_CATALOG_DIR": str(work / "catalog")}
        factory_runs, hand_runs = [], []
        for _ in range(args.repeat):  # interleaved, so drift hits both sides alike
            f = parse(ROOT / "dags" / "delivery_pipelines.py", env)
            h = parse(hand, env)
            for result in (f, h):
                if result["errors"] or result["sockets"] or result["variables"]:
                    print(json.dumps(result, indent=2), file=sys.stderr)
                    return 1
            factory_runs.append(float(f["seconds"]))
            hand_runs.append(float(h["seconds"]))
        fm, hm = statistics.median(factory_runs), statistics.median(hand_runs)
        rows.append((size, f["dags"], f["tasks"], h["tasks"], fm, hm))
        shutil.rmtree(work, ignore_errors=True)
    print(
        "| services | factory tasks | hand-written tasks | factory s | hand-written s | ratio | factory ms/DAG | hand-written ms/DAG |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, dags, ftasks, htasks, fm, hm in rows:
        print(
            f"| {size} | {ftasks} | {htasks} | {fm:.2f} | {hm:.2f} | {fm / hm:.2f}x | {1000 * fm / dags:.1f} | {1000 * hm / dags:.1f} |"
        )
    print("\nNo parse opened a socket or read a Variable.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
