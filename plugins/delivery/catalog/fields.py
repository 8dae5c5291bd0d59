"""Small value types shared by the catalog models (durations, quantities, names).

:func:`parse_duration` is the project's one duration grammar; everything that reads a duration uses it.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_UNITS = (("w", 604800.0), ("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))


def _duration_pattern(*, named: bool) -> str:
    """The grammar as a regex; unnamed for the JSON Schema (ECMA-262 and Python read it alike)."""

    def group(name: str) -> str:
        return f"(?P<{name}>{_NUMBER})" if named else f"({_NUMBER})"

    terms = "".join(
        rf"(?:{group(unit)}{unit}{'(?!s)' if unit == 'm' else ''}\s*)?" for unit, _ in _DURATION_UNITS
    )
    return rf"^\s*(?=\d)(?:{group('bare')}|{terms})\s*$"


_DURATION_RE = re.compile(_duration_pattern(named=True))
_MAX_SECONDS = timedelta.max.total_seconds() / 2
DURATION_FORMS = "'500ms', '90s', '30m', '1h30m', '2d', '4w' or a number of seconds"


def parse_duration(value: object) -> timedelta:
    """The project's one duration grammar, into a timedelta (zero allowed, never negative).

    A number of seconds (``90``, ``1.5``, or the same as a string), or terms ``<number><unit>``
    with the units ``w``, ``d``, ``h``, ``m``, ``s``, ``ms`` in that order, each at most once:
    ``500ms``, ``90s``, ``30m``, ``1h30m``, ``2d``, ``4w``, ``1.5h``. Units are lowercase (``m`` is
    minutes, never months). Used by the catalog (:data:`Duration`), the verification analysis, the
    DORA window and the services' environment settings.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"duration {value!r} is not understood: use {DURATION_FORMS}")
    elif isinstance(value, str):
        seconds = _duration_seconds(value)
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or seconds > _MAX_SECONDS:
        raise ValueError(f"duration {value!r} should be a finite, non-negative number of seconds")
    return timedelta(seconds=seconds)


def _duration_seconds(text: str) -> float:
    match = _DURATION_RE.match(text)
    terms = {k: v for k, v in match.groupdict().items() if v is not None} if match else {}
    if not terms:
        raise ValueError(f"duration {text!r} is not understood: use {DURATION_FORMS}")
    if "bare" in terms:
        return float(terms["bare"])
    return sum(float(terms[unit]) * size for unit, size in _DURATION_UNITS if unit in terms)


def _positive_duration(value: object) -> timedelta:
    delta = parse_duration(value)
    if delta <= timedelta(0):
        raise ValueError(f"a duration must be positive, got {value!r}")
    return delta


def format_duration(delta: timedelta) -> str:
    """The shortest text :func:`parse_duration` reads back as ``delta``: ``1h30m``, ``500ms``, ``1.25s``."""
    micros = round(delta.total_seconds() * 1_000_000)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, micros = divmod(micros, size * 1_000_000)
        if count:
            parts.append(f"{count}{unit}")
    whole, fraction = divmod(micros, 1_000_000)
    if fraction == 0:
        parts.append(f"{whole}s" if whole else "")
    elif fraction % 1000 == 0 and not whole:
        parts.append(f"{fraction // 1000}ms")
    else:
        parts.append(f"{whole}.{fraction:06d}".rstrip("0") + "s")
    return "".join(parts) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(_positive_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": _duration_pattern(named=False),
                    "examples": ["90s", "30m", "1h30m"],
                },
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": f"A positive duration: {DURATION_FORMS}.",
        }
    ),
]
"""A positive duration in the catalog (see :func:`parse_duration`); serialised as ``1h30m``."""

# Kubernetes resource quantities (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/)
_QUANTITY_RE = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _check_quantity(value: str) -> str:
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: '500m', '2', '512Mi', '8Gi')")
    return value


Quantity = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v),
    AfterValidator(_check_quantity),
    WithJsonSchema({"type": ["string", "number"], "pattern": _QUANTITY_RE.pattern}),
]

_DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _check_dns_label(value: str) -> str:
    if not _DNS_LABEL_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lowercase letters, digits and '-', "
            "start with a letter, at most 63 characters"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]


def quantity_to_bytes(value: str) -> int:
    """Convert a memory quantity ('512Mi', '8Gi', '1G') into bytes."""
    match = _QUANTITY_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number = float(match.group(1))
    suffix = match.group(3) or ""
    factors = {
        "": 1,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "P": 1e15,
        "E": 1e18,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "Ei": 2**60,
    }
    return int(number * factors[suffix])
