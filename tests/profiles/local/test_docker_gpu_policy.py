"""The docker runner's GPU stages: they ask Docker for a GPU, and never pass silently without one.

No Docker engine is needed: without a GPU, the stage is skipped or failed before any container starts.
"""

from __future__ import annotations

import pytest

from delivery.catalog import Stage
from delivery.catalog.toolchains import resolve_stages
from delivery.profiles.local.docker import docker_stage_operator


def test_gpu_stage_requests_gpus_and_never_passes_silently_without_one(catalog_and_repo) -> None:  # type: ignore[no-untyped-def]
    from airflow.exceptions import AirflowSkipException

    cat, _sha, _workspace = catalog_and_repo
    svc = cat.service("visiobook-inference")
    stage = resolve_stages(svc, cat.platform)[Stage.GPU_INFERENCE]
    op = docker_stage_operator(service=svc, platform=cat.platform, stage=stage, task_id="gpu")
    assert op.device_requests is not None
    assert op.device_requests[0]["Count"] == 1 and op.device_requests[0]["Capabilities"] == [["gpu"]]
    assert op.shm_size is not None and op.shm_size > 0
    from delivery.profiles.local.shell import has_gpu

    if has_gpu()[0]:
        pytest.skip("this machine has a GPU: the no-GPU policy cannot be observed")
    op.gpu_policy = "skip"
    with pytest.raises(AirflowSkipException, match="skipped: no GPU"):
        op.execute(context={})  # type: ignore[arg-type]
    op.gpu_policy = "fail"
    with pytest.raises(RuntimeError, match="requires a GPU"):
        op.execute(context={})  # type: ignore[arg-type]
