"""The GPU stage's gate: a harness result against a service's budgets.

Pure functions, no torch and no Airflow. Budgets (the catalog's
``gpu.budgets``; a key missing or ``None`` is not checked):

``max_p95_latency_ms``
    p95 latency of every batch size; a number, or a map ``{batch_size: ms}``
    (keys may be strings, ``"*"`` or ``"default"`` for the other sizes).
``min_throughput_per_s``
    samples/s of every batch size; a number or a map as above.
``max_memory_mb``
    ``memory.peak_mb``: peak reserved on CUDA, peak RSS on the CPU.
``max_temperature_c``
    maximum GPU temperature sampled during the benchmarks.

A set budget whose metric is missing from the result fails the gate (nothing
passes unmeasured), except the temperature of a CPU run, which is noted as not
applicable. A result with status ``skipped`` gives a ``skipped`` report, a
``failed`` one a ``failed`` report listing the harness errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BUDGET_KEYS",
    "METRIC_NAMES",
    "BudgetViolation",
    "GateReport",
    "GpuBudgetError",
    "GpuGateSkipped",
    "enforce",
    "evaluate",
    "metrics_from_result",
]

BUDGET_KEYS = ("max_p95_latency_ms", "min_throughput_per_s", "max_memory_mb", "max_temperature_c")

METRIC_LATENCY_P95 = "delivery_gpu_latency_p95_ms"
METRIC_THROUGHPUT = "delivery_gpu_throughput_per_s"
METRIC_MEMORY_PEAK = "delivery_gpu_memory_peak_mb"
METRIC_TEMPERATURE_MAX = "delivery_gpu_temperature_max_c"
METRIC_NAMES = (METRIC_LATENCY_P95, METRIC_THROUGHPUT, METRIC_MEMORY_PEAK, METRIC_TEMPERATURE_MAX)

GateStatus = Literal["passed", "failed", "skipped"]
MetricSample = tuple[str, dict[str, str], float]

_DEFAULT_KEYS = ("*", "default")


def _fmt(value: float) -> str:
    """12.4 -> '12.4', 10 -> '10.0', 0.01234 -> '0.0123'."""
    return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


@dataclass(frozen=True)
class BudgetViolation:
    """One missed budget (``measured`` is ``None`` when the metric was not measured)."""

    budget: str
    subject: str
    measured: float | None
    allowed: float
    unit: str
    comparison: Literal["max", "min"]

    @property
    def message(self) -> str:
        unit = self.unit if self.unit.startswith("/") else f" {self.unit}"
        allowed = f"{_fmt(self.allowed)}{unit}"
        if self.measured is None:
            return f"{self.subject}: not measured ({allowed} {self._bound()})"
        sign = ">" if self.comparison == "max" else "<"
        return f"{self.subject}: {_fmt(self.measured)}{unit} {sign} {allowed} {self._bound()}"

    def _bound(self) -> str:
        return "allowed" if self.comparison == "max" else "required"

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class GateReport:
    """What :func:`evaluate` found. ``problems`` lists every reason of a failure."""

    status: GateStatus
    reason: str | None = None
    violations: tuple[BudgetViolation, ...] = ()
    harness_errors: tuple[str, ...] = ()
    checked: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    device: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def problems(self) -> tuple[str, ...]:
        return self.harness_errors + tuple(v.message for v in self.violations)

    def summary(self) -> str:
        if self.status == "skipped":
            return f"GPU gate skipped: {self.reason}"
        if self.status == "passed":
            checked = ", ".join(self.checked) or "no budget set"
            return f"GPU gate passed on {self.device} ({checked})"
        lines = [f"GPU gate failed: {len(self.problems)} problem(s)"]
        lines += [f"- {p}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "device": self.device,
            "problems": list(self.problems),
            "violations": [
                {
                    "budget": v.budget,
                    "subject": v.subject,
                    "measured": v.measured,
                    "allowed": v.allowed,
                    "unit": v.unit,
                    "message": v.message,
                }
                for v in self.violations
            ],
            "harness_errors": list(self.harness_errors),
            "checked": list(self.checked),
            "notes": list(self.notes),
        }


class GpuBudgetError(ValueError):
    """The GPU stage missed budgets (or the harness failed); the message lists every problem."""

    def __init__(self, report: GateReport) -> None:
        super().__init__(report.summary())
        self.report = report

    @property
    def violations(self) -> tuple[BudgetViolation, ...]:
        return self.report.violations


class GpuGateSkipped(Exception):
    """The harness result was ``skipped`` (no GPU); the caller maps it to a skipped task."""

    def __init__(self, report: GateReport) -> None:
        super().__init__(report.summary())
        self.report = report


def _per_batch(value: Any, key: str) -> tuple[float | None, dict[int, float]]:
    """A scalar budget -> (scalar, {}); a map -> (default or None, {batch: value})."""
    if isinstance(value, Mapping):
        default: float | None = None
        per: dict[int, float] = {}
        for raw_key, raw_value in value.items():
            if raw_value is None:
                continue
            if str(raw_key) in _DEFAULT_KEYS:
                default = float(raw_value)
                continue
            try:
                per[int(raw_key)] = float(raw_value)
            except (TypeError, ValueError):
                raise ValueError(f"{key}: batch size key {raw_key!r} is not an integer") from None
        return default, per
    return float(value), {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _check_budgets(budgets: Mapping[str, Any]) -> None:
    unknown = sorted(set(budgets) - set(BUDGET_KEYS))
    if unknown:
        raise ValueError(f"unknown GPU budget(s) {unknown}; known: {list(BUDGET_KEYS)}")


@dataclass
class _Findings:
    """What the budget checks of one result found, as :func:`evaluate` gathers it."""

    report_unmeasured: bool
    violations: list[BudgetViolation] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _harness_errors(result: Mapping[str, Any]) -> list[str]:
    """The errors of a harness run that did not pass (its own list, else its status and reason)."""
    if result.get("status") == "passed":
        return []
    errors = result.get("errors") or []
    return [f"harness {e.get('stage', '?')}: {e.get('message', '')}" for e in errors] or [
        f"harness status {result.get('status')!r}: {result.get('reason') or 'no reason given'}"
    ]


def _per_batch_budget(
    found: _Findings,
    benchmarks: list[Mapping[str, Any]],
    *,
    budget: tuple[str, Any],
    subject: str,
    unit: str,
    comparison: Literal["max", "min"],
    metric: Any,
) -> None:
    """A budget of every batch size (a number, or a map by batch size) against the benchmarks."""
    key, raw = budget
    if raw is None:
        return
    default, per = _per_batch(raw, key)
    by_size = {int(b["batch_size"]): b for b in benchmarks if "batch_size" in b}
    if not by_size:
        if found.report_unmeasured and (default is not None or per):
            allowed = default if default is not None else next(iter(per.values()))
            found.violations.append(
                BudgetViolation(key, f"{subject} (no benchmark)", None, allowed, unit, comparison)
            )
        return
    for size in sorted(set(per) - set(by_size)):
        if found.report_unmeasured:
            found.violations.append(
                BudgetViolation(key, f"{subject} at batch {size}", None, per[size], unit, comparison)
            )
    for size, bench in sorted(by_size.items()):
        limit = per.get(size, default)
        if limit is None:
            continue
        value = _number(metric(bench))
        subject_at = f"{subject} at batch {size}"
        found.checked.append(subject_at)
        if value is None:
            found.violations.append(BudgetViolation(key, subject_at, None, limit, unit, comparison))
        elif (comparison == "max" and value > limit) or (comparison == "min" and value < limit):
            found.violations.append(BudgetViolation(key, subject_at, value, limit, unit, comparison))


def _memory_budget(found: _Findings, result: Mapping[str, Any], max_memory: Any) -> None:
    if max_memory is None:
        return
    memory = result.get("memory") or {}
    what = "peak memory (reserved)" if memory.get("source") == "torch.cuda" else "peak memory (RSS)"
    value = _number(memory.get("peak_mb"))
    found.checked.append(what)
    if (value is None and found.report_unmeasured) or (value is not None and value > float(max_memory)):
        found.violations.append(BudgetViolation("max_memory_mb", what, value, float(max_memory), "MB", "max"))


def _temperature_budget(found: _Findings, result: Mapping[str, Any], max_temperature: Any) -> None:
    if max_temperature is None:
        return
    health = result.get("health") or {}
    value = _number((health.get("temperature_c") or {}).get("max"))
    if result.get("device") == "cpu" and value is None:
        found.notes.append("max_temperature_c not applicable: the run was on the CPU")
        return
    found.checked.append("max GPU temperature")
    if (value is None and found.report_unmeasured) or (value is not None and value > float(max_temperature)):
        found.violations.append(
            BudgetViolation(
                "max_temperature_c", "max GPU temperature", value, float(max_temperature), "C", "max"
            )
        )
        if value is None and health.get("reason"):
            found.notes.append(f"temperature not sampled: {health['reason']}")


def evaluate(result: Mapping[str, Any], budgets: Mapping[str, Any]) -> GateReport:
    """Check one harness result against ``budgets``; never raises for a missed budget.

    Raises ``ValueError`` only for malformed budgets (unknown key, bad map key).
    """
    _check_budgets(budgets)
    device = result.get("device")
    if result.get("status") == "skipped":
        return GateReport(status="skipped", reason=str(result.get("reason") or "skipped"), device=device)
    harness_errors = _harness_errors(result)
    # When the harness itself failed, metrics it never reached are not listed again.
    found = _Findings(report_unmeasured=not harness_errors)
    benchmarks = [b for b in result.get("benchmarks") or [] if isinstance(b, Mapping)]
    _per_batch_budget(
        found,
        benchmarks,
        budget=("max_p95_latency_ms", budgets.get("max_p95_latency_ms")),
        subject="p95 latency",
        unit="ms",
        comparison="max",
        metric=lambda b: (b.get("latency_ms") or {}).get("p95"),
    )
    _per_batch_budget(
        found,
        benchmarks,
        budget=("min_throughput_per_s", budgets.get("min_throughput_per_s")),
        subject="throughput",
        unit="/s",
        comparison="min",
        metric=lambda b: b.get("throughput_per_s"),
    )
    _memory_budget(found, result, budgets.get("max_memory_mb"))
    _temperature_budget(found, result, budgets.get("max_temperature_c"))
    violations = found.violations
    return GateReport(
        status="failed" if harness_errors or violations else "passed",
        reason=(result.get("reason") if harness_errors else None)
        or (f"{len(violations)} budget(s) missed" if violations else None),
        violations=tuple(violations),
        harness_errors=tuple(harness_errors),
        checked=tuple(found.checked),
        notes=tuple(found.notes),
        device=device,
    )


def enforce(
    result: Mapping[str, Any],
    budgets: Mapping[str, Any],
    *,
    on_skipped: Literal["raise", "return"] = "raise",
) -> GateReport:
    """:func:`evaluate`, then raise :class:`GpuBudgetError` listing every problem if it failed.

    A skipped result raises :class:`GpuGateSkipped` (map it to a skipped task),
    or is returned as a ``skipped`` report with ``on_skipped="return"``; it is
    never returned as passed.
    """
    report = evaluate(result, budgets)
    if report.status == "failed":
        raise GpuBudgetError(report)
    if report.status == "skipped" and on_skipped == "raise":
        raise GpuGateSkipped(report)
    return report


def metrics_from_result(result: Mapping[str, Any], service: str) -> list[MetricSample]:
    """Samples ``(name, labels, value)`` for trend charts (Prometheus style).

    Latency and throughput carry a ``batch_size`` label; every sample carries
    ``service`` and ``device``. Metrics not measured are left out (a skipped
    result without a CPU run yields none).
    """
    device = str(result.get("device") or "none")
    base = {"service": service, "device": device}
    samples: list[MetricSample] = []
    for bench in result.get("benchmarks") or []:
        labels = {**base, "batch_size": str(bench.get("batch_size"))}
        p95 = _number((bench.get("latency_ms") or {}).get("p95"))
        if p95 is not None:
            samples.append((METRIC_LATENCY_P95, dict(labels), p95))
        throughput = _number(bench.get("throughput_per_s"))
        if throughput is not None:
            samples.append((METRIC_THROUGHPUT, dict(labels), throughput))
    memory = result.get("memory") or {}
    peak = _number(memory.get("peak_mb"))
    if peak is not None:
        samples.append((METRIC_MEMORY_PEAK, {**base, "source": str(memory.get("source"))}, peak))
    temperature = _number(((result.get("health") or {}).get("temperature_c") or {}).get("max"))
    if temperature is not None:
        samples.append((METRIC_TEMPERATURE_MAX, dict(base), temperature))
    return samples
