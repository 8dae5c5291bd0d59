"""The harness ConfigMap is enough to run ``python -m delivery.gpu.harness`` without the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from delivery.catalog import Stage, load_catalog
from delivery.catalog.toolchains import resolve_stages
from delivery.gpu import configmap
from delivery.gpu.harness import load_result_schema
from delivery.profiles.kubernetes.pods import pod_operator_kwargs
from delivery.profiles.kubernetes.stage_pod import StagePodOperator
from tests.helpers import ROOT

KUBERNETES_VERSION = "1.33"
REPO = ROOT


def materialise(cm: dict[str, Any], root: Path) -> Path:
    """Write the ConfigMap's files under ``root`` as the kubelet does for the pod's volume (items -> paths)."""
    volume, mount = configmap.harness_volume()
    assert volume.config_map.name == cm["metadata"]["name"]
    for item in volume.config_map.items:
        target = root / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(cm["data"][item.key], encoding="utf-8")
    assert mount.mount_path == configmap.MOUNT_PATH
    return root


def bare_env(pythonpath: Path) -> dict[str, str]:
    """An environment where only the mounted files can provide ``delivery``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AIRFLOW", "DELIVERY"))}
    env["PYTHONPATH"] = str(pythonpath)
    return env


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    text = configmap.render_yaml(namespace="visiobook-ci")
    cm: dict[str, Any] = yaml.safe_load(text)
    return cm


@pytest.fixture(scope="module")
def mounted(rendered: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialise(rendered, tmp_path_factory.mktemp("opt-delivery"))


def test_configmap_is_valid_kubernetes(rendered: dict[str, Any]) -> None:
    kubernetes_validate.validate(rendered, KUBERNETES_VERSION, strict=True)
    assert rendered["metadata"]["name"] == "delivery-gpu-harness"
    assert rendered["metadata"]["namespace"] == "visiobook-ci"
    assert len(rendered["metadata"]["annotations"]["delivery.visiobook.io/harness-sha256"]) == 64
    # The sources are shipped byte for byte: every module of the harness package.
    modules = sorted((REPO / "plugins/delivery/gpu/harness").glob("*.py"))
    assert {"__init__.py", "__main__.py", "cli.py", "probe.py", "sampler.py", "benchmark.py"} <= {
        m.name for m in modules
    }
    for module in modules:
        assert rendered["data"][f"delivery.gpu.harness.{module.name}"] == module.read_text(encoding="utf-8")
    assert rendered["data"]["delivery.gpu.demo_model.py"].startswith('"""A tiny transformer')
    assert len(yaml.safe_dump(rendered).encode()) < 1024 * 1024  # the API server's object size limit


def test_cli_prints_the_configmap_with_the_catalogs_namespace() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    proc = subprocess.run(
        [sys.executable, "-m", "delivery.gpu.configmap"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    cm = yaml.safe_load(proc.stdout)
    catalog, _ = load_catalog()
    assert cm["metadata"]["namespace"] == catalog.platform.kubernetes.namespace
    assert cm == configmap.render_configmap(namespace=catalog.platform.kubernetes.namespace)
    assert "delivery.gpu.harness.cli.py: |" in proc.stdout  # sources as literal blocks, readable in kubectl
    kubernetes_validate.validate(cm, KUBERNETES_VERSION, strict=True)


def test_volume_layout_is_the_package_layout(mounted: Path) -> None:
    files = sorted(str(p.relative_to(mounted)) for p in mounted.rglob("*") if p.is_file())
    harness = sorted(
        f"delivery/gpu/harness/{m.name}" for m in (REPO / "plugins/delivery/gpu/harness").glob("*.py")
    )
    assert files == sorted(
        [
            "delivery/__init__.py",
            "delivery/gpu/__init__.py",
            "delivery/gpu/demo_model.py",
            *harness,
            "delivery/gpu/result.schema.json",
        ]
    )
    assert configmap.harness_env() == {"PYTHONPATH": "/opt/delivery"}


def test_harness_help_runs_from_the_mounted_files_only(mounted: Path, tmp_path: Path) -> None:
    env = bare_env(mounted)
    where = subprocess.run(
        [sys.executable, "-c", "import delivery.gpu.harness as h; print(h.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(where.stdout.strip()).resolve() == (mounted / "delivery/gpu/harness/__init__.py").resolve()
    proc = subprocess.run(
        [sys.executable, "-m", "delivery.gpu.harness", "--help"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--model" in proc.stdout and "--xcom" in proc.stdout


def test_full_cpu_run_with_the_demo_model_from_the_mounted_files(mounted: Path, tmp_path: Path) -> None:
    xcom = tmp_path / "airflow" / "xcom" / "return.json"
    env = bare_env(mounted)
    env["DELIVERY_XCOM_PATH"] = str(xcom)  # the sidecar's /airflow/xcom/return.json in the pod
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "delivery.gpu.harness",
            "--model",
            "delivery.gpu.demo_model:build",
            "--device",
            "cpu",
            "--batch-sizes",
            "1,4",
            "--warmup",
            "2",
            "--iterations",
            "10",
            "--service",
            "visiobook-inference",
            "--xcom",
        ],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(xcom.read_text(encoding="utf-8"))
    schema = load_result_schema()
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(result)
    assert result["status"] == "passed"
    assert result["device"] == "cpu"
    assert result["model"]["loaded"] is True
    assert [b["batch_size"] for b in result["benchmarks"]] == [1, 4]
    assert all(b["latency_ms"]["p95"] > 0 for b in result["benchmarks"])


def test_gpu_benchmark_pod_with_the_harness_volume_is_valid() -> None:
    """The wiring the runner adds for the gpu_benchmark stage gives a valid pod."""
    catalog, _ = load_catalog()
    service = catalog.service("visiobook-inference")
    stage = resolve_stages(service, catalog.platform)[Stage.GPU_BENCHMARK]
    kwargs = pod_operator_kwargs(service=service, platform=catalog.platform, stage=stage)
    volume, mount = configmap.harness_volume()
    kwargs["volumes"].append(volume)
    kwargs["volume_mounts"].append(mount)
    kwargs["env_vars"].update(configmap.harness_env())
    op = StagePodOperator(task_id="gpu_tests.benchmark", **kwargs)
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(None, dry_run=True))
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    main = pod["spec"]["containers"][0]
    assert {"mountPath": "/opt/delivery", "name": "delivery-gpu-harness", "readOnly": True} in main[
        "volumeMounts"
    ]
    assert {"name": "PYTHONPATH", "value": "/opt/delivery"} in main["env"]
    cm_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "delivery-gpu-harness")
    assert cm_volume["configMap"]["name"] == "delivery-gpu-harness"
    assert {"key": "delivery.__init__.py", "path": "delivery/__init__.py"} in cm_volume["configMap"]["items"]
