"""The profile registry and the active profile (see :mod:`delivery.profiles`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from delivery.catalog.models import Profile
from delivery.profiles.kubernetes.profile import KubernetesProfile
from delivery.profiles.local.profile import LocalProfile
from delivery.profiles.selection import selected_kind

if TYPE_CHECKING:
    from delivery.catalog.models import EnvironmentSpec, Platform
    from delivery.profiles.base import DeliveryProfile

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
