"""Unit tests of the verification analysis: no Prometheus, no Airflow runtime."""

from __future__ import annotations

import asyncio
import importlib
import math
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from pydantic import ValidationError

from delivery.catalog.models import Check, VerifySpec, render_query
from delivery.integrations.prometheus import (
    PrometheusQueryError,
    PrometheusUnreachable,
    parse_query_response,
)
from delivery.verification.analysis import (
    DECISION_HOLD,
    DECISION_PROMOTE,
    Analysis,
    MeasurementError,
    Phase,
    Sample,
    VerificationError,
    VerificationFailed,
    VerificationInconclusive,
    arun_analysis,
    evaluate_check,
    resolve,
    run_analysis,
)
from delivery.verification.operator import VerifyReleaseOperator
from delivery.verification.trigger import AnalysisTrigger

if TYPE_CHECKING:
    from collections.abc import Sequence

ERROR_RATE = (
    'sum(rate(http_requests_total{service="{{ service }}",code=~"5.."}[1m])) '
    '/ clamp_min(sum(rate(http_requests_total{service="{{ service }}"}[1m])), 1e-9)'
)
LATENCY = (
    "histogram_quantile(0.95, sum by (le) "
    '(rate(http_request_duration_seconds_bucket{service="{{ service }}"}[1m])))'
)
CONTRACT = {
    "interval": "10s",
    "count": 5,
    "failure_limit": 1,
    "inconclusive_limit": 1,
    "on_inconclusive": "hold",
    "checks": [
        {"name": "error_rate", "query": ERROR_RATE, "max": 0.05},
        {"name": "latency_p95", "query": LATENCY, "max": 0.5},
    ],
}


def spec(**overrides: object) -> VerifySpec:
    return VerifySpec.model_validate({**CONTRACT, **overrides})


def ok(value: float) -> list[Sample]:
    return [Sample(labels={}, value=value)]


# ------------------------------------------------------------------------------------------
# Input contract: the catalog's VerifySpec (durations: tests/catalog/test_durations.py)
# ------------------------------------------------------------------------------------------


def test_contract_parses() -> None:
    parsed = spec()
    assert parsed.interval == timedelta(seconds=10)
    assert parsed.count == 5
    assert parsed.on_inconclusive == "hold"
    assert [c.name for c in parsed.checks] == ["error_rate", "latency_p95"]
    assert parsed.checks[0].max == 0.05
    assert parsed.checks[0].min is None
    # The JSON form (what the trigger stores) reads back as the same spec.
    assert parsed.model_dump(mode="json")["interval"] == "10s"
    assert VerifySpec.model_validate(parsed.model_dump(mode="json")) == parsed


