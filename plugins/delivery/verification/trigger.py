"""Deferrable metric analysis: the measurements run on the triggerer, not on a worker slot.

:class:`AnalysisTrigger` takes the whole analysis (``count`` measurements, ``asyncio.sleep``
``interval`` between them) and fires exactly one :class:`TriggerEvent` whose payload is::

    {"phase": "Successful" | "Failed" | "Inconclusive" | "Error", "summary": {...}}

The summary is the one of :meth:`delivery.verification.analysis.Analysis.summary`. ``Error`` means the
analysis could not run at all (e.g. the connection does not exist); its summary holds the error.

If the triggerer restarts mid-analysis, the trigger is re-created from :meth:`serialize` and the
analysis starts over: measurements are cheap and a fresh window is the safe choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from delivery.catalog.models import VerifySpec
from delivery.integrations.prometheus import PrometheusAsyncHook
from delivery.verification.analysis import Phase, arun_analysis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["AnalysisTrigger"]


class AnalysisTrigger(BaseTrigger):
    """Run a Prometheus analysis asynchronously and fire one event with its phase and summary.

    :param spec: the rendered analysis (queries already substituted: the trigger does no
        templating), as the catalog's :class:`VerifySpec` or its JSON form (``model_dump(mode="json")``,
        which :meth:`serialize` stores).
    :param prometheus_conn_id: Airflow connection of the Prometheus to query.
    :param query_timeout: per-query timeout in seconds (``None``: the connection's, else 10 s).
    """

    def __init__(
        self,
        *,
        spec: VerifySpec | Mapping[str, Any],
        prometheus_conn_id: str = PrometheusAsyncHook.default_conn_name,
        query_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.spec = VerifySpec.model_validate(spec)
        self.prometheus_conn_id = prometheus_conn_id
        self.query_timeout = query_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "spec": self.spec.model_dump(mode="json"),
                "prometheus_conn_id": self.prometheus_conn_id,
                "query_timeout": self.query_timeout,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        spec = self.spec
        self.log.info(
            "Analysis: %d measurement(s), %ss apart, checks %s, Prometheus connection %s",
            spec.count,
            spec.interval.total_seconds(),
            [check.name for check in spec.checks],
            self.prometheus_conn_id,
        )
        try:
            hook = PrometheusAsyncHook(prometheus_conn_id=self.prometheus_conn_id, timeout=self.query_timeout)
            async with hook.querying() as query:
                analysis = await arun_analysis(spec, query)
        except Exception as err:
            # Only bugs and configuration errors (an unknown connection...) get here: query
            # failures are Inconclusive checks. Cancellation (BaseException) is not caught.
            self.log.exception("Analysis could not run")
            message = f"{type(err).__name__}: {err}"
            yield TriggerEvent(
                {"phase": str(Phase.ERROR), "summary": {"phase": str(Phase.ERROR), "reason": message}}
            )
            return
        summary = analysis.summary()
        yield TriggerEvent({"phase": summary["phase"], "summary": summary})
