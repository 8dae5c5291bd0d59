"""Run-time steps of the local profile: image build, scan and push with the docker SDK, and the
docker deploy target that applies an environment's GitOps desired state."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from delivery.catalog import Service
from delivery.gitops import read_image
from delivery.paths import git_url
from delivery.profiles.local.workspaces import prepare_run_workspace, service_workspaces
from delivery.runtime import PipelineError, catalog, gitops_repo, service
from delivery.steps.release import checked_out, guard_sync

log = logging.getLogger(__name__)


def _local_workspace(svc: Service, context: dict[str, Any]) -> Path:
    """The run's checkout (the stages' workspace), prepared if no stage did it yet."""
    platform = catalog().platform
    return prepare_run_workspace(
        service_dir=service_workspaces(platform, svc.name),
        keep_failed=platform.local.keep_failed_workspaces,
        run_id=context["run_id"],
        repo_url=git_url(svc.repo.url),
        sha=checked_out(context)["sha"],
    )


def local_image_build(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Build the commit's image with the docker SDK; a commit already in the registry is not rebuilt."""
    from delivery.profiles.local.images import (  # noqa: PLC0415 the docker SDK: run time only
        REVISION_LABEL,
        RegistryClient,
        _build,
        _docker_client,
        _local_image,
    )

    svc = service(service_name)
    src = checked_out(context)
    reg = RegistryClient(catalog().platform.local.registry)
    reference = f"{reg.host}/{svc.image.repository}:{src['sha']}"
    digest = reg.manifest_digest(svc.image.repository, src["sha"])
    if digest is not None:
        log.info("%s is already in the registry (%s): nothing to build", reference, digest)
        return {"reference": reference, "built": False, "digest": digest}
    client = _docker_client()
    local = _local_image(client, reference)
    if local is not None and (local.labels or {}).get(REVISION_LABEL) == src["sha"]:
        log.info("%s was already built: nothing to build", reference)
        return {"reference": reference, "built": False, "image_id": str(local.id)}
    workspace = _local_workspace(svc, context)
    platform = catalog().platform
    build_args = {"BASE_IMAGE": platform.local.base_image, **svc.image.build_args}
    image_id = _build(
        client,
        context_dir=workspace / svc.image.context,
        dockerfile=svc.image.dockerfile,
        reference=reference,
        build_args=build_args,
        labels={
            REVISION_LABEL: src["sha"],
            "org.opencontainers.image.source": svc.repo.full_name or svc.repo.url,
            "org.opencontainers.image.ref.name": src.get("branch") or src.get("tag") or "",
        },
    )
    return {"reference": reference, "built": True, "image_id": image_id}


SECRET_NAME_RE = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE_KEY)", re.IGNORECASE)


def local_image_scan(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Image policy scan: provenance label, no secrets baked into the env, a sane size.

    The kubernetes profile scans for CVEs with Trivy; no CVE database is
    reachable on a single offline machine, so this profile checks what can be
    checked from the image itself.
    """
    from delivery.profiles.local.images import (  # noqa: PLC0415 the docker SDK: run time only
        REVISION_LABEL,
        _docker_client,
        _local_image,
    )

    svc = service(service_name)
    src = checked_out(context)
    reference = f"{catalog().platform.local.registry}/{svc.image.repository}:{src['sha']}"
    client = _docker_client()
    image = _local_image(client, reference)
    if image is None:
        image = client.images.pull(reference)
    config = image.attrs.get("Config") or {}
    problems = []
    if (image.labels or {}).get(REVISION_LABEL) != src["sha"]:
        problems.append(
            f"label {REVISION_LABEL} is {image.labels.get(REVISION_LABEL)!r}, expected {src['sha']}"
        )
    for item in config.get("Env") or []:
        name, _, value = item.partition("=")
        if SECRET_NAME_RE.search(name) and value:
            problems.append(f"environment variable {name} carries a value baked into the image")
    size_mb = image.attrs.get("Size", 0) / 2**20
    if size_mb > 2048:
        problems.append(f"image is {size_mb:.0f} MB, over the 2048 MB limit")
    if problems:
        raise PipelineError(f"image scan of {reference} failed: " + "; ".join(problems))
    log.info("image scan of %s passed (%.0f MB, revision %s)", reference, size_mb, src["sha"][:12])
    return {"reference": reference, "size_mb": round(size_mb, 1), "problems": []}


def local_image_push(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Push with tags (sha, branch, semver); an already-pushed commit is a no-op."""
    from delivery.profiles.local.images import build_and_push  # noqa: PLC0415 the docker SDK: run time only

    svc = service(service_name)
    src = checked_out(context)
    extra = [t for t in src["image_tags"] if t not in (src["sha"],)]
    ref = build_and_push(
        context_dir=_local_workspace(svc, context) / svc.image.context,
        dockerfile=svc.image.dockerfile,
        repository=svc.image.repository,
        registry=catalog().platform.local.registry,
        source_sha=src["sha"],
        branch=src.get("branch") or None,
        tags_extra=extra,
        build_args={"BASE_IMAGE": catalog().platform.local.base_image, **svc.image.build_args},
    )
    log.info("%s: built=%s pushed=%s tags=%s", ref.reference, ref.built, ref.pushed, ", ".join(ref.tags))
    return {"reference": ref.reference, "digest": ref.digest, "pushed": ref.pushed, "tags": list(ref.tags)}


def local_sync(
    *,
    service_name: str,
    environment: str | None,
    commit_task: str,
    plan_task: str | None = None,
    **context: Any,
) -> dict[str, Any]:
    """Apply the GitOps desired state of an environment to the local Docker engine.

    ``environment`` None: the rollback DAG's, read from its plan (``plan_task``).
    """
    from delivery.profiles.local.containers import (  # noqa: PLC0415 the docker SDK: run time only
        ReleaseHealthError,
        run_release,
    )

    revision = guard_sync(
        context,
        service_name=service_name,
        environment=environment,
        commit_task=commit_task,
        plan_task=plan_task,
    )
    if environment is None:
        environment = str(context["ti"].xcom_pull(task_ids=plan_task)["environment"])
    svc = service(service_name)
    env = getattr(svc.environments, environment)
    commit = {"revision": revision}
    repo = gitops_repo()
    values = repo.read_values(values_path=env.values_path, revision=commit["revision"])
    tag, repository = read_image(values, where=env.values_path)
    if not repository or not tag:
        raise PipelineError(
            f"{env.values_path} at {commit['revision'][:12]} has no image.repository/image.tag"
        )
    image = f"{repository}:{tag}"
    values_env = (yaml.safe_load(values) or {}).get("env") or {}
    log.info("Applying %s %s: %s (GitOps revision %s)", svc.name, environment, image, commit["revision"][:12])
    try:
        info = run_release(
            service=svc.name,
            environment=environment,
            image=image,
            port=env.local_port,
            env={str(k): str(v) for k, v in values_env.items()},
            health_path=env.health_path,
            timeout=env.health_timeout.total_seconds(),
        )
    except ReleaseHealthError as exc:
        raise PipelineError(f"{svc.name} {environment}: {exc}") from exc
    return {
        "image": image,
        "revision": commit["revision"],
        "url": f"http://127.0.0.1:{env.local_port}",
        "health": dict(info.health or {}),
    }
