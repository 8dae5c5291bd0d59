"""Run-time callables of the pipeline's Python tasks.

Imported only when a task runs, never at DAG parse time. Each callable takes
the service's name, reloads the (file-based) catalog, and does one step.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from delivery.catalog import Catalog, Service, load_catalog
from delivery.paths import git_url, project_path

if TYPE_CHECKING:
    from delivery.gitops import GitOpsRepo

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
SEMVER_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?$")


class PipelineError(RuntimeError):
    """A pipeline step failed for a reason the message explains."""


@functools.lru_cache(maxsize=4)
def _catalog_cached(key: tuple[str, float]) -> Catalog:
    catalog, _ = load_catalog(key[0], strict=False)
    return catalog


def catalog() -> Catalog:
    from delivery.catalog.loader import catalog_dir

    root = catalog_dir()
    mtime = max((p.stat().st_mtime for p in root.rglob("*.y*ml")), default=0.0)
    return _catalog_cached((str(root), mtime))


def service(name: str) -> Service:
    return catalog().service(name)


# -- source ----------------------------------------------------------------------


def docker_tag(value: str) -> str:
    """A branch name as a valid image tag: [A-Za-z0-9_.-], at most 128 chars, no leading '.' or '-'."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", value).lstrip(".-")[:128]
    return tag or "unnamed"


def image_tags(*, sha: str, branch: str | None, tag: str | None) -> list[str]:
    """Tags of a release image: the commit sha, the branch, and the semver of a release tag."""
    tags = [sha]
    if branch:
        tags.append(docker_tag(branch))
    if tag:
        match = SEMVER_RE.match(tag)
        if match:
            major, minor, _patch = match.groups()
            tags += [tag.removeprefix("v"), f"{major}.{minor}"]
        else:
            tags.append(docker_tag(tag))
    return list(dict.fromkeys(tags))


def ls_remote(url: str, patterns: list[str]) -> dict[str, str]:
    """``git ls-remote`` -> {ref: sha}. Works against any git server."""
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
    }
    proc = subprocess.run(
        ["git", "ls-remote", "--", url, *patterns],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise PipelineError(f"git ls-remote {url} failed: {proc.stderr.strip()[:500]}")
    refs = {}
    for line in proc.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref] = sha
    return refs


