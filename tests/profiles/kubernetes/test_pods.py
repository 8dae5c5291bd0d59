"""Every pod of every stage of every service renders offline and passes the Kubernetes schema (strict)."""

from __future__ import annotations

from types import SimpleNamespace

import kubernetes_validate
import pytest

from delivery.catalog import GPU_STAGES, Stage, load_catalog
from delivery.catalog.toolchains import resolve_stages
from delivery.profiles.kubernetes.pods import render_pod

KUBERNETES_VERSION = "1.33"
CATALOG, _ = load_catalog()
CASES = [
    pytest.param(service, stage, id=f"{name}-{stage.name}")
    for name, service in sorted(CATALOG.services.items())
    for stage in resolve_stages(service, CATALOG.platform).values()
]
SHA = "3f2c1e0d9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e"


@pytest.mark.parametrize(("service", "stage"), CASES)
def test_pod_is_valid_kubernetes(service, stage) -> None:  # type: ignore[no-untyped-def]
    pod = render_pod(service=service, platform=CATALOG.platform, stage=stage, sha=SHA, ref="refs/heads/main")
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)

    spec, meta = pod["spec"], pod["metadata"]
    assert meta["namespace"] == CATALOG.platform.kubernetes.namespace
    assert meta["labels"]["delivery.visiobook.io/service"] == service.name
    assert meta["labels"]["delivery.visiobook.io/stage"] == stage.name.replace("_", "-")
    assert meta["labels"]["delivery.visiobook.io/commit"] == SHA
    main = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["DELIVERY_SHA"] == SHA and env["DELIVERY_SERVICE"] == service.name
    # The commit is checked out in the pod, by the checkout init container, at the run's sha.
    checkout = spec["initContainers"][0]
    assert checkout["name"] == "checkout"
    assert {"name": "DELIVERY_SHA", "value": SHA} in checkout["env"]
    assert "git -C src fetch -q --depth 1 origin" in checkout["command"][-1]
    # Resources come from the catalog.
    assert main["resources"]["requests"] == {"cpu": stage.resources.cpu, "memory": stage.resources.memory}

    limits = main["resources"].get("limits", {})
    tolerations = spec.get("tolerations") or []
    if stage.stage in GPU_STAGES:
        assert limits["nvidia.com/gpu"] == str(service.gpu.count)
        assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert spec["nodeSelector"]["nvidia.com/gpu.product"] == service.gpu.product
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": service.gpu.shm_size}
        assert {"mountPath": "/dev/shm", "name": "dshm"} in main["volumeMounts"]
        assert spec["runtimeClassName"] == "nvidia"
    else:
        assert "nvidia.com/gpu" not in limits
        assert not tolerations
        assert "runtimeClassName" not in spec


def test_integration_tests_get_a_test_database_sidecar() -> None:
    api = CATALOG.service("visiobook-api")
    stage = resolve_stages(api, CATALOG.platform)[Stage.INTEGRATION_TESTS]
    pod = render_pod(service=api, platform=CATALOG.platform, stage=stage, sha=SHA)
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "test-db")
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: it outlives the init phase
    assert sidecar["startupProbe"]["exec"]["command"][0] == "pg_isready"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL"].startswith("postgresql://")


@pytest.mark.parametrize("run_id", [".", "..", "a/b", "manual__2026-01-01T00:00:00+00:00"])
def test_every_run_gets_its_own_workspace_folder_on_the_claim(run_id: str) -> None:
    service = CATALOG.service("visiobook-web")
    stage = resolve_stages(service, CATALOG.platform)[Stage.LINT]
    pod = render_pod(service=service, platform=CATALOG.platform, stage=stage, sha=SHA, run_id=run_id)
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    key = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}["DELIVERY_RUN_KEY"]
    service_dir, _, folder = key.partition("/")
    assert service_dir == "visiobook-web"
    assert folder not in (".", "..", "") and "/" not in folder and not folder.startswith(".")
    other = render_pod(service=service, platform=CATALOG.platform, stage=stage, sha=SHA, run_id=run_id + "x")
    assert {e["name"]: e.get("value") for e in other["spec"]["containers"][0]["env"]}[
        "DELIVERY_RUN_KEY"
    ] != key


def _quality_scan_pod(trusted: bool) -> dict:  # type: ignore[type-arg]
    from kubernetes.client import ApiClient

    from delivery.profiles.kubernetes.pods import pod_operator

    service = CATALOG.service("visiobook-web")
    stage = resolve_stages(service, CATALOG.platform)[Stage.QUALITY_SCAN]
    op = pod_operator(service=service, platform=CATALOG.platform, stage=stage, task_id="quality_scan")
    ti = SimpleNamespace(dag_id=service.dag_id, task_id="validate.quality_scan", map_index=-1, try_number=1)
    context = {"params": {"trusted": trusted}, "run_id": "manual__x", "ti": ti, "dag": SimpleNamespace()}
    pod = op.build_pod_request_obj(context=context, dry_run=True)  # type: ignore[arg-type]
    return dict(ApiClient().sanitize_for_serialization(pod))


def test_an_untrusted_pull_requests_stage_gets_no_secret() -> None:
    def secret_refs(pod: dict) -> set[str]:  # type: ignore[type-arg]
        env = pod["spec"]["containers"][0].get("env") or []
        return {e["name"] for e in env if (e.get("valueFrom") or {}).get("secretKeyRef")}

    assert secret_refs(_quality_scan_pod(trusted=True)) == {"SONAR_TOKEN", "SONAR_HOST_URL"}
    assert secret_refs(_quality_scan_pod(trusted=False)) == set()