def test_defaults() -> None:
    parsed = VerifySpec.model_validate({"checks": [{"name": "up", "query": "up", "min": 1}]})
    assert (parsed.interval, parsed.count, parsed.failure_limit, parsed.inconclusive_limit) == (
        timedelta(seconds=30),
        5,
        1,
        1,
    )
    assert parsed.on_inconclusive == "hold"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        pytest.param({"count": 0}, "count", "greater than or equal to 1", id="count-zero"),
        pytest.param({"count": True}, "count", "valid integer", id="count-bool"),
        pytest.param(
            {"failure_limit": -1}, "failure_limit", "greater than or equal to 0", id="negative-limit"
        ),
        pytest.param({"inconclusive_limit": "1"}, "inconclusive_limit", "valid integer", id="string-limit"),
        pytest.param(
            {"on_inconclusive": "retry"}, "on_inconclusive", "'hold', 'fail' or 'pass'", id="bad-policy"
        ),
        pytest.param(
            {"interval": "soon"}, "interval", "duration 'soon' is not understood", id="bad-interval"
        ),
        pytest.param({"interval": 0}, "interval", "must be positive", id="zero-interval"),
        pytest.param({"timeout": "1m"}, "timeout", "Extra inputs are not permitted", id="unknown-key"),
        pytest.param(
            {"checks": [{"name": "a", "query": "up", "max": 1}, {"name": "a", "query": "up", "max": 2}]},
            "checks",
            "repeated: ['a']",
            id="duplicate-check",
        ),
        pytest.param(
            {"checks": [{"name": "a", "query": "up"}]},
            "checks.0",
            "needs 'min', 'max' or both",
            id="no-bounds",
        ),
        pytest.param(
            {"checks": [{"name": "a", "query": "up", "min": 2, "max": 1}]},
            "checks.0",
            "min 2 is greater than max 1",
            id="min-above-max",
        ),
        pytest.param(
            {"checks": [{"name": "a", "query": " ", "max": 1}]},
            "checks.0.query",
            "empty query",
            id="empty-query",
        ),
        pytest.param(
            {"checks": [{"name": "1a", "query": "up", "max": 1}]},
            "checks.0.name",
            "check name '1a'",
            id="bad-name",
        ),
        pytest.param(
            {"checks": [{"name": "a", "query": "up", "max": "high"}]},
            "checks.0.max",
            "valid number",
            id="bad-max",
        ),
        pytest.param(
            {"checks": [{"name": "a", "query": "up", "max": math.nan}]},
            "checks.0.max",
            "not NaN",
            id="nan-max",
        ),
        pytest.param(
            {"checks": [{"name": "a", "query": "up", "max": 1, "warn": 2}]},
            "checks.0.warn",
            "Extra inputs are not permitted",
            id="unknown-check-key",
        ),
        pytest.param(
            {"checks": [{"name": "up", "query": 'up{job="{{ job }}"}', "max": 1}]},
            "checks.0.query",
            'placeholder "{{ job }}" is unknown',
            id="unknown-placeholder",
        ),
    ],
)
def test_contract_errors(overrides: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        spec(**overrides)
    [error] = refused.value.errors()
    assert ".".join(str(part) for part in error["loc"]) == field
    assert message in error["msg"]


# ------------------------------------------------------------------------------------------
# Placeholders
# ------------------------------------------------------------------------------------------


def test_render_query_substitutes() -> None:
    rendered = render_query(
        'up{service="{{ service }}",env="{{environment}}",ns="{{  namespace  }}"}',
        {"service": "catalog-api", "environment": "production", "namespace": "visiobook"},
    )
    assert rendered == 'up{service="catalog-api",env="production",ns="visiobook"}'


def test_spec_render_keeps_everything_but_queries() -> None:
    original = spec()
    rendered = original.render({"service": "catalog"})
    assert 'service="catalog"' in rendered.checks[0].query
    assert "{{" not in rendered.checks[1].query
    assert rendered.model_dump(exclude={"checks"}) == original.model_dump(exclude={"checks"})
    assert [(c.name, c.max) for c in rendered.checks] == [(c.name, c.max) for c in original.checks]
    assert "{{ service }}" in original.checks[0].query  # the catalog's spec is left as it was


@pytest.mark.parametrize(
    ("template", "variables", "message"),
    [
        pytest.param("up{x='{{ job }}'}", {"service": "a"}, "unknown", id="unknown-placeholder"),
        pytest.param("up{x='{{ namespace }}'}", {"service": "a"}, "no namespace was given", id="unset"),
        pytest.param(
            'up{s="{{ service }}"}', {"service": 'a"} or vector(1) #'}, "cannot go into", id="quote"
        ),
        pytest.param('up{s="{{ service }}"}', {"service": "a b"}, "cannot go into", id="space"),
        pytest.param('up{s="{{ service }}"}', {"service": "-a"}, "cannot go into", id="leading-dash"),
        pytest.param('up{s="{{ service.name }}"}', {"service": "a"}, "malformed", id="attribute-access"),
        pytest.param('up{s="{{ service | upper }}"}', {"service": "a"}, "malformed", id="jinja-filter"),
    ],
)
def test_render_query_rejects(template: str, variables: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_query(template, variables)


# ------------------------------------------------------------------------------------------
# One check
# ------------------------------------------------------------------------------------------

MAX_ONLY = Check(name="error_rate", query="q", max=0.05)
MIN_ONLY = Check(name="throughput", query="q", min=10)
BOTH = Check(name="ratio", query="q", min=0.2, max=0.8)


@pytest.mark.parametrize(
    ("check", "outcome", "phase", "text"),
    [
        pytest.param(MAX_ONLY, ok(0.01), Phase.SUCCESSFUL, "within max 0.05", id="below-max"),
        pytest.param(MAX_ONLY, ok(0.05), Phase.SUCCESSFUL, "within", id="equal-max"),
        pytest.param(MAX_ONLY, ok(0.5), Phase.FAILED, "0.5 > max 0.05", id="above-max"),
        pytest.param(MAX_ONLY, ok(math.inf), Phase.FAILED, "+Inf > max", id="plus-inf"),
        pytest.param(MIN_ONLY, ok(3), Phase.FAILED, "3 < min 10", id="below-min"),
        pytest.param(MIN_ONLY, ok(10), Phase.SUCCESSFUL, "within min 10", id="equal-min"),
        pytest.param(BOTH, ok(0.5), Phase.SUCCESSFUL, "within min 0.2, max 0.8", id="in-range"),
        pytest.param(BOTH, ok(0.9), Phase.FAILED, "> max 0.8", id="out-of-range"),
        pytest.param(MAX_ONLY, [], Phase.INCONCLUSIVE, "empty result", id="empty-vector"),
        pytest.param(MAX_ONLY, ok(math.nan), Phase.INCONCLUSIVE, "NaN", id="nan"),
        pytest.param(
            MAX_ONLY,
            [Sample(labels={"pod": "a"}, value=0.0), Sample(labels={"pod": "b"}, value=0.3)],
            Phase.FAILED,
            'pod="b"',
            id="one-series-of-two-fails",
        ),
        pytest.param(
            MAX_ONLY,
            [Sample(labels={"pod": "a"}, value=0.01), Sample(labels={"pod": "b"}, value=0.02)],
            Phase.SUCCESSFUL,
            "0.02 within",
            id="worst-series-reported",
        ),
        pytest.param(
            MAX_ONLY,
            PrometheusQueryError("bad_data: parse error"),
            Phase.INCONCLUSIVE,
            "query error",
            id="query-error",
        ),
        pytest.param(
            MAX_ONLY,
            PrometheusUnreachable("connection refused"),
            Phase.INCONCLUSIVE,
            "unreachable: connection refused",
            id="unreachable",
        ),
    ],
)
def test_evaluate_check(
    check: Check, outcome: Sequence[Sample] | MeasurementError, phase: Phase, text: str
) -> None:
    result = evaluate_check(check, outcome)
    assert result.phase is phase
    assert text in result.message


def test_errors_are_recorded() -> None:
    result = evaluate_check(MAX_ONLY, PrometheusUnreachable("connection refused"))
    assert result.error == "metrics provider unreachable: connection refused"
    assert evaluate_check(MAX_ONLY, ok(0.0)).error is None


# ------------------------------------------------------------------------------------------
# The analysis
# ------------------------------------------------------------------------------------------

S, F, I = "S", "F", "I"  # noqa: E741 - scripted measurement phases


class Script:
    """A fake query function: measurement ``n`` of each check gives the scripted outcome."""

    def __init__(self, phases: str, check_names: Sequence[str]) -> None:
        self.phases = phases
        self.check_names = check_names
        self.calls = 0

    def outcome(self, promql: str) -> list[Sample]:
        index = self.calls // len(self.check_names)
        self.calls += 1
        # Only the first check follows the script; the others stay healthy.
        is_first = promql == self.check_names[0]
        step = self.phases[index]
        if not is_first or step == S:
            return ok(0.0)
        if step == F:
            return ok(1.0)
        raise PrometheusUnreachable("connection refused")

    def __call__(self, promql: str) -> list[Sample]:
        return self.outcome(promql)


def scripted_spec(**overrides: object) -> VerifySpec:
    base: dict[str, object] = {
        "interval": 2,
        "count": 5,
        "failure_limit": 1,
        "inconclusive_limit": 1,
        "checks": [
            {"name": "first", "query": "first", "max": 0.5},
            {"name": "second", "query": "second", "max": 0.5},
        ],
    }
    return VerifySpec.model_validate({**base, **overrides})


@pytest.mark.parametrize(
    ("script", "overrides", "phase", "measurements"),
    [
        pytest.param("SSSSS", {}, Phase.SUCCESSFUL, 5, id="all-successful"),
        pytest.param("SFSSS", {}, Phase.SUCCESSFUL, 5, id="failures-at-limit"),
        pytest.param("FF", {}, Phase.FAILED, 2, id="failures-over-limit-stop-early"),
        pytest.param("SFSF", {}, Phase.FAILED, 4, id="second-failure"),
        pytest.param("F", {"failure_limit": 0}, Phase.FAILED, 1, id="zero-tolerance"),
        pytest.param("SISSS", {}, Phase.SUCCESSFUL, 5, id="inconclusive-at-limit"),
        pytest.param("ISI", {}, Phase.INCONCLUSIVE, 3, id="inconclusive-over-limit"),
        pytest.param("I", {"inconclusive_limit": 0}, Phase.INCONCLUSIVE, 1, id="no-inconclusive-allowed"),
        pytest.param("IFIF", {}, Phase.INCONCLUSIVE, 3, id="inconclusive-limit-reached-first"),
        pytest.param("FIFI", {}, Phase.FAILED, 3, id="failure-limit-reached-first"),
        pytest.param("S", {"count": 1}, Phase.SUCCESSFUL, 1, id="single-measurement"),
    ],
)
def test_analysis_phase(script: str, overrides: dict[str, object], phase: Phase, measurements: int) -> None:
    sleeps: list[float] = []
    analysis = run_analysis(
        scripted_spec(**overrides), Script(script, ["first", "second"]), sleep=sleeps.append
    )
    assert analysis.phase is phase
    assert len(analysis.measurements) == measurements
    # Sleeps only between measurements, never after the last one.
    assert sleeps == [2.0] * (measurements - 1)


def test_failed_measurement_wins_over_inconclusive_check() -> None:
    check_a = Check(name="a", query="a", max=1)
    check_b = Check(name="b", query="b", max=1)
    analysis = Analysis(VerifySpec(checks=[check_a, check_b], count=3))
    measurement = analysis.measure({"a": ok(2), "b": PrometheusUnreachable("down")})
    assert measurement.phase is Phase.FAILED


def test_analysis_refuses_measurements_once_done() -> None:
    analysis = Analysis(VerifySpec(checks=[MAX_ONLY], count=1))
    analysis.measure({"error_rate": ok(0.0)})
    with pytest.raises(RuntimeError, match="already Successful"):
        analysis.measure({"error_rate": ok(0.0)})


def test_summary_of_failed_analysis() -> None:
    analysis = run_analysis(scripted_spec(), Script("FF", ["first", "second"]), sleep=lambda _: None)
    summary = analysis.summary()
    assert summary["phase"] == "Failed"
    assert summary["failed"] == 2
    assert summary["measurements"] == 2
    assert "2 failed measurements > failure_limit 1" in summary["reason"]
    assert "first: 1 > max 0.5" in summary["reason"]
    assert "second" not in summary["reason"]
    assert summary["checks"]["first"]["values"] == [1.0, 1.0]
    assert summary["checks"]["first"]["failed"] == 2
    assert summary["checks"]["second"]["values"] == [0.0, 0.0]
    assert summary["checks"]["second"]["max"] == 0.5
    assert summary["finished_at"] is not None


def test_summary_values_are_json_friendly() -> None:
    analysis = Analysis(VerifySpec(checks=[MAX_ONLY], count=2, inconclusive_limit=2))
    analysis.measure({"error_rate": ok(math.nan)})
    analysis.measure({"error_rate": ok(math.inf)})
    values = analysis.summary()["checks"]["error_rate"]["values"]
    assert values == ["NaN", "+Inf"]


def test_unexpected_errors_propagate() -> None:
    def broken(promql: str) -> list[Sample]:
        raise KeyError(promql)

    with pytest.raises(KeyError, match="first"):
        run_analysis(scripted_spec(), broken, sleep=lambda _: None)


def test_async_runner_matches_sync_runner() -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    script = Script("SIFSF", ["first", "second"])

    async def query(promql: str) -> list[Sample]:
        return script(promql)

    analysis = asyncio.run(arun_analysis(scripted_spec(), query, sleep=fake_sleep))
    assert analysis.phase is Phase.FAILED
    assert len(analysis.measurements) == 5
    assert sleeps == [2.0] * 4


# ------------------------------------------------------------------------------------------
# Decision
# ------------------------------------------------------------------------------------------


def summary_for(script: str, **overrides: object) -> dict[str, object]:
    return run_analysis(
        scripted_spec(**overrides), Script(script, ["first", "second"]), sleep=lambda _: None
    ).summary()


def test_resolve_successful_promotes() -> None:
    result = resolve(summary_for("SSSSS"))
    assert result["decision"] == DECISION_PROMOTE
    assert result["phase"] == "Successful"


def test_resolve_failed_raises_with_values_and_thresholds() -> None:
    with pytest.raises(
        VerificationFailed, match=r"first \[max 0\.5\] failed in 2/2 measurements, values: 1\.0, 1\.0"
    ):
        resolve(summary_for("FF"))


def test_failed_is_not_retried() -> None:
    assert issubclass(VerificationFailed, AirflowFailException)
    assert issubclass(VerificationInconclusive, AirflowException)


@pytest.mark.parametrize(
    ("policy", "decision"),
    [pytest.param("hold", DECISION_HOLD, id="hold"), pytest.param("pass", DECISION_PROMOTE, id="pass")],
)
def test_resolve_inconclusive_returns(policy: str, decision: str) -> None:
    result = resolve(summary_for("II", on_inconclusive=policy))
    assert result["decision"] == decision
    assert result["phase"] == "Inconclusive"
    assert ("warning" in result) is (policy == "pass")


def test_resolve_inconclusive_fail_raises() -> None:
    with pytest.raises(VerificationInconclusive, match=r"first .*inconclusive in 2/2.*connection refused"):
        resolve(summary_for("II", on_inconclusive="fail"))


def test_resolve_policy_argument_overrides_summary() -> None:
    with pytest.raises(VerificationInconclusive, match="on_inconclusive=fail"):
        resolve(summary_for("II", on_inconclusive="hold"), on_inconclusive="fail")


def test_resolve_error_phase() -> None:
    with pytest.raises(VerificationError, match=r"could not run .*KeyError"):
        resolve({"phase": "Error", "reason": "KeyError: 'x'"})


# ------------------------------------------------------------------------------------------
# Prometheus answers and connections
# ------------------------------------------------------------------------------------------


def test_parse_vector() -> None:
    body = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {"pod": "a"}, "value": [1.0, "0.25"]}]},
    }
    assert parse_query_response(200, body) == [Sample(labels={"pod": "a"}, value=0.25)]


