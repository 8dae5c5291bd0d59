"""``VerifyReleaseOperator``: judge a release from its production metrics.

The operator renders the analysis (``{{ service }}``, ``{{ environment }}``, ``{{ namespace }}``
in the queries), then either defers to :class:`delivery.verification.trigger.AnalysisTrigger`
(``deferrable=True``, the default: no worker slot is held while waiting between measurements)
or runs the same analysis inline (``deferrable=False``).

Its outcome (see :func:`delivery.verification.analysis.resolve`):

* ``Successful``: returns the summary with ``decision: "promote"`` (pushed as XCom);
* ``Failed``: raises :class:`~delivery.verification.analysis.VerificationFailed` naming the failed checks,
  their values and thresholds; the task fails without retry;
* ``Inconclusive``, by ``on_inconclusive``:

  - ``hold`` (default): returns the summary with ``decision: "hold"``. The task succeeds, and
    the DAG is expected to branch on ``decision`` to a human approval task
    (e.g. ``ApprovalOperator``) before the release goes on;
  - ``fail``: raises :class:`~delivery.verification.analysis.VerificationInconclusive`;
  - ``pass``: returns ``decision: "promote"`` with a ``warning`` key, and logs the warning.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from delivery.catalog.models import VerifySpec
from delivery.integrations.prometheus import PrometheusHook, query_time_budget
from delivery.verification.analysis import max_duration, resolve, run_analysis
from delivery.verification.trigger import AnalysisTrigger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import Context

__all__ = ["VerifyReleaseOperator"]

# Margin on top of the analysis' own worst-case duration before the deferral times out.
DEFER_MARGIN = timedelta(minutes=2)


class VerifyReleaseOperator(BaseOperator):
    """Run a Prometheus analysis of a release (Argo Rollouts ``AnalysisTemplate`` style).

    :param verify: the environment's ``verify`` block, the catalog's :class:`VerifySpec` (at least one
        check; an environment without checks is verified by its health check instead).
    :param service: service name, substituted for ``{{ service }}``. Templated.
    :param environment: environment name, for ``{{ environment }}``. Templated.
    :param namespace: Kubernetes namespace, for ``{{ namespace }}``. Templated.
    :param prometheus_conn_id: Airflow connection of the Prometheus. Templated.
    :param query_timeout: per-query timeout in seconds (default: the connection's, else 10 s).
    :param deferrable: run the analysis on the triggerer (default) or inline on the worker.
    """

    template_fields = ("service", "environment", "namespace", "prometheus_conn_id")
    ui_color = "#e6522c"

    def __init__(
        self,
        *,
        verify: VerifySpec,
        service: str,
        environment: str = "",
        namespace: str = "",
        prometheus_conn_id: str = PrometheusHook.default_conn_name,
        query_timeout: float | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(verify, VerifySpec):
            raise TypeError(f"verify should be the catalog's VerifySpec, got {type(verify).__name__}")
        if not verify.checks:
            raise ValueError("verify needs at least one check (without checks, verify with a health check)")
        self.verify = verify
        self.service = service
        self.environment = environment
        self.namespace = namespace
        self.prometheus_conn_id = prometheus_conn_id
        self.query_timeout = query_timeout
        self.deferrable = deferrable

    def rendered_spec(self) -> VerifySpec:
        return self.verify.render(
            {"service": self.service, "environment": self.environment, "namespace": self.namespace}
        )

    def execute(self, context: Context) -> dict[str, Any]:
        spec = self.rendered_spec()
        if self.deferrable:
            query_time = query_time_budget(self.query_timeout)
            self.defer(
                trigger=AnalysisTrigger(
                    spec=spec,
                    prometheus_conn_id=self.prometheus_conn_id,
                    query_timeout=self.query_timeout,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=max_duration(spec, query_time=query_time)) + DEFER_MARGIN,
            )
        hook = PrometheusHook(prometheus_conn_id=self.prometheus_conn_id, timeout=self.query_timeout)
        analysis = run_analysis(spec, hook.query)
        return self._finish(analysis.summary())

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return self._finish(event.get("summary") or {"phase": event.get("phase"), "reason": "no summary"})

    def _finish(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        self.log.info(
            "Verification of %s (%s): %s, %s",
            self.service,
            self.environment,
            summary.get("phase"),
            summary.get("reason"),
        )
        return resolve(summary, on_inconclusive=self.verify.on_inconclusive)
