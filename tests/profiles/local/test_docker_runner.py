"""The docker runner: a stage runs in its image on the real Docker engine, over the run's checkout."""

from __future__ import annotations

import pytest

from delivery.catalog import Stage
from delivery.catalog.toolchains import resolve_stages
from delivery.profiles.local.docker import StageDockerOperator, docker_stage_operator
from tests.helpers import git
from tests.profiles.local.conftest import RUN_ID

pytestmark = pytest.mark.e2e  # the Docker engine


def test_stage_runs_in_its_image_over_the_checkout(local_platform, catalog_and_repo) -> None:  # type: ignore[no-untyped-def]
    cat, sha, workspace = catalog_and_repo
    svc = cat.service("visiobook-inference")
    stage = resolve_stages(svc, cat.platform)[Stage.UNIT_TESTS]
    op = docker_stage_operator(service=svc, platform=cat.platform, stage=stage, task_id="unit_tests")
    assert isinstance(op, StageDockerOperator)
    assert op.image == "visiobook/python-base:bookworm" and op.network_mode == "host"
    op.environment["DELIVERY_SHA"] = sha  # what Airflow renders from validate.checkout
    op.environment["DELIVERY_RUN_ID"] = RUN_ID  # and from the run id
    op.execute(context={})  # type: ignore[arg-type]
    assert op.host_workspace == str(workspace)
    # The command ran in the container, in the checkout of that commit, and wrote into it.
    assert (workspace / "built.txt").read_text().split() == ["visiobook-inference", sha]
    assert git("rev-parse", "HEAD", cwd=workspace) == sha
