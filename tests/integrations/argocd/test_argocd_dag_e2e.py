"""End to end: a DAG with two ArgoCDSyncOperator tasks runs through Airflow's own ``dag.test()``.

The tasks defer for real: Airflow serializes the trigger, runs it in line, and resumes the task with
``execute_complete``. Airflow runs in a subprocess with its own home and metadata database; the Argo CD
stand-in runs in the test process and is reached over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.integrations.argocd.support import NEW_REV, OLD_REV, TOKEN
from tests.standins.argocd_server import GITOPS_REPO, ArgoCDStandIn, rollout_degraded, rollout_ok

DAG_FILE = textwrap.dedent(
    f"""
    from airflow.sdk import DAG
    from delivery.integrations.argocd.operator import ArgoCDSyncOperator

    with DAG("argocd_e2e", schedule=None, params={{"rev": "{NEW_REV}"}}) as dag:
        for task_id, app in (("deploy_ok", "visiobook-api"), ("deploy_bad", "visiobook-worker")):
            ArgoCDSyncOperator(
                task_id=task_id,
                app_name=app,
                revision="{{{{ params.rev }}}}",
                argocd_conn_id="argocd_test",
                project="visiobook",
                gitops_repo_url="{GITOPS_REPO}",
                poll_interval=0.1,
                timeout=30,
            )
    """
)

DRIVER = textwrap.dedent(
    """
    import json, runpy, sys

    dag = runpy.run_path(sys.argv[1])["dag"]
    run = dag.test()
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id).all()
        states = {ti.task_id: str(ti.state) for ti in tis}
    print("RESULT " + json.dumps({"run": str(run.state), "tasks": states}))
    """
)

# Its tests run real DAGs (about 40 s here): started early, not last (tests/conftest.py).
pytestmark = pytest.mark.duration(40)


@pytest.mark.e2e
def test_dag_defers_to_the_trigger_and_resumes(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (dags / "argocd_e2e.py").write_text(DAG_FILE)
    (tmp_path / "driver.py").write_text(DRIVER)

    with ArgoCDStandIn(token=TOKEN) as server:
        for app, scenario in (("visiobook-api", rollout_ok()), ("visiobook-worker", rollout_degraded())):
            server.add_app(app, deployed_revision=OLD_REV, scenario=scenario, project="visiobook")
        server.push(NEW_REV, apps=["visiobook-api", "visiobook-worker"])  # the pipeline's GitOps commit
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            # an empty plugins folder: the package is imported from PYTHONPATH like any library
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
            "AIRFLOW_CONN_ARGOCD_TEST": server.connection_json(),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
        }
        airflow = Path(sys.executable).parent / "airflow"
        subprocess.run([str(airflow), "db", "migrate"], env=env, check=True, capture_output=True, timeout=180)
        proc = subprocess.run(
            [sys.executable, str(tmp_path / "driver.py"), str(dags / "argocd_e2e.py")],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        syncs = {r.path: r.body for r in server.requests_to("POST", "/sync")}

    output = proc.stdout + proc.stderr
    result_line = next((line for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    assert result_line, output[-4000:]
    result = json.loads(result_line.removeprefix("RESULT "))
    assert result["tasks"] == {"deploy_ok": "success", "deploy_bad": "failed"}, output[-4000:]
    assert result["run"] == "failed"
    # the templated revision was rendered before the sync
    assert syncs["/api/v1/applications/visiobook-api/sync"]["revision"] == NEW_REV
    assert syncs["/api/v1/applications/visiobook-worker/sync"]["revision"] == NEW_REV
    assert "ArgoCDDeploymentError" in output
    assert (
        'Deployment visiobook/visiobook-worker: Degraded - Deployment "visiobook-worker" exceeded' in output
    )
    assert TOKEN not in output
