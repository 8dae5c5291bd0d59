"""Production verification: metric analysis in the style of Argo Rollouts' ``AnalysisTemplate``.

After a release reaches an environment, its health is judged from metrics (flows 3, 5 and 6
of the seed: "K8s->>Prom: Start metrics collection"). An analysis takes ``count`` measurements,
``interval`` apart. Each measurement runs every check's PromQL query once and compares the value
with the check's thresholds.

This module is pure: it knows nothing about HTTP or Airflow's runtime. A measurement is taken
through a *query function* (``PromQL -> list[Sample]``) that the caller supplies, which in
production is :class:`delivery.integrations.prometheus.PrometheusHook` and in unit tests a stub.

Outcome of one check in one measurement:

* ``Successful``: every returned series is within ``[min, max]`` (each bound optional);
* ``Failed``: a series is outside the bounds (``+Inf``/``-Inf`` compare as usual);
* ``Inconclusive``: empty result vector, a ``NaN`` value, a query error, or Prometheus
  unreachable. The error is recorded in the summary.

A measurement is ``Failed`` if any of its checks failed, else ``Inconclusive`` if any check was
inconclusive, else ``Successful``. The analysis then ends (and stops measuring) as:

* ``Failed`` as soon as failed measurements > ``failure_limit``;
* ``Inconclusive`` as soon as inconclusive measurements > ``inconclusive_limit``;
* ``Successful`` after ``count`` measurements otherwise.

What a task does with the phase is decided by :func:`resolve`: ``Failed`` raises
:class:`VerificationFailed`; ``Inconclusive`` follows ``on_inconclusive`` (``hold`` returns a
result with ``decision == "hold"`` so that the DAG can route it to a human approval, ``fail``
raises :class:`VerificationInconclusive`, ``pass`` proceeds with a warning).

The input is the catalog's :class:`~delivery.catalog.models.VerifySpec` (an environment's
``verify`` block, validated when the catalog loads)::

    verify:
      interval: 10s
      count: 5
      failure_limit: 1
      inconclusive_limit: 1
      on_inconclusive: hold      # hold | fail | pass
      checks:
        - name: error_rate
          query: 'sum(rate(http_requests_total{service="{{ service }}",code=~"5.."}[1m])) / ...'
          max: 0.05

Queries may use the placeholders ``{{ service }}``, ``{{ environment }}`` and
``{{ namespace }}`` (:func:`delivery.catalog.models.render_query`: plain text replacement, not
Jinja, values restricted to Kubernetes-style names).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, get_args

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from delivery.catalog.models import Check, VerifySpec

log = logging.getLogger(__name__)

__all__ = [
    "DECISION_HOLD",
    "DECISION_PROMOTE",
    "ON_INCONCLUSIVE_CHOICES",
    "Analysis",
    "CheckResult",
    "Measurement",
    "MeasurementError",
    "Phase",
    "Sample",
    "VerificationError",
    "VerificationFailed",
    "VerificationInconclusive",
    "arun_analysis",
    "bounds_text",
    "evaluate_check",
    "format_value",
    "max_duration",
    "resolve",
    "run_analysis",
]

DECISION_PROMOTE = "promote"
"""``decision`` of a result that lets the release go on."""
DECISION_HOLD = "hold"
"""``decision`` of a result that must wait for a human (``on_inconclusive: hold``)."""

ON_INCONCLUSIVE_CHOICES: tuple[str, ...] = get_args(VerifySpec.model_fields["on_inconclusive"].annotation)
"""The catalog's ``on_inconclusive`` values."""

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class MeasurementError(Exception):
    """A query could not give a value: the check is Inconclusive for this measurement.

    Metric providers raise subclasses (see :mod:`delivery.integrations.prometheus`). ``unreachable``
    tells a provider outage (connection refused, timeout, 5xx) from a query error.
    """

    unreachable: bool = False


