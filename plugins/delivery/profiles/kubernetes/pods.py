"""Kubernetes runner: every container stage is a ``KubernetesPodOperator``.

The pod of a stage:

* mounts the run's workspace, a ``subPathExpr`` of the platform's
  ReadWriteMany claim (one folder per run), so build outputs flow from stage to
  stage as in Tekton workspaces;
* gets the commit checked out by an init container, under ``flock``, so
  parallel stages never race on the clone, and verifies ``HEAD`` is the run's
  commit before the stage starts;
* runs helper containers (the test database) as native sidecars (init
  containers with ``restartPolicy: Always``) gated by their readiness command;
* takes requests and limits from the catalog; GPU stages add the
  ``nvidia.com/gpu`` limit, the GPU node selector (and product label),
  NVIDIA tolerations, the runtime class, and a memory-backed ``/dev/shm``;
* carries labels for service, stage and commit, and is deferrable so waiting
  for the pod holds no worker slot.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.secret import Secret
from kubernetes.client import ApiClient, Configuration
from kubernetes.client import models as k8s

from delivery.catalog.models import Platform, Service
from delivery.catalog.toolchains import ResolvedStage
from delivery.gpu.configmap import harness_env, harness_volume
from delivery.image_tags import image_tags
from delivery.pipeline.contract import COMMIT_SHA, RUN_KEY, stage_env
from delivery.profiles.kubernetes.stage_pod import StagePodOperator

# Every generated Kubernetes model copies the default client Configuration when built without
# one (and that copy resets loggers): at thousands of objects per DAG file that dominated parse
# time. One shared Configuration, only used for client-side validation, avoids it.
_K8S_CONFIG = Configuration()


def _m(model: type[Any], **kwargs: Any) -> Any:
    return model(local_vars_configuration=_K8S_CONFIG, **kwargs)


WORKSPACE_MOUNT = "/workspace"
WORKSPACE_DIR = f"{WORKSPACE_MOUNT}/src"
LABEL_PREFIX = "delivery.visiobook.io"

CHECKOUT_SCRIPT = r"""
set -eu
cd /workspace
exec 9>/workspace/.checkout.lock
flock 9
if [ ! -d src/.git ] || [ "$(git -C src rev-parse HEAD 2>/dev/null)" != "$DELIVERY_SHA" ]; then
  rm -rf src
  git init -q src
  git -C src remote add origin "$DELIVERY_REPO_URL"
  if [ -f /etc/git-credentials/.git-credentials ]; then
    git -C src config credential.helper "store --file /etc/git-credentials/.git-credentials"
  fi
  git -C src fetch -q --depth 1 origin "$DELIVERY_SHA"
  git -C src checkout -q --detach FETCH_HEAD
