"""What a profile decides: where stages run, where images go, how a release is applied and reached.

The factory (:mod:`delivery.pipeline.factory`) renders every step of a plan by
asking the active profile; it never tests which profile it has. A new profile
is one module implementing :class:`DeliveryProfile`, listed in
:data:`delivery.profiles.PROFILES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from delivery.catalog.models import EnvironmentSpec, Platform, Profile, Service

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

    from delivery.catalog.toolchains import ResolvedStage


@dataclass(frozen=True, kw_only=True)
class Sync:
    """A sync step: apply the GitOps revision a commit step wrote to an environment."""

    task_id: str
    service: Service
    platform: Platform
    environment: str | None
    """None: the rollback DAG's environment, read at run time from ``plan_task``."""
    commit_task: str
    plan_task: str | None
    timeout: timedelta


class DeliveryProfile(Protocol):
    kind: Profile
    description: str
    """One line for the DAG docs: where stages run and where releases go."""
    poke_interval: float
    """Seconds between two probes of a deployed service (health checks)."""

    def registry(self, platform: Platform) -> str:
        """The image registry (host[:port]) releases are pushed to and pulled from."""

    def stage_task(
        self, *, service: Service, platform: Platform, stage: ResolvedStage, **operator_kwargs: Any
    ) -> BaseOperator:
        """The operator that runs one container stage of the catalog."""

    def sync_task(self, sync: Sync) -> BaseOperator:
        """The operator that applies the GitOps revision written by ``sync.commit_task``."""

    def service_url(self, env: EnvironmentSpec) -> str:
        """Base URL where this profile's deploy target serves an environment."""

    def finish_run(self, *, service: Service, platform: Platform, run_id: str, succeeded: bool) -> None:
        """End of a run (its outcome task): release what the run's stages left on this profile's
        workers (the local profile's checkout). Never called at DAG parse time."""