class VerificationError(AirflowException):
    """The analysis itself could not run (for instance a trigger crash); carries the details."""

    def __init__(self, message: str, *, summary: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary: dict[str, Any] = dict(summary or {})


class VerificationFailed(VerificationError, AirflowFailException):
    """The analysis is Failed: more failed measurements than ``failure_limit``.

    A subclass of :class:`AirflowFailException`: re-running the analysis on a retry could
    hide a bad release, so the task fails without retrying.
    """


class VerificationInconclusive(VerificationError, AirflowFailException):
    """The analysis is Inconclusive and ``on_inconclusive`` is ``fail``."""


# --------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------


def bounds_text(check: Check) -> str:
    """``min 0.2, max 0.8`` for a check's bounds."""
    parts = []
    if check.min is not None:
        parts.append(f"min {format_value(check.min)}")
    if check.max is not None:
        parts.append(f"max {format_value(check.max)}")
    return ", ".join(parts)


def max_duration(spec: VerifySpec, *, query_time: float) -> float:
    """Upper bound of an analysis' duration in seconds, when one query takes at most ``query_time``."""
    return spec.interval.total_seconds() * (spec.count - 1) + spec.count * len(spec.checks) * query_time


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


class Phase(StrEnum):
    """Phases of a check, a measurement and an analysis (names as in Argo Rollouts)."""

    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class Sample(NamedTuple):
    """One series of an instant-query result."""

    labels: dict[str, str]
    value: float


def format_value(value: float | None) -> str:
    """Short text for a value: ``0.05``, ``NaN``, ``+Inf``."""
    if value is None:
        return "none"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"


def _json_value(value: float | None) -> float | str | None:
    """Floats as JSON allows them: non-finite values become ``"NaN"``/``"+Inf"``/``"-Inf"``."""
    if value is None or math.isfinite(value):
        return value
    return format_value(value)


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One check in one measurement."""

    name: str
    phase: Phase
    value: float | None = None
    message: str = ""
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One round of every check."""

    index: int
    started_at: str
    checks: tuple[CheckResult, ...]

    @property
    def phase(self) -> Phase:
        phases = {check.phase for check in self.checks}
        if Phase.FAILED in phases:
            return Phase.FAILED
        if Phase.INCONCLUSIVE in phases:
            return Phase.INCONCLUSIVE
        return Phase.SUCCESSFUL


def _series_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def evaluate_check(check: Check, outcome: Sequence[Sample] | MeasurementError) -> CheckResult:
    """Compare a query outcome with the check's bounds (see the module doc for the rules)."""
    if isinstance(outcome, MeasurementError):
        kind = "metrics provider unreachable" if outcome.unreachable else "query error"
        return CheckResult(
            name=check.name,
            phase=Phase.INCONCLUSIVE,
            message=f"{kind}: {outcome}",
            error=f"{kind}: {outcome}",
        )
    if not outcome:
        return CheckResult(
            name=check.name, phase=Phase.INCONCLUSIVE, message="empty result: no series matched"
        )
    nan_series = [sample for sample in outcome if math.isnan(sample.value)]
    if nan_series:
        return CheckResult(
            name=check.name,
            phase=Phase.INCONCLUSIVE,
            value=math.nan,
            message=f"value is NaN{_series_text(nan_series[0].labels)}",
        )
    for sample in outcome:
        too_low = check.min is not None and sample.value < check.min
        too_high = check.max is not None and sample.value > check.max
        if too_low or too_high:
            bound = f"< min {format_value(check.min)}" if too_low else f"> max {format_value(check.max)}"
            return CheckResult(
                name=check.name,
                phase=Phase.FAILED,
                value=sample.value,
                message=f"{format_value(sample.value)}{_series_text(sample.labels)} {bound}",
            )
    worst = outcome[0].value
    if len(outcome) > 1:
        # Every series passed: report the one closest to a bound.
        worst = (max if check.max is not None else min)(sample.value for sample in outcome)
    return CheckResult(
        name=check.name,
        phase=Phase.SUCCESSFUL,
        value=worst,
        message=f"{format_value(worst)} within {bounds_text(check)}",
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Analysis:
    """The analysis state machine: feed it measurements, read its phase and summary."""

    def __init__(self, spec: VerifySpec) -> None:
        self.spec = spec
        self.measurements: list[Measurement] = []
        self.started_at = _now()
        self.finished_at: str | None = None
        self.phase = Phase.RUNNING
        self.reason = "analysis running"

    @property
    def failed(self) -> int:
        return sum(1 for m in self.measurements if m.phase is Phase.FAILED)

    @property
    def inconclusive(self) -> int:
        return sum(1 for m in self.measurements if m.phase is Phase.INCONCLUSIVE)

    @property
    def successful(self) -> int:
        return sum(1 for m in self.measurements if m.phase is Phase.SUCCESSFUL)

    @property
    def done(self) -> bool:
        return self.phase is not Phase.RUNNING

    def measure(self, outcomes: Mapping[str, Sequence[Sample] | MeasurementError]) -> Measurement:
        """Evaluate one round of query outcomes (by check name), record it and return it."""
        results = tuple(evaluate_check(check, outcomes[check.name]) for check in self.spec.checks)
        measurement = Measurement(index=len(self.measurements) + 1, started_at=_now(), checks=results)
        self.record(measurement)
        return measurement

    def record(self, measurement: Measurement) -> Phase:
        if self.done:
            raise RuntimeError(f"analysis already {self.phase}: no more measurements")
        self.measurements.append(measurement)
        spec = self.spec
        if self.failed > spec.failure_limit:
            self.phase = Phase.FAILED
            self.reason = (
                f"{self.failed} failed measurements > failure_limit {spec.failure_limit}: "
                + self._check_text(Phase.FAILED)
            )
        elif self.inconclusive > spec.inconclusive_limit:
            self.phase = Phase.INCONCLUSIVE
            self.reason = (
                f"{self.inconclusive} inconclusive measurements > inconclusive_limit "
                f"{spec.inconclusive_limit}: " + self._check_text(Phase.INCONCLUSIVE)
            )
        elif len(self.measurements) >= spec.count:
            self.phase = Phase.SUCCESSFUL
            self.reason = (
                f"{len(self.measurements)} measurements: {self.successful} successful, "
                f"{self.failed} failed (limit {spec.failure_limit}), "
                f"{self.inconclusive} inconclusive (limit {spec.inconclusive_limit})"
            )
        if self.done:
            self.finished_at = _now()
            log.info("Analysis %s: %s", self.phase, self.reason)
        return self.phase

    def _check_text(self, phase: Phase) -> str:
        """The latest result of each check that reached ``phase``, e.g. ``error_rate=0.5 > max 0.05``."""
        latest: dict[str, CheckResult] = {}
        for measurement in self.measurements:
            for check in measurement.checks:
                if check.phase is phase:
                    latest[check.name] = check
        return "; ".join(f"{name}: {result.message}" for name, result in latest.items())

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary: phase, reason, counts and per-check values."""
        checks: dict[str, dict[str, Any]] = {}
        for spec in self.spec.checks:
            results = [c for m in self.measurements for c in m.checks if c.name == spec.name]
            checks[spec.name] = {
                "query": spec.query,
                "min": spec.min,
                "max": spec.max,
                "values": [_json_value(r.value) for r in results],
                "phases": [str(r.phase) for r in results],
                "last": _json_value(results[-1].value) if results else None,
                "failed": sum(1 for r in results if r.phase is Phase.FAILED),
                "inconclusive": sum(1 for r in results if r.phase is Phase.INCONCLUSIVE),
                "messages": [r.message for r in results],
                "errors": sorted({r.error for r in results if r.error}),
            }
        return {
            "phase": str(self.phase),
            "reason": self.reason,
            "measurements": len(self.measurements),
            "count": self.spec.count,
            "interval": self.spec.interval.total_seconds(),
            "successful": self.successful,
            "failed": self.failed,
            "inconclusive": self.inconclusive,
            "failure_limit": self.spec.failure_limit,
            "inconclusive_limit": self.spec.inconclusive_limit,
            "on_inconclusive": self.spec.on_inconclusive,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "checks": checks,
        }


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------

QueryFn = Callable[[str], Sequence[Sample]]
AsyncQueryFn = Callable[[str], Awaitable[Sequence[Sample]]]


def _log_measurement(measurement: Measurement, spec: VerifySpec) -> None:
    log.info(
        "Measurement %d/%d: %s (%s)",
        measurement.index,
        spec.count,
        measurement.phase,
        ", ".join(f"{c.name}={format_value(c.value)}" for c in measurement.checks),
    )


def run_analysis(
    spec: VerifySpec,
    query: QueryFn,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Analysis:
    """Run the analysis inline: measure, sleep ``interval``, until the phase is final.

    ``spec`` must already be rendered (:meth:`VerifySpec.render`). Only
    :class:`MeasurementError` is turned into an Inconclusive check; other errors propagate.
    """
    analysis = Analysis(spec)
    while True:
        outcomes: dict[str, Sequence[Sample] | MeasurementError] = {}
        for check in spec.checks:
            try:
                outcomes[check.name] = query(check.query)
            except MeasurementError as err:
                log.warning("Check %s is inconclusive: %s", check.name, err)
                outcomes[check.name] = err
        measurement = analysis.measure(outcomes)
        _log_measurement(measurement, spec)
        if analysis.done:
            return analysis
        sleep(spec.interval.total_seconds())


async def arun_analysis(
    spec: VerifySpec,
    query: AsyncQueryFn,
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> Analysis:
    """Async twin of :func:`run_analysis` (for the triggerer); checks of a round run concurrently."""

    async def one(check: Check) -> Sequence[Sample] | MeasurementError:
        try:
            return await query(check.query)
        except MeasurementError as err:
            log.warning("Check %s is inconclusive: %s", check.name, err)
            return err

    analysis = Analysis(spec)
    while True:
        results = await asyncio.gather(*(one(check) for check in spec.checks))
        measurement = analysis.measure({c.name: r for c, r in zip(spec.checks, results, strict=True)})
        _log_measurement(measurement, spec)
        if analysis.done:
            return analysis
        await sleep(spec.interval.total_seconds())


# --------------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------------


def _checks_text(summary: Mapping[str, Any], key: str) -> str:
    parts = []
    for name, check in (summary.get("checks") or {}).items():
        if not check.get(key):
            continue
        bounds = ", ".join(
            f"{bound} {format_value(check[bound])}"
            for bound in ("min", "max")
            if check.get(bound) is not None
        )
        values = ", ".join("none" if v is None else str(v) for v in check.get("values", []))
        text = f"{name} [{bounds}] {key} in {check[key]}/{len(check.get('values', []))} measurements"
        text += f", values: {values}"
        if check.get("errors"):
            text += f", errors: {'; '.join(check['errors'])}"
        parts.append(text)
    return "; ".join(parts) or "no check details"


def resolve(summary: Mapping[str, Any], *, on_inconclusive: str | None = None) -> dict[str, Any]:
    """Turn an analysis summary into the task's result, or raise.

    * ``Successful``: returns the summary with ``decision: "promote"``;
    * ``Failed``: raises :class:`VerificationFailed` naming the failed checks, their values and
      thresholds;
    * ``Inconclusive``: by ``on_inconclusive`` (default: the summary's, else ``hold``):
      ``hold`` returns ``decision: "hold"`` (route the release to a human approval),
      ``pass`` returns ``decision: "promote"`` with a ``warning``,
      ``fail`` raises :class:`VerificationInconclusive`;
    * anything else (``Error``): raises :class:`VerificationError`.
    """
    policy = on_inconclusive or summary.get("on_inconclusive") or "hold"
    if policy not in ON_INCONCLUSIVE_CHOICES:
        raise ValueError(f'on_inconclusive "{policy}" should be one of {list(ON_INCONCLUSIVE_CHOICES)}')
    phase = summary.get("phase")
    result = dict(summary)
    if phase == Phase.SUCCESSFUL:
        result["decision"] = DECISION_PROMOTE
        return result
    if phase == Phase.FAILED:
        raise VerificationFailed(
            f"Verification failed: {summary.get('reason')}. Checks: {_checks_text(summary, 'failed')}",
            summary=summary,
        )
    if phase == Phase.INCONCLUSIVE:
        detail = f"{summary.get('reason')}. Checks: {_checks_text(summary, 'inconclusive')}"
        if policy == "fail":
            raise VerificationInconclusive(
                f"Verification inconclusive (on_inconclusive=fail): {detail}", summary=summary
            )
        if policy == "pass":
            warning = f"Verification inconclusive, passed anyway (on_inconclusive=pass): {detail}"
            log.warning("%s", warning)
            result["decision"] = DECISION_PROMOTE
            result["warning"] = warning
            return result
        log.warning("Verification inconclusive, holding the release for a human decision: %s", detail)
        result["decision"] = DECISION_HOLD
        return result
    raise VerificationError(
        f"Verification could not run (phase {phase}): {summary.get('reason') or summary.get('error')}",
        summary=summary,
    )