fi
test "$(git -C src rev-parse HEAD)" = "$DELIVERY_SHA"
echo "workspace at $DELIVERY_SHA"
"""


def pod_labels(service: Service, stage: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "visiobook-delivery",
        "app.kubernetes.io/name": service.name,
        f"{LABEL_PREFIX}/service": service.name,
        f"{LABEL_PREFIX}/stage": stage.replace("_", "-"),
        f"{LABEL_PREFIX}/commit": COMMIT_SHA,
    }


def _resources(stage: ResolvedStage, service: Service, platform: Platform) -> k8s.V1ResourceRequirements:
    r = stage.resources
    requests: dict[str, str] = {"cpu": r.cpu, "memory": r.memory}
    limits: dict[str, str] = {}
    if r.ephemeral_storage:
        requests["ephemeral-storage"] = r.ephemeral_storage
    if r.cpu_limit:
        limits["cpu"] = r.cpu_limit
    limits["memory"] = r.memory_limit or r.memory
    if stage.gpu and service.gpu is not None:
        limits[platform.kubernetes.gpu.resource] = str(service.gpu.count)
    return _m(k8s.V1ResourceRequirements, requests=requests, limits=limits)


def _sidecars(stage: ResolvedStage, workspace_mount: k8s.V1VolumeMount) -> list[k8s.V1Container]:
    sidecars = []
    for svc in stage.services:
        sidecars.append(
            _m(
                k8s.V1Container,
                name=svc.name,
                image=svc.image,
                command=svc.command,
                env=[_m(k8s.V1EnvVar, name=k, value=v) for k, v in sorted(svc.env.items())],
                ports=[_m(k8s.V1ContainerPort, container_port=svc.port)],
                restart_policy="Always",
                startup_probe=_m(
                    k8s.V1Probe,
                    _exec=_m(k8s.V1ExecAction, command=svc.ready_command),
                    period_seconds=2,
                    failure_threshold=90,
                ),
                resources=_m(
                    k8s.V1ResourceRequirements,
                    requests={"cpu": svc.resources.cpu, "memory": svc.resources.memory},
                    limits={"memory": svc.resources.memory_limit or svc.resources.memory},
                ),
                volume_mounts=[workspace_mount] if svc.mount_workspace else None,
            )
        )
    return sidecars


def gpu_scheduling(service: Service, platform: Platform) -> dict[str, Any]:
    """Node selector, tolerations and runtime class that put a pod on the right GPU nodes."""
    gpu_nodes = platform.kubernetes.gpu
    node_selector = dict(gpu_nodes.node_selector)
    if service.gpu is not None and service.gpu.product:
        node_selector[gpu_nodes.product_label] = service.gpu.product
    tolerations = [
        _m(
            k8s.V1Toleration,
            key=t.get("key"),
            operator=t.get("operator"),
            value=t.get("value"),
            effect=t.get("effect"),
        )
        for t in gpu_nodes.tolerations
    ]
    return {
        "node_selector": node_selector,
        "tolerations": tolerations,
        "runtime_class_name": gpu_nodes.runtime_class_name,
    }


def _credential_volumes(
    stage: ResolvedStage, platform: Platform
) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount], list[k8s.V1VolumeMount]]:
    """The secret volumes: ``(volumes, checkout mounts, stage mounts)``.

    The git credentials are for the checkout init container only; the registry
    credentials for the image build (kaniko's ``/kaniko/.docker``).
    """
    kube = platform.kubernetes
    volumes: list[k8s.V1Volume] = []
    checkout_mounts: list[k8s.V1VolumeMount] = []
    stage_mounts: list[k8s.V1VolumeMount] = []
    if kube.git_credentials_secret:
        volumes.append(
            _m(
                k8s.V1Volume,
                name="git-credentials",
                secret=_m(k8s.V1SecretVolumeSource, secret_name=kube.git_credentials_secret, optional=True),
            )
        )
        checkout_mounts.append(
            _m(k8s.V1VolumeMount, name="git-credentials", mount_path="/etc/git-credentials", read_only=True)
        )
    if stage.stage.value == "image_build" and kube.registry_credentials_secret:
        volumes.append(
            _m(
                k8s.V1Volume,
                name="registry-credentials",
                secret=_m(
                    k8s.V1SecretVolumeSource,
                    secret_name=kube.registry_credentials_secret,
                    items=[_m(k8s.V1KeyToPath, key=".dockerconfigjson", path="config.json")],
                ),
            )
        )
        stage_mounts.append(
            _m(k8s.V1VolumeMount, name="registry-credentials", mount_path="/kaniko/.docker", read_only=True)
        )
    return volumes, checkout_mounts, stage_mounts


def _gpu_volumes(
    stage: ResolvedStage, service: Service
) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount], dict[str, str]]:
    """What a GPU stage adds: ``(volumes, mounts, env)``, the harness and a memory-backed ``/dev/shm``."""
    volumes: list[k8s.V1Volume] = []
    mounts: list[k8s.V1VolumeMount] = []
    env: dict[str, str] = {}
    if stage.stage.value == "gpu_benchmark":
        # The service image does not contain the harness: it comes from the delivery-gpu-harness
        # ConfigMap (`python -m delivery.gpu.configmap | kubectl apply -f -`).
        harness_vol, harness_mount = harness_volume()
        volumes.append(harness_vol)
        mounts.append(harness_mount)
        env.update(harness_env())
    if stage.gpu:
        shm = service.gpu.shm_size if service.gpu else "1Gi"
        volumes.append(
            _m(
                k8s.V1Volume,
                name="dshm",
                empty_dir=_m(k8s.V1EmptyDirVolumeSource, medium="Memory", size_limit=shm),
            )
        )
        mounts.append(_m(k8s.V1VolumeMount, name="dshm", mount_path="/dev/shm"))
    return volumes, mounts, env


def _init_containers(
    *,
    service: Service,
    platform: Platform,
    stage: ResolvedStage,
    workspace_mount: k8s.V1VolumeMount,
    checkout_mounts: list[k8s.V1VolumeMount],
) -> list[k8s.V1Container]:
    """The checkout of the run's commit into the workspace, then the stage's sidecars."""
    checkout_env = [
        _m(k8s.V1EnvVar, name="DELIVERY_SHA", value=COMMIT_SHA),
        _m(k8s.V1EnvVar, name="DELIVERY_REPO_URL", value=service.repo.url),
        _m(k8s.V1EnvVar, name="DELIVERY_RUN_KEY", value=f"{service.name}/{RUN_KEY}"),
    ]
    checkout = _m(
        k8s.V1Container,
        name="checkout",
        image=platform.kubernetes.tools.git,
        command=["/bin/sh", "-c", CHECKOUT_SCRIPT],
        env=checkout_env,
        volume_mounts=[workspace_mount, *checkout_mounts],
        resources=_m(
            k8s.V1ResourceRequirements,
            requests={"cpu": "100m", "memory": "128Mi"},
            limits={"memory": "512Mi"},
        ),
    )
    return [checkout, *_sidecars(stage, workspace_mount)]


def pod_operator_kwargs(*, service: Service, platform: Platform, stage: ResolvedStage) -> dict[str, Any]:
    """Everything a ``KubernetesPodOperator`` needs for one stage (tested offline)."""
    kube = platform.kubernetes
    workspace = _m(
        k8s.V1Volume,
        name="workspace",
        persistent_volume_claim=_m(k8s.V1PersistentVolumeClaimVolumeSource, claim_name=kube.workspace_pvc),
    )
    workspace_mount = _m(
        k8s.V1VolumeMount, name="workspace", mount_path=WORKSPACE_MOUNT, sub_path_expr="$(DELIVERY_RUN_KEY)"
    )
    secret_volumes, checkout_mounts, secret_mounts = _credential_volumes(stage, platform)
    gpu_volumes, gpu_mounts, gpu_env = _gpu_volumes(stage, service)
    env = stage_env(
        service=service, platform=platform, stage=stage, workspace=WORKSPACE_DIR, registry=platform.registry
    )
    env["DELIVERY_RUN_KEY"] = f"{service.name}/{RUN_KEY}"
    env.update(gpu_env)
    init_containers = _init_containers(
        service=service,
        platform=platform,
        stage=stage,
        workspace_mount=workspace_mount,
        checkout_mounts=checkout_mounts,
    )
    kwargs: dict[str, Any] = {
        "namespace": kube.namespace,
        "name": f"{service.name}-{stage.name.replace('_', '-')}",
        "image": stage.image,
        "cmds": ["/bin/sh", "-ec"],
        "arguments": [f'cd "{WORKSPACE_DIR}"\n{stage.command}'],
        "env_vars": env,
        "secrets": _secrets(stage),
        "labels": pod_labels(service, stage.name),
        "annotations": {f"{LABEL_PREFIX}/run-id": "{{ run_id }}", f"{LABEL_PREFIX}/dag-id": service.dag_id},
        "container_resources": _resources(stage, service, platform),
        "volumes": [workspace, *secret_volumes, *gpu_volumes],
        "volume_mounts": [workspace_mount, *secret_mounts, *gpu_mounts],
        "init_containers": init_containers,
        "service_account_name": kube.service_account,
        "automount_service_account_token": False,
        "image_pull_secrets": [_m(k8s.V1LocalObjectReference, name=n) for n in kube.image_pull_secrets]
        or None,
        "in_cluster": kube.in_cluster,
        "kubernetes_conn_id": kube.kubernetes_conn_id,
        "startup_timeout_seconds": int(kube.startup_timeout.total_seconds()),
        "get_logs": True,
        "init_container_logs": True,
        "deferrable": True,
        "poll_interval": 5,
        "logging_interval": 30,
        "on_finish_action": "delete_succeeded_pod",
        "do_xcom_push": stage.stage.value == "gpu_benchmark",
        "container_security_context": _m(k8s.V1SecurityContext, allow_privilege_escalation=False),
    }
    if stage.gpu:
        kwargs.update(gpu_scheduling(service, platform))
    return kwargs


def _secrets(stage: ResolvedStage) -> list[Any]:
    secrets = []
    for var, ref in sorted(stage.secret_env.items()):
        name, _, key = ref.partition("/")
        secrets.append(Secret(deploy_type="env", deploy_target=var, secret=name, key=key or var))
    return secrets


def pod_operator(
    *, service: Service, platform: Platform, stage: ResolvedStage, **operator_kwargs: Any
) -> Any:
    """The ``KubernetesPodOperator`` of one stage."""
    return StagePodOperator(
        **pod_operator_kwargs(service=service, platform=platform, stage=stage),
        avoid_previous_nodes=stage.gpu,  # a retry reschedules on a different GPU node (seed flow 4)
        **operator_kwargs,
    )


class _OfflineTI:
    """Just enough of a task instance to render a stage's templates without Airflow running."""

    def __init__(self, source: dict[str, Any]) -> None:
        self._source = source

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self._source


def render_pod(
    *,
    service: Service,
    platform: Platform,
    stage: ResolvedStage,
    sha: str = "0" * 40,
    ref: str = "main",
    run_id: str = "manual__render",
) -> dict[str, Any]:
    """The pod of a stage as the API server would receive it, built offline (no cluster)."""
    branch = ref.removeprefix("refs/heads/")
    source = {
        "sha": sha,
        "ref": ref,
        "branch": branch,
        "tag": "",
        "image_tags": image_tags(sha=sha, branch=branch, tag=None),
    }
    op = pod_operator(service=service, platform=platform, stage=stage, task_id=stage.name)
    context: dict[str, Any] = {"ti": _OfflineTI(source), "run_id": run_id, "params": {}}
    op.render_template_fields(context)
    pod = op.build_pod_request_obj(context=None, dry_run=True)
    data: dict[str, Any] = ApiClient().sanitize_for_serialization(pod)
    return data
