"""The project's one duration grammar (``delivery.catalog.fields.parse_duration``): what it reads, what it
refuses, and that the catalog, the verification analysis and the DORA window all read it the same way."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

import pytest
from pydantic import BaseModel, ValidationError

from delivery.catalog.fields import Duration, format_duration, parse_duration
from delivery.catalog.schema import service_schema
from delivery.reporting.dora import parse_window

ACCEPTED = [
    pytest.param("500ms", timedelta(milliseconds=500), id="milliseconds"),
    pytest.param("10s", timedelta(seconds=10), id="seconds"),
    pytest.param("30m", timedelta(minutes=30), id="minutes"),
    pytest.param("1h", timedelta(hours=1), id="hours"),
    pytest.param("2d", timedelta(days=2), id="days"),
    pytest.param("4w", timedelta(weeks=4), id="weeks"),
    pytest.param("1h30m", timedelta(minutes=90), id="hours-and-minutes"),
    pytest.param(
        "1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5), id="all-units"
    ),
    pytest.param(" 1h 30m ", timedelta(minutes=90), id="spaces-between-terms"),
    pytest.param("1.5h", timedelta(minutes=90), id="decimal-term"),
    pytest.param("90", timedelta(seconds=90), id="seconds-as-string"),
    pytest.param("2.5", timedelta(seconds=2.5), id="decimal-seconds-as-string"),
    pytest.param(90, timedelta(seconds=90), id="int-seconds"),
    pytest.param(1.5, timedelta(seconds=1.5), id="float-seconds"),
    pytest.param(0, timedelta(0), id="zero"),
    pytest.param("0s", timedelta(0), id="zero-string"),
    pytest.param(timedelta(minutes=3), timedelta(minutes=3), id="timedelta"),
]

REFUSED = [
    pytest.param("", "is not understood", id="empty"),
    pytest.param("soon", "is not understood", id="word"),
    pytest.param("10 minutes", "is not understood", id="unit-as-word"),
    pytest.param("-1s", "is not understood", id="negative-string"),
    pytest.param(-3, "non-negative", id="negative-number"),
    pytest.param(True, "is not understood", id="bool"),
    pytest.param(None, "is not understood", id="none"),
    pytest.param("30D", "is not understood", id="uppercase-unit"),
    pytest.param("1m1h", "is not understood", id="units-out-of-order"),
    pytest.param("1s1s", "is not understood", id="unit-twice"),
    pytest.param("30mm", "is not understood", id="unknown-unit"),
    pytest.param("1.s", "is not understood", id="dangling-decimal-point"),
    pytest.param(float("nan"), "finite", id="nan"),
    pytest.param(float("inf"), "finite", id="infinity"),
    pytest.param("99999999999999w", "finite", id="too-long"),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_accepted_forms(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_refused_forms_say_what_is_expected(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        parse_duration(text)
    assert repr(text) in str(refused.value)  # the message quotes the bad value
    if message == "is not understood":
        assert "'1h30m'" in str(refused.value) and "number of seconds" in str(refused.value)


@pytest.mark.parametrize(
    "delta",
    [
        timedelta(0),
        timedelta(milliseconds=500),
        timedelta(seconds=90.5),
        timedelta(days=3, seconds=7),
        timedelta(seconds=1.000005),
        timedelta(weeks=4),
    ],
)
def test_format_reads_back(delta: timedelta) -> None:
    assert parse_duration(format_duration(delta)) == delta


def test_format_is_short() -> None:
    assert [format_duration(timedelta(seconds=s)) for s in (0, 0.5, 30, 90, 5400, 90061)] == [
        "0s",
        "500ms",
        "30s",
        "1m30s",
        "1h30m",
        "1d1h1m1s",
    ]


class _Model(BaseModel):
    timeout: Duration


def test_catalog_durations_are_positive_and_serialise_in_the_grammar() -> None:
    assert _Model(timeout="1h30m").model_dump(mode="json") == {"timeout": "1h30m"}
    assert _Model(timeout=0.25).timeout == timedelta(milliseconds=250)
    with pytest.raises(ValidationError, match="a duration must be positive, got 0"):
        _Model(timeout=0)
    with pytest.raises(ValidationError, match="duration 'soon' is not understood"):
        _Model(timeout="soon")


def test_the_json_schema_pattern_is_the_same_grammar() -> None:
    """Editors validate with the schema's pattern: it must accept and refuse the same strings."""
    schema = service_schema()
    pattern = schema["properties"]["approval_timeout"]["anyOf"][0]["pattern"]
    for param in ACCEPTED:
        text = param.values[0]
        if isinstance(text, str):
            assert re.match(pattern, text), text
    for param in REFUSED:
        text = param.values[0]
        if isinstance(text, str) and param.id != "too-long":
            assert not re.match(pattern, text), text


def test_the_dora_window_is_the_same_grammar() -> None:
    assert parse_window("30d") == timedelta(days=30)
    assert parse_window("4w") == timedelta(weeks=4)
    assert parse_window("1d12h") == timedelta(hours=36)
    with pytest.raises(argparse.ArgumentTypeError, match="duration 'a month' is not understood"):
        parse_window("a month")
    with pytest.raises(argparse.ArgumentTypeError, match="window must be longer than zero"):
        parse_window("0s")
