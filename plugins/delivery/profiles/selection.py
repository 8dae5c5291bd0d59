"""Profile selection: which profile is active.

Precedence, highest first:

1. ``DELIVERY_PROFILE`` in the environment of every Airflow component
   (``kubernetes`` or ``local``);
2. ``platform.profile`` in ``include/catalog/platform.yaml``;
3. ``kubernetes``, the production default.

An unknown value is an error, never a silent fallback: a production Airflow
must not quietly run stages as shell commands on its workers. The active
profile is shown in every DAG's tags and docs.
"""

from __future__ import annotations

import os

from delivery.catalog.models import Platform, Profile

ENV_VAR = "DELIVERY_PROFILE"


class ProfileError(ValueError):
    pass


def selected_kind(platform: Platform) -> Profile:
    raw = os.environ.get(ENV_VAR)
    if raw is None or raw.strip() == "":
        return platform.profile
    try:
        return Profile(raw.strip().lower())
    except ValueError:
        allowed = " | ".join(p.value for p in Profile)
        raise ProfileError(f"{ENV_VAR}={raw!r} is not a profile; use {allowed}") from None
