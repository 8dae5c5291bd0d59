"""A hand-written delivery DAG with the same operators as the factory's web-service DAG.

This is the baseline of ``parse_time.py``: what a team would write by hand for one
service (a function called once per service), with no catalog, no validation and
no plan: the same tasks and edges as the factory's DAGs of a web service, the same
operator classes (the stock ones where the factory subclasses them) and the same
trigger forms (the forms are a contract with Git events and Alertmanager, so a
hand-written DAG has them too). It is never loaded by Airflow itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator, HITLOperator
from airflow.providers.standard.operators.python import PythonOperator, ShortCircuitOperator
from airflow.sdk import DAG, TaskGroup
from kubernetes.client import models as k8s

from delivery.catalog.models import Check, VerifySpec
from delivery.integrations.argocd.operator import ArgoCDSyncOperator
from delivery.integrations.health import HealthCheckSensor
from delivery.integrations.sonarqube import SonarQualityGateOperator
from delivery.notify.failure import TaskFailureNotifier
from delivery.pipeline.params import pipeline_form, rollback_form
from delivery.verification.operator import VerifyReleaseOperator

SHA = "{{ ti.xcom_pull(task_ids='validate.checkout')['sha'] }}"
USERS = [{"id": "alice", "name": "alice"}]


def _noop(**_: Any) -> None:
    return None


def _default_args(service: str) -> dict[str, Any]:
    return {
        "owner": "web",
        "retries": 1,
        "retry_delay": timedelta(seconds=15),
        "on_failure_callback": [TaskFailureNotifier(service_name=service)],
    }


def _pod(name: str, service: str, image: str, command: str, **extra: Any) -> KubernetesPodOperator:
    mount = k8s.V1VolumeMount(name="workspace", mount_path="/workspace", sub_path_expr="$(DELIVERY_RUN_KEY)")
    return KubernetesPodOperator(
        task_id=name,
        namespace="visiobook-ci",
        name=f"{service}-{name}",
        image=image,
        cmds=["/bin/sh", "-ec"],
        arguments=[f"cd /workspace/src\n{command}"],
        env_vars={
            "DELIVERY_SHA": SHA,
            "DELIVERY_SERVICE": service,
            "DELIVERY_RUN_KEY": service + "/{{ run_id }}",
        },
        labels={"delivery.visiobook.io/service": service, "delivery.visiobook.io/commit": SHA},
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "1Gi"}
        ),
        volumes=[
            k8s.V1Volume(
                name="workspace",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name="delivery-workspaces"
                ),
            )
        ],
        volume_mounts=[mount],
        init_containers=[
            k8s.V1Container(
                name="checkout",
                image="alpine/git:2.47.2",
                command=["/bin/sh", "-c", "git fetch && git checkout"],
                env=[k8s.V1EnvVar(name="DELIVERY_SHA", value=SHA)],
                volume_mounts=[mount],
            )
        ],
        service_account_name="delivery-runner",
        deferrable=True,
        on_finish_action="delete_succeeded_pod",
        execution_timeout=timedelta(minutes=20),
        **extra,
    )


def build(service: str) -> DAG:
    with DAG(
        dag_id="hand_" + service.replace("-", "_"),
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["delivery"],
        params=pipeline_form(release_branch="main", migrations=False),
        default_args=_default_args(service),
    ) as dag:
        with TaskGroup("validate"):
            checkout = PythonOperator(task_id="checkout", python_callable=_noop)
            trust = HITLOperator(
                task_id="trust",
                subject="Run the CI of an untrusted pull request?",
                options=["Approve", "Reject"],
                defaults=["Reject"],
                assigned_users=USERS,
                response_timeout=timedelta(hours=24),
            )
            lint = _pod("lint", service, "node:20", "npx eslint .")
            helm = _pod("helm_validate", service, "alpine/helm", "helm lint helm")
            scan = _pod("quality_scan", service, "sonar", "sonar-scanner")
            gate = SonarQualityGateOperator(task_id="quality_gate", project_key=service)
            security = [
                _pod(n, service, "node:20", "npm audit") for n in ("dependency_audit", "sast", "dast")
            ]
            checkout >> trust >> [lint, helm]
            lint >> scan >> gate >> security
        with TaskGroup("build_and_test"):
            build_t = _pod("build", service, "node:20", "npm run build")
            unit = _pod("unit_tests", service, "node:20", "npm test")
            integ = _pod("integration_tests", service, "node:20", "npm run test:integration")
            cov = _pod("coverage", service, "node:20", "npx nyc report")
            release = ShortCircuitOperator(task_id="release_gate", python_callable=lambda: True)
            [*security, helm] >> build_t >> unit >> integ >> cov >> release
        with TaskGroup("image"):
            img = _pod("build", service, "kaniko", "executor")
            iscan = _pod("scan", service, "trivy", "trivy image")
            push = _pod("push", service, "crane", "crane tag")
            release >> img >> iscan >> push
        last = push
        for env in ("staging", "production"):
            with TaskGroup(f"deploy_{env}"):
                commit = PythonOperator(task_id="gitops_commit", python_callable=_noop)
                sync = ArgoCDSyncOperator(
                    task_id="sync", app_name=f"{service}-{env}", revision="{{ ti.xcom_pull(task_ids='x') }}"
                )
                health = HealthCheckSensor(
                    task_id="health_check", url=f"https://{service}.{env}.example/health", mode="reschedule"
                )
                last >> commit >> sync >> health
            if env == "staging":
                with TaskGroup("integration"):
                    tests = _pod("staging_tests", service, "node:20", "npm run test:e2e")
                with TaskGroup("approval"):
                    approve = ApprovalOperator(
                        task_id="approve_production",
                        subject="Deploy?",
                        assigned_users=USERS,
                        response_timeout=timedelta(hours=24),
                        defaults=["Reject"],
                    )
                health >> tests >> approve
                last = approve
            else:
                prod = [commit, sync, health]
        with TaskGroup("verify_production"):
            verify = VerifyReleaseOperator(
                task_id="verify",
                service=service,
                verify=VerifySpec(checks=[Check(name="error_rate", query="up", max=1)]),
            )
            review = HITLOperator(
                task_id="review",
                subject="inconclusive",
                options=["Keep release", "Roll back"],
                defaults=["Roll back"],
                assigned_users=USERS,
                response_timeout=timedelta(hours=24),
            )
            record = PythonOperator(task_id="record", python_callable=_noop)
            health >> verify >> review >> record
        with TaskGroup("rollback"):
            plan = PythonOperator(task_id="plan", python_callable=_noop, trigger_rule="one_failed")
            gate, aborted, revert = _rollback_gate("migration_gate", "rollback.")
            rsync = ArgoCDSyncOperator(task_id="sync", app_name=f"{service}-production", revision="x")
            rhealth = HealthCheckSensor(task_id="health_check", url="https://x.example/health")
            [*prod, verify, review] >> plan >> gate >> [aborted, revert]
            plan >> revert >> rsync >> rhealth
        with TaskGroup("notify"):
            summary = PythonOperator(task_id="summary", python_callable=_noop, trigger_rule="all_done")
            outcome = PythonOperator(task_id="outcome", python_callable=_noop, trigger_rule="all_done")
            [record, rhealth, aborted] >> summary >> outcome
    return dag


def _rollback_gate(name: str, prefix: str) -> tuple[HITLBranchOperator, PythonOperator, PythonOperator]:
    """Continue / Abort before anything is reverted: (gate, aborted, revert)."""
    gate = HITLBranchOperator(
        task_id=name,
        subject="restore the DB backup",
        options=["Continue", "Abort"],
        options_mapping={"Continue": f"{prefix}revert", "Abort": f"{prefix}aborted"},
        defaults=["Abort"],
        assigned_users=USERS,
        response_timeout=timedelta(hours=24),
    )
    aborted = PythonOperator(task_id="aborted", python_callable=_noop)
    revert = PythonOperator(
        task_id="revert", python_callable=_noop, trigger_rule="none_failed_min_one_success"
    )
    return gate, aborted, revert


def build_rollback(service: str) -> DAG:
    """The manual rollback DAG of one service, by hand (same operators as the factory's)."""
    with DAG(
        dag_id="hand_rollback_" + service.replace("-", "_"),
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        params=rollback_form(),
        default_args=_default_args(service),
    ) as dag:
        identify = PythonOperator(task_id="identify", python_callable=_noop)
        restore, aborted, revert = _rollback_gate("restore_database", "")
        sync = ArgoCDSyncOperator(task_id="sync", app_name=f"{service}-production", revision="x")
        health = HealthCheckSensor(task_id="health_check", url="https://x.example/health")
        record = PythonOperator(task_id="record", python_callable=_noop)
        notify = PythonOperator(task_id="notify", python_callable=_noop, trigger_rule="all_done")
        outcome = PythonOperator(task_id="outcome", python_callable=_noop, trigger_rule="all_done")
        identify >> restore >> [aborted, revert]
        identify >> revert
        revert >> sync >> health >> record
        [aborted, record] >> notify >> outcome
    return dag
