"""The local profile's platform half: one machine, a Docker engine, a registry.

- :mod:`delivery.local.platform` starts the engine, the registry and the base
  images through ``scripts/local/*.sh`` (the same scripts a person runs).
- :mod:`delivery.local.images` builds an image for a commit and pushes it with
  immutable (sha) and moving (branch, semver) tags; a commit already in the
  registry is not rebuilt.
- :mod:`delivery.local.containers` is the ``docker`` deploy target's runtime:
  one container per (service, environment) on the host network, gated on HTTP
  health.
"""

from __future__ import annotations

from delivery.local.containers import (
    ContainerInfo,
    ReleaseError,
    ReleaseHealthError,
    container_name,
    current_release,
    run_release,
    stop_release,
)
from delivery.local.images import (
    ImageBuildError,
    ImageError,
    ImagePushError,
    ImageRef,
    RegistryClient,
    RegistryUnavailableError,
    RetryPolicy,
    build_and_push,
    image_tags,
    sanitize_tag,
)
from delivery.local.platform import PlatformError, ensure_local_platform, run_platform_script

__all__ = [
    "ContainerInfo",
    "ImageBuildError",
    "ImageError",
    "ImagePushError",
    "ImageRef",
    "PlatformError",
    "RegistryClient",
    "RegistryUnavailableError",
    "ReleaseError",
    "ReleaseHealthError",
    "RetryPolicy",
    "build_and_push",
    "container_name",
    "current_release",
    "ensure_local_platform",
    "image_tags",
    "run_platform_script",
    "run_release",
    "sanitize_tag",
    "stop_release",
]