def test_parse_scalar_and_special_values() -> None:
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "+Inf"]}}
    assert parse_query_response(200, scalar)[0].value == math.inf
    nan = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]},
    }
    assert math.isnan(parse_query_response(200, nan)[0].value)


def test_parse_empty_vector() -> None:
    assert (
        parse_query_response(200, {"status": "success", "data": {"resultType": "vector", "result": []}}) == []
    )


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        pytest.param(
            400,
            {"status": "error", "errorType": "bad_data", "error": "parse error"},
            PrometheusQueryError,
            "bad_data: parse error",
            id="bad-query",
        ),
        pytest.param(
            422,
            {"status": "error", "errorType": "execution", "error": "too many samples"},
            PrometheusQueryError,
            "execution",
            id="execution-error",
        ),
        pytest.param(
            503,
            {"status": "error", "errorType": "unavailable", "error": "x"},
            PrometheusUnreachable,
            "503",
            id="503",
        ),
        pytest.param(502, None, PrometheusUnreachable, "HTTP 502", id="proxy-error"),
        pytest.param(200, None, PrometheusQueryError, "unexpected answer", id="not-json"),
        pytest.param(
            200,
            {"status": "success", "data": {"resultType": "matrix", "result": []}},
            PrometheusQueryError,
            'result type "matrix"',
            id="range-vector",
        ),
        pytest.param(
            200,
            {"status": "success", "data": {"resultType": "string", "result": [1, "x"]}},
            PrometheusQueryError,
            'result type "string"',
            id="string",
        ),
    ],
)
def test_parse_errors(status: int, body: object, error: type[MeasurementError], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_query_response(status, body)


# ------------------------------------------------------------------------------------------
# Trigger and operator, offline
# ------------------------------------------------------------------------------------------


def test_trigger_serialization_round_trip() -> None:
    trigger = AnalysisTrigger(spec=spec(), prometheus_conn_id="prom", query_timeout=3.0)
    classpath, kwargs = trigger.serialize()
    module_name, class_name = classpath.rsplit(".", 1)
    assert classpath == "delivery.verification.trigger.AnalysisTrigger"
    assert kwargs["spec"] == spec().model_dump(mode="json")  # pydantic's JSON form, no hand mapping
    rebuilt = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    assert rebuilt.spec == trigger.spec
    assert rebuilt.serialize() == (classpath, kwargs)


def test_operator_defers_with_rendered_queries() -> None:
    op = VerifyReleaseOperator(task_id="verify", verify=spec(), service="catalog", environment="production")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context={})
    trigger = deferred.value.trigger
    assert isinstance(trigger, AnalysisTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert 'service="catalog"' in trigger.spec.checks[0].query
    # 4 intervals of 10 s, and 10 queries of at most 3 attempts of 10 s with 0.5 s + 1 s between
    # them; plus a margin.
    assert deferred.value.timeout == timedelta(seconds=40 + 10 * 31.5) + timedelta(minutes=2)


def test_operator_takes_the_catalog_model_with_checks() -> None:
    with pytest.raises(TypeError, match="the catalog's VerifySpec, got dict"):
        VerifyReleaseOperator(task_id="verify", verify=CONTRACT, service="catalog")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="verify needs at least one check"):
        VerifyReleaseOperator(task_id="verify", verify=VerifySpec(), service="catalog")


def test_operator_execute_complete_routes_phases() -> None:
    op = VerifyReleaseOperator(task_id="verify", verify=spec(), service="catalog")
    promoted = op.execute_complete(context={}, event={"phase": "Successful", "summary": summary_for("SSSSS")})
    assert promoted["decision"] == DECISION_PROMOTE
    held = op.execute_complete(context={}, event={"phase": "Inconclusive", "summary": summary_for("II")})
    assert held["decision"] == DECISION_HOLD
    with pytest.raises(VerificationFailed, match="first"):
        op.execute_complete(context={}, event={"phase": "Failed", "summary": summary_for("FF")})
