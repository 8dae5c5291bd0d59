"""Profiles: where stages run and where releases go (see :mod:`delivery.profiles.base`).

``kubernetes`` (production: pods, GitOps through Argo CD) and ``local`` (one
machine: shell or Docker stages, a local registry, containers as the deploy
target). :func:`active_profile` picks one as :mod:`delivery.profiles.selection`
says. Each profile imports its heavy clients (kubernetes, docker) only in the
methods that build its operators, so parsing the DAGs of one profile never pays
for the other.
"""

from __future__ import annotations

from delivery.catalog.models import EnvironmentSpec, Platform, Profile
from delivery.profiles.base import DeliveryProfile
from delivery.profiles.kubernetes.profile import KubernetesProfile
from delivery.profiles.local.profile import LocalProfile
from delivery.profiles.selection import ENV_VAR, ProfileError, selected_kind

PROFILES: dict[Profile, type[DeliveryProfile]] = {
    Profile.KUBERNETES: KubernetesProfile,
    Profile.LOCAL: LocalProfile,
}


def active_profile(platform: Platform) -> DeliveryProfile:
    """The profile of this Airflow (``DELIVERY_PROFILE``, else the catalog's ``platform.profile``)."""
    return PROFILES[selected_kind(platform)]()


def health_url(profile: DeliveryProfile, env: EnvironmentSpec) -> str:
    """Where the health endpoint of ``env`` answers, for ``profile``'s deploy target."""
    return profile.service_url(env).rstrip("/") + env.health_path


__all__ = ["ENV_VAR", "PROFILES", "DeliveryProfile", "ProfileError", "active_profile", "health_url"]