def head_at(*, url: str, branch: str, moment: datetime) -> str:
    """The commit that was the head of ``branch`` at ``moment`` (committer date, first parents)."""
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
    }
    mirror = Path(tempfile.gettempdir()) / "delivery-mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if (mirror / "HEAD").exists():
        cmd = [
            "git",
            "-C",
            str(mirror),
            "fetch",
            "--quiet",
            "--prune",
            "origin",
            "+refs/heads/*:refs/heads/*",
        ]
    else:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["git", "clone", "--quiet", "--mirror", url, str(mirror)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    if proc.returncode != 0:
        raise PipelineError(f"cannot fetch {url}: {proc.stderr.strip()[:500]}")
    proc = subprocess.run(
        [
            "git",
            "-C",
            str(mirror),
            "rev-list",
            "-1",
            "--first-parent",
            f"--before={moment.isoformat()}",
            f"refs/heads/{branch}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    sha = proc.stdout.strip()
    if proc.returncode != 0 or not sha:
        raise PipelineError(f"branch {branch!r} of {url} had no commit before {moment.isoformat()}")
    return sha


def resolve_source(*, service_name: str, params: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Resolve the run's git ref (or sha) to one commit, so that every stage builds the same code.

    Scheduled and backfill runs (the nightly variant) build the commit that was the
    head of the branch at the end of their data interval.
    """
    svc = service(service_name)
    ref = (params.get("ref") or "").strip() or svc.repo.release_branch
    sha = (params.get("sha") or "").strip().lower()
    dag_run = context.get("dag_run")
    run_type = str(
        getattr(getattr(dag_run, "run_type", None), "value", getattr(dag_run, "run_type", "")) or ""
    )
    interval_end = context.get("data_interval_end")
    if not sha and run_type in ("scheduled", "backfill") and interval_end is not None:
        branch_name = ref.removeprefix("refs/heads/")
        sha = head_at(url=git_url(svc.repo.url), branch=branch_name, moment=interval_end)
        ref = f"refs/heads/{branch_name}"
        log.info(
            "%s run for the interval ending %s: head of %s was %s", run_type, interval_end, branch_name, sha
        )
    branch: str | None = None
    tag: str | None = None
    if ref.startswith("refs/heads/"):
        branch = ref.removeprefix("refs/heads/")
    elif ref.startswith("refs/tags/"):
        tag = ref.removeprefix("refs/tags/")
    elif SHA_RE.match(ref.lower()):
        sha = sha or ref.lower()
    if not sha:
        candidates = (
            [ref]
            if ref.startswith("refs/")
            else [f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"]
        )
        try:
            refs = ls_remote(git_url(svc.repo.url), candidates)
        except PipelineError as exc:
            raise PipelineError(f"service {service_name!r}: cannot resolve ref {ref!r}: {exc}") from exc
        for cand in candidates:
            if cand in refs:
                sha = refs[cand]
                name = cand.removesuffix("^{}")
                if name.startswith("refs/heads/"):
                    branch = name.removeprefix("refs/heads/")
                elif name.startswith("refs/tags/"):
                    tag = name.removeprefix("refs/tags/")
                break
        if not sha:
            raise PipelineError(
                f"service {service_name!r}: ref {ref!r} was not found in {svc.repo.url}; "
                "give an existing branch, tag or a full 40-character sha"
            )
    elif not SHA_RE.match(sha):
        raise PipelineError(f"service {service_name!r}: sha {sha!r} is not a full 40-character commit sha")
    if branch is None and tag is None and not SHA_RE.match(ref.lower()):
        branch = ref
    result = {
        "repository": params.get("repository") or svc.repo.full_name or svc.repo.url,
        "ref": ref,
        "sha": sha,
        "branch": branch or "",
        "tag": tag or "",
        "image_tags": image_tags(sha=sha, branch=branch, tag=tag),
        "event": params.get("event") or "manual",
    }
    log.info("Building %s at %s (ref %s)", service_name, sha, ref)
    return result


def release_gate(*, params: dict[str, Any], **_: Any) -> bool:
    """Pull-request pipelines ('ci') stop after build and test."""
    pipeline = params.get("pipeline") or "full"
    if pipeline not in ("full", "ci"):
        raise PipelineError(f"param 'pipeline' must be 'full' or 'ci', got {pipeline!r}")
    if pipeline == "ci":
        log.info("pipeline=ci: validate, build and test only; no image, no deploy, no approval")
    return pipeline == "full"


# -- GitOps ------------------------------------------------------------------------


def gitops_repo() -> GitOpsRepo:
    from delivery.gitops import GitOpsRepo

    platform = catalog().platform
    url = git_url(platform.gitops.repo_url)
    username = password = None
    try:
        from airflow.sdk.bases.hook import BaseHook

        conn = BaseHook.get_connection(platform.connections.gitops)
        username, password = conn.login, conn.password
    except Exception:  # no connection configured: anonymous or the worker's git credentials
        log.debug("no GitOps connection %r", platform.connections.gitops)
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    workdir = Path(tempfile.gettempdir()) / "delivery-gitops" / key
    return GitOpsRepo(
        url=url, workdir=workdir, branch=platform.gitops.branch, username=username, password=password
    )


def _source(context: dict[str, Any]) -> dict[str, Any]:
    src = context["ti"].xcom_pull(task_ids="validate.checkout")
    if not src:
        raise PipelineError("no resolved commit from validate.checkout; rerun that task first")
    return dict(src)


def _approver(context: dict[str, Any]) -> str | None:
    result = context["ti"].xcom_pull(task_ids="approval.approve_production")
    if isinstance(result, dict):
        user = result.get("responded_by_user") or result.get("responded_by") or {}
        if isinstance(user, dict):
            return user.get("name") or user.get("id")
    return None


def gitops_commit(*, service_name: str, environment: str, **context: Any) -> dict[str, Any]:
    """Set the run's image tag in the environment's Helm values and push (idempotent)."""
    from delivery.gitops import ReleaseMetadata

    svc = service(service_name)
    env = getattr(svc.environments, environment)
    src = _source(context)
    result = gitops_repo().deploy(
        environment=environment,
        service=svc.name,
        values_path=env.values_path,
        image_tag=src["sha"],
        image_repository=f"{registry()}/{svc.image.repository}",
        metadata=ReleaseMetadata(
            source_sha=src["sha"],
            run_id=context["run_id"],
            approver=_approver(context) if environment == "production" else None,
            migration=svc.migrations or bool(context["params"].get("migration")),
        ),
    )
    log.info(
        "%s %s: %s at GitOps revision %s",
        svc.name,
        environment,
        "committed" if result.changed else "already deployed",
        result.revision,
    )
    return result.as_dict()


def record_verification(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Mark the production release as verified (stable) in the GitOps history."""
    svc = service(service_name)
    deploy = context["ti"].xcom_pull(task_ids="deploy_production.gitops_commit")
    verdict = context["ti"].xcom_pull(task_ids="verify_production.verify") or {}
    repo = gitops_repo()
    release = repo.get_release(
        environment="production",
        service=svc.name,
        values_path=svc.environments.production.values_path,
        revision=deploy["revision"],
    )
    summary = verdict.get("message") if isinstance(verdict, dict) else None
    repo.mark_verified(release=release, ok=True, summary=summary or "verification passed")
    return {"revision": release.revision, "image_tag": release.image_tag, "stable": True}


def rollback_plan(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Seed flow 6: mark the failed release and identify the previous stable version."""
    from airflow.sdk.exceptions import AirflowSkipException

    svc = service(service_name)
    if _states(context).get("deploy_production.gitops_commit") != "success":
        # one_failed also fires on upstream_failed: an earlier stage failed and production is untouched.
        raise AirflowSkipException("production was not changed by this run: nothing to roll back")
    values_path = svc.environments.production.values_path
    repo = gitops_repo()
    deploy = context["ti"].xcom_pull(task_ids="deploy_production.gitops_commit")
    failed = None
    if deploy and deploy.get("changed"):
        failed = repo.get_release(
            environment="production", service=svc.name, values_path=values_path, revision=deploy["revision"]
        )
        repo.mark_verified(release=failed, ok=False, summary=f"failed in run {context['run_id']}")
    current = repo.current(environment="production", service=svc.name, values_path=values_path)
    reference = failed or current
    stable = repo.previous_stable(
        environment="production",
        service=svc.name,
        values_path=values_path,
        before=reference.revision if reference else None,
    )
    if stable is None:
        raise PipelineError(
            f"{svc.name}: no earlier production release passed verification; nothing safe to roll back to. "
            "Restore by hand and record it with the manual rollback DAG."
        )
    migration = bool(failed.migration if failed else (current.migration if current else False))
    log.info("Rolling %s back to %s (image %s)", svc.name, stable.short_revision, stable.image_tag)
    return {
        "target": stable.as_dict(),
        "failed": failed.as_dict() if failed else None,
        "migration": migration,
    }


def rollback_revert(*, service_name: str, reason: str | None = None, **context: Any) -> dict[str, Any]:
    """Write the previous stable release back to the GitOps repo."""
    from delivery.gitops import ReleaseMetadata

    svc = service(service_name)
    plan = context["ti"].xcom_pull(task_ids="rollback.plan")
    target = plan["target"]
    result = gitops_repo().rollback(
        environment="production",
        service=svc.name,
        values_path=svc.environments.production.values_path,
        to=target["image_tag"],
        metadata=ReleaseMetadata(
            source_sha=target.get("source_sha") or target["image_tag"],
            run_id=context["run_id"],
            reason=reason
            or f"automatic rollback after a failed production release in run {context['run_id']}",
        ),
    )
    return result.as_dict()


# -- end of run --------------------------------------------------------------------

FAILED_STATES = {"failed", "upstream_failed"}


def _states(context: dict[str, Any]) -> dict[str, str]:
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[context["run_id"]])
    return {k: str(v) for k, v in states.get(context["run_id"], {}).items()}


def describe_outcome(states: dict[str, str]) -> tuple[str, str]:
    """(outcome, sentence) of a run from its task states."""
    failed = sorted(t for t, s in states.items() if s == "failed")
    rolled_back = states.get("rollback.health_check") == "success"
    if states.get("rollback.plan") in ("success", "failed") or rolled_back:
        if rolled_back:
            return (
                "rolled_back",
                f"production failed ({', '.join(failed)}); rolled back to the previous stable version",
            )
        return "rollback_failed", f"production failed and the rollback failed too ({', '.join(failed)})"
    if failed:
        return "failed", f"failed at {', '.join(failed)}"
    if states.get("verify_production.verify") == "success":
        return "deployed", "deployed to production and verified"
    if states.get("build_and_test.release_gate") == "success" and states.get("image.build") == "skipped":
        return "ci_passed", "validate, build and test passed (no deploy for this event)"
    if (
        states.get("approval.approve_production") == "success"
        and states.get("deploy_production.gitops_commit") == "skipped"
    ):
        return "rejected", "production deploy was rejected or the approval timed out; production is untouched"
    return "incomplete", "the run ended before production"


def notify_summary(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Final Slack message: success, rollback or failure. Never raises on delivery problems."""
    from delivery.notifications import send_slack

    svc = service(service_name)
    states = _states(context)
    outcome, sentence = describe_outcome(states)
    src = context["ti"].xcom_pull(task_ids="validate.checkout") or {}
    icon = {
        "deployed": ":white_check_mark:",
        "rolled_back": ":rewind:",
        "ci_passed": ":white_check_mark:",
    }.get(outcome, ":warning:")
    text = f"{icon} *{svc.name}* {src.get('sha', '')[:12]} run `{context['run_id']}`: {sentence}."
    delivered = send_slack(slack_conn_id=catalog().platform.connections.slack, text=text, context=context)
    events = _severity_events(svc, states, outcome, context)
    _record_metrics(svc, states, outcome, context)
    return {"outcome": outcome, "message": sentence, "notified": delivered, "events": events}


def _severity_events(
    svc: Service, states: dict[str, str], outcome: str, context: dict[str, Any]
) -> list[str]:
    """End-of-run events of seed flow 5 (failures are sent by the failing tasks' callbacks)."""
    from delivery.alerts import PipelineEvent, notify_event

    events: list[PipelineEvent] = []
    if outcome == "deployed":
        events.append(PipelineEvent.DEPLOY_SUCCEEDED)
    elif outcome == "rolled_back":
        events.append(PipelineEvent.ROLLBACK_SUCCEEDED)  # also resolves the PagerDuty incident
    elif outcome == "rejected" and _approval_timed_out(context):
        events.append(PipelineEvent.APPROVAL_TIMED_OUT)
    verdict = context["ti"].xcom_pull(task_ids="verify_production.verify")
    if isinstance(verdict, dict) and verdict.get("decision") == "hold":
        events.append(PipelineEvent.VERIFICATION_INCONCLUSIVE)
    for event in events:
        notify_event(event, service_name=svc.name, context=context, details={"outcome": outcome})
    return [e.value for e in events]


def _approval_timed_out(context: dict[str, Any]) -> bool:
    result = context["ti"].xcom_pull(task_ids="approval.approve_production")
    if not isinstance(result, dict):
        return False
    return not (result.get("responded_by") or result.get("responded_by_user"))


def _record_metrics(svc: Service, states: dict[str, str], outcome: str, context: dict[str, Any]) -> None:
    """Delivery metrics (count, result, duration, lead time); never raises."""
    from delivery import metrics

    dag_run = context.get("dag_run")
    started = getattr(dag_run, "start_date", None)
    now = datetime.now(tz=started.tzinfo) if started else None
    duration = (now - started).total_seconds() if started and now else None
    metrics.record_pipeline_run(
        service=svc.name,
        result="success" if outcome in ("deployed", "ci_passed") else "failed",
        duration_s=duration,
    )
    for env in ("staging", "production"):
        health = states.get(f"deploy_{env}.health_check")
        if health in ("success", "failed") or states.get(f"deploy_{env}.sync") == "failed":
            metrics.record_deploy(
                service=svc.name, environment=env, result="success" if health == "success" else "failed"
            )
    if states.get("rollback.plan") == "success":
        result = "success" if states.get("rollback.health_check") == "success" else "failed"
        metrics.record_rollback(service=svc.name, environment="production", result=result)
    approval = states.get("approval.approve_production")
    if approval == "success":
        if states.get("deploy_production.gitops_commit") not in (None, "skipped"):
            metrics.record_approval(service=svc.name, result="approved")
        else:
            metrics.record_approval(
                service=svc.name, result="timeout" if _approval_timed_out(context) else "rejected"
            )
    if outcome == "deployed" and started and now:
        metrics.record_lead_time(service=svc.name, commit_time=started, deployed_at=now)


def outcome(**context: Any) -> str:
    """Give the run its true state: failed when the release failed, even after a good rollback."""
    states = _states(context)
    result, sentence = describe_outcome(states)
    try:
        context["dag_run"].note = sentence  # best effort: visible in the UI's run notes
    except Exception:
        log.debug("run note not writable here", exc_info=True)
    if result in ("failed", "rolled_back", "rollback_failed"):
        raise PipelineError(f"Release {result.replace('_', ' ')}: {sentence}")
    log.info("Outcome: %s", sentence)
    return result


def gpu_gate(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Compare the GPU benchmark with the service's budgets; every missed budget is listed."""
    from airflow.sdk.exceptions import AirflowSkipException

    from delivery.gpu.gate import GpuGateSkipped, enforce

    svc = service(service_name)
    assert svc.gpu is not None
    result = context["ti"].xcom_pull(task_ids="gpu_tests.benchmark")
    if not result:
        raise PipelineError(
            "gpu_tests.benchmark returned no result; its pod must write /airflow/xcom/return.json"
        )
    try:
        report = enforce(result, svc.gpu.budgets.model_dump())
    except GpuGateSkipped as exc:
        if svc.gpu.on_missing_gpu == "fail":
            raise PipelineError(f"{svc.name}: GPU is mandatory but the benchmark was skipped: {exc}") from exc
        raise AirflowSkipException(f"skipped: {exc}") from exc
    log.info("%s", report.summary())
    return {
        "status": report.status,
        "device": report.device,
        "checked": list(report.checked),
        "result": result,
    }


# -- local profile: image and docker deploy target ------------------------------------------


def registry() -> str:
    """The registry of the active profile."""
    from delivery.catalog import Profile
    from delivery.profiles import active_profile

    platform = catalog().platform
    return platform.local.registry if active_profile(platform) is Profile.LOCAL else platform.registry


def _local_workspace(svc: Service, context: dict[str, Any]) -> Path:
    from delivery.runners.shell import ensure_workspace

    src = _source(context)
    run_key = context["run_id"].replace(":", "-").replace("+", "-")
    workspace = project_path(catalog().platform.local.workspace_root) / svc.name / run_key
    ensure_workspace(workspace, git_url(svc.repo.url), src["sha"])
    return workspace


def local_image_build(*, service_name: str, **context: Any) -> dict[str, Any]:
    """Build the commit's image with the docker SDK; a commit already in the registry is not rebuilt."""
    from delivery.local.images import REVISION_LABEL, RegistryClient, _build, _docker_client, _local_image

    svc = service(service_name)
    src = _source(context)
    reg = RegistryClient(registry())
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
    from delivery.local.images import REVISION_LABEL, _docker_client

    svc = service(service_name)
    src = _source(context)
    reference = f"{registry()}/{svc.image.repository}:{src['sha']}"
    client = _docker_client()
    import docker as docker_sdk

    try:
        image = client.images.get(reference)
    except docker_sdk.errors.ImageNotFound:
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
    from delivery.local.images import build_and_push

    svc = service(service_name)
    src = _source(context)
    extra = [t for t in src["image_tags"] if t not in (src["sha"],)]
    ref = build_and_push(
        context_dir=_local_workspace(svc, context) / svc.image.context,
        dockerfile=svc.image.dockerfile,
        repository=svc.image.repository,
        registry=registry(),
        source_sha=src["sha"],
        branch=src.get("branch") or None,
        tags_extra=extra,
        build_args={"BASE_IMAGE": catalog().platform.local.base_image, **svc.image.build_args},
    )
    log.info("%s: built=%s pushed=%s tags=%s", ref.reference, ref.built, ref.pushed, ", ".join(ref.tags))
    return {"reference": ref.reference, "digest": ref.digest, "pushed": ref.pushed, "tags": list(ref.tags)}


def local_sync(*, service_name: str, environment: str, commit_task: str, **context: Any) -> dict[str, Any]:
    """Apply the GitOps desired state of an environment to the local Docker engine."""
    from delivery.gitops import read_image
    from delivery.local.containers import ReleaseHealthError, run_release

    svc = service(service_name)
    env = getattr(svc.environments, environment)
    commit = context["ti"].xcom_pull(task_ids=commit_task)
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
