"""Profiles: where stages run and where releases go (see :mod:`delivery.profiles.base`).

``kubernetes`` (production: pods, GitOps through Argo CD) and ``local`` (one
machine: shell or Docker stages, a local registry, containers as the deploy
target). :func:`active_profile` picks one as :mod:`delivery.profiles.selection`
says. Each profile imports its heavy clients (kubernetes, docker) only in the
methods that build its operators, so parsing the DAGs of one profile never pays
for the other.

The names below are loaded on first use (PEP 562), so that importing one module
of a profile (the local stage runner's own process, :mod:`delivery.profiles.local.shell`)
does not import Airflow, the catalog and every profile with this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from delivery.profiles.active import PROFILES, active_profile, health_url
    from delivery.profiles.base import DeliveryProfile
    from delivery.profiles.selection import ENV_VAR, ProfileError

_EXPORTS = {
    "ENV_VAR": "delivery.profiles.selection",
    "ProfileError": "delivery.profiles.selection",
    "DeliveryProfile": "delivery.profiles.base",
    "PROFILES": "delivery.profiles.active",
    "active_profile": "delivery.profiles.active",
    "health_url": "delivery.profiles.active",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = ["ENV_VAR", "PROFILES", "DeliveryProfile", "ProfileError", "active_profile", "health_url"]
