"""Build an image for a commit and push it to a registry, with the docker SDK.

Tags: the full commit sha (immutable; what GitOps values and deploys use), the
branch (sanitized to a valid tag; moves with the branch) and any extra tags
(e.g. the semver of a git tag), by :func:`delivery.image_tags.image_tags`.
Labels follow the OCI annotation keys (``org.opencontainers.image.revision``,
``.source``, ``.created``).

A commit whose sha tag is already in the registry is not rebuilt or pushed
again: the registry is asked first (``GET /v2/<repo>/manifests/<sha>`` with the
manifest media types in ``Accept``). Requested tags that are missing there are
added server side by copying the manifest (no layers move); tags that already
exist are left alone, so re-running an old commit never moves a branch tag
backwards. A local image of that commit (same revision label) that is missing
from the registry is pushed without a rebuild.

Registry calls and pushes are retried with bounded exponential backoff; the
final error names the registry and the image.

This module imports the docker SDK: :mod:`delivery.profiles.local.steps` imports it
only when a step runs, never while a DAG file is parsed.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import requests

from delivery.gitops.errors import GitCommandError
from delivery.gitops.git import Git, redact_url
from delivery.image_tags import SEMVER_RE, image_tags

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence


log = logging.getLogger(__name__)

REVISION_LABEL = "org.opencontainers.image.revision"
SOURCE_LABEL = "org.opencontainers.image.source"
CREATED_LABEL = "org.opencontainers.image.created"
REF_NAME_LABEL = "org.opencontainers.image.ref.name"
VERSION_LABEL = "org.opencontainers.image.version"

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

_SHA = re.compile(r"^[0-9a-f]{7,64}$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_PERMANENT_PUSH_ERRORS = ("denied", "unauthorized", "authentication required", "name invalid")


class ImageError(RuntimeError):
    """Base class for image build and push failures."""


class ImageBuildError(ImageError):
    """docker build failed; ``output`` holds the end of the build log."""

    def __init__(self, message: str, *, output: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.output = tuple(output)


class ImagePushError(ImageError):
    """Pushing (or tagging in) the registry failed after the retries."""

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class RegistryUnavailableError(ImagePushError):
    """The registry did not answer (connection refused, timeouts, 5xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries, delays initial*factor**n capped at max_delay."""

    attempts: int = 5
    initial_delay: float = 1.0
    max_delay: float = 15.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        """The sleeps between attempts (``attempts - 1`` of them)."""
        delay = self.initial_delay
        for _ in range(max(self.attempts - 1, 0)):
            yield min(delay, self.max_delay)
            delay *= self.factor


@dataclass(frozen=True)
class ImageRef:
    """What build_and_push produced (or found already there)."""

    registry: str
    repository: str
    tag: str
    tags: tuple[str, ...]
    digest: str | None
    image_id: str | None
    revision: str
    built: bool
    pushed: bool
    retagged: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """``registry/repository:<sha>``: what deploys should run."""
        return f"{self.name}:{self.tag}"

    @property
    def pinned(self) -> str:
        """``registry/repository@sha256:...`` when the digest is known, else the sha reference."""
        return f"{self.name}@{self.digest}" if self.digest else self.reference

    @property
    def reused(self) -> bool:
        """True when the commit was already in the registry (nothing built or pushed)."""
        return not self.built and not self.pushed


def _registry_base(registry: str) -> tuple[str, str]:
    """(host[:port] used in image names, base URL for the HTTP API)."""
    reg = registry.rstrip("/")
    if reg.startswith(("http://", "https://")):
        scheme, host = reg.split("://", 1)
        return host, f"{scheme}://{host}"
    host_only = reg.split(":", 1)[0]
    loopback = host_only in ("localhost", "::1") or host_only.startswith("127.")
    scheme = "http" if loopback else "https"
    return reg, f"{scheme}://{reg}"


class RegistryClient:
    """The registry's HTTP API v2, the few calls the pipeline needs, with retries."""

    def __init__(
        self,
        registry: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.host, self.base_url = _registry_base(registry)
        self.session = session or requests.Session()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.calls = 0

    def _request(self, method: str, path: str, *, what: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        delays = self.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            self.calls += 1
            try:
                resp = self.session.request(method, url, timeout=self.timeout, **kwargs)
                if resp.status_code < 500:
                    return resp
                problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except requests.RequestException as err:
                problem = f"{type(err).__name__}: {err}"
            delay = next(delays, None)
            if delay is None:
                raise RegistryUnavailableError(
                    f"registry {self.host} unavailable for {what} after {attempt} attempts: {problem}",
                    attempts=attempt,
                )
            log.warning(
                "registry %s: %s failed (attempt %d/%d: %s); retrying in %.1fs",
                self.host,
                what,
                attempt,
                self.retry.attempts,
                problem,
                delay,
            )
            time.sleep(delay)

    def ping(self) -> None:
        resp = self._request("GET", "/v2/", what="GET /v2/")
        if resp.status_code != 200:
            raise RegistryUnavailableError(f"registry {self.host}: GET /v2/ answered {resp.status_code}")

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The manifest digest of ``repository:reference``, or None when the registry lacks it."""
        resp = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            what=f"manifest {repository}:{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ImagePushError(
                f"registry {self.host}: HEAD manifest {repository}:{reference} answered {resp.status_code}"
            )
        return resp.headers.get("Docker-Content-Digest")

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str | None]:
        resp = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            what=f"manifest {repository}:{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if resp.status_code != 200:
            raise ImagePushError(
                f"registry {self.host}: GET manifest {repository}:{reference} answered {resp.status_code}"
            )
        return (
            resp.content,
            resp.headers.get("Content-Type", MANIFEST_MEDIA_TYPES[-1]),
            resp.headers.get("Docker-Content-Digest"),
        )

    def retag(self, repository: str, source: str, target: str) -> str | None:
        """Point ``target`` at the manifest of ``source``, server side (no layer moves)."""
        body, media_type, _ = self.get_manifest(repository, source)
        resp = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{target}",
            what=f"tag {repository}:{target}",
            data=body,
            headers={"Content-Type": media_type},
        )
        if resp.status_code not in (200, 201):
            raise ImagePushError(
                f"registry {self.host}: PUT manifest {repository}:{target} answered {resp.status_code}: "
                f"{resp.text[:200]}"
            )
        return resp.headers.get("Docker-Content-Digest")

    def tags(self, repository: str) -> list[str]:
        resp = self._request("GET", f"/v2/{repository}/tags/list", what=f"tags of {repository}")
        if resp.status_code == 404:
            return []
        resp.raise_for_status()
        return list(resp.json().get("tags") or [])


def _docker_client() -> docker.DockerClient:
    return docker.from_env(timeout=900)


def _source_url(context_dir: Path) -> str:
    """The ``origin`` of the checkout the context is in (without credentials), else the folder."""
    try:
        url = Git(cwd=context_dir, timeout_s=10).output(
            "remote", "get-url", "--", "origin", action="git remote"
        )
    except GitCommandError:
        url = ""
    return redact_url(url) if url else context_dir.resolve().as_uri()


def _dockerfile_in_context(context_dir: Path, dockerfile: str | Path) -> str:
    path = Path(dockerfile)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(context_dir.resolve())
        except ValueError as err:
            raise ImageBuildError(
                f"Dockerfile {dockerfile} is outside the build context {context_dir}"
            ) from err
    if not (context_dir / path).is_file():
        raise ImageBuildError(f"no Dockerfile at {context_dir / path}")
    return path.as_posix()


def _build(
    client: docker.DockerClient,
    *,
    context_dir: Path,
    dockerfile: str,
    reference: str,
    build_args: Mapping[str, str],
    labels: Mapping[str, str],
) -> str:
    """Run docker build, streaming its output to the log; return the image id."""
    tail: list[str] = []
    image_id: str | None = None
    log.info("building %s from %s (Dockerfile %s)", reference, context_dir, dockerfile)
    started = time.monotonic()
    try:
        stream = client.api.build(
            path=str(context_dir),
            dockerfile=dockerfile,
            tag=reference,
            buildargs=dict(build_args),
            labels=dict(labels),
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                tail.append(str(detail).rstrip())
                raise ImageBuildError(
                    f"docker build of {reference} failed: {str(detail).strip()}", output=tail[-30:]
                )
            if "stream" in chunk:
                for line in str(chunk["stream"]).splitlines():
                    if line.strip():
                        log.info("build: %s", line.rstrip())
                        tail.append(line.rstrip())
                        del tail[:-30]
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
    except ImageBuildError:
        raise
    except Exception as err:
        raise ImageBuildError(f"docker build of {reference} failed: {err}", output=tail[-30:]) from err
    if image_id is None:
        image_id = str(client.images.get(reference).id)
    log.info("built %s as %s in %.1fs", reference, image_id[:19], time.monotonic() - started)
    return image_id


def push_tag(
    client: docker.DockerClient,
    *,
    name: str,
    tag: str,
    registry: str,
    retry: RetryPolicy | None = None,
) -> str | None:
    """Push ``name:tag`` with retries; return the pushed digest (when reported)."""
    policy = retry or RetryPolicy()
    delays = policy.delays()
    attempt = 0
    while True:
        attempt += 1
        digest: str | None = None
        try:
            for chunk in client.api.push(name, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise ImageError(str(detail).strip())
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = str(aux["Digest"])
                status = chunk.get("status")
                if status and "progress" not in chunk and status not in ("Pushing", "Waiting", "Preparing"):
                    log.info("push %s:%s: %s %s", name, tag, chunk.get("id", ""), status)
            log.info("pushed %s:%s (%s)", name, tag, digest or "digest not reported")
            return digest
        except Exception as err:
            problem = f"{type(err).__name__}: {err}"
            permanent = any(word in str(err).lower() for word in _PERMANENT_PUSH_ERRORS)
            delay = None if permanent else next(delays, None)
            if delay is None:
                raise ImagePushError(
                    f"pushing image {name}:{tag} to registry {registry} failed "
                    f"after {attempt} attempt(s): {problem}",
                    attempts=attempt,
                ) from err
            log.warning(
                "push %s:%s to %s failed (attempt %d/%d: %s); retrying in %.1fs",
                name,
                tag,
                registry,
                attempt,
                policy.attempts,
                problem,
                delay,
            )
            time.sleep(delay)


def _local_image(client: docker.DockerClient, reference: str) -> Any:
    try:
        return client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None


@dataclass(frozen=True)
class _Push:
    """One commit's image on its way to the registry."""

    sha: str
    repository: str
    tags: tuple[str, ...]
    registry: RegistryClient
    docker: docker.DockerClient
    policy: RetryPolicy

    @property
    def name(self) -> str:
        return f"{self.registry.host}/{self.repository}"

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.sha}"

    def ref(self, **fields: Any) -> ImageRef:
        return ImageRef(
            registry=self.registry.host,
            repository=self.repository,
            tag=self.sha,
            tags=self.tags,
            revision=self.sha,
            **fields,
        )


def _reuse_registered(push: _Push, digest: str) -> ImageRef:
    """The commit is in the registry already: add the missing tags there, build and push nothing."""
    retagged = []
    for tag in push.tags[1:]:
        if push.registry.manifest_digest(push.repository, tag) is None:
            log.info("registry %s: tagging %s as %s (no rebuild)", push.registry.host, push.reference, tag)
            push.registry.retag(push.repository, push.sha, tag)
            retagged.append(tag)
    local = _local_image(push.docker, push.reference)
    log.info("%s is already in the registry (%s); nothing to build or push", push.reference, digest)
    return push.ref(
        digest=digest,
        image_id=str(local.id) if local is not None else None,
        built=False,
        pushed=False,
        retagged=tuple(retagged),
        labels=dict(local.labels or {}) if local is not None else {},
    )


def _image_labels(
    push: _Push,
    *,
    context: Path,
    labels: Mapping[str, str] | None,
    source_url: str | None,
    branch: str | None,
    tags_extra: Sequence[str],
) -> dict[str, str]:
    """The OCI labels of the commit's image: its revision, source, creation time, ref and version."""
    all_labels = {
        **(labels or {}),
        REVISION_LABEL: push.sha,
        SOURCE_LABEL: source_url or (labels or {}).get(SOURCE_LABEL) or _source_url(context),
        CREATED_LABEL: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if branch:
        all_labels.setdefault(REF_NAME_LABEL, branch)
    semver = next((t for t in tags_extra if SEMVER_RE.match(t)), None)
    if semver:
        all_labels.setdefault(VERSION_LABEL, semver.lstrip("v"))
    return all_labels


def _push_all(push: _Push, image_id: str, *, built: bool) -> ImageRef:
    """Tag the image with every tag and push them (the commit sha first)."""
    for tag in push.tags[1:]:
        push.docker.api.tag(image_id, push.name, tag=tag, force=True)
    pushed_digest = push_tag(
        push.docker, name=push.name, tag=push.sha, registry=push.registry.host, retry=push.policy
    )
    for tag in push.tags[1:]:
        push_tag(push.docker, name=push.name, tag=tag, registry=push.registry.host, retry=push.policy)
    image = push.docker.images.get(image_id)
    return push.ref(
        digest=push.registry.manifest_digest(push.repository, push.sha) or pushed_digest,
        image_id=image_id,
        built=built,
        pushed=True,
        labels=dict(image.labels or {}),
    )


def build_and_push(
    *,
    context_dir: str | Path,
    dockerfile: str | Path = "Dockerfile",
    repository: str,
    registry: str,
    source_sha: str,
    branch: str | None,
    tags_extra: Sequence[str] = (),
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    source_url: str | None = None,
    force: bool = False,
    retry: RetryPolicy | None = None,
    client: docker.DockerClient | None = None,
    registry_client: RegistryClient | None = None,
) -> ImageRef:
    """Build ``context_dir`` for commit ``source_sha`` and push it to ``registry/repository``.

    Returns an :class:`ImageRef`; ``built``/``pushed`` say what actually happened
    (both False when the commit was already in the registry). ``force`` rebuilds
    and pushes anyway. Raises ImageBuildError, ImagePushError (its subclass
    RegistryUnavailableError when the registry does not answer).
    """
    sha = source_sha.strip().lower()
    if not _SHA.match(sha):
        raise ValueError(f"source_sha must be a hex commit sha, got {source_sha!r}")
    if not _REPOSITORY.match(repository):
        raise ValueError(f"invalid repository name {repository!r} (lowercase, digits, '._-', '/')")
    context = Path(context_dir)
    if not context.is_dir():
        raise ImageBuildError(f"build context {context} is not a directory")
    dockerfile_rel = _dockerfile_in_context(context, dockerfile)
    policy = retry or RetryPolicy()
    push = _Push(
        sha=sha,
        repository=repository,
        tags=tuple(image_tags(sha=sha, branch=branch, extra=tags_extra)),
        registry=registry_client or RegistryClient(registry, retry=policy),
        docker=client or _docker_client(),
        policy=policy,
    )
    digest = None if force else push.registry.manifest_digest(repository, sha)
    if digest is not None:
        return _reuse_registered(push, digest)
    local = None if force else _local_image(push.docker, push.reference)
    if local is not None and (local.labels or {}).get(REVISION_LABEL) == sha:
        log.info("local image %s of commit %s exists; pushing it without a rebuild", push.reference, sha)
        return _push_all(push, str(local.id), built=False)
    image_id = _build(
        push.docker,
        context_dir=context,
        dockerfile=dockerfile_rel,
        reference=push.reference,
        build_args=build_args or {},
        labels=_image_labels(
            push, context=context, labels=labels, source_url=source_url, branch=branch, tags_extra=tags_extra
        ),
    )
    return _push_all(push, image_id, built=True)
