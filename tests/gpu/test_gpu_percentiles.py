"""Pure helpers of the harness: percentiles against hand-computed timings, parsing, sampling."""

from __future__ import annotations

import math
import time

import pytest

from delivery.gpu.harness import (
    PERCENTILE_METHOD,
    HealthSampler,
    load_object,
    parse_batch_sizes,
    percentile,
    summarize_latencies,
)


def test_method_is_documented_as_linear() -> None:
    assert PERCENTILE_METHOD == "linear"


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0, 10.0),
        (25, 20.0),
        (50, 30.0),
        # rank = 4 * 0.95 = 3.8 -> 40 + 0.8 * (50 - 40)
        (95, 48.0),
        # rank = 4 * 0.99 = 3.96 -> 40 + 0.96 * 10
        (99, 49.6),
        (100, 50.0),
    ],
)
def test_five_values(q: float, expected: float) -> None:
    assert percentile([50.0, 10.0, 40.0, 20.0, 30.0], q) == pytest.approx(expected)


def test_realistic_latencies_with_an_outlier() -> None:
    # sorted: 1.1 1.2 1.2 1.25 1.3 1.3 1.4 1.5 1.6 9.8 (n = 10)
    timings_ms = [1.2, 1.5, 1.1, 9.8, 1.3, 1.4, 1.2, 1.6, 1.3, 1.25]
    # p50: rank 4.5 -> 1.3 + 0.5 * (1.3 - 1.3)
    assert percentile(timings_ms, 50) == pytest.approx(1.3)
    # p95: rank 8.55 -> 1.6 + 0.55 * (9.8 - 1.6) = 6.11
    assert percentile(timings_ms, 95) == pytest.approx(6.11)
    # p99: rank 8.91 -> 1.6 + 0.91 * 8.2 = 9.062
    assert percentile(timings_ms, 99) == pytest.approx(9.062)


def test_one_to_hundred() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)


@pytest.mark.parametrize("q", [1, 12.5, 33, 50, 90, 95, 99, 99.9])
def test_it_is_type_7_at_any_rank(q: float) -> None:
    """Hyndman & Fan type 7 by hand (numpy's ``linear``): rank (n - 1) * q / 100, then interpolate."""
    values = [3.2, 1.0, 9.75, 4.4, 2.5, 7.0, 5.5, 8.25, 6.0, 0.5, 11.0]
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    expected = ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (rank - low)
    assert percentile(values, q) == pytest.approx(expected)


def test_two_values_and_one_value() -> None:
    assert percentile([3.0, 1.0], 50) == pytest.approx(2.0)
    assert percentile([3.0, 1.0], 95) == pytest.approx(2.9)
    assert all(percentile([7.5], q) == 7.5 for q in (0, 50, 95, 99, 100))


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 100.5), ([1.0, math.nan], 50)])
def test_invalid_input(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summary() -> None:
    summary = summarize_latencies([10.0, 20.0, 30.0, 40.0, 50.0])
    assert summary == pytest.approx(
        {"p50": 30.0, "p95": 48.0, "p99": 49.6, "mean": 30.0, "min": 10.0, "max": 50.0}
    )
    with pytest.raises(ValueError):
        summarize_latencies([])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,8,32", [1, 8, 32]), (" 1 8  32 ", [1, 8, 32]), ("4,,4, 2", [4, 2]), ("16", [16])],
)
def test_parse_batch_sizes(text: str, expected: list[int]) -> None:
    assert parse_batch_sizes(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "a,b", "1.5"])
def test_parse_batch_sizes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_batch_sizes(text)


def test_load_object() -> None:
    assert load_object("os.path:join") is __import__("os").path.join
    assert load_object("delivery.gpu.harness:HealthSampler.summary") is HealthSampler.summary
    for bad in ("os.path", ":join", "os.path:"):
        with pytest.raises(ValueError, match="module:attribute"):
            load_object(bad)
    with pytest.raises(AttributeError):
        load_object("os.path:no_such_function")


def test_health_sampler_samples_in_the_background() -> None:
    readings = iter(range(10_000))

    def read() -> dict[str, float | None]:
        n = next(readings)
        return {"utilization_pct": 50.0 + n % 2, "temperature_c": 60.0 + n, "memory_used_mb": None}

    with HealthSampler(read=read, interval_ms=5, source="fake") as sampler:
        time.sleep(0.1)
    summary = sampler.summary()
    # one at start, one at stop, and some in between
    assert summary["samples"] >= 3
    assert summary["available"] is True
    assert summary["source"] == "fake"
    assert summary["temperature_c"]["max"] == 60.0 + summary["samples"] - 1
    assert 50.0 <= summary["utilization_pct"]["mean"] <= 51.0
    assert summary["memory_used_mb"] is None


def test_health_sampler_read_errors_are_counted_not_raised() -> None:
    def read() -> dict[str, float | None]:
        raise RuntimeError("NVML: GPU is lost")

    sampler = HealthSampler(read=read, interval_ms=5, source="fake").start()
    time.sleep(0.03)
    summary = sampler.stop()
    assert summary["available"] is False
    assert summary["samples"] == 0
    assert summary["errors"] >= 2
    assert "GPU is lost" in summary["reason"]
    with pytest.raises(ValueError):
        HealthSampler(read=read, interval_ms=0, source="fake")
